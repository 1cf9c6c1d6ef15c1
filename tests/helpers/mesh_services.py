"""Peers for the launcher and CLI tests: ``calc`` computes, ``gateway`` calls ``calc`` (a call through one
peer to another), ``store`` keeps values; ``Greeter`` is a plain class for ``zcall serve``'s object path."""

from __future__ import annotations

import os
from typing import Any

import zcall

calc = zcall.Peer("calc")
gateway = zcall.Peer("gateway")
store = zcall.Peer("store")

_values: dict[str, Any] = {}


@calc.method
def double(x: int) -> int:
    """Return twice x."""
    return x * 2


@calc.method
def pid() -> int:
    """The process id of the peer that answered."""
    return os.getpid()


@gateway.method
async def double_via_calc(x: int) -> int:
    """Ask peer calc for double(x) and return its answer."""
    return await gateway.acall("calc", "double", x)


@gateway.method
def double_via_calc_sync(x: int) -> int:
    """The same over a blocking (REQ) call from a worker thread."""
    return gateway.call("calc", "double", x)


@store.method
def put(key: str, value: Any) -> None:
    """Remember value under key (in this process)."""
    _values[key] = value


@store.method
def get(key: str) -> Any:
    """The value stored under key, or None."""
    return _values.get(key)


class Greeter:
    """Served with ``zcall serve helpers.mesh_services:Greeter`` (instantiated, public methods)."""

    def hello(self, name: str, punctuation: str = "!") -> str:
        """Greet name."""
        return f"hello, {name}{punctuation}"

    def _secret(self) -> str:
        return "never callable"
