"""Events pushed by ``AsyncServer.publish`` to ``AsyncClient.on`` handlers, over real sockets.

Delivery is at most once: an event published while nobody is subscribed is gone. A subscription is in
place once a call made after ``on()`` has returned (the SUBSCRIBE and the call share one ordered pipe).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import zcall
from helpers.async_services import Probe
from helpers.async_support import flush_loop, served, served_on_own_loop, wait_until

pytestmark = pytest.mark.timeout(20)


class Collector:
    """An event handler that records ``(topic, payload)`` and lets a test wait for the n-th event."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._cond = threading.Condition()

    def __call__(self, topic: str, payload: Any) -> None:
        with self._cond:
            self.events.append((topic, payload))
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[tuple[str, Any]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.events) >= n, timeout), self.events
            return list(self.events)

    def has_topic(self, topic: str, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(t == topic for t, _ in self.events), timeout)

    def wait_topic(self, topic: str, timeout: float = 5.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: any(t == topic for t, _ in self.events), timeout)
            assert ok, (
                f"no {topic!r} event; last topics {[t for t, _ in self.events[-3:]]} ({len(self.events)})"
            )


@pytest.fixture
def srv() -> Iterator[tuple[zcall.AsyncServer, Probe]]:
    with served() as sp:
        yield sp


@pytest.fixture
def server(srv: tuple[zcall.AsyncServer, Probe]) -> zcall.AsyncServer:
    return srv[0]


@pytest.fixture
def client(server: zcall.AsyncServer) -> Iterator[zcall.AsyncClient]:
    with zcall.AsyncClient(server.endpoint, timeout=5.0) as c:
        yield c


def subscribed(client: zcall.AsyncClient) -> None:
    """Return once every ``on()`` made so far has reached the server."""
    client.call_async("zcall.ping").result(5)


def test_prefix_and_exact_topic_handlers_get_only_their_topics(
    server: zcall.AsyncServer, client: zcall.AsyncClient
) -> None:
    orders, billing_x = Collector(), Collector()
    client.on("orders.*", orders)
    client.on("billing.x", billing_x)
    subscribed(client)
    server.publish("orders.new", {"id": 1})
    server.publish("billing.x", 2)
    server.publish("billing.y", 3)
    server.publish("other", 4)
    server.publish("orders.done", {"id": 1})
    server.publish("billing.x", 5)
    assert orders.wait_for(2) == [("orders.new", {"id": 1}), ("orders.done", {"id": 1})]
    assert billing_x.wait_for(2) == [("billing.x", 2), ("billing.x", 5)]
    subscribed(client)  # anything else in flight would have arrived by now
    assert len(orders.events) == 2 and len(billing_x.events) == 2
    assert server.statistics()["events_sent"] == 4  # the server filtered: billing.y/other never sent


def test_coroutine_handler_is_awaited(server: zcall.AsyncServer, client: zcall.AsyncClient) -> None:
    got = Collector()

    async def handler(topic: str, payload: Any) -> None:
        await asyncio.sleep(0)
        got(topic, payload)

    client.on("jobs.*", handler)
    subscribed(client)
    server.publish("jobs.done", [1, 2])
    assert got.wait_for(1) == [("jobs.done", [1, 2])]


def test_events_published_before_subscribing_are_not_delivered(
    server: zcall.AsyncServer, client: zcall.AsyncClient
) -> None:
    """At most once: nothing is stored for later subscribers."""
    subscribed(client)  # connected, no topics yet
    server.publish("orders.early", 1)
    got = Collector()
    client.on("orders.*", got)
    subscribed(client)
    server.publish("orders.late", 2)
    got.wait_topic("orders.late")
    assert got.events == [("orders.late", 2)]


def test_a_raising_handler_is_logged_and_does_not_stop_delivery(
    server: zcall.AsyncServer, client: zcall.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="zcall.client")
    good = Collector()

    def bad(topic: str, payload: Any) -> None:
        raise RuntimeError(f"handler broke on {topic}")

    client.on("t.*", bad)
    client.on("t.*", good)
    subscribed(client)
    server.publish("t.1", 1)
    server.publish("t.2", 2)
    assert good.wait_for(2) == [("t.1", 1), ("t.2", 2)]
    subscribed(client)
    assert client.statistics()["callback_errors"] == 2
    broke = [r for r in caplog.records if r.name == "zcall.client" and r.exc_info]
    assert len(broke) == 2 and "handler broke on t.1" in str(broke[0].exc_info[1])  # type: ignore[index]
    assert client.call_async("triple", 1).result(5) == 3


def test_off_stops_delivery(server: zcall.AsyncServer, client: zcall.AsyncClient) -> None:
    got, canary = Collector(), Collector()
    client.on("a.*", got)
    client.on("b", canary)
    subscribed(client)
    server.publish("a.1", 1)
    got.wait_for(1)
    client.off("a.*", got)
    subscribed(client)
    server.publish("a.2", 2)
    server.publish("b", 3)
    canary.wait_for(1)  # published after a.2 on the same pipe
    assert got.events == [("a.1", 1)]


def test_events_missed_counts_no_gap_for_topics_the_client_did_not_subscribe_to(
    server: zcall.AsyncServer, client: zcall.AsyncClient
) -> None:
    got = Collector()
    client.on("orders.*", got)
    subscribed(client)
    server.publish("orders.1", 1)
    server.publish("billing.1", 2)  # not for this client: filtered out by the server, not lost
    server.publish("orders.2", 3)
    got.wait_for(2)
    stats = client.statistics()
    assert stats["events"] == 2
    assert stats["events_missed"] == 0, "an event the client never subscribed to is not a missed event"


def test_slow_subscriber_loses_events_at_a_full_queue_but_keeps_its_subscription() -> None:
    """A client whose loop stalls fills the server's queue: events are dropped (at most once) and the
    gap is counted, but once it catches up it receives new events again."""
    with served_on_own_loop() as (server, _, loop), zcall.AsyncClient(server.endpoint, timeout=5.0) as c:
        release = threading.Event()
        stalled = threading.Event()
        got = Collector()

        def stall(topic: str, payload: Any) -> None:
            if topic == "flood.first":
                stalled.set()
                release.wait(10)  # blocks the client's loop: nothing more is read

        c.on("flood.*", stall)
        c.on("flood.*", got)
        subscribed(c)
        server.publish("flood.first", None)
        assert stalled.wait(5)
        blob = b"x" * 4096
        for i in range(6000):  # ~24 MB: more than both HWMs and the kernel's socket buffers
            server.publish("flood.n", [i, blob])
        flush_loop(loop)
        dropped = server.statistics()["undeliverable"]
        assert dropped > 0, "expected the flood to overflow the subscriber's queue"
        release.set()
        # Still subscribed? Publish until one arrives (each may itself meet a queue still draining).
        for attempt in range(100):
            server.publish("flood.after", attempt)
            if got.has_topic("flood.after", timeout=0.05):
                break
        got.wait_topic("flood.after", timeout=0.1)
        n = len([t for t, _ in got.events if t == "flood.n"])
        assert n == 6000 - dropped
        assert c.statistics()["events_missed"] >= dropped  # the gap is seen and counted


def test_subscriptions_are_renewed_when_the_server_restarts() -> None:
    """A restarted server knows no subscribers: the client subscribes again on the new connection."""
    got = Collector()
    with served() as (first, _):
        endpoint = first.endpoint
        c = zcall.AsyncClient(endpoint, timeout=5.0)
        try:
            c.on("news.*", got)
            subscribed(c)
            first.publish("news.1", 1)
            got.wait_for(1)
        except BaseException:
            c.close()
            raise
    try:
        # A call sent before the client has seen the disconnect would fail with ConnectionLost.
        wait_until(lambda: not c.statistics()["connected"], what="client sees the disconnect")
        with served(endpoint) as (second, _):
            subscribed(c)  # waits for the new connection; the SUBSCRIBE goes out before this call
            second.publish("news.2", 2)
            assert got.wait_for(2) == [("news.1", 1), ("news.2", 2)]
            assert c.statistics()["events_missed"] == 0  # numbering restarts with the connection
    finally:
        c.close()
