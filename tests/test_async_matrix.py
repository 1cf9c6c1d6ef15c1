"""Every client kind against every server kind (REQ or DEALER to REP or ROUTER), and ipc: envelopes agree.

REQ adds the empty delimiter frame itself; DEALER sends it explicitly; ROUTER adds the peer identity; REP
strips it. A REP server answers a notify and a cancel with an empty body, which an ``AsyncClient`` ignores.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import zmq

import zcall
from helpers.async_services import Probe
from helpers.async_support import raw_socket, recv_message, served
from zcall.protocol.wire import Call, Ping, Pong, Reply, encode
from zcall.testing import running_server

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def srv() -> Iterator[tuple[zcall.AsyncServer, Probe]]:
    with served() as sp:
        yield sp


def test_raw_req_socket_calls_an_async_server(srv: tuple[zcall.AsyncServer, Probe]) -> None:
    server, _ = srv
    with raw_socket(zmq.REQ, server.endpoint) as req:
        for i in range(3):
            req.send(encode(Call(100 + i, "triple", [i])))
            assert recv_message(req) == Reply(100 + i, 3 * i)
        req.send(encode(Ping(7)))
        assert recv_message(req) == Pong(7)


def test_sync_client_calls_an_async_server(srv: tuple[zcall.AsyncServer, Probe]) -> None:
    server, _probe = srv
    with zcall.SyncClient(server.endpoint, timeout=5.0) as c:
        assert c.call("triple", 5) == 15
        assert c.call("nap", 0.01, "coro") == "coro"
        assert c.call("block", 0.01, "pool") == "pool"
        assert c.call("kw", 1, c=3) == [1, 0, 3]
        with pytest.raises(zcall.MethodNotFound):
            c.call("missing")
        assert c.call("zcall.ping")["service"] == "asyncsvc"


def test_async_client_calls_a_sync_rep_server(test_service: zcall.Service) -> None:
    with running_server(test_service) as rep, zcall.AsyncClient(rep.endpoint, timeout=5.0) as c:
        futs = [c.call_async("double", i) for i in range(20)]  # pipelined: REP answers one by one
        assert [f.result(5) for f in futs] == [2 * i for i in range(20)]
        before = c.call_async("incr", 0).result(5)
        c.notify("incr", 5)  # REP answers a notify with an empty ACK, which must be ignored
        assert c.call_async("incr", 0).result(5) == before + 5
        with pytest.raises(zcall.RemoteError) as info:
            c.call_async("boom", "via rep").result(5)
        assert info.value.type == "ValueError" and info.value.message == "via rep"

        async def via_asyncio() -> list[int]:
            return await asyncio.gather(*(c.call("double", i) for i in range(10)))

        assert asyncio.run(via_asyncio()) == [2 * i for i in range(10)]
        stats = c.statistics()
        assert stats["bad_replies"] == 0 and stats["stale_replies"] == 0 and stats["in_flight"] == 0


def test_async_client_and_server_over_ipc(unused_ipc_endpoint: str) -> None:
    with served(unused_ipc_endpoint) as (server, _):
        assert server.endpoint.startswith("ipc://")
        with zcall.AsyncClient(server.endpoint, timeout=5.0) as c:
            futs = [c.call_async("triple", i) for i in range(100)]
            assert [f.result(5) for f in futs] == [3 * i for i in range(100)]
            got = []
            c.on("ipc.*", lambda t, p: got.append((t, p)))
            assert c.call_async("nap", 0.01, "x").result(5) == "x"
            server.publish("ipc.hello", 1)
            # The event leaves before this call's reply on the same pipe, so its handler has run.
            assert c.call_async("triple", 1).result(5) == 3
            assert got == [("ipc.hello", 1)]

        async def main() -> int:
            async with zcall.AsyncClient(server.endpoint, timeout=5.0) as ac:
                return await ac.call("triple", 9)

        assert asyncio.run(main()) == 27
