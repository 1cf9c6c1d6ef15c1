"""A typed service for ``zcall stubs`` tests (``helpers.stub_services:service``): every parameter kind,
dotted names, standard-library types, a server-side class the client does not have, coroutines."""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass
from typing import Any, Literal

import zcall

service = zcall.Service("inventory")

_stock = {"widget": 5, "gadget": 0}


@dataclass
class Order:
    """A server-side class: a stub cannot import it, so it is typed Any there."""

    sku: str
    qty: int


@service.method
def double(x: int) -> int:
    """Return twice x."""
    return 2 * x


@service.method(name="stock.count")
def count(sku: str) -> int:
    """How many of ``sku`` are in stock."""
    return _stock.get(sku, 0)


@service.method(name="stock.reserve")
def reserve(sku: str, /, qty: int = 1, *, note: str | None = None) -> dict[str, Any]:
    """Take ``qty`` of ``sku`` out of stock."""
    _stock[sku] = _stock.get(sku, 0) - qty
    return {"sku": sku, "left": _stock[sku], "note": note}


@service.method
async def restock(sku: str, qty: int, *, when: datetime.date | None = None) -> list[str]:
    """Add ``qty`` of ``sku``; returns the log line."""
    await asyncio.sleep(0)
    _stock[sku] = _stock.get(sku, 0) + qty
    return [f"{sku} +{qty}" + (f" on {when.isoformat()}" if when else "")]


@service.method
def place(order: Order, mode: Literal["fast", "slow"] = "fast") -> Order:
    """An annotation the client cannot resolve (Order lives only here)."""
    return order


@service.method
def tally(*counts: int, **labels: str) -> int:
    """Sum any number of counts."""
    return sum(counts) + len(labels)
