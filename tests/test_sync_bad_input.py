"""Bad input to a REP server over a real socket: each gets an ERROR reply with the right status code
(and the request's id when it could be read), and the server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import zcall
from zcall.protocol.wire import ErrorReply, Kind, Pong, Reply, decode
from zcall.testing import running_server

MAX = 4096
P = zcall.StatusCode.PROTOCOL_ERROR


def pack(obj: object) -> bytes:
    return msgpack.packb(obj)


def call(id_: int, method: str = "double", args: object = (1,)) -> list[object]:
    return [1, int(Kind.CALL), id_, method, list(args) if isinstance(args, tuple) else args, {}, {}]


# (name, frames, expected code, expected id in the error reply)
CASES: list[tuple[str, list[bytes], zcall.StatusCode, int]] = [
    ("garbage", [b"\xc1\xc1 not msgpack at all"], P, 0),
    ("empty", [b""], P, 0),
    ("truncated", [pack(call(11))[:-4]], P, 0),
    ("trailing-bytes", [pack(call(12)) + b"\x00"], P, 0),
    ("not-an-array", [pack({"version": 1, "kind": 1})], P, 0),
    ("short-array", [pack([1, 1])], P, 0),
    (
        "wrong-version",
        [pack([99, int(Kind.CALL), 13, "double", [1], {}, {}])],
        zcall.StatusCode.UNSUPPORTED_VERSION,
        13,
    ),
    ("unknown-kind", [pack([1, 77, 14])], P, 14),
    ("reply-sent-to-server", [pack([1, int(Kind.REPLY), 15, None])], P, 15),
    ("args-not-array", [pack(call(16, args="nope"))], P, 16),
    ("negative-deadline", [pack([1, int(Kind.CALL), 17, "double", [1], {}, {"deadline": -5}])], P, 17),
    ("bad-id", [pack([1, int(Kind.CALL), -3, "double", [1], {}, {}])], P, 0),
    ("deep-nesting", [b"\x91" * 3000 + b"\x00"], P, 0),
    ("huge-declared-length", [b"\xdd\xff\xff\xff\xff"], P, 0),
    ("multi-frame", [pack(call(18)), b"extra"], P, 0),
    ("oversized", [pack(call(19, "echo", ("x" * (MAX + 10),)))], zcall.StatusCode.MESSAGE_TOO_LARGE, 0),
]


@pytest.fixture(scope="module")
def small_server() -> Iterator[zcall.SyncServer]:
    """A server that refuses frames over MAX bytes (one for the whole module: it must survive them all)."""
    from helpers.services import service

    with running_server(service, codec=zcall.Codec(max_message_size=MAX)) as server:
        yield server


@pytest.fixture
def raw_req(small_server: zcall.SyncServer) -> Iterator[zmq.Socket]:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.rcvtimeo = 5000
    sock.linger = 0
    sock.connect(small_server.endpoint)
    yield sock
    sock.close()


@pytest.mark.parametrize(("frames", "code", "id_"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_an_error_reply_and_the_server_keeps_serving(
    small_server: zcall.SyncServer, raw_req: zmq.Socket, frames: list[bytes], code: zcall.StatusCode, id_: int
) -> None:
    bad_before = small_server.counters["bad_messages"]
    raw_req.send_multipart(frames)
    msg = decode(raw_req.recv())
    assert isinstance(msg, ErrorReply), msg
    assert msg.error.code is code, msg.error
    assert msg.id == id_
    assert msg.error.message
    assert small_server.counters["bad_messages"] == bad_before + 1
    # the same raw socket (strict REQ alternation holds) and a zcall client both still get answers
    raw_req.send(pack(call(99, "double", (4,))))
    assert decode(raw_req.recv()) == Reply(99, 8)
    with zcall.SyncClient(small_server.endpoint, timeout=5.0) as client:
        assert client.call("double", 21) == 42


def test_ping_message_is_answered_with_pong(raw_req: zmq.Socket) -> None:
    raw_req.send(pack([1, int(Kind.PING), 1234]))
    assert decode(raw_req.recv()) == Pong(1234)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_random_bytes_always_get_an_answer(small_server: zcall.SyncServer, data: bytes) -> None:
    """Random frames never kill the server or go unanswered (a REQ socket would hang if they did)."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    try:
        sock.rcvtimeo = 5000
        sock.linger = 0
        sock.connect(small_server.endpoint)
        sock.send(data)
        answer = sock.recv()
        if answer:  # an empty ACK answers a frame that happened to decode as a valid notify or cancel
            assert isinstance(decode(answer), (ErrorReply, Reply, Pong))
    finally:
        sock.close()
