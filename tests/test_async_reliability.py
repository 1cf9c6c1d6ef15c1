"""Async reliability over real sockets: deadlines, backpressure, dying servers, failover, pipelining.

Servers that must die are child processes killed with SIGKILL by pid; the rest run on the engine thread.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

import zcall
from helpers.async_services import Probe, make_service
from helpers.async_support import raw_socket, recv_message, served, spawn_async_server
from zcall.protocol.wire import Call, ErrorReply, Reply, encode
from zcall.testing import ProcessHandle

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def srv() -> Iterator[tuple[zcall.AsyncServer, Probe]]:
    with served() as sp:
        yield sp


@pytest.fixture
def processes() -> Iterator[list[ProcessHandle]]:
    """Child servers a test started; each is stopped and reaped by pid at teardown."""
    started: list[ProcessHandle] = []
    yield started
    for p in started:
        p.stop(timeout=3.0)


# -- deadlines ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("face", ["callback", "asyncio"])
def test_client_timeout_fires_at_its_deadline_and_cancels_on_the_server(
    srv: tuple[zcall.AsyncServer, Probe], face: str
) -> None:
    server, probe = srv
    with zcall.AsyncClient(server.endpoint, timeout=5.0) as c:
        assert c.call_async("triple", 1).result(5) == 3  # connected
        t0 = time.monotonic()
        with pytest.raises(zcall.CallTimeout) as info:
            if face == "callback":
                c.options(timeout=0.3).call_async("nap", 3.0, "t").result(5)
            else:
                asyncio.run(c.options(timeout=0.3).call("nap", 3.0, "t"))
        elapsed = time.monotonic() - t0
        # at its 0.3 s deadline; the failure (no timeout of its own) would end with the 3 s nap's reply
        assert 0.29 <= elapsed < 1.5, elapsed
        assert info.value.method == "nap" and server.endpoint in info.value.endpoints
        probe.wait_cancelled("t")  # the client told the server to stop working on it
        assert c.statistics()["timeouts"] == 1
        assert c.call_async("triple", 2).result(5) == 6


def test_call_whose_deadline_passed_on_arrival_is_not_started(srv: tuple[zcall.AsyncServer, Probe]) -> None:
    server, probe = srv
    with raw_socket(zmq.DEALER, server.endpoint) as d:
        d.send_multipart([b"", encode(Call(21, "mark", ["too late"], {}, deadline_ms=0))])
        msg = recv_message(d)
        assert isinstance(msg, ErrorReply) and msg.id == 21
        assert msg.error.code is zcall.StatusCode.DEADLINE_EXCEEDED
        d.send_multipart([b"", encode(Call(22, "marks"))])
        assert recv_message(d) == Reply(22, [])
    assert probe.marks == []
    assert server.statistics()["expired"] == 1


def test_call_whose_deadline_passes_in_the_worker_queue_is_not_started() -> None:
    """One worker, busy: the call queued behind it expires there and its handler never runs."""
    with served(workers=1) as (server, probe), raw_socket(zmq.DEALER, server.endpoint) as d:
        d.send_multipart([b"", encode(Call(31, "block", [0.4, "busy"], {}, deadline_ms=5000))])
        probe.wait_started("busy")
        d.send_multipart([b"", encode(Call(32, "mark_pool", ["queued"], {}, deadline_ms=100))])
        d.send_multipart([b"", encode(Call(33, "mark_pool", ["in time"], {}, deadline_ms=5000))])
        replies = {m.id: m for m in (recv_message(d) for _ in range(3))}
        assert replies[31] == Reply(31, "busy")
        assert isinstance(replies[32], ErrorReply)
        assert replies[32].error.code is zcall.StatusCode.DEADLINE_EXCEEDED
        assert replies[33] == Reply(33, 1)
        assert probe.marks == ["in time"]


# -- backpressure ------------------------------------------------------------------------------------


def test_callback_face_raises_backpressure_beyond_max_in_flight(srv: tuple[zcall.AsyncServer, Probe]) -> None:
    server, _probe = srv
    with zcall.AsyncClient(server.endpoint, timeout=5.0, max_in_flight=3) as c:
        futs = [c.call_async("nap", 0.3, f"bp{i}") for i in range(3)]
        with pytest.raises(zcall.Backpressure):
            c.call_async("triple", 1)
        assert [f.result(5) for f in futs] == ["bp0", "bp1", "bp2"]
        assert c.call_async("triple", 1).result(5) == 3  # slots came back


def test_asyncio_face_waits_for_a_free_slot(srv: tuple[zcall.AsyncServer, Probe]) -> None:
    server, probe = srv

    async def main() -> list[str]:
        async with zcall.AsyncClient(server.endpoint, timeout=5.0, max_in_flight=2) as c:
            return await asyncio.gather(*(c.call("nap", 0.1, f"s{i}") for i in range(6)))

    t0 = time.monotonic()
    assert asyncio.run(main()) == [f"s{i}" for i in range(6)]
    assert probe.max_concurrent == 2  # never more than the limit at once on the server
    assert time.monotonic() - t0 >= 0.29  # three rounds of two


def test_server_max_in_flight_refuses_with_server_busy_instead_of_stalling() -> None:
    with served(max_in_flight=2) as (server, _probe), zcall.AsyncClient(server.endpoint, timeout=5.0) as c:
        a = c.call_async("nap", 0.5, "a")
        b = c.call_async("nap", 0.5, "b")
        t0 = time.monotonic()
        refused = c.call_async("triple", 1).exception(5)
        assert time.monotonic() - t0 < 0.4  # answered at once, not after a or b
        assert isinstance(refused, zcall.ServerBusy)
        assert refused.code is zcall.StatusCode.OVERLOADED
        assert (a.result(5), b.result(5)) == ("a", "b")
        assert server.statistics()["overloaded"] == 1
        assert c.call_async("triple", 1).result(5) == 3


# -- servers that die, servers that are not there yet -----------------------------------------------


def test_server_killed_mid_flight_fails_every_pending_call_and_a_restart_serves_again(
    processes: list[ProcessHandle],
) -> None:
    proc = spawn_async_server()
    processes.append(proc)
    with zcall.AsyncClient(proc.endpoint, timeout=20.0) as c:
        futs = [c.call_async("nap", 30.0, f"k{i}") for i in range(50)]
        for _ in range(50):
            proc.expect("START ", timeout=10)
        t0 = time.monotonic()
        proc.kill()
        proc.wait(5)
        errors = [f.exception(10) for f in futs]
        assert time.monotonic() - t0 < 5  # not the 20 s call timeout
        # docs/reliability.md, Failure detection: a killed server (connection reset) is seen at once,
        # the pending calls fail with ConnectionLost (a CallTimeout would come only at the 20 s timeout)
        assert all(isinstance(e, zcall.ConnectionLost) for e in errors), errors
        assert c.statistics()["in_flight"] == 0
        restarted = spawn_async_server(proc.endpoint)
        processes.append(restarted)
        assert c.call_async("pid").result(10) == restarted.pid


def test_call_made_before_the_server_starts_waits_and_succeeds(unused_tcp_endpoint: str) -> None:
    with zcall.AsyncClient(unused_tcp_endpoint, timeout=10.0) as c:
        early = c.call_async("triple", 14)
        svc, _ = make_service()
        server = zcall.AsyncServer(svc, unused_tcp_endpoint).start()
        try:
            assert early.result(10) == 42
        finally:
            server.stop(0.5)


def test_call_with_no_server_ever_times_out_saying_never_sent(unused_tcp_endpoint: str) -> None:
    with zcall.AsyncClient(unused_tcp_endpoint, timeout=0.3) as c:
        t0 = time.monotonic()
        err = c.call_async("triple", 1).exception(5)
        assert isinstance(err, zcall.CallTimeout)
        assert "never sent" in str(err) and unused_tcp_endpoint in str(err)
        assert time.monotonic() - t0 < 3.0  # at its 0.3 s deadline, give or take a loaded box


# -- several endpoints -------------------------------------------------------------------------------


def test_calls_spread_over_two_live_servers() -> None:
    with served() as (s1, _), served() as (s2, _), zcall.AsyncClient([s1.endpoint, s2.endpoint]) as c:
        _wait_connected(c, 2)  # else every call would go to whichever connected first
        before = (s1.statistics()["calls"], s2.statistics()["calls"])
        futs = [c.call_async("triple", i) for i in range(40)]
        assert [f.result(5) for f in futs] == [3 * i for i in range(40)]
        got1 = s1.statistics()["calls"] - before[0]
        got2 = s2.statistics()["calls"] - before[1]
        assert got1 + got2 == 40
        assert got1 >= 10 and got2 >= 10, (got1, got2)


def test_killed_server_is_skipped_and_calls_on_it_are_resent_only_when_they_may_be(
    processes: list[ProcessHandle],
) -> None:
    doomed, live = spawn_async_server(), spawn_async_server()
    processes += [doomed, live]
    with zcall.AsyncClient([doomed.endpoint, live.endpoint], timeout=15.0) as c:
        _wait_connected(c, 2)
        pids = collections.Counter(c.call_async("pid").result(5) for _ in range(10))
        assert set(pids) == {doomed.pid, live.pid}
        idem = c.options(idempotent=True, retries=0)  # resent because it may run twice, not by retries
        once = c.options(retries=0)  # may not be resent: a lost connection is the caller's to decide
        futs = [idem.call_async("nap", 0.5, f"i{i}") for i in range(10)]
        plain = [once.call_async("nap", 0.5, f"p{i}") for i in range(10)]
        retried = [c.call_async("nap", 0.5, f"r{i}") for i in range(10)]  # default: one retry per endpoint
        doomed.expect("START ", timeout=10)
        doomed.kill()
        doomed.wait(5)
        assert [f.result(10) for f in futs] == [f"i{i}" for i in range(10)]
        assert [f.result(10) for f in retried] == [f"r{i}" for i in range(10)]
        assert c.statistics()["resent"] >= 2
        outcomes = [f.exception(10) for f in plain]
        lost = [e for e in outcomes if e is not None]
        assert lost, "some calls made with retries=0 were pending on the killed server"
        assert all(isinstance(e, zcall.ConnectionLost) for e in lost), lost
        assert {c.call_async("pid").result(5) for _ in range(10)} == {live.pid}


def _wait_connected(c: zcall.AsyncClient, n: int, timeout: float = 5.0) -> None:
    """Wait until the client reports ``n`` connected endpoints (zcall reports it only as state)."""
    deadline = time.monotonic() + timeout
    while len(c.statistics()["connected"]) < n:
        assert time.monotonic() < deadline, c.statistics()["connected"]
        time.sleep(0.005)


# -- pipelining --------------------------------------------------------------------------------------


def test_ten_thousand_pipelined_calls_on_the_callback_face(srv: tuple[zcall.AsyncServer, Probe]) -> None:
    server, _ = srv
    n, window = 10_000, 64
    slots = threading.BoundedSemaphore(window)
    lock = threading.Lock()
    seen: collections.Counter[int] = collections.Counter()
    wrong: list[tuple[int, object]] = []
    done = threading.Event()

    def on_result(i: int, r: object) -> None:
        with lock:
            seen[i] += 1
            if r != 3 * i:
                wrong.append((i, r))
            if len(seen) == n:
                done.set()
        slots.release()

    def on_error(i: int, e: BaseException) -> None:
        on_result(i, e)

    with zcall.AsyncClient(server.endpoint, timeout=10.0, max_in_flight=window) as c:
        for i in range(n):
            assert slots.acquire(timeout=10)
            c.call_async(
                "triple", i, callback=lambda r, i=i: on_result(i, r), errback=lambda e, i=i: on_error(i, e)
            )
        assert done.wait(15), f"{len(seen)} of {n} resolved"
        c.call_async("triple", 0).result(5)
        assert wrong == []
        assert len(seen) == n and set(seen.values()) == {1}
        assert c.statistics()["replies"] == n + 1


def test_ten_thousand_pipelined_calls_on_the_asyncio_face(srv: tuple[zcall.AsyncServer, Probe]) -> None:
    server, _ = srv
    n = 10_000

    async def main() -> list[int]:
        async with zcall.AsyncClient(server.endpoint, timeout=10.0, max_in_flight=64) as c:
            got = await asyncio.gather(*(c.call("triple", i) for i in range(n)))
            assert c.statistics()["replies"] == n
            return got

    assert asyncio.run(main()) == [3 * i for i in range(n)]
