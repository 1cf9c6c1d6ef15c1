"""BATCH (docs/protocol.md section 7, "Batching"), over real sockets: agreed in the handshake, used by a
pipelining zcall client, never sent to a peer that did not agree, and refused where not taken.

Raw pyzmq sockets with plain msgpack play the foreign client; zcall's AsyncClient the batching one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

import zcall
from helpers.async_support import wait_until
from zcall.testing import ipc_endpoint

pytestmark = pytest.mark.timeout(30)

CALL, REPLY, ERROR, NOTIFY, PING, PONG, CANCEL, BATCH = 1, 2, 3, 4, 6, 7, 8, 9
PROTOCOL_ERROR, METHOD_NOT_FOUND = 4, 2


def make_service(ran: list[Any]) -> zcall.Service:
    svc = zcall.Service("batching")

    @svc.method(inline=True)
    def double(x: Any) -> Any:
        ran.append(x)
        return x * 2

    @svc.method
    def pad(text: str) -> int:
        ran.append(len(text))
        return len(text)

    return svc


@pytest.fixture
def ran() -> list[Any]:
    return []


@pytest.fixture
def async_server(ran: list[Any]) -> Iterator[zcall.AsyncServer]:
    with zcall.AsyncServer(make_service(ran)) as srv:
        yield srv


@pytest.fixture
def sync_server(ran: list[Any]) -> Iterator[zcall.SyncServer]:
    with zcall.SyncServer(make_service(ran)) as srv:
        yield srv


@pytest.fixture
def dealer(request: pytest.FixtureRequest) -> Iterator[zmq.Socket]:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    yield sock
    sock.close()


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def recv(sock: zmq.Socket) -> tuple[Any, zmq.Frame]:
    frames = sock.recv_multipart(copy=False)
    assert frames[0].bytes == b""
    return msgpack.unpackb(frames[-1].bytes, raw=False), frames[-1]


def call(rid: int, method: str, *args: Any) -> list[Any]:
    return [1, CALL, rid, method, list(args), {}, {}]


# -- the handshake ---------------------------------------------------------------------------------


def test_an_async_server_advertises_batch_and_its_size_limit_in_the_handshake(
    ran: list[Any], dealer: zmq.Socket
) -> None:
    codec = zcall.Codec(max_message_size=65536)
    with zcall.AsyncServer(make_service(ran), codec=codec) as srv:
        dealer.connect(srv.endpoint)
        dealer.send_multipart([b"", pack([1, PING, 7])])
        msg, frame = recv(dealer)
        assert msg == [1, PONG, 7]
        assert frame.get("X-Zcall-Batch") == "1"
        assert frame.get("X-Zcall-Max-Message-Size") == "65536"


def test_a_sync_server_does_not_advertise_batch(sync_server: zcall.SyncServer, dealer: zmq.Socket) -> None:
    dealer.connect(sync_server.endpoint)
    dealer.send_multipart([b"", pack([1, PING, 7])])
    _, frame = recv(dealer)
    with pytest.raises(zmq.ZMQError):
        frame.get("X-Zcall-Batch")


# -- a server taking a BATCH -----------------------------------------------------------------------


def test_each_item_is_answered_as_if_it_came_alone_and_the_answers_come_back_in_order(
    async_server: zcall.AsyncServer, dealer: zmq.Socket, ran: list[Any]
) -> None:
    dealer.connect(async_server.endpoint)
    items = [
        call(1, "double", 21),
        [1, PING, 2],
        "not a message",
        [1, NOTIFY, 3, "double", [5], {}, {}],
        [1, CANCEL, 99],
        call(4, "no_such_method"),
        [1, BATCH, 0, [[1, PING, 5]]],  # never nested
    ]
    dealer.send_multipart([b"", pack([1, BATCH, 0, items])])
    msg, _ = recv(dealer)
    assert msg[:3] == [1, BATCH, 0]  # a client that sends BATCH gets its answers batched
    answers = [(m[1], m[2]) for m in msg[3]]
    assert answers == [(REPLY, 1), (PONG, 2), (ERROR, 0), (ERROR, 4), (ERROR, 0)]
    assert msg[3][0][3] == 42
    assert msg[3][2][3]["code"] == PROTOCOL_ERROR
    assert msg[3][3][3]["code"] == METHOD_NOT_FOUND
    assert msg[3][4][3]["code"] == PROTOCOL_ERROR
    assert sorted(ran) == [5, 21]  # the NOTIFY ran too, and sent nothing
    stats = async_server.statistics()
    assert stats["batches_received"] == 1 and stats["batches_sent"] == 1
    assert stats["bad_messages"] == 2


@pytest.mark.parametrize(
    ("body", "error_id"),
    [
        ([1, BATCH, 5, [[1, PING, 1]]], 5),
        ([1, BATCH, 0, []], 0),
        ([1, BATCH, 0, "x"], 0),
        ([1, BATCH, 0, [[1, PING, i] for i in range(257)]], 0),
    ],
    ids=["nonzero-id", "empty", "not-an-array", "too-many"],
)
def test_a_batch_of_the_wrong_shape_is_refused_and_nothing_in_it_runs(
    async_server: zcall.AsyncServer, dealer: zmq.Socket, body: list[Any], error_id: int
) -> None:
    dealer.connect(async_server.endpoint)
    dealer.send_multipart([b"", pack(body)])
    msg, _ = recv(dealer)
    assert msg[:3] == [1, ERROR, error_id]
    assert msg[3]["code"] == PROTOCOL_ERROR
    dealer.send_multipart([b"", pack([1, PING, 8])])
    assert recv(dealer)[0] == [1, PONG, 8]  # no stray answer came before this one


def test_a_sync_server_refuses_a_batch_and_runs_none_of_it(
    sync_server: zcall.SyncServer, dealer: zmq.Socket, ran: list[Any]
) -> None:
    dealer.connect(sync_server.endpoint)
    dealer.send_multipart([b"", pack([1, BATCH, 0, [call(1, "double", 1), call(2, "double", 2)]])])
    msg, _ = recv(dealer)
    assert msg[:3] == [1, ERROR, 0]
    assert msg[3]["code"] == PROTOCOL_ERROR
    assert "BATCH" in msg[3]["message"]
    assert ran == []


# -- who receives BATCH ----------------------------------------------------------------------------


def test_a_client_that_never_sends_batch_never_receives_one(
    async_server: zcall.AsyncServer, dealer: zmq.Socket
) -> None:
    dealer.connect(async_server.endpoint)
    n = 300
    for i in range(1, n + 1):
        dealer.send_multipart([b"", pack(call(i, "double", i))])
    seen = []
    for _ in range(n):
        msg, _ = recv(dealer)
        assert msg[1] == REPLY, msg
        seen.append(msg[2])
    assert sorted(seen) == list(range(1, n + 1))
    assert async_server.statistics()["batches_sent"] == 0


# -- a zcall client ---------------------------------------------------------------------------------


def test_a_pipelining_client_batches_and_every_call_gets_its_own_answer(
    async_server: zcall.AsyncServer,
) -> None:
    with zcall.AsyncClient(async_server.endpoint) as c:
        assert c.call_async("double", 0).result(5) == 0  # the first answer carries the handshake
        futures = [c.call_async("double", i) for i in range(1, 801)]
        assert [f.result(10) for f in futures] == [2 * i for i in range(1, 801)]
    stats = async_server.statistics()
    assert stats["batches_received"] > 0
    assert stats["bad_messages"] == 0


def test_a_client_keeps_its_batches_within_the_servers_size_limit(ran: list[Any]) -> None:
    codec = zcall.Codec(max_message_size=4096)  # the client's own limit stays the default 16 MiB
    with zcall.AsyncServer(make_service(ran), codec=codec) as srv, zcall.AsyncClient(srv.endpoint) as c:
        assert c.call_async("pad", "").result(5) == 0
        futures = [c.call_async("pad", "x" * 300) for _ in range(400)]
        assert all(f.result(10) == 300 for f in futures)
        stats = srv.statistics()
    assert stats["batches_received"] > 0
    assert stats["bad_messages"] == 0  # no batch was too large for the server


def test_a_client_never_batches_to_a_sync_server(sync_server: zcall.SyncServer) -> None:
    with zcall.AsyncClient(sync_server.endpoint) as c:
        futures = [c.call_async("double", i) for i in range(200)]
        assert [f.result(10) for f in futures] == [2 * i for i in range(200)]
    assert sync_server.statistics()["bad_messages"] == 0


def test_after_a_reconnect_the_client_asks_the_new_server_again(ran: list[Any], tmp_path: Path) -> None:
    """The same endpoint served by an AsyncServer, then by a SyncServer: the client stops batching."""
    ep = ipc_endpoint(tmp_path)
    with zcall.AsyncClient(ep, timeout=10.0) as c:
        with zcall.AsyncServer(make_service(ran), ep) as first:
            assert c.call_async("double", 0).result(5) == 0
            futures = [c.call_async("double", i) for i in range(300)]
            assert [f.result(10) for f in futures] == [2 * i for i in range(300)]
            assert first.statistics()["batches_received"] > 0
        # the client must have seen that connection end, or a call sent now is failed by its late end
        wait_until(lambda: ep not in c.statistics()["connected"], what="the disconnect")
        with zcall.SyncServer(make_service(ran), ep) as second:
            futures = [c.call_async("double", i) for i in range(300)]
            assert [f.result(10) for f in futures] == [2 * i for i in range(300)]
            assert second.statistics()["bad_messages"] == 0
