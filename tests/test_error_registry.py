"""The registry of exceptions that round-trip (zcall/error_registry.py): names, collisions, what
travels, and a caller in another process that knows only some of the server's classes."""

from __future__ import annotations

import dataclasses
import decimal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import zcall
from zcall.error_registry import BUILTIN_ERRORS, ErrorRegistry, default_registry
from zcall.errors import RemoteError
from zcall.protocol.codec import Codec
from zcall.testing import ProcessHandle, spawn_server

pytestmark = pytest.mark.timeout(30)

TESTS_DIR = Path(__file__).resolve().parent


class Plain(Exception):
    pass


def record(err: BaseException, codec: Codec | None = None) -> Any:
    """What a server sends for ``err`` (type, data), through a registry of its own."""
    return REG.describe(err, codec or Codec())


REG = ErrorRegistry()


def test_names_are_chosen_once_and_collisions_are_clear() -> None:
    reg = ErrorRegistry()

    class A(Exception):
        pass

    class B(Exception):
        pass

    assert reg.register(A) is A and reg.name_of(A) == f"{__name__}.{A.__qualname__}"
    reg.register(A)  # the same again: nothing happens
    with pytest.raises(ValueError, match=r"already registered for .*A: register .*B with another name"):
        reg.register(B, name=reg.name_of(A))
    with pytest.raises(ValueError, match="already registered as"):
        reg.register(A, name="other")
    with pytest.raises(ValueError, match="zcall's own"):
        reg.register(B, name="zcall.B")
    with pytest.raises(TypeError, match="its errors travel by status code"):
        reg.register(zcall.MethodNotFound)
    with pytest.raises(ValueError, match="too general"):
        reg.register(Exception)
    with pytest.raises(TypeError, match="takes an Exception subclass"):
        reg.register(KeyboardInterrupt)  # type: ignore[arg-type]  # never rebuilt: it would stop the caller
    with pytest.raises(ValueError, match="non-empty str"):
        reg.register(B, name="")


def test_the_builtins_are_registered_under_their_bare_names() -> None:
    for cls in BUILTIN_ERRORS:
        assert default_registry.name_of(cls) == cls.__name__
    assert default_registry.lookup("KeyError") is KeyError and default_registry.lookup("os.system") is None


def test_the_decorator_forms() -> None:
    @zcall.register_error
    class Bare(Exception):
        pass

    @zcall.register_error(name="tests.Named")
    class Named(Exception):
        pass

    try:
        assert default_registry.lookup(f"{__name__}.{Bare.__qualname__}") is Bare
        assert default_registry.lookup("tests.Named") is Named
    finally:
        default_registry.unregister(Bare)
        default_registry.unregister(Named)


def test_what_travels_args_attributes_and_registered_bases() -> None:
    class Base(Exception):
        pass

    class Child(Base):
        def __init__(self, n: int) -> None:
            super().__init__(f"n={n}")
            self.n = n
            self.sock = object()  # msgpack cannot carry it: left out, the rest goes
            self._private = 1

    class Chosen(Exception):
        def __zcall_data__(self) -> dict[str, Any]:
            return {"kept": True}

    REG.register(Base, name="t.Base")
    REG.register(Child, name="t.Child")
    REG.register(Chosen, name="t.Chosen")
    assert record(Child(3)) == ("t.Child", {"args": ["n=3"], "attrs": {"n": 3}, "bases": ["t.Base"]})
    assert record(Chosen("x")) == ("t.Chosen", {"args": ["x"], "attrs": {"kept": True}})
    assert record(Plain("p")) is None  # nothing registered in its ancestry: nil data, as before
    assert record(Base(object())) == ("t.Base", {})  # args that cannot travel are left out

    class Huge(Exception):
        pass

    REG.register(Huge, name="t.Huge")
    err = Huge("x" * 10)
    err.blob = b"y" * 10_000  # type: ignore[attr-defined]
    assert record(err, Codec(max_message_size=64 * 1024)) == ("t.Huge", {"args": ["x" * 10]})


def test_rebuilding_only_what_is_registered_and_falling_back_otherwise() -> None:
    @dataclasses.dataclass
    class Frozen(Exception):
        code: int

    REG.register(Frozen, name="t.Frozen")
    plain = RemoteError("boom", type="t.Frozen", data={"args": [7], "attrs": {"code": 7}}, method="m")
    made = REG.rebuild(plain)
    assert isinstance(made, Frozen) and isinstance(made, RemoteError) and made.code == 7
    assert made.remote is plain and made.remote.code is zcall.StatusCode.HANDLER_ERROR
    assert "raised remotely by 'm'" in made.__notes__[0]
    for data in ["not a map", {"attrs": {1: "not a str key"}}]:
        odd = RemoteError("boom", type="t.Frozen", data=data)
        assert REG.rebuild(odd) is odd  # a caller always gets its error: the plain one
    unknown = RemoteError("boom", type="os.system", data={"args": ["rm -rf /"]})
    assert REG.rebuild(unknown) is unknown  # a name nobody registered is never looked for elsewhere
    old = RemoteError("'k'", type="KeyError")  # a server from before: no data
    assert isinstance(default_registry.rebuild(old), KeyError)


# -- a caller in another process ------------------------------------------------------------------------


@zcall.register_error(name="shop.InventoryError")
class InventoryError(Exception):
    """The caller's copy of the server's base class (the server's module is not imported here)."""


@dataclasses.dataclass
class Receipt:
    """The caller's copy of the server's dataclass, registered on one client's codec only."""

    sku: str
    total: decimal.Decimal


@pytest.fixture(scope="module")
def shop() -> Iterator[ProcessHandle]:
    with spawn_server("helpers.shop_services:service", kind="async", pythonpath=[TESTS_DIR]) as server:
        yield server


def test_a_caller_gets_the_classes_it_knows_and_data_for_the_rest(shop: ProcessHandle) -> None:
    with zcall.SyncClient(shop.endpoint, timeout=5.0) as client:
        with pytest.raises(InventoryError) as base:  # it lacks OutOfStock: its registered base comes back
            client.call("buy", "none")
        err = base.value
        assert type(err).__mro__[1] is InventoryError and err.remote.type == "shop.OutOfStock"
        assert (err.sku, err.available) == ("none", 0)  # type: ignore[attr-defined]
        with pytest.raises(zcall.RemoteError) as secret:  # nothing it knows: plain, its data readable
            client.call("buy", "secret")
        assert type(secret.value) is zcall.RemoteError and secret.value.type == "shop.Secret"
        assert secret.value.data == {"args": ["not for you"], "attrs": {"why": "not for you"}}
        assert client.call("buy", "tee") == {"sku": "tee", "total": decimal.Decimal("4.20")}  # unknown type
    knowing = Codec()
    knowing.register(Receipt, name="shop.Receipt")
    with zcall.SyncClient(shop.endpoint, timeout=5.0, codec=knowing) as client:
        assert client.call("buy", "tee") == Receipt("tee", decimal.Decimal("4.20"))  # now it knows it
