"""The call contract: the same test bodies on every client face x every server kind, over real sockets.

Faces: SyncClient (REQ), AsyncClient's asyncio face (awaited on a loop of its own) and callback face,
a Peer's blocking calls (REQ) and awaited calls (DEALER). Server kinds: SyncServer (REP), AsyncServer
(ROUTER), Peer. A behaviour a face or a server kind lacks is an explicit skip that says why, or a test
that what it cannot do fails clearly. Streams are in the same suite (the last section): every face
consumes them (``Caller.stream``: the sync face pulls over REQ; the others stream over DEALER).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import zcall
from helpers.contract import (
    ASYNC_FACES,
    CANCELLABLE_FACES,
    FACES,
    SERVER_KINDS,
    BackOrdered,
    Basket,
    Caller,
    Colour,
    Declined,
    Item,
    Level,
    LoopThread,
    OutOfStock,
    State,
    Unknown,
    caller,
    make_service,
    start_server,
)
from zcall.testing import FaultProxy, is_reply

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def state() -> State:
    return State()


@pytest.fixture(scope="module")
def service(state: State) -> zcall.Service:
    return make_service(state)


@pytest.fixture(scope="module", params=SERVER_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def servers(kind: str, service: zcall.Service) -> Iterator[list[Any]]:
    """Three servers of one kind: the first serves the calls, the others are hops of nested chains."""
    started = [start_server(kind, service) for _ in range(3)]
    yield started
    for s in started:
        s.stop(1.0)


@pytest.fixture(params=FACES)
def face(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def c(face: str, servers: list[Any], loop: LoopThread) -> Iterator[Caller]:
    with caller(face, servers[0].endpoint, loop, timeout=5.0) as made:
        yield made


@pytest.fixture
def own_server(kind: str, service: zcall.Service) -> Iterator[Any]:
    server = start_server(kind, service)
    yield server
    server.stop(0.5)


@pytest.fixture
def c_own(face: str, own_server: Any, loop: LoopThread) -> Iterator[Caller]:
    """A caller of a server of its own (for tests that leave their server busy)."""
    with caller(face, own_server.endpoint, loop, timeout=5.0) as made:
        yield made


def uid(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


# -- results ---------------------------------------------------------------------------------------


def test_results_of_every_handler_kind(c: Caller) -> None:
    assert c.call("double", 21) == 42  # inline
    value = {"a": [1, 2.5, None, True, b"\x00\xff"]}
    assert c.call("echo", value) == value
    assert c.call("echo", "x", k=1) == ["x", {"k": 1}]  # keyword arguments reach the method
    assert c.call("adouble", 5) == 10  # coroutine
    assert c.call("echo") is None


# -- every error class and code --------------------------------------------------------------------


def test_handler_exception_is_remote_error_with_type_message_traceback(c: Caller) -> None:
    with pytest.raises(zcall.RemoteError) as info:
        c.call("fail", "unregistered")
    err = info.value
    assert type(err) is zcall.RemoteError  # an unregistered class is never built
    assert err.code is zcall.StatusCode.HANDLER_ERROR
    assert err.type == "helpers.contract.Unregistered" and err.message == "nobody knows me"
    assert err.traceback is not None and "Unregistered: nobody knows me" in err.traceback
    assert err.data is None and err.remote is err
    with pytest.raises(ValueError) as builtin:  # a builtin handlers raise comes back as itself
        c.call("boom", "kaput")
    assert isinstance(builtin.value, zcall.RemoteError) and builtin.value.args == ("kaput",)
    assert builtin.value.remote.type == "ValueError" and "ValueError: kaput" in builtin.value.remote.traceback


def test_registered_exceptions_come_back_as_themselves(c: Caller, servers: list[Any]) -> None:
    for method in ("fail", "afail"):  # a plain handler (pool or loop) and a coroutine
        with pytest.raises(OutOfStock) as info:
            c.call(method, "stock")
        err = info.value
        assert (err.sku, err.available, err.code) == ("widget", 3, "E-STOCK")  # its own code wins
        assert str(err) == "widget: only 3 left" and err.args == ("widget: only 3 left",)
        assert isinstance(err, zcall.RemoteError)
        r = err.remote  # the record, beside the attributes of the same name
        assert type(r) is zcall.RemoteError and r.code is zcall.StatusCode.HANDLER_ERROR
        assert (r.type, r.message, r.method) == ("contract.OutOfStock", "widget: only 3 left", method)
        assert r.traceback is not None and "OutOfStock: widget: only 3 left" in r.traceback
        assert r.data == {
            "args": ["widget: only 3 left"],
            "attrs": {"sku": "widget", "available": 3, "code": "E-STOCK"},
        }
    with pytest.raises(Declined) as declined:  # a dataclass exception: its fields
        c.call("fail", "declined")
    assert (declined.value.reason, declined.value.amount) == ("card expired", 120)
    assert declined.value.remote.type == "helpers.contract.Declined"  # the default name: module.qualname
    with pytest.raises(OutOfStock) as base:  # an unregistered subclass: its nearest registered base
        c.call("fail", "backordered")
    assert type(base.value) is not BackOrdered and base.value.remote.type == "helpers.contract.BackOrdered"
    assert base.value.remote.data["bases"] == ["contract.OutOfStock"] and base.value.sku == "gadget"
    with pytest.raises(OutOfStock) as nested:  # through a nested call on another server
        c.call("relay_fail", "stock", servers[1].endpoint)
    assert nested.value.sku == "widget" and "in nested call 'fail'" in nested.value.remote.message


def test_the_builtins_handlers_raise_come_back_as_themselves(c: Caller) -> None:
    with pytest.raises(KeyError) as key:
        c.call("fail", "key")
    assert key.value.args == ("sku-9",) and str(key.value) == "'sku-9'"
    with pytest.raises(PermissionError) as perm:
        c.call("fail", "permission")
    assert (perm.value.errno, perm.value.strerror, perm.value.filename) == (
        13,
        "Permission denied",
        "/srv/stock",
    )
    for kind, klass in [
        ("timeout", TimeoutError),
        ("not-implemented", NotImplementedError),
        ("type", TypeError),
        ("lookup", LookupError),
    ]:
        with pytest.raises(klass) as info:
            c.call("fail", kind)
        assert type(info.value).__mro__[1] is klass and isinstance(info.value, zcall.RemoteError), kind
        assert not isinstance(info.value, zcall.CallTimeout)  # a TimeoutError the handler raised is not ours


def test_an_exception_that_cannot_be_rebuilt_stays_a_remote_error(c: Caller) -> None:
    with pytest.raises(zcall.RemoteError) as info:
        c.call("fail", "fragile")
    err = info.value
    assert type(err) is zcall.RemoteError and err.type == "contract.Fragile"
    assert err.data == {"args": ["handle with care"], "attrs": {"level": 2}}


def test_unknown_and_private_methods_are_not_found_with_close_matches(c: Caller) -> None:
    with pytest.raises(zcall.MethodNotFound) as info:
        c.call("doubel", 1)
    assert info.value.code is zcall.StatusCode.METHOD_NOT_FOUND
    assert info.value.data["close"][0] == "double"
    assert "double" in info.value.message
    with pytest.raises(zcall.MethodNotFound) as info:
        c.call("_private")
    assert info.value.data == {"close": []}


def test_arguments_that_do_not_bind_are_invalid_arguments(c: Caller) -> None:
    with pytest.raises(zcall.InvalidArguments) as info:
        c.call("double", 1, 2)
    assert info.value.code is zcall.StatusCode.INVALID_ARGUMENTS and "double" in info.value.message


CODE_CLASSES = [
    (zcall.StatusCode.HANDLER_ERROR, zcall.RemoteError),
    (zcall.StatusCode.METHOD_NOT_FOUND, zcall.MethodNotFound),
    (zcall.StatusCode.INVALID_ARGUMENTS, zcall.InvalidArguments),
    (zcall.StatusCode.PROTOCOL_ERROR, zcall.errors.RemoteProtocolError),
    (zcall.StatusCode.UNSUPPORTED_VERSION, zcall.errors.RemoteProtocolError),
    (zcall.StatusCode.DEADLINE_EXCEEDED, zcall.DeadlineExceeded),
    (zcall.StatusCode.OVERLOADED, zcall.ServerBusy),
    (zcall.StatusCode.CANCELLED, zcall.RemoteError),
    (zcall.StatusCode.MESSAGE_TOO_LARGE, zcall.errors.RemoteMessageTooLarge),
    (zcall.StatusCode.UNAVAILABLE, zcall.ServerBusy),
    (zcall.StatusCode.INTERNAL, zcall.RemoteError),
    (zcall.StatusCode.PERMISSION_DENIED, zcall.PermissionDenied),
]


def test_every_status_code_arrives_as_its_class(c: Caller) -> None:
    assert {code for code, _ in CODE_CLASSES} == set(zcall.StatusCode) - {zcall.StatusCode.OK}
    for code, klass in CODE_CLASSES:
        opts = {"retries": 0}  # OVERLOADED would otherwise be retried (it is safe to)
        with pytest.raises(zcall.RemoteError) as info:
            c.options(**opts)("refuse", int(code), f"because {code.name}")
        err = info.value
        assert type(err) is klass, (code, type(err))
        assert err.code is code and err.message == f"because {code.name}" and err.data == {"code": int(code)}
    # DeadlineExceeded is a timeout too: the call ran out of time, whoever noticed
    with pytest.raises(zcall.CallTimeout):
        c.call("refuse", int(zcall.StatusCode.DEADLINE_EXCEEDED))
    # and a refusal of the request itself is a protocol error too, so the local classes catch it
    for code, klass in [
        (zcall.StatusCode.PROTOCOL_ERROR, zcall.ProtocolError),
        (zcall.StatusCode.UNSUPPORTED_VERSION, zcall.ProtocolError),
        (zcall.StatusCode.MESSAGE_TOO_LARGE, zcall.MessageTooLarge),
    ]:
        with pytest.raises(klass):
            c.call("refuse", int(code))


# -- types ---------------------------------------------------------------------------------------------

BASKET = Basket(
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    [Item("widget", 2, Colour.BLUE, Level.HIGH, (3, 4)), Item("gadget", 1)],
    decimal.Decimal("19.90"),
    frozenset({"gift"}),
    dt.date(2024, 2, 29),
)


def test_the_built_in_types_round_trip(c: Caller) -> None:
    values = [
        decimal.Decimal("12.50"),
        decimal.Decimal("-1E+3"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        dt.date(2024, 2, 29),
        dt.time(23, 59, 58, 999999),
        dt.time(8, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        dt.timedelta(days=-1, seconds=5, microseconds=7),
        dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC),
        {1, "two", (3, 4)},
        frozenset({"a", "b"}),
        Colour.BLUE,
        BASKET,
    ]
    for value in values:
        back = c.call("echo", value)
        assert back == value and type(back) is type(value), (value, back)
    back = c.call("echo", BASKET)
    assert back.items[0].size == (3, 4) and back.items[0].level is Level.HIGH  # by the annotations
    assert type(back.tags) is frozenset and back.items[0].colour is Colour.BLUE
    # what has no type in msgpack, and no class on the receiver, arrives as plain data
    assert c.call("echo", (1, 2)) == [1, 2]  # a tuple is an array (docs/protocol.md §8)
    assert c.call("echo", Level.HIGH) == 2 and c.call("echo", Unknown(7)) == {"a": 7}


def test_validated_arguments_convert_or_name_the_parameter(c: Caller) -> None:
    plain = {  # what a client in another language sends: maps, arrays, strings
        "id": "12345678-1234-5678-1234-567812345678",
        "items": [{"sku": "widget", "qty": 2, "colour": "blue", "size": [3, 4]}],
        "total": "19.90",
        "tags": ["gift"],
    }
    got = c.call("checkout", plain, coupons=["X1", "Y2"], n=3)
    assert got["kinds"] == ["Basket", "Item"] and got["coupons"] == ["X1", "Y2"]
    assert got["coupons_type"] == "tuple" and got["extra"] == {"n": 3}
    assert got["basket"].items[0] == Item("widget", 2, Colour.BLUE, Level.LOW, (3, 4))
    assert got["basket"].total == decimal.Decimal("19.90") and got["basket"].tags == frozenset({"gift"})
    assert c.call("checkout", BASKET)["basket"] == BASKET  # a Basket is a Basket
    for bad, args, kwargs in [
        (
            {"parameter": "basket", "path": "basket.items[0].qty", "expected": "int", "got": "str"},
            [{**plain, "items": [{"sku": "w", "qty": "2"}]}],
            {},
        ),
        ({"parameter": "basket", "path": "basket", "expected": "Basket", "got": "str"}, ["basket"], {}),
        (
            {"parameter": "coupons", "path": "coupons[1]", "expected": "str", "got": "int"},
            [plain],
            {"coupons": ["ok", 7]},
        ),
        (
            {"parameter": "extra", "path": "extra['n']", "expected": "int", "got": "float"},
            [plain],
            {"n": 1.5},
        ),
    ]:
        with pytest.raises(zcall.InvalidArguments) as info:
            c.call("checkout", *args, **kwargs)
        assert info.value.data == bad
        assert f"bad argument {bad['parameter']!r} for checkout(" in info.value.message
    with pytest.raises(zcall.InvalidArguments) as missing:
        c.call("checkout", {"id": plain["id"], "items": []})
    assert "missing field 'total'" in missing.value.message


# -- what the server would refuse, refused by the client -------------------------------------------


def test_a_message_too_large_is_refused_by_the_server_then_by_the_client(
    face: str, kind: str, service: zcall.Service, loop: LoopThread, bind_endpoint: str
) -> None:
    limit = 64 * 1024
    server = start_server(kind, service, bind_endpoint, codec=zcall.Codec(max_message_size=limit))
    try:
        with caller(face, server.endpoint, loop, timeout=5.0, retries=0) as c:
            big = b"x" * (limit + 1000)
            # the first call: this client does not know the server's limit yet, the server refuses it
            with pytest.raises(zcall.MessageTooLarge) as first:
                c.call("echo", big)
            assert isinstance(first.value, zcall.RemoteError)  # the server said so (id 0, matched by size)
            assert first.value.code is zcall.StatusCode.MESSAGE_TOO_LARGE
            assert first.value.limit == limit and first.value.size > limit
            # from then on the client knows it (the handshake, or that answer) and sends nothing
            with pytest.raises(zcall.MessageTooLarge) as second:
                c.call("echo", big)
            assert not isinstance(second.value, zcall.RemoteError)
            assert (second.value.limit, second.value.size) == (limit, first.value.size)
            assert "not sent" in str(second.value) and str(limit) in str(second.value)
            assert c.call("echo", b"x" * 1000) == b"x" * 1000  # a call under the limit goes
    finally:
        server.stop(0.5)


def test_exceptions_and_types_cross_both_transports(
    face: str, kind: str, service: zcall.Service, loop: LoopThread, bind_endpoint: str
) -> None:
    server = start_server(kind, service, bind_endpoint)
    try:
        with caller(face, server.endpoint, loop, timeout=5.0) as c:
            with pytest.raises(OutOfStock) as info:
                c.call("afail", "stock")
            assert info.value.sku == "widget" and isinstance(info.value, zcall.RemoteError)
            assert c.call("echo", BASKET) == BASKET
            plain = {"id": str(BASKET.id), "items": [], "total": "1"}
            assert c.call("checkout", plain)["kinds"][0] == "Basket"
    finally:
        server.stop(0.5)


def test_a_map_key_that_is_not_a_str_is_a_clear_local_error(c: Caller) -> None:
    for args, kwargs, where in [
        (({1: "a"},), {}, "args[0]"),
        ((), {"counts": {"ok": [{7: 1}]}}, "kwargs['counts']['ok'][0]"),
    ]:
        with pytest.raises(zcall.SerializationError) as info:
            c.call("echo", *args, **kwargs)
        text = str(info.value)
        assert f"a map key at {where} is of type int" in text, text
        assert "str(k)" in text and "strict_map_key=False" in text  # the two ways out
    assert c.call("echo", {"1": "a"}) == {"1": "a"}


# -- timeout is the whole call's budget ------------------------------------------------------------


# These leave their server busy for a while (a REP server would make the next test wait): own servers.


def test_timeout_is_the_budget_of_all_attempts(c_own: Caller) -> None:
    tag = uid("slow")
    t0 = time.monotonic()
    with pytest.raises(zcall.CallTimeout) as info:
        c_own.options(timeout=0.3, retries=2)("sleep", 0.45, tag)
    took = time.monotonic() - t0
    assert 0.25 <= took < 0.3 + 0.35, took  # the budget, not 3 x 0.3 s
    err = info.value
    assert err.attempts == 3  # the 0.3 s were shared: three attempts of about 0.1 s
    assert 0.25 <= err.elapsed <= took


def test_a_short_timeout_alone_times_out_once(c_own: Caller) -> None:
    with pytest.raises(zcall.CallTimeout) as info:
        c_own.options(timeout=0.2, retries=0)("sleep", 0.4, uid("once"))
    assert info.value.attempts == 1


# -- retries and at-most-once ----------------------------------------------------------------------


def test_a_lost_reply_is_resent_and_answered_from_the_reply_cache(
    face: str, servers: list[Any], loop: LoopThread, state: State
) -> None:
    key = uid("once")
    with FaultProxy(servers[0].endpoint) as proxy:
        proxy.drop("replies", match=is_reply)  # the first answer never reaches the caller
        with caller(face, proxy.endpoint, loop, timeout=1.0, retries=1) as c:
            assert c.call("bump", key) == 1  # the resend got the first run's answer ...
            assert c.client().statistics()["attempts"] >= 2
        assert state.counts[key] == 1  # ... and the handler ran once


def test_retries_zero_means_one_attempt_and_a_timeout(
    face: str, servers: list[Any], loop: LoopThread, state: State
) -> None:
    key = uid("zero")
    with FaultProxy(servers[0].endpoint) as proxy:
        proxy.drop("replies", match=is_reply)
        made = caller(face, proxy.endpoint, loop, timeout=0.4, retries=0)
        with made as c, pytest.raises(zcall.CallTimeout):
            c.call("bump", key)
        # the timeout may come before the (loaded) server ran the call: wait for its answer to pass
        proxy.wait_for(lambda s: s["replies"].get("dropped", 0) >= 1)
    assert state.counts[key] == 1


def test_overloaded_is_retried_on_another_attempt_and_succeeds(c: Caller) -> None:
    # OVERLOADED means the call did not run: any method may be retried (here: the same server)
    with pytest.raises(zcall.ServerBusy):
        c.options(retries=0)("refuse", int(zcall.StatusCode.OVERLOADED))
    stats_before = c.client().statistics()["attempts"]
    with pytest.raises(zcall.ServerBusy):
        c.options(retries=2, timeout=2.0)("refuse", int(zcall.StatusCode.OVERLOADED))
    assert c.client().statistics()["attempts"] - stats_before == 3


# -- cancel ----------------------------------------------------------------------------------------


def test_cancel_stops_the_call_on_the_server(face: str, kind: str, c: Caller, state: State) -> None:
    if face not in CANCELLABLE_FACES:
        pytest.skip(f"the {face} face blocks in its call: there is nothing for its caller to cancel")
    if kind == "rep":
        pytest.skip("a REP server runs one call at a time to its end; a CANCEL is acknowledged only")
    tag = uid("cancel")
    fut = c.start("asleep", 5.0, tag)
    assert state.started_event(tag).wait(5)
    assert fut.cancel()
    deadline = time.monotonic() + 5
    while tag not in state.cancelled:
        assert time.monotonic() < deadline, "the server never cancelled the coroutine"
        time.sleep(0.01)
    assert tag not in state.finished
    assert c.call("double", 1) == 2  # the client and server carry on


# -- call context ----------------------------------------------------------------------------------


def test_handlers_see_their_call(c: Caller) -> None:
    for method in ("context", "pool_context", "coro_context"):
        ctx = c.options(timeout=3.0, headers={"trace": "t-1", "n": 2})(method)
        assert ctx["method"] == method
        assert ctx["headers"] == {"trace": "t-1", "n": 2}
        assert 2.0 < ctx["left"] <= 3.0
        assert ctx["address"] == "127.0.0.1"
        assert ctx["caller"] and ctx["id"] > 0
        assert ctx["retry"] is False
    assert c.options(retries=1)("context")["retry"] is True  # the caller said it may resend


def test_outside_a_handler_there_is_no_current_call() -> None:
    assert zcall.current_call() is None


# -- deadline inheritance --------------------------------------------------------------------------


def test_a_nested_chain_inherits_what_is_left_of_the_deadline(
    face: str, c: Caller, servers: list[Any]
) -> None:
    hops = [servers[1].endpoint, servers[2].endpoint]
    for nested in ("sync", "callback"):
        left = c.options(timeout=1.5)("relay", nested, hops)
        assert 0 < left <= 1.5, (nested, left)  # not the hops' own 30 s
        assert c.options(timeout=1.5)("relay", nested, hops, False) > 25  # unless the caller says otherwise
    left = c.options(timeout=1.5)("arelay", hops)
    assert 0 < left <= 1.5


def test_a_handler_past_its_deadline_cannot_start_a_nested_call(
    c_own: Caller, servers: list[Any], state: State
) -> None:
    tag = uid("late")
    with pytest.raises(zcall.CallTimeout):
        c_own.options(timeout=0.2, retries=0)("late_relay", 0.4, servers[1].endpoint, tag)
    deadline = time.monotonic() + 5
    while tag not in state.late:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert state.late[tag].startswith("not sent"), state.late[tag]
    assert tag not in state.counts


# -- interceptors ----------------------------------------------------------------------------------


class Tagger(zcall.ClientInterceptor):
    """Adds a header to every call, stamps results, and turns PermissionDenied into PermissionError."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.ended: list[tuple[str, str]] = []

    def on_call(self, call: zcall.OutgoingCall) -> None:
        assert call.headers is not None
        call.headers["x-client"] = "tagger"
        self.calls.append(call.method)

    def on_reply(self, call: zcall.OutgoingCall, result: Any) -> Any:
        self.ended.append((call.method, "ok"))
        return result

    def on_error(self, call: zcall.OutgoingCall, error: BaseException) -> BaseException:
        self.ended.append((call.method, type(error).__name__))
        if isinstance(error, zcall.PermissionDenied):
            return PermissionError(error.message)
        return error


def test_interceptors_on_both_sides_of_every_pair(
    face: str, servers: list[Any], loop: LoopThread, state: State
) -> None:
    tagger = Tagger()
    with caller(face, servers[0].endpoint, loop, timeout=5.0, interceptors=[tagger]) as c:
        ctx = c.call("context")
        assert ctx["headers"]["x-client"] == "tagger"  # the client hook added it, the server saw it
        # the server interceptor refuses with a status code, which the client hook translates
        with pytest.raises(PermissionError, match="denied by x-deny"):
            c.options(headers={"x-deny": 1})("double", 1)
        # the server interceptor translates a handler's error into another status
        with pytest.raises(zcall.InvalidArguments, match="no such key"):
            c.options(headers={"x-translate": 1})("lookup", "zz")
        assert c.options(headers={"x-stamp": 1})("double", 4) == {"stamped": 8, "by": "server"}
    assert tagger.calls == ["context", "double", "lookup", "double"]
    assert tagger.ended == [
        ("context", "ok"),
        ("double", "PermissionDenied"),
        ("lookup", "InvalidArguments"),
        ("double", "ok"),
    ]
    with state.lock:
        mine = [s for s in state.seen if s["headers"].get("x-client") == "tagger"]
    assert [(s["method"], s["outcome"]) for s in mine[-4:]] == [
        ("context", "ok"),
        ("double", "Rejected"),
        ("lookup", "KeyError"),
        ("double", "ok"),
    ]
    assert all(s["took"] >= 0 and s["caller"] for s in mine)


# -- graceful stop ---------------------------------------------------------------------------------


def test_graceful_stop_finishes_calls_within_grace_and_refuses_the_rest(
    face: str, kind: str, own_server: Any, loop: LoopThread, state: State
) -> None:
    quick, slow = uid("quick"), uid("slow")
    handler = "asleep" if face in ASYNC_FACES and kind != "rep" else "sleep"
    with caller(face, own_server.endpoint, loop, timeout=10.0, retries=0) as c:
        results: dict[str, Any] = {}

        def run(tag: str, seconds: float) -> None:
            try:
                results[tag] = c.call(handler, seconds, tag)
            except BaseException as exc:
                results[tag] = exc

        first = threading.Thread(target=run, args=(quick, 0.4))
        first.start()
        assert state.started_event(quick).wait(5)
        t0 = time.monotonic()
        own_server.stop(3.0)  # the running call finishes within grace: its caller gets the result
        first.join(10)
        assert results[quick] == quick
        assert time.monotonic() - t0 < 2.5
    server = start_server(kind, state_service(own_server))
    try:
        with caller(face, server.endpoint, loop, timeout=10.0, retries=0) as c:
            second = threading.Thread(target=run, args=(slow, 5.0))
            second.start()
            assert state.started_event(slow).wait(5)
            t0 = time.monotonic()
            server.stop(0.3)  # grace ends first: its caller is told UNAVAILABLE, promptly
            second.join(10)
            assert isinstance(results[slow], zcall.ServerBusy), results[slow]
            assert results[slow].code is zcall.StatusCode.UNAVAILABLE
            assert time.monotonic() - t0 < 2.0
    finally:
        server.stop(0.1)


def state_service(server: Any) -> zcall.Service:
    return server.service  # type: ignore[no-any-return]


# -- streams ---------------------------------------------------------------------------------------


def test_a_stream_gives_its_items_in_order_then_its_result(c: Caller) -> None:
    s = c.stream("count", 5)
    assert list(s) == [0, 1, 2, 3, 4] and s.result == 5  # a plain generator (pool): its return value
    s = c.stream("icount", 100)
    assert list(s) == list(range(100)) and s.result == 100  # inline, more items than one window
    assert list(c.stream("acount", 40)) == list(range(40))  # an async generator
    s = c.stream("double", 21)  # a plain method opened as a stream: no items, its result
    assert list(s) == [] and s.result == 42


def test_a_streaming_method_called_plainly_is_refused_with_a_hint(c: Caller) -> None:
    with pytest.raises(zcall.InvalidArguments) as info:
        c.call("count", 3)
    assert info.value.data == {"stream": True} and "stream()" in info.value.message


def test_a_producer_that_raises_ends_the_stream_after_its_items_with_a_calls_error(c: Caller) -> None:
    got: list[int] = []
    with pytest.raises(zcall.RemoteError) as info:
        for x in c.stream("fail_after", 3, "kaput"):
            got.append(x)
    assert got == [0, 1, 2]  # what was delivered before the error, all of it
    err = info.value
    assert isinstance(err, ValueError) and err.code is zcall.StatusCode.HANDLER_ERROR  # as a call's: rebuilt
    assert err.type == "ValueError" and err.message == "kaput" and err.args == ("kaput",)
    assert err.traceback is not None and "ValueError: kaput" in err.traceback


def test_a_consumer_that_stops_stops_the_producer_and_its_finally_runs(c: Caller, state: State) -> None:
    for method in ("forever", "aforever"):
        tag = uid(method)
        s = c.stream(method, tag)
        assert s.take(3) == [0, 1, 2]
        s.close()
        assert state.closed_event(tag).wait(10), f"{method}: the server's finally: never ran"
    tag = uid("break")
    for x in c.stream("forever", tag):  # dropped after the break (CPython frees it: it is closed)
        if x == 2:
            break
    # well before the call's 5 s deadline, which would stop it anyway: leaving the loop is what stopped it
    assert state.closed_event(tag).wait(2.5), "a stream left by `break` ran on until its deadline"
    assert c.call("double", 2) == 4  # the client and the server carry on


def test_cancelling_the_consumer_stops_the_stream(
    face: str, c: Caller, loop: LoopThread, state: State
) -> None:
    if face not in CANCELLABLE_FACES:
        pytest.skip(f"the {face} face blocks in its iteration: it stops with close() or a break (above)")
    tag = uid("cancel")
    if face == "callback":
        s = c.stream("forever", tag)
        assert s.take(2) == [0, 1]
        assert s.future.cancel()  # type: ignore[attr-defined]
    else:
        it = c.stream("forever", tag)._it  # type: ignore[attr-defined]

        async def consume() -> None:
            async with it:
                async for _ in it:
                    pass

        fut = loop.submit(consume())
        assert state.started_event(tag).wait(5)
        fut.cancel()  # the task iterating is cancelled: leaving its async with closes the stream
    assert state.closed_event(tag).wait(10)


def test_the_deadline_covers_the_whole_stream(c_own: Caller, state: State) -> None:
    tag = uid("ticks")
    got: list[int] = []
    t0 = time.monotonic()
    with pytest.raises(zcall.CallTimeout):
        for x in c_own.stream("ticks", 100, 0.05, tag, _opts={"timeout": 0.3}):
            got.append(x)
    took = time.monotonic() - t0
    assert 0.25 <= took < 1.3, took  # the stream's budget, whatever each item took
    assert 2 <= len(got) <= 7, got
    assert state.closed_event(tag).wait(5), "the server's generator was not stopped at the deadline"


def test_a_slow_consumer_holds_the_producer_to_its_window(c: Caller, state: State) -> None:
    tag = uid("window")
    s = c.stream("forever", tag, _opts={"window": 4})
    assert s.take(3) == [0, 1, 2]
    deadline = time.monotonic() + 5
    while state.made.get(tag, 0) < 4:  # the producer fills the window ...
        assert time.monotonic() < deadline, state.made.get(tag)
        time.sleep(0.005)
    time.sleep(0.3)  # ... and would run further now if anything let it
    assert state.made[tag] <= 3 + 4 + 1, state.made[tag]
    assert s.take(5) == [3, 4, 5, 6, 7]  # and it goes on as the consumer takes
    s.close()
    assert state.closed_event(tag).wait(10)


def test_client_streams_and_bidirectional_streams(face: str, kind: str, c: Caller) -> None:
    if face == "sync":
        with pytest.raises(TypeError, match="REQ"):  # one request, one reply: no items to send
            c.stream("total", iter(range(3)))
        return
    if kind == "rep":
        with pytest.raises(zcall.StreamsUnsupported, match="takes no items"):
            list(c.stream("total", iter(range(3))))
        return
    s = c.stream("total", iter(range(100)))  # more items than the server's window: credit flows back
    assert list(s) == [] and s.result == 4950
    s = c.stream("atotal", (x for x in range(10)))
    assert list(s) == [] and s.result == 45
    s = c.stream("double_each", iter(range(50)))
    assert list(s) == [2 * x for x in range(50)] and s.result == "done"

    async def numbers() -> AsyncIterator[int]:
        for i in range(20):
            await asyncio.sleep(0)
            yield i

    assert list(c.stream("adouble_each", numbers())) == [2 * x for x in range(20)]
    with pytest.raises(ZeroDivisionError):  # the caller's own iterator fails: the stream ends with it
        list(c.stream("total", (1 // x for x in (1, 0))))
    assert c.call("double", 3) == 6


def test_streams_go_through_interceptors_context_and_metrics(
    face: str, servers: list[Any], loop: LoopThread, state: State
) -> None:
    tagger = Tagger()
    with caller(face, servers[0].endpoint, loop, timeout=5.0, interceptors=[tagger]) as c:
        (ctx,) = list(c.stream("stream_context", _opts={"timeout": 3.0, "headers": {"trace": "t"}}))
        assert ctx["method"] == "stream_context" and ctx["headers"] == {"trace": "t", "x-client": "tagger"}
        assert 2.0 < ctx["left"] <= 3.0  # the stream's budget, as a handler sees it
        with pytest.raises(PermissionError, match="denied by x-deny"):
            list(c.stream("count", 2, _opts={"headers": {"x-deny": 1}}))
        assert list(c.stream("count", 3)) == [0, 1, 2]
        assert tagger.ended[-3:] == [("stream_context", "ok"), ("count", "PermissionDenied"), ("count", "ok")]
        row = c.stream_client().statistics()["methods"]["count"]
        assert row["stream"]["items_received"] >= 3 and row["stream"]["open"] == 0
        served = c.call("zcall.stats")["methods"]["count"]["stream"]
        assert served["items_sent"] >= 3 and served["bytes_sent"] > 0
    with state.lock:
        mine = [(x["method"], x["outcome"]) for x in state.seen if x["headers"].get("x-client") == "tagger"]
    assert ("count", "ok") in mine and ("stream_context", "ok") in mine


def test_graceful_stop_ends_open_streams_with_unavailable(
    face: str, kind: str, own_server: Any, loop: LoopThread, state: State
) -> None:
    tag = uid("stop")
    with caller(face, own_server.endpoint, loop, timeout=10.0) as c:
        s = c.stream("forever", tag, _opts={"window": 2})
        assert s.take(2) == [0, 1]
        t0 = time.monotonic()
        own_server.stop(0.3)  # the stream outlives the grace period
        with pytest.raises((zcall.ServerBusy, zcall.ConnectionLost)) as info:
            for _ in s:
                pass
        pulled = face == "sync" or kind == "rep"  # a pull finds the server gone, or is answered so
        if not pulled:
            assert isinstance(info.value, zcall.ServerBusy)
        if isinstance(info.value, zcall.ServerBusy):
            assert info.value.code is zcall.StatusCode.UNAVAILABLE
        assert time.monotonic() - t0 < 5
    assert state.closed_event(tag).wait(5)
