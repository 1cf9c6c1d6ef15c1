"""Synchronous calls over real sockets (tcp and ipc): results, arguments, remote errors, per-call options."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import zmq

import zcall
from zcall.protocol.wire import Call, Reply, decode, encode


@pytest.fixture
def client(server: zcall.SyncServer) -> Iterator[zcall.SyncClient]:
    with zcall.SyncClient(server.endpoint, timeout=5.0) as c:
        yield c


def test_result_comes_back(client: zcall.SyncClient) -> None:
    assert client.call("double", 21) == 42
    assert client.call("double", -4) == -8
    value = {"list": [1, 2.5, "x", None, True], "bytes": b"\x00\xff", "nested": {"k": [[]]}}
    assert client.call("echo", value) == value


def test_keyword_and_default_arguments_bind_as_in_python(client: zcall.SyncClient) -> None:
    assert client.call("describe", 2) == {"a": 2, "b": 0, "scale": 1, "extra": {}, "total": 2}
    assert client.call("describe", 2, 3, scale=10) == {"a": 2, "b": 3, "scale": 10, "extra": {}, "total": 50}
    got = client.call("describe", a=1, b=1, colour="red")
    assert got == {"a": 1, "b": 1, "scale": 1, "extra": {"colour": "red"}, "total": 2}


def test_handler_exception_becomes_remote_error_with_details(client: zcall.SyncClient) -> None:
    with pytest.raises(zcall.RemoteError) as info:
        client.call("boom", "kaput 123")
    err = info.value
    assert isinstance(err, ValueError) and err.args == ("kaput 123",)  # a builtin comes back as itself
    assert type(err.remote) is zcall.RemoteError  # ... and the record beside it
    assert err.code is zcall.StatusCode.HANDLER_ERROR
    assert err.type == "ValueError"
    assert err.message == "kaput 123"
    assert err.method == "boom"
    assert err.traceback is not None
    assert "ValueError: kaput 123" in err.traceback
    assert "services.py" in err.traceback and "in boom" in err.traceback
    assert str(err) == "kaput 123"  # as the ValueError printed it
    assert "boom" in str(err.remote) and "HANDLER_ERROR" in str(err.remote)
    assert client.call("double", 1) == 2  # the server keeps serving


def test_unknown_method_is_method_not_found_with_a_hint(client: zcall.SyncClient) -> None:
    with pytest.raises(zcall.MethodNotFound) as info:
        client.call("doubel", 1)
    err = info.value
    assert err.code is zcall.StatusCode.METHOD_NOT_FOUND
    assert "'doubel'" in err.message
    assert "did you mean 'double'" in err.message
    with pytest.raises(zcall.MethodNotFound) as info:
        client.call("_private")
    assert "did you mean" not in info.value.message


@pytest.mark.parametrize(
    ("method", "args", "kwargs"),
    [
        ("double", (), {}),
        ("incr", (1, 2), {}),
        ("incr", (), {"m": 1}),
        ("incr", (1,), {"n": 1}),
    ],
    ids=["missing", "too-many", "unknown-keyword", "duplicate"],
)
def test_arguments_that_do_not_bind_are_invalid_arguments(
    client: zcall.SyncClient, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    before = client.call("incr", 0)
    with pytest.raises(zcall.InvalidArguments) as info:
        client.call(method, *args, **kwargs)
    err = info.value
    assert err.code is zcall.StatusCode.INVALID_ARGUMENTS
    assert f"bad arguments for {method}(" in err.message
    assert client.call("incr", 0) == before  # refused before the handler ran: no side effect


def test_coroutine_handler(client: zcall.SyncClient) -> None:
    assert client.call("adouble", 5) == 10
    assert client.call("adouble", x=7) == 14  # the server's event loop is reused


def test_builtin_ping_and_methods(client: zcall.SyncClient, server: zcall.SyncServer) -> None:
    pong = client.call("zcall.ping")
    assert pong["service"] == "testsvc"
    assert pong["pid"] == os.getpid()  # served by the in-thread server
    assert pong["uptime"] >= 0
    methods = {m["name"]: m for m in client.call("zcall.methods")}
    assert {"double", "echo", "slow", "boom", "incr", "adouble", "zcall.ping", "zcall.methods"} <= set(
        methods
    )
    # services.py uses postponed annotations, so they show as strings: "(x: 'int') -> 'int'"
    assert methods["double"]["signature"].replace("'", "") == "(x: int) -> int"
    assert methods["double"]["doc"] == "Return twice x."
    assert methods["adouble"]["coroutine"] is True


def test_options_view_changes_timeout_only_for_calls_through_it(client: zcall.SyncClient) -> None:
    quick = client.options(timeout=0.05)
    with pytest.raises(zcall.CallTimeout) as info:
        quick.call("slow", 0.3, "too slow")
    assert info.value.attempts == 1
    assert info.value.elapsed < 0.25
    # the client itself keeps its 5 s timeout: this waits out the slow call still running server-side
    assert client.call("slow", 0.01, "fine") == "fine"
    assert client.timeout == 5.0


@pytest.mark.parametrize("bad", [{"timeout": 0}, {"timeout": -1.0}, {"retries": -1}])
def test_options_refuses_nonsense(client: zcall.SyncClient, bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        client.options(**bad)


# -- what goes on the wire, seen by a raw REP socket -----------------------------------------------


@contextmanager
def raw_rep(answer: Callable[[bytes], bytes], n: int) -> Iterator[tuple[str, list[bytes]]]:
    """A bare zmq REP socket on a thread answering ``n`` requests with ``answer(frame)``; yields
    (endpoint, frames received). The socket lives and dies in its own thread."""
    bound = threading.Event()
    endpoint: list[str] = []
    seen: list[bytes] = []
    errors: list[BaseException] = []

    def run() -> None:
        sock = zmq.Context.instance().socket(zmq.REP)
        try:
            sock.bind("tcp://127.0.0.1:*")
            sock.rcvtimeo = 5000
            endpoint.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
            bound.set()
            for _ in range(n):
                frame = sock.recv()
                seen.append(frame)
                sock.send(answer(frame))
        except BaseException as exc:
            errors.append(exc)
        finally:
            bound.set()
            sock.close(linger=1000)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    bound.wait(5)
    yield endpoint[0], seen
    t.join(5)
    assert not t.is_alive()
    assert not errors, errors


def test_options_headers_and_deadline_travel_with_the_call() -> None:
    def answer(frame: bytes) -> bytes:
        msg = decode(frame)
        assert isinstance(msg, Call)
        return encode(Reply(msg.id, "ok"))

    with raw_rep(answer, 2) as (ep, seen), zcall.SyncClient(ep, timeout=3.0) as client:
        assert client.options(timeout=1.5, headers={"trace": "abc", "n": 1}).call("m", 1, k=2) == "ok"
        assert client.call("m") == "ok"
    first, second = (decode(f) for f in seen)
    assert isinstance(first, Call) and isinstance(second, Call)
    assert (first.method, first.args, first.kwargs) == ("m", [1], {"k": 2})
    assert first.headers == {"trace": "abc", "n": 1}
    assert 1400 <= first.deadline_ms <= 1500  # what was left of the 1.5 s budget when it was sent
    assert second.headers is None  # the view did not change the client
    assert 2900 <= second.deadline_ms <= 3000
    assert first.id != second.id


def test_reply_with_another_id_is_never_returned() -> None:
    """A reply whose id is not the request's is dropped and counted; a retry gets the real one."""
    calls = 0

    def answer(frame: bytes) -> bytes:
        nonlocal calls
        calls += 1
        msg = decode(frame)
        return encode(Reply(msg.id + 1 if calls == 1 else msg.id, "stale" if calls == 1 else "fresh"))

    with raw_rep(answer, 2) as (ep, seen), zcall.SyncClient(ep, timeout=2.0, retries=1) as client:
        assert client.call("m") == "fresh"
        assert client.counters["stale_replies"] == 1
        assert client.counters["attempts"] == 2
    assert decode(seen[0]).id == decode(seen[1]).id  # a retry resends the same request id
