"""docs/protocol.md against live servers and clients: the rules a vector cannot pin (what a server answers,
in which order it refuses, how events are numbered, what clients send and raise)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

import zcall
from zcall.errors import PermissionDenied
from zcall.protocol.status import StatusCode
from zcall.protocol.wire import Call, ErrorReply, Event, Message, Reply, decode
from zcall.testing import running_server

pytestmark = pytest.mark.timeout(30)


CALL, NOTIFY, PING = 1, 4, 6
GATE = threading.Event()  # hold() waits on it: a call kept in flight
NOTES: list[str] = []

svc = zcall.Service("spec")


@svc.method(inline=True)
def add(a: int, b: int) -> int:
    return a + b


@svc.method
def hold() -> str:
    GATE.wait(10)
    return "held"


@svc.method(inline=True)
def note(text: str) -> None:
    NOTES.append(text)


@svc.method(inline=True)
def notes() -> list[str]:
    return list(NOTES)


@svc.method
def relay(endpoint: str) -> Any:
    """Make a nested call, with a long timeout of its own, to ``endpoint``."""
    with zcall.SyncClient(endpoint, timeout=30.0) as c:
        return c.call("anything")


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    GATE.clear()
    NOTES.clear()
    yield
    GATE.set()  # never leave a pool thread waiting


def body(kind: int, id_: int, method: str, args: list[Any], meta: dict[str, Any] | None = None) -> bytes:
    return msgpack.packb([1, kind, id_, method, args, {}, meta or {}])


class Raw:
    """A raw socket on a server: DEALER (``send`` adds the delimiter) or REQ."""

    def __init__(self, kind: int, endpoint: str) -> None:
        self.kind = kind
        self.sock = zmq.Context.instance().socket(kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 5000)
        self.sock.connect(endpoint)

    def send(self, frame: bytes) -> None:
        if self.kind == zmq.DEALER:
            self.sock.send_multipart([b"", frame])
        else:
            self.sock.send(frame)

    def recv_frames(self) -> list[bytes]:
        return self.sock.recv_multipart()

    def recv_body(self) -> bytes:
        return self.recv_frames()[-1]

    def recv(self) -> Message:
        return decode(self.recv_body())

    def ask(self, frame: bytes) -> Message:
        self.send(frame)
        return self.recv()

    def synced(self) -> None:
        """PING and wait for its PONG: everything sent before it has been handled (ROUTER is in order)."""
        assert self.ask(msgpack.packb([1, PING, 999])).id == 999

    def close(self) -> None:
        self.sock.close(linger=0)


@contextlib.contextmanager
def raw(kind: int, endpoint: str) -> Iterator[Raw]:
    r = Raw(kind, endpoint)
    try:
        yield r
    finally:
        r.close()


@contextlib.contextmanager
def served(kind: str, **kwargs: Any) -> Iterator[Any]:
    with running_server(svc, kind=kind, **kwargs) as srv:
        yield srv


def client_socket(server_kind: str) -> int:
    return zmq.DEALER if server_kind == "async" else zmq.REQ


def code_of(msg: Message) -> StatusCode:
    assert isinstance(msg, ErrorReply), msg
    return msg.error.code


@contextlib.contextmanager
def raw_router(answer: Callable[[bytes], list[bytes]]) -> Iterator[tuple[str, list[bytes]]]:
    """A bare ROUTER "server" on a thread: records every request body, and sends each body of
    ``answer(body)`` back on the request's envelope."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    seen: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if not sock.poll(50):
                continue
            frames = sock.recv_multipart()
            seen.append(frames[-1])
            for reply in answer(frames[-1]):
                sock.send_multipart([*frames[:-1], reply])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"tcp://127.0.0.1:{port}", seen
    finally:
        stop.set()
        t.join(5)
        sock.close(linger=0)


def reply_to(frame: bytes, result: Any = "ok") -> list[bytes]:
    return [msgpack.packb([1, 2, msgpack.unpackb(frame)[2], result])]


def error_to(frame: bytes, code: int) -> list[bytes]:
    rec = {"code": code, "type": "x", "message": "m", "traceback": None, "data": None}
    return [msgpack.packb([1, 3, msgpack.unpackb(frame)[2], rec])]


# -- section 1: empty bodies and framing ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_server_answers_an_empty_body_with_protocol_error_id_0(kind: str) -> None:
    with served(kind) as srv, raw(client_socket(kind), srv.endpoint) as c:
        msg = c.ask(b"")
        assert msg.id == 0 and code_of(msg) == StatusCode.PROTOCOL_ERROR


@pytest.mark.parametrize("frames", [[msgpack.packb([1, PING, 5])], [b"", b"\x93\x01", b"\x06\x05"]])
def test_a_router_server_answers_bad_framing_on_identity_and_delimiter(frames: list[bytes]) -> None:
    with served("async") as srv, raw(zmq.DEALER, srv.endpoint) as c:
        c.sock.send_multipart(frames)
        got = c.recv_frames()
        assert len(got) == 2 and got[0] == b"", "[identity, '', body] reaches a DEALER as ['', body]"
        msg = decode(got[1])
        assert msg.id == 0 and code_of(msg) == StatusCode.PROTOCOL_ERROR


def test_a_client_ignores_an_empty_body() -> None:
    answer = lambda f: [b"", *reply_to(f, 42)]  # noqa: E731 - an empty body, then the reply
    with raw_router(answer) as (ep, seen), zcall.AsyncClient(ep, timeout=5.0) as c:
        assert c.call_async("anything").result(5) == 42
    assert len(seen) == 1


# -- section 7: the order of refusal checks ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_lookup_and_binding_come_before_the_deadline_check(kind: str) -> None:
    with served(kind) as srv, raw(client_socket(kind), srv.endpoint) as c:
        assert code_of(c.ask(body(CALL, 1, "nosuch", [], {"deadline": 0}))) == StatusCode.METHOD_NOT_FOUND
        assert code_of(c.ask(body(CALL, 2, "add", [1], {"deadline": 0}))) == StatusCode.INVALID_ARGUMENTS
        assert code_of(c.ask(body(CALL, 3, "add", [1, 2], {"deadline": 0}))) == StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_kept_reply_answers_a_resend_whose_deadline_is_0(kind: str) -> None:
    with served(kind) as srv, raw(client_socket(kind), srv.endpoint) as c:
        first = c.ask(body(CALL, 7, "add", [1, 2], {"retry": True}))
        assert isinstance(first, Reply) and first.result == 3
        again = c.ask(body(CALL, 7, "add", [1, 2], {"deadline": 0, "retry": True}))
        assert isinstance(again, Reply) and again.result == 3


@contextlib.contextmanager
def at_the_limit() -> Iterator[tuple[Any, Raw]]:
    """A ROUTER server with max_in_flight=1, a reply kept for call 7, and call 8 holding the one slot."""
    with served("async", max_in_flight=1) as srv, raw(zmq.DEALER, srv.endpoint) as c:
        kept = c.ask(body(CALL, 7, "add", [1, 2], {"retry": True}))
        assert isinstance(kept, Reply)
        c.send(body(CALL, 8, "hold", []))
        busy = c.ask(body(CALL, 9, "add", [1, 2]))  # handled after call 8 started: in order
        assert code_of(busy) == StatusCode.OVERLOADED
        yield srv, c
        GATE.set()
        assert c.recv().id == 8


def test_the_deadline_check_comes_before_the_in_flight_limit() -> None:
    with at_the_limit() as (_srv, c):
        assert code_of(c.ask(body(CALL, 10, "add", [1, 2], {"deadline": 0}))) == StatusCode.DEADLINE_EXCEEDED


def test_a_kept_reply_answers_a_resend_at_the_in_flight_limit() -> None:
    with at_the_limit() as (_srv, c):
        again = c.ask(body(CALL, 7, "add", [1, 2], {"retry": True}))
        assert isinstance(again, Reply) and again.result == 3


@contextlib.contextmanager
def stopping() -> Iterator[Raw]:
    """A ROUTER server in its graceful stop (call 8 holds it open), a reply kept for call 7."""
    with served("async") as srv, raw(zmq.DEALER, srv.endpoint) as c:
        kept = c.ask(body(CALL, 7, "add", [1, 2], {"retry": True}))
        assert isinstance(kept, Reply)
        c.send(body(CALL, 8, "hold", []))
        c.synced()
        stopper = threading.Thread(target=srv.stop, args=(10.0,), daemon=True)
        stopper.start()
        rid, give_up = 100, time.monotonic() + 10
        while True:  # until the stop has begun: a plain call is then refused
            msg = c.ask(body(CALL, rid, "add", [1, 2]))
            if isinstance(msg, ErrorReply):
                assert msg.error.code == StatusCode.UNAVAILABLE
                break
            assert time.monotonic() < give_up, "the server never started stopping"
            rid += 1
            time.sleep(0.02)
        try:
            yield c
        finally:
            GATE.set()
            stopper.join(15)


def test_stopping_comes_before_the_deadline_check() -> None:
    with stopping() as c:
        assert code_of(c.ask(body(CALL, 10, "add", [1, 2], {"deadline": 0}))) == StatusCode.UNAVAILABLE


def test_a_kept_reply_answers_a_resend_while_stopping() -> None:
    with stopping() as c:
        again = c.ask(body(CALL, 7, "add", [1, 2], {"retry": True}))
        assert isinstance(again, Reply) and again.result == 3


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_notify_whose_deadline_is_0_is_not_run(kind: str) -> None:
    with served(kind) as srv, raw(client_socket(kind), srv.endpoint) as c:
        for text, meta in (("expired", {"deadline": 0}), ("fine", {"deadline": 5000})):
            c.send(body(NOTIFY, 1, "note", [text], meta))
            if kind == "sync":
                assert c.recv_body() == b"", "REP still ACKs"
        done = c.ask(body(CALL, 2, "notes", []))
        assert isinstance(done, Reply) and done.result == ["fine"]


# -- section 7: events ---------------------------------------------------------------------------------


def subscribe(c: Raw, patterns: list[str]) -> None:
    c.send(body(NOTIFY, 1, "zcall.subscribe", [patterns]))
    c.synced()


def next_event(c: Raw) -> Event:
    msg = c.recv()
    assert isinstance(msg, Event), msg
    return msg


def test_resubscribing_keeps_the_numbering_and_a_new_connection_starts_at_1() -> None:
    with served("async") as srv, raw(zmq.DEALER, srv.endpoint) as c:
        subscribe(c, ["t.*"])
        srv.publish("t.a", 1)
        srv.publish("t.b", 2)
        assert [(e.id, e.payload) for e in (next_event(c), next_event(c))] == [(1, 1), (2, 2)]
        subscribe(c, ["t.b"])  # replaces the patterns, keeps the counter
        srv.publish("t.a", 3)
        srv.publish("t.b", 4)
        e = next_event(c)
        assert (e.id, e.payload) == (3, 4)
        with raw(zmq.DEALER, srv.endpoint) as d:
            subscribe(d, ["t.b"])
            srv.publish("t.b", 5)
            assert (next_event(c).id, next_event(d).id) == (4, 1)


def test_unsubscribing_forgets_the_counter() -> None:
    with served("async") as srv, raw(zmq.DEALER, srv.endpoint) as c:
        subscribe(c, ["t"])
        srv.publish("t", 1)
        assert next_event(c).id == 1
        subscribe(c, [])
        subscribe(c, ["t"])
        srv.publish("t", 2)
        assert next_event(c).id == 1


def test_a_rep_server_acks_zcall_subscribe() -> None:
    with served("sync") as srv, raw(zmq.REQ, srv.endpoint) as c:
        c.send(body(NOTIFY, 1, "zcall.subscribe", [["*"]]))
        assert c.recv_body() == b""


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_zcall_subscribe_as_a_call_is_answered_with_the_patterns_kept(kind: str) -> None:
    """The acknowledged form (§7): a ROUTER server keeps the str patterns it was sent, bounded, and says
    which, after it has them; a REP server keeps none (it cannot push)."""
    with served(kind) as srv, raw(client_socket(kind), srv.endpoint) as c:
        answer = c.ask(body(CALL, 1, "zcall.subscribe", [["t.*", 7, "x" * 300, "u"]]))
        assert isinstance(answer, Reply) and answer.id == 1
        assert answer.result == (["t.*", "u"] if kind == "async" else [])
        if kind == "async":
            srv.publish("t.1", 1)  # published after the answer: delivered
            assert next_event(c).topic == "t.1"
        gone = c.ask(body(CALL, 2, "zcall.subscribe", [[]]))
        assert isinstance(gone, Reply) and gone.result == []


# -- section 5: status codes and what clients raise ----------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_method_not_found_lists_close_matches_in_data(kind: str) -> None:
    with served(kind) as srv, raw(client_socket(kind), srv.endpoint) as c:
        near = c.ask(body(CALL, 1, "ad", [1, 2]))
        assert code_of(near) == StatusCode.METHOD_NOT_FOUND
        close = near.error.data["close"]  # type: ignore[union-attr]
        assert "add" in close and len(close) <= 3 and all(type(n) is str for n in close)
        private = c.ask(body(CALL, 2, "_add", [1, 2]))
        assert private.error.data == {"close": []}  # type: ignore[union-attr]


def test_permission_denied_is_code_12_and_a_remote_error() -> None:
    assert StatusCode(12).name == "PERMISSION_DENIED"
    assert issubclass(PermissionDenied, zcall.RemoteError)
    assert type(zcall.RemoteError.from_record({"code": 12, "message": "no"})) is PermissionDenied


def test_zcall_exports_permission_denied() -> None:
    assert getattr(zcall, "PermissionDenied", None) is PermissionDenied
    assert "PermissionDenied" in zcall.__all__


def test_deadline_exceeded_is_a_remote_error_and_a_call_timeout() -> None:
    assert issubclass(zcall.DeadlineExceeded, zcall.RemoteError)
    assert issubclass(zcall.DeadlineExceeded, zcall.CallTimeout)
    assert type(zcall.RemoteError.from_record({"code": 6, "message": "late"})) is zcall.DeadlineExceeded


def test_both_clients_raise_deadline_exceeded_for_code_6() -> None:
    with raw_router(lambda f: error_to(f, int(StatusCode.DEADLINE_EXCEEDED))) as (ep, _seen):
        with zcall.SyncClient(ep, timeout=5.0) as s, pytest.raises(zcall.DeadlineExceeded):
            s.call("anything")
        with zcall.AsyncClient(ep, timeout=5.0) as a, pytest.raises(zcall.DeadlineExceeded):
            a.call_async("anything").result(5)


# -- section 4: deadlines and resends ------------------------------------------------------------------


def test_a_resend_carries_the_same_call_and_the_remaining_budget() -> None:
    def answer(frame: bytes) -> list[bytes]:
        attempts.append(decode(frame))
        return reply_to(frame) if len(attempts) >= 2 else []  # the first attempt's reply is "lost"

    attempts: list[Message] = []
    with raw_router(answer) as (ep, _seen), zcall.SyncClient(ep, timeout=3.0, retries=2) as c:
        assert c.call("work", 1, x=2) == "ok"
    first, second = attempts[0], attempts[1]
    assert isinstance(first, Call) and isinstance(second, Call)
    assert (second.id, second.method, second.args, second.kwargs) == (first.id, "work", [1], {"x": 2})
    assert first.retry and second.retry, "retry = true on every attempt, the first included"
    assert first.deadline_ms is not None and second.deadline_ms is not None
    assert first.deadline_ms <= 3000 and second.deadline_ms < first.deadline_ms


def test_a_nested_call_inherits_the_remaining_deadline() -> None:
    with (
        raw_router(reply_to) as (inner, seen),
        served("sync") as srv,
        zcall.SyncClient(srv.endpoint, timeout=2.0) as c,
    ):
        assert c.call("relay", inner) == "ok"
    nested = decode(seen[0])
    assert isinstance(nested, Call) and nested.deadline_ms is not None
    assert nested.deadline_ms <= 2000, "the smaller of its own 30 s and the caller's 2 s"
