"""A service in its own process, with its own registrations (``helpers.shop_services:service``): the
caller (tests/test_error_registry.py) registers only some of them, as a separate program would."""

from __future__ import annotations

import dataclasses
import decimal

import zcall


@zcall.register_error(name="shop.InventoryError")
class InventoryError(Exception):
    """The base the caller registered too."""


@zcall.register_error(name="shop.OutOfStock")
class OutOfStock(InventoryError):
    """Registered here only: a caller that knows the base gets the base, with these attributes."""

    def __init__(self, sku: str, available: int) -> None:
        super().__init__(f"{sku}: only {available} left")
        self.sku = sku
        self.available = available


@zcall.register_error(name="shop.Secret")
class Secret(Exception):
    """Registered here only, with no registered base the caller has: a RemoteError, its data readable."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@zcall.register_type(name="shop.Receipt")
@dataclasses.dataclass
class Receipt:
    sku: str
    total: decimal.Decimal


service = zcall.Service("shop")


@service.method
def buy(sku: str) -> Receipt:
    if sku == "none":
        raise OutOfStock(sku, 0)
    if sku == "secret":
        raise Secret("not for you")
    return Receipt(sku, decimal.Decimal("4.20"))
