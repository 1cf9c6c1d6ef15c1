"""The handler registry: what becomes callable under which name, how arguments are checked before a call,
and what introspection reports. No sockets: a Service is transport-free."""

from __future__ import annotations

import inspect
import os
import types

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zcall.protocol.status import StatusCode
from zcall.service.registry import BUILTIN_PREFIX, Method, Rejected, Service


def rejected(fn, *args, **kwargs) -> Rejected:
    with pytest.raises(Rejected) as info:
        fn(*args, **kwargs)
    return info.value


def check_error(service: Service, name: str, args=(), kwargs=None) -> str:
    """The INVALID_ARGUMENTS message a call with these arguments gets."""
    r = rejected(service.lookup(name).check, list(args), kwargs or {})
    assert r.code == StatusCode.INVALID_ARGUMENTS
    assert r.type == "zcall.InvalidArguments"
    return r.message


# -- registration ------------------------------------------------------------------------------------


def test_method_decorator_bare_and_with_options():
    svc = Service("calc")

    @svc.method
    def add(a, b):
        """Add two numbers.

        More text that introspection leaves out."""
        return a + b

    @svc.method(name="math.mul", idempotent=True, inline=True)
    def multiply(a, b):
        return a * b

    assert add(2, 3) == 5 and multiply(2, 3) == 6  # the decorator returns the function itself
    assert svc.lookup("add").fn is add
    m = svc.lookup("math.mul")
    assert m.fn is multiply and m.idempotent and m.inline
    assert "multiply" not in svc
    assert svc.lookup("add").doc == "Add two numbers."


def test_coroutines_are_recognised():
    svc = Service()

    @svc.method
    async def fetch(x):
        return x

    class Callable:
        async def __call__(self, y):
            return y

    svc.add(Callable(), name="obj")
    assert svc.lookup("fetch").is_coroutine
    assert svc.lookup("obj").is_coroutine
    assert not svc.lookup("zcall.ping").is_coroutine


class Calculator:
    """A class whose instances are registered with a prefix."""

    factor = 10  # not a routine: never registered

    def scale(self, x):
        """Multiply by the factor."""
        return x * self.factor

    @staticmethod
    def neg(x):
        return -x

    @classmethod
    def name(cls):
        return cls.__name__

    def _secret(self):
        return "no"


def test_register_an_instance_with_prefix():
    svc = Service()
    added = svc.register(Calculator(), prefix="calc")
    assert sorted(added) == ["calc.name", "calc.neg", "calc.scale"]
    assert svc.lookup("calc.scale").fn(4) == 40  # bound to the instance
    assert str(svc.lookup("calc.scale").signature) == "(x)"
    assert "calc._secret" not in svc and "calc.factor" not in svc


def test_register_a_class_skips_instance_methods():
    svc = Service()
    assert sorted(svc.register(Calculator, prefix="C.")) == ["C.name", "C.neg"]
    assert svc.lookup("C.neg").fn(2) == -2


def test_register_a_module_takes_only_its_own_functions():
    mod = types.ModuleType("fakemath")

    def double(x):
        return 2 * x

    def _hidden():
        return 0

    double.__module__ = _hidden.__module__ = "fakemath"
    mod.double = double
    mod._hidden = _hidden
    mod.join = os.path.join  # an import: belongs to another module
    mod.VALUE = 3
    svc = Service()
    assert svc.register(mod, prefix="m") == ["m.double"]
    assert svc.lookup("m.double").fn(4) == 8


def test_register_without_prefix_and_with_nothing_public():
    svc = Service()
    assert "neg" in svc.register(Calculator())
    with pytest.raises(ValueError, match="no public methods"):
        svc.register(object())


@pytest.mark.parametrize("name", ["_x", "a._b", "a..b", ".a", "a.", "__call__", "a.__init__"])
def test_private_or_empty_names_are_never_registrable(name):
    with pytest.raises(ValueError, match="'_'"):
        Service().add(lambda: None, name=name)


@pytest.mark.parametrize("name", ["_x", "a._b", "__class__", "calc._secret", "zcall._ping", "ping"])
def test_private_and_unknown_names_are_not_callable(name):
    svc = Service()
    svc.register(Calculator(), prefix="calc")
    r = rejected(svc.lookup, name)
    assert r.code == StatusCode.METHOD_NOT_FOUND
    assert r.type == "zcall.MethodNotFound"
    assert repr(name) in r.message


def test_private_names_get_no_close_match_hints():
    svc = Service()
    svc.add(lambda: 1, name="secret")
    assert "did you mean" not in rejected(svc.lookup, "_secret").message


@pytest.mark.parametrize("name", ["zcall.ping", "zcall.mine", "zcall.x.y"])
def test_reserved_prefix_is_refused(name):
    with pytest.raises(ValueError, match="reserved"):
        Service().add(lambda: None, name=name)
    assert name.startswith(BUILTIN_PREFIX)


def test_bad_registrations_say_what_is_wrong():
    import functools

    svc = Service()
    with pytest.raises(TypeError, match="not callable"):
        svc.add(42, name="answer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass name="):
        svc.add(functools.partial(print, "x"))
    svc.add(functools.partial(print, "x"), name="say")
    assert "say" in svc


def test_re_registering_a_name_replaces_it():
    svc = Service()
    svc.add(lambda: 1, name="f")
    svc.add(lambda: 2, name="f")
    assert svc.lookup("f").fn() == 2


# -- argument binding ---------------------------------------------------------------------------------


def test_binding_errors_name_the_method_and_the_problem():
    svc = Service()

    @svc.method
    def area(width, height=1):
        return width * height

    @svc.method
    def search(query, *, limit, exact=False):
        return []

    @svc.method
    def log(level, /, *parts, **fields):
        return None

    msg = check_error(svc, "area")
    assert msg.startswith("bad arguments for area(width, height=1): ")
    assert "missing a required argument: 'width'" in msg
    assert "too many positional arguments" in check_error(svc, "area", [1, 2, 3])
    assert "unexpected keyword argument 'depth'" in check_error(svc, "area", [1], {"depth": 2})
    assert "multiple values for argument 'width'" in check_error(svc, "area", [1], {"width": 2})
    assert "missing a required argument: 'limit'" in check_error(svc, "search", ["q"])
    assert "search(query, *, limit, exact=False)" in check_error(svc, "search", ["q"])
    assert "too many positional arguments" in check_error(svc, "search", ["q", 5], {"limit": 1})
    assert "'level' parameter is positional only" in check_error(svc, "log", [], {"level": "x"})
    assert "missing a required argument: 'level'" in check_error(svc, "log")

    svc.lookup("area").check([3], {})
    svc.lookup("area").check([], {"width": 3, "height": 2})
    svc.lookup("search").check(["q"], {"limit": 3})
    svc.lookup("log").check(["info", 1, 2, 3], {"a": 1, "b": 2})  # *args and **kwargs take anything


def test_a_callable_without_signature_accepts_any_arguments():
    svc = Service()
    svc.add(max, name="biggest")  # builtin without an introspectable signature
    m = svc.lookup("biggest")
    assert m.signature is None
    m.check([1, 2, 3], {"key": None})
    assert m.describe()["signature"] == "(...)"


# Fast path (positional-only calls skip Signature.bind) vs the full bind: same verdict, always.
PARAM_KINDS = [
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.VAR_POSITIONAL,
    inspect.Parameter.KEYWORD_ONLY,
    inspect.Parameter.VAR_KEYWORD,
]


@st.composite
def signatures(draw: st.DrawFn) -> inspect.Signature:
    """Any valid signature of up to 11 parameters, of every kind, with or without defaults."""
    params, defaulted, n = [], False, 0
    for kind in PARAM_KINDS:
        variadic = kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        for _ in range(draw(st.integers(0, 1 if variadic else 3))):
            n += 1
            default = 0 if not variadic and draw(st.booleans()) else inspect.Parameter.empty
            if kind in PARAM_KINDS[:2]:  # after a positional default, every positional needs one
                defaulted = defaulted or default == 0
                default = 0 if defaulted else default
            params.append(inspect.Parameter(f"p{n}", kind, default=default))
    return inspect.Signature(params)


@settings(max_examples=300, deadline=None)
@given(
    sig=signatures(),
    nargs=st.integers(0, 8),
    kwnames=st.lists(st.sampled_from([f"p{i}" for i in range(1, 14)] + ["zz"]), max_size=4, unique=True),
)
def test_fast_path_and_full_bind_agree(sig, nargs, kwnames):
    def fn(*args, **kwargs):
        return None

    fn.__signature__ = sig
    method = Method("f", fn)
    args, kwargs = list(range(nargs)), dict.fromkeys(kwnames, 0)
    try:
        sig.bind(*args, **kwargs)
        expected_ok = True
    except TypeError:
        expected_ok = False
    try:
        method.check(args, kwargs)
        ok = True
    except Rejected as r:
        assert r.code == StatusCode.INVALID_ARGUMENTS
        ok = False
    assert ok == expected_ok, (str(sig), args, kwargs)


# -- lookup hints and introspection ------------------------------------------------------------------


def test_unknown_method_lists_close_matches():
    svc = Service("shop")
    for name in ("orders.get", "orders.list", "users.get"):
        svc.add(lambda: None, name=name)
    msg = rejected(svc.lookup, "orders.gte").message
    assert msg.startswith("no method 'orders.gte' on service 'shop'")
    assert "did you mean 'orders.get'" in msg
    assert "did you mean" not in rejected(svc.lookup, "completely.different").message


def test_builtins_are_always_there():
    svc = Service("svc")
    builtins = [m.name for m in svc]
    assert {"zcall.ping", "zcall.methods"} <= set(builtins)
    assert all(name.startswith(BUILTIN_PREFIX) for name in builtins)
    assert all(svc.lookup(name).idempotent for name in builtins)
    ping = svc.lookup("zcall.ping").fn()
    assert ping["service"] == "svc" and ping["pid"] == os.getpid() and ping["uptime"] >= 0
    svc.lookup("zcall.ping").check([], {})
    assert "too many positional" in check_error(svc, "zcall.ping", [1])


def test_methods_introspection():
    svc = Service()

    @svc.method(idempotent=True)
    def add(a: int, b: int = 0) -> int:
        """Add b to a."""
        return a + b

    @svc.method
    async def slow(x):
        return x

    builtins = [m.name for m in Service()]
    listing = svc.lookup("zcall.methods").fn()
    assert [m["name"] for m in listing] == sorted(["add", "slow", *builtins])
    by_name = {m["name"]: m for m in listing}
    assert by_name["add"] == {
        "name": "add",
        "signature": "(a: int, b: int = 0) -> int",
        "doc": "Add b to a.",
        "coroutine": False,
        "idempotent": True,
        "params": [
            {"name": "a", "kind": "positional_or_keyword", "annotation": "int", "default": None},
            {"name": "b", "kind": "positional_or_keyword", "annotation": "int", "default": "0"},
        ],
        "returns": "int",
        "docstring": "Add b to a.",
    }
    assert by_name["slow"]["coroutine"] is True and by_name["slow"]["doc"] == ""
    assert by_name["slow"]["params"][0]["annotation"] is None and by_name["slow"]["returns"] is None
    assert set(by_name["zcall.ping"]) == {
        "name",
        "signature",
        "doc",
        "coroutine",
        "idempotent",
        "params",
        "returns",
        "docstring",
    }
    assert by_name["zcall.methods"]["idempotent"] is True
    assert [m.name for m in svc] == [*builtins, "add", "slow"]  # registration order
    assert repr(svc.lookup("slow")) == "<Method slow(x)>"
