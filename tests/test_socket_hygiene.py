"""Socket hygiene over real tcp sockets: what a server does with clients that vanish, read slowly or come
and go by the thousand, and what clients do when full or half-connected.

- ROUTER_MANDATORY: a reply to a vanished client is counted as undeliverable and never blocks the loop;
- a full per-client send queue (a slow reader) is counted too, and everyone else is still served;
- the reply cache and the subscriber table stay within their bounds after 1,000 short-lived clients;
- LINGER on every close: ``Context.term()`` returns promptly with messages still queued;
- backpressure: a full client raises ``Backpressure``, a full server answers OVERLOADED, neither stalls;
- ZMQ_IMMEDIATE: a client given a dead endpoint beside a live one sends nothing towards the dead one.
"""

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
from helpers.hostile_server import Holder, make_service
from zcall.service.replycache import ReplyCache

CALL, REPLY, ERROR, NOTIFY = 1, 2, 3, 4


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Re-check ``predicate`` (state zcall reports only through counters) until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.005)


def term_within(ctx: zmq.Context, seconds: float) -> float:
    """Run ``ctx.term()`` in a thread; fail if it has not returned after ``seconds``. Returns its time."""
    t0 = time.monotonic()
    t = threading.Thread(target=ctx.term, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"Context.term() still blocked after {seconds}s: a socket closed without LINGER"
    return time.monotonic() - t0


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    """A private context for the test's zcall objects; its ``term()`` must not hang at teardown."""
    c = zmq.Context()
    yield c
    if not c.closed:
        term_within(c, 5.0)


@contextlib.contextmanager
def serving(ctx: zmq.Context, **kwargs: Any) -> Iterator[tuple[zcall.AsyncServer, Holder]]:
    """An AsyncServer on 127.0.0.1 for a fresh ``hostile_server`` service, in ``ctx``; stopped on exit."""
    svc, holder = make_service()
    server = zcall.AsyncServer(svc, "tcp://127.0.0.1:*", context=ctx, **kwargs)
    holder.server = server
    server.start()
    try:
        yield server, holder
    finally:
        server.stop(grace=0.2)


def frame(rid: int, method: str, *args: Any, kind: int = CALL, **meta: Any) -> list[bytes]:
    """A DEALER's request frames: the delimiter, then the body."""
    return [b"", msgpack.packb([1, kind, rid, method, list(args), {}, meta])]


def answer(sock: zmq.Socket) -> list[Any]:
    """The next message on a raw socket, skipping empty bodies (which every receiver must ignore)."""
    while True:
        body = sock.recv_multipart()[-1]
        if body:
            return msgpack.unpackb(body, raw=False)


def blob_calls(server: Any) -> int:
    return server.service.metrics.snapshot()["methods"].get("blob", {}).get("calls", 0)


def dealer(ctx: zmq.Context, endpoint: str, **opts: int) -> zmq.Socket:
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    for name, value in opts.items():
        s.setsockopt(getattr(zmq, name), value)
    s.connect(endpoint)
    return s


# -- ROUTER_MANDATORY ---------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_reply_to_a_vanished_client_is_counted_undeliverable_and_never_blocks(ctx: zmq.Context) -> None:
    with serving(ctx) as (server, holder):
        nap = 2.0
        gone = dealer(ctx, server.endpoint)
        gone.send_multipart(frame(1, "nap", nap))
        assert holder.started.wait(5), "the slow call never started"
        t0 = time.monotonic()
        gone.close(linger=0)  # vanishes while its call runs
        with zcall.AsyncClient(server.endpoint, context=ctx) as other:
            assert other.call_async("echo", "meanwhile").result(5) == "meanwhile"
            # served while the vanished client's call was still running: the loop was not held up (a
            # held loop would answer only once the 2 s nap ends: half of that, on a loaded machine)
            assert time.monotonic() - t0 < nap / 2
            assert server.in_flight == 1
            assert server.statistics()["undeliverable"] == 0
            wait_until(lambda: server.statistics()["undeliverable"] == 1, what="undeliverable counted")
            assert server.in_flight == 0
            assert other.call_async("echo", "after").result(5) == "after"


@pytest.mark.timeout(30)
def test_slow_reader_with_a_full_queue_is_counted_and_others_are_still_served() -> None:
    server_ctx = zmq.Context()
    server_ctx.setsockopt(zmq.SNDHWM, 16)  # a short per-client queue: full after a few replies
    slow_ctx = zmq.Context()
    n, size = 300, 64 * 1024
    try:
        with serving(server_ctx) as (server, _):
            slow = dealer(slow_ctx, server.endpoint, RCVHWM=1, RCVBUF=4096)
            for i in range(n):  # small requests, 64 KiB replies, and the slow client reads none yet
                slow.send_multipart(frame(i + 1, "blob", size))
            with zcall.AsyncClient(server.endpoint, context=server_ctx) as other:
                wait_until(lambda: server.statistics()["undeliverable"] > 0, 10, "a full queue")
                assert other.call_async("echo", 1).result(5) == 1
                wait_until(lambda: blob_calls(server) >= n, 10, "every blob call handled")
                assert other.call_async("echo", 2).result(5) == 2
            undeliverable = server.statistics()["undeliverable"]
            received = 0
            while slow.poll(500):  # now read what was queued; silence for 0.5 s means the end
                slow.recv_multipart()
                received += 1
            slow.close(linger=0)
            # every reply was either delivered or counted; none was lost silently, none blocked
            assert 0 < received < n
            assert received + undeliverable == n
    finally:
        term_within(slow_ctx, 5.0)
        term_within(server_ctx, 5.0)


# -- bounded state after many clients -------------------------------------------------------------------


SUBSCRIBER_SLACK = 64  # the subscriber table is swept when it doubles, and never below this size


@pytest.mark.timeout(40)
def test_thousand_short_lived_clients_leave_bounded_reply_cache_and_subscriber_table(
    ctx: zmq.Context,
) -> None:
    clients = 1000
    cache = ReplyCache(max_entries=100)  # a small bound keeps this cheap
    with serving(ctx, reply_cache=cache) as (server, _):
        ep = server.endpoint
        peak = 0
        for i in range(clients):
            s = dealer(ctx, ep)
            try:
                # half subscribe to a topic nothing ever publishes: no event will ever find them gone
                topic = "news.*" if i % 2 else "never.published"
                s.send_multipart(frame(i + 1, "zcall.subscribe", [topic], kind=NOTIFY))
                s.send_multipart(frame(10_000 + i, "bump", f"c{i}", retry=True))
                m = answer(s)
                assert m[:3] == [1, REPLY, 10_000 + i] and m[3] == f"c{i}"
            finally:
                s.close(linger=0)
            peak = max(peak, server.statistics()["subscribers"])
        stats = server.statistics()
        evicted = cache.counters["evicted"]
        print(
            f"\nafter {clients} clients: {len(cache)} cached replies ({cache.nbytes} bytes), {evicted} "
            f"evicted; {stats['subscribers']} subscribers (peak {peak})"
        )
        assert len(cache) <= 100
        assert cache.counters["evicted"] >= clients - 100
        assert stats["in_flight"] == 0
        # gone subscribers do not pile up, even those no event would ever reach
        assert peak <= 2 * SUBSCRIBER_SLACK
        # a resend of a recent retry-marked call is answered from the cache, not run again
        calls_before = server.service.metrics.snapshot()["methods"]["bump"]["calls"]
        with contextlib.closing(dealer(ctx, ep)) as s:
            s.send_multipart(frame(10_000 + clients - 1, "bump", "changed", retry=True))
            assert answer(s)[3] == f"c{clients - 1}"
        assert server.service.metrics.snapshot()["methods"]["bump"]["calls"] == calls_before

        # and an event forgets the ones it finds gone
        # a publish forgets the subscribers it finds gone; one whose close libzmq has not processed yet
        # still looks connected, so keep publishing until every gone one has been found
        def forgotten() -> bool:
            server.publish("news.flash", "hello")
            return all(sub[1] == ["never.published"] for sub in list(server._subscribers._subs.values()))

        wait_until(forgotten, what="gone subscribers forgotten on publish")


# -- LINGER ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_context_term_returns_promptly_after_closing_with_messages_queued(unused_tcp_endpoint: str) -> None:
    ctx = zmq.Context()
    peer_ctx = zmq.Context()  # a peer that stays connected and never reads: queues cannot drain
    try:
        svc, holder = make_service()
        server = zcall.AsyncServer(svc, "tcp://127.0.0.1:*", context=ctx).start()
        holder.server = server
        sync_svc, _ = make_service()
        sync_server = zcall.SyncServer(sync_svc, "tcp://127.0.0.1:*", context=ctx).start()
        slow = dealer(peer_ctx, server.endpoint, RCVHWM=1, RCVBUF=4096)
        slow_rep = dealer(peer_ctx, sync_server.endpoint, RCVHWM=1, RCVBUF=4096)
        for i in range(200):
            slow.send_multipart(frame(i + 1, "blob", 64 * 1024))
            slow_rep.send_multipart(frame(i + 1, "blob", 64 * 1024))
        for srv in (server, sync_server):  # every reply made, most still queued towards the peer
            wait_until(lambda s=srv: blob_calls(s) >= 200, 10, "replies")
        # a REQ towards nobody queues its request; an AsyncClient towards nobody holds calls back
        sync_client = zcall.SyncClient(unused_tcp_endpoint, timeout=0.2, context=ctx)
        with pytest.raises(zcall.CallTimeout):
            sync_client.call("echo", 1)
        client = zcall.AsyncClient(unused_tcp_endpoint, timeout=30, context=ctx)
        pending = [client.call_async("echo", i) for i in range(5)]
        client.close()
        assert all(isinstance(f.exception(1), zcall.ClientClosed) for f in pending)
        sync_client.close()
        server.stop(grace=0.2)
        sync_server.stop()
        took = term_within(ctx, 5.0)
        print(f"\nContext.term() took {took * 1000:.0f} ms with replies still queued to a live peer")
        assert took < 3.0
    finally:
        for s in (slow, slow_rep):
            s.close(linger=0)
        term_within(peer_ctx, 5.0)


# -- backpressure ---------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_full_client_raises_backpressure_at_once_instead_of_stalling(ctx: zmq.Context) -> None:
    with (
        serving(ctx) as (server, _),
        zcall.AsyncClient(server.endpoint, max_in_flight=4, context=ctx) as client,
    ):
        naps = [client.call_async("nap", 0.5) for _ in range(4)]
        t0 = time.monotonic()
        with pytest.raises(zcall.Backpressure):
            client.call_async("echo", "one too many")
        assert time.monotonic() - t0 < 0.2
        assert not any(f.done() for f in naps)  # refused while the others were still pending
        assert [f.result(5) for f in naps] == [0.5] * 4
        assert client.call_async("echo", "slot free").result(5) == "slot free"
        assert client.statistics()["in_flight"] == 0


@pytest.mark.timeout(20)
def test_full_server_answers_overloaded_instead_of_stalling(ctx: zmq.Context) -> None:
    with (
        serving(ctx, max_in_flight=3) as (server, _),
        zcall.AsyncClient(server.endpoint, context=ctx) as client,
    ):
        naps = [client.call_async("nap", 1.0) for _ in range(3)]
        wait_until(lambda: server.in_flight == 3, what="three calls in flight")
        with pytest.raises(zcall.ServerBusy) as info:
            client.call_async("echo", "no room").result(5)
        assert info.value.code is zcall.StatusCode.OVERLOADED
        assert not any(f.done() for f in naps)  # answered while the server was full, not after
        assert server.statistics()["overloaded"] == 1
        assert [f.result(5) for f in naps] == [1.0] * 3
        assert client.call_async("echo", "room again").result(5) == "room again"


@pytest.mark.timeout(20)
def test_notify_flood_is_bounded_by_max_in_flight_not_queued_without_limit(ctx: zmq.Context) -> None:
    """One-way calls get no OVERLOADED answer, but they must not pile up in the worker queue either."""
    limit, flood = 4, 100
    with serving(ctx, max_in_flight=limit, workers=2) as (server, holder):
        with contextlib.closing(dealer(ctx, server.endpoint)) as s:
            for i in range(flood):
                s.send_multipart(frame(i + 1, "nap", 0.3, kind=NOTIFY))
            s.send_multipart([b"", msgpack.packb([1, 6, 999])])  # PING: the loop has read the flood
            assert answer(s)[:3] == [1, 7, 999]
        refused = server.statistics()["overloaded"]
        print(f"\n{flood} notifies at max_in_flight={limit}: {refused} refused")
        assert refused >= flood - limit
        wait_until(lambda: holder.naps == flood - refused, 5, "the admitted notifies to run")


# -- ZMQ_IMMEDIATE --------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_client_with_a_dead_endpoint_sends_every_call_to_the_live_one(
    ctx: zmq.Context, unused_tcp_endpoint: str
) -> None:
    with serving(ctx) as (server, _):
        timeout = 3.0
        with zcall.AsyncClient([unused_tcp_endpoint, server.endpoint], timeout=timeout, context=ctx) as c:
            t0 = time.monotonic()
            futures = [c.call_async("echo", i) for i in range(40)]
            # none of them waits for its timeout: nothing was queued towards the endpoint that is down
            assert [f.result(timeout / 2) for f in futures] == list(range(40))
            took = time.monotonic() - t0
            stats = c.statistics()
            assert stats["timeouts"] == 0
            assert stats["connected"] == [server.endpoint]
        assert server.service.metrics.snapshot()["methods"]["echo"]["calls"] == 40
        assert took < timeout / 2
