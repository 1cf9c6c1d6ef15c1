"""Subscriptions you can wait on: ``on()`` returns a handle that settles when the publisher has the
subscription (the acknowledged ``zcall.subscribe`` CALL, docs/protocol.md §7), on every face that has
``on()`` (AsyncClient's threads, asyncio and callbacks; Peer), over tcp and ipc, across reconnects.

Every wait here is on the handle or on an event: an event published right after ``wait`` returned True
must arrive, which is the whole point."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

import zcall
from zcall.engine.liveness import State
from zcall.protocol.wire import Call, ErrorRecord, ErrorReply, Event, Notify, Ping, Pong, decode, encode
from zcall.testing import free_tcp_endpoint, ipc_endpoint

pytestmark = pytest.mark.timeout(30)

SERVICE = zcall.Service("events")


@SERVICE.method(inline=True)
def echo(x: Any = None) -> Any:
    return x


class Inbox:
    """An event handler that lets a test wait for a topic."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._cond = threading.Condition()

    def __call__(self, topic: str, payload: Any) -> None:
        with self._cond:
            self.events.append((topic, payload))
            self._cond.notify_all()

    def wait_for(self, topic: str, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: any(t == topic for t, _ in self.events), timeout)


@pytest.fixture
def server(bind_endpoint: str) -> Iterator[zcall.AsyncServer]:
    with zcall.AsyncServer(SERVICE, bind_endpoint) as s:
        yield s


def test_the_handle_settles_when_the_server_has_the_subscription(server: zcall.AsyncServer) -> None:
    inbox = Inbox()
    with zcall.AsyncClient(server.endpoint, timeout=5.0) as client:
        sub = client.on("orders.*", inbox)
        assert sub.topic == "orders.*" and sub.handler is inbox
        assert sub.wait(5) is True and sub.active and sub.refused is None
        assert server.statistics()["subscribers"] == 1  # no polling: the answer came after it had it
        server.publish("orders.new", {"id": 7})  # right away: it must arrive
        assert inbox.wait_for("orders.new")
        called = threading.Event()
        seen: list[Any] = []
        sub.add_done_callback(lambda s: (seen.append(s), called.set()))  # settled already: at once
        assert called.is_set() and seen == [sub]
        second = client.on("orders.*", Inbox())  # a pattern the server already keeps
        assert second.wait(5) and "active" in repr(second)


def test_the_callback_face_is_told_when_the_subscription_is_active(server: zcall.AsyncServer) -> None:
    inbox = Inbox()
    settled = threading.Event()
    states: list[bool] = []
    with zcall.AsyncClient(server.endpoint, timeout=5.0) as client:
        sub = client.on("jobs.*", inbox)

        def ready(s: zcall.client.subscriptions.Subscription) -> None:
            states.append(s.active)
            server.publish("jobs.done", 1)  # from the callback (the client's loop): it has the pattern
            settled.set()

        sub.add_done_callback(ready)
        assert settled.wait(5) and states == [True]
        assert inbox.wait_for("jobs.done")


def test_the_asyncio_face_awaits_the_handle(server: zcall.AsyncServer) -> None:
    async def main() -> list[tuple[str, Any]]:
        inbox = Inbox()
        async with zcall.AsyncClient(server.endpoint, timeout=5.0) as client:
            sub = client.on("prices.*", inbox)
            with pytest.raises(RuntimeError, match="would block the client's own loop"):
                sub.wait(1)
            assert await asyncio.wait_for(sub, 5) is True
            server.publish("prices.tick", 101)
            while not inbox.events:
                await client.call("echo")  # each round trip lets the event in: no sleep
            return inbox.events

    assert asyncio.run(main()) == [("prices.tick", 101)]


def test_unsubscribing_through_the_handle(server: zcall.AsyncServer) -> None:
    gone, kept = Inbox(), Inbox()
    with zcall.AsyncClient(server.endpoint, timeout=5.0) as client:
        sub = client.on("a.*", gone)
        other = client.on("b.*", kept)
        assert sub.wait(5) and other.wait(5)
        sub.unsubscribe()
        sub.unsubscribe()  # twice: nothing more
        assert not sub.active and sub.wait(0) is False
        with client.on("c", Inbox()) as scoped:  # the context form unsubscribes on leaving
            assert scoped.wait(5)
        assert not scoped.active
        client.call_async("echo").result(5)  # after the new pattern set: the server has it
        server.publish("a.1", 1)
        server.publish("b.1", 2)  # the fence: published after, delivered in order
        assert kept.wait_for("b.1")
        assert gone.events == []
        assert server.statistics()["subscribers"] == 1


def test_a_sync_server_answers_that_it_keeps_nothing(bind_endpoint: str) -> None:
    with zcall.SyncServer(SERVICE, bind_endpoint) as server, zcall.AsyncClient(server.endpoint) as client:
        sub = client.on("orders.*", Inbox())
        assert sub.wait(5) is False and sub.settled and not sub.active
        assert sub.refused is not None and "a sync server cannot push events" in sub.refused


def test_local_limits_are_refused_at_on() -> None:
    with zcall.AsyncClient(free_tcp_endpoint()) as client:
        with pytest.raises(ValueError, match="1 to 256 characters"):
            client.on("x" * 257, Inbox())
        for i in range(64):
            client.on(f"t{i}", Inbox())
        with pytest.raises(ValueError, match="at most 64 patterns"):
            client.on("one-more", Inbox())
        assert not client.on("t0", Inbox()).wait(0)  # a pattern it has is fine (no server: not active)


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_after_a_reconnect_the_handle_waits_for_the_new_subscription(transport: str, tmp_path: Any) -> None:
    endpoint = free_tcp_endpoint() if transport == "tcp" else ipc_endpoint(tmp_path)
    inbox = Inbox()
    down = threading.Event()
    server = zcall.AsyncServer(SERVICE, endpoint).start()
    with zcall.AsyncClient(endpoint, timeout=5.0) as client:
        client.on_liveness(lambda ep, state: down.set() if state is State.DEAD else None)
        sub = client.on("orders.*", inbox)
        assert sub.wait(5)
        server.stop(0.5)
        assert down.wait(5)  # the client saw the connection drop ...
        assert not sub.active and not sub.settled  # ... and the handle is waiting again
        server = zcall.AsyncServer(SERVICE, endpoint).start()  # the same address, a new server
        try:
            assert sub.wait(5)  # resubscribed on the new connection, and answered
            assert server.statistics()["subscribers"] == 1
            server.publish("orders.again", 2)
            assert inbox.wait_for("orders.again")
        finally:
            server.stop(0.5)


def test_peers_return_a_handle_for_every_peer_they_listen_to() -> None:
    with zcall.Peer("a") as a, zcall.Peer("b") as b, zcall.Peer("c") as c, zcall.Peer("listener") as listener:
        inbox = Inbox()
        listener.connect("a", a.endpoint)
        listener.connect("b", b.endpoint)
        sub = listener.on("news.*", inbox)  # every known peer, and those connected later
        assert sub.wait(5) and sorted(sub.parts) == ["a", "b"]
        a.publish("news.a", 1)
        b.publish("news.b", 2)
        assert inbox.wait_for("news.a") and inbox.wait_for("news.b")
        only = listener.on("alerts", Inbox(), peer="a")
        assert only.wait(5) and list(only.parts) == ["a"]
        listener.connect("c", c.endpoint)  # a new peer: the handle waits for it too
        assert sub.wait(5) and sorted(sub.parts) == ["a", "b", "c"]
        c.publish("news.c", 3)
        assert inbox.wait_for("news.c")
        sub.unsubscribe()
        assert not sub.active and sub.parts == {}


# -- a server from before the acknowledgement -----------------------------------------------------------


class OldServer:
    """A ROUTER speaking the protocol as it was: a CALL of zcall.subscribe is METHOD_NOT_FOUND, the
    NOTIFY sets the patterns, PING gets PONG, and ``publish`` pushes an EVENT to the subscriber."""

    def __init__(self) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.patterns: list[str] = []
        self.peer: bytes | None = None
        self.outbox: list[tuple[str, Any]] = []
        self.wake_r, self.wake_w = self.ctx.socket(zmq.PAIR), self.ctx.socket(zmq.PAIR)
        addr = f"inproc://old-server-{id(self)}"
        self.wake_r.bind(addr)
        self.wake_w.connect(addr)
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.wake_r, zmq.POLLIN)
        seq = 0
        while not self.stopping:
            ready = dict(poller.poll(1000))
            if self.wake_r in ready:
                self.wake_r.recv()
                for topic, payload in self.outbox:
                    if self.peer is not None and any(topic.startswith(p.rstrip("*")) for p in self.patterns):
                        seq += 1
                        self.sock.send_multipart([self.peer, b"", encode(Event(seq, topic, payload))])
                self.outbox.clear()
            if self.sock in ready:
                ident, _, body = self.sock.recv_multipart()
                msg = decode(body)
                if isinstance(msg, Notify) and msg.method == "zcall.subscribe":
                    self.peer, self.patterns = ident, list(msg.args[0])
                elif isinstance(msg, Call):
                    record = ErrorRecord.refusal(
                        zcall.StatusCode.METHOD_NOT_FOUND, f"no method {msg.method!r}"
                    )
                    self.sock.send_multipart([ident, b"", encode(ErrorReply(msg.id, record))])
                elif isinstance(msg, Ping):
                    self.sock.send_multipart([ident, b"", encode(Pong(msg.id))])

    def publish(self, topic: str, payload: Any) -> None:
        self.outbox.append((topic, payload))
        self.wake_w.send(b"")

    def close(self) -> None:
        self.stopping = True
        self.wake_w.send(b"")
        self.thread.join(5)
        for s in (self.sock, self.wake_r, self.wake_w):
            s.close(0)


def test_a_server_from_before_the_acknowledgement_still_settles_the_handle() -> None:
    old = OldServer()
    try:
        inbox = Inbox()
        with zcall.AsyncClient(old.endpoint, timeout=5.0) as client:
            sub = client.on("orders.*", inbox)
            assert sub.wait(5)  # METHOD_NOT_FOUND, then the NOTIFY and a PING: its PONG settled it
            assert old.patterns == ["orders.*"]
            old.publish("orders.new", 1)
            assert inbox.wait_for("orders.new")
    finally:
        old.close()
