"""Peers in separate processes calling each other: both ways, nested, events, notifications, a killed peer.

Every peer is ``tests/helpers/peer_node.py`` in its own process (waited for by its ``READY`` line, stopped
by pid at teardown); the test process drives them through their handlers (``relay``, ``hammer``,
``publish_event`` ...) over an ``AsyncClient`` and checks what each peer saw.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import zcall
from conftest import REPO_ROOT, TESTS_DIR
from zcall.testing import ProcessHandle, free_tcp_endpoint, spawn

NODE = str(TESTS_DIR / "helpers" / "peer_node.py")
CALL_TIMEOUT = 10.0


class Node:
    """A peer process and a client to it from the test."""

    def __init__(self, name: str, handle: ProcessHandle) -> None:
        self.name = name
        self.handle = handle
        self.endpoint = handle.endpoint
        self.client = zcall.AsyncClient(self.endpoint, timeout=CALL_TIMEOUT)

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call a handler of this peer and wait for the result."""
        return self.call_async(method, *args, **kwargs).result(CALL_TIMEOUT + 5)

    def call_async(self, method: str, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Send a call to this peer; the future holds its outcome."""
        return self.client.call_async(method, *args, **kwargs)

    def expect_lines(self, prefix: str, n: int, timeout: float = 10.0) -> list[str]:
        """Wait for ``n`` more stdout lines starting with ``prefix``."""
        return [self.handle.expect(prefix, timeout) for _ in range(n)]


@pytest.fixture
def start_peers() -> Iterator[Callable[..., list[Node]]]:
    """Factory: ``start_peers(("a", {...options}), ...)`` starts the peers together and waits for each
    READY line; every process is stopped (SIGTERM, then SIGKILL) and reaped by pid at teardown."""
    nodes: list[Node] = []
    handles: list[ProcessHandle] = []

    def start(*specs: tuple[str, dict[str, Any]]) -> list[Node]:
        started: list[tuple[str, ProcessHandle]] = []
        for name, opts in specs:
            args = [NODE, "--name", name, "--bind", opts.get("bind", "tcp://127.0.0.1:*")]
            for peer, ep in opts.get("peers", {}).items():
                args += ["--peer", f"{peer}={ep}"]
            for topic in opts.get("subscribe", ()):
                args += ["--subscribe", topic]
            args += ["--timeout", str(opts.get("timeout", 5.0))]
            h = spawn(args, ready_prefix=None, cwd=REPO_ROOT)
            handles.append(h)
            started.append((name, h))
        out = []
        for name, h in started:
            assert h.wait_ready(15).name == name, h.ready_line  # READY <endpoint> name=<name>
            node = Node(name, h)
            nodes.append(node)
            out.append(node)
        return out

    yield start
    for node in nodes:
        node.client.close()
    for h in handles:
        h.stop(timeout=3.0)


def link(*nodes: Node) -> None:
    """Make every node know every other one by name."""
    for n in nodes:
        for other in nodes:
            if other is not n:
                n.call("connect_peer", other.name, other.endpoint)


def remote_failure(fut: concurrent.futures.Future[Any], timeout: float) -> zcall.RemoteError:
    """The RemoteError a future failed with (fails the test if it succeeded or failed otherwise)."""
    exc = fut.exception(timeout)
    assert isinstance(exc, zcall.RemoteError), f"expected a RemoteError, got {exc!r}"
    return exc


# -- calls ---------------------------------------------------------------------------------------------


def test_both_ways_many_concurrent_calls(start_peers: Callable[..., list[Node]]) -> None:
    a, b = start_peers(("a", {}), ("b", {}))
    link(a, b)
    futures = {
        ("a", "async"): a.call_async("hammer", "b", 300, "async"),
        ("b", "async"): b.call_async("hammer", "a", 300, "async"),
        ("a", "sync"): a.call_async("hammer", "b", 100, "sync"),
        ("b", "sync"): b.call_async("hammer", "a", 100, "sync"),
    }
    for (who, mode), fut in futures.items():
        n = 300 if mode == "async" else 100
        assert fut.result(CALL_TIMEOUT + 5) == list(range(n)), (who, mode)
    # every echo really crossed over: each server served the other's calls
    for node, other in ((a, "b"), (b, "a")):
        st = node.call("stats")
        assert st["server"]["calls"] >= 400, st["server"]
        assert st["clients"][other]["replies"] >= 300
        assert st["sync_clients"][other]["calls"] >= 100


def test_nested_calls_blocking_and_coroutine_handlers(start_peers: Callable[..., list[Node]]) -> None:
    a, b, c = start_peers(("a", {}), ("b", {}), ("c", {}))
    link(a, b, c)
    # one hop: a's handler asks b and waits for the answer
    assert a.call("relay", "b", "whoami") == "b"  # blocking handler, Peer.call
    assert a.call("arelay", "b", "whoami") == "b"  # coroutine handler, await Peer.acall
    # a deeper chain that comes back to where it started: a -> b -> c -> a
    chains = {
        "blocking": ("relay", "b", "relay", "c", "relay", "a", "whoami"),
        "coroutine": ("arelay", "b", "arelay", "c", "arelay", "a", "whoami"),
        "mixed": ("relay", "b", "arelay", "c", "relay", "a", "echo", "back at a"),
    }
    # A blocking handler holds one of a's pool threads (6 on 2 cores) while it waits, and the chain
    # needs one more on a at its end: keep blocking chains under the pool size. Coroutine handlers hold
    # no thread, so many of those may be in flight at once.
    copies = {"blocking": 2, "coroutine": 20, "mixed": 2}
    futures = {k: [a.call_async(*chain) for _ in range(copies[k])] for k, chain in chains.items()}
    for kind, futs in futures.items():
        expected = "back at a" if kind == "mixed" else "a"
        assert [f.result(CALL_TIMEOUT + 5) for f in futs] == [expected] * copies[kind], kind


def test_blocking_call_from_the_peers_loop_says_use_acall(start_peers: Callable[..., list[Node]]) -> None:
    a, b = start_peers(("a", {}), ("b", {}))
    link(a, b)
    for handler in ("call_inline", "call_in_coroutine"):
        exc = remote_failure(a.call_async(handler, "b", "whoami"), CALL_TIMEOUT)
        assert exc.type == "RuntimeError", handler
        assert "acall" in exc.message and "event loop" in exc.message, exc.message
    assert a.call("whoami") == "a"  # and the peer's loop was not hurt


def test_start_order_does_not_matter(start_peers: Callable[..., list[Node]]) -> None:
    b_endpoint = free_tcp_endpoint()  # b's address, known before b exists
    (a,) = start_peers(("a", {"peers": {"b": b_endpoint}, "timeout": 8.0}))
    early = [a.call_async("relay", "b", "whoami"), a.call_async("arelay", "b", "whoami")]
    a.expect_lines("RELAY b whoami", 2)
    # while b is down, a call with a short timeout fails naming where it tried
    for handler in ("relay", "arelay"):
        exc = remote_failure(a.call_async(handler, "b", "whoami", timeout=0.3), CALL_TIMEOUT)
        assert exc.type == "zcall.errors.CallTimeout", exc
        assert b_endpoint in exc.message, exc.message
    assert not any(f.done() for f in early), "calls made before b started should still be waiting"
    start_peers(("b", {"bind": b_endpoint}))
    assert [f.result(CALL_TIMEOUT) for f in early] == ["b", "b"]


def test_call_to_a_peer_that_is_not_there_times_out_naming_it() -> None:
    nowhere = free_tcp_endpoint()
    with zcall.Peer("lonely", peers={"ghost": nowhere}, timeout=0.3) as me:
        with pytest.raises(zcall.CallTimeout, match=nowhere):
            me.call("ghost", "whoami")
        with pytest.raises(zcall.CallTimeout, match=nowhere):
            me.call_async("ghost", "whoami").result(5)
        with pytest.raises(LookupError, match="knows no peer 'nobody'"):
            me.call("nobody", "whoami")


# -- events and notifications --------------------------------------------------------------------------


def wait_for_subscribers(node: Node, n: int, timeout: float = 10.0) -> None:
    """Poll ``node``'s subscriber count (each poll is a round trip: no sleep) until it reaches ``n``."""
    deadline = time.monotonic() + timeout
    while node.call("subscribers") < n:
        assert time.monotonic() < deadline, f"{node.name} never saw {n} subscriber(s)"


def test_events_reach_matching_subscribers_only_at_most_once(
    start_peers: Callable[..., list[Node]],
) -> None:
    (a,) = start_peers(("a", {}))
    a.call("publish_event", "orders.early", 0)  # nobody subscribed yet: this one is gone for good
    (b,) = start_peers(("b", {"peers": {"a": a.endpoint}, "subscribe": ["orders.*"]}))
    wait_for_subscribers(a, 1)
    a.call("publish_event", "orders.new", {"id": 1})
    a.call("publish_event", "billing.x", {"id": 2})
    a.call("publish_event", "orders.done", {"id": 3})  # same connection, same order: a sentinel
    got = b.call("wait_event", "orders.done", 5.0)
    assert got == [["orders.new", {"id": 1}], ["orders.done", {"id": 3}]]
    a_stats = a.call("stats")["server"]
    assert a_stats["events_sent"] == 2  # billing.x and orders.early went to nobody
    assert b.call("stats")["clients"]["a"]["events"] == 2


def test_events_filtered_by_topic_are_not_counted_as_missed(
    start_peers: Callable[..., list[Node]],
) -> None:
    (a,) = start_peers(("a", {}))
    (b,) = start_peers(("b", {"peers": {"a": a.endpoint}, "subscribe": ["orders.*"]}))
    wait_for_subscribers(a, 1)
    for topic in ("orders.1", "billing.x", "orders.2"):
        a.call("publish_event", topic)
    b.call("wait_event", "orders.2", 5.0)
    client_stats = b.call("stats")["clients"]["a"]
    assert client_stats["events"] == 2
    assert client_stats["events_missed"] == 0  # billing.x was never meant for b: not a gap


def test_notify_between_peers_runs_the_handler(start_peers: Callable[..., list[Node]]) -> None:
    a, b = start_peers(("a", {}), ("b", {}))
    link(a, b)
    assert b.call("bump", 0) == 0
    for _ in range(20):
        assert a.call("send_notify", "b", "bump", 2) is None  # returns before b has run anything
    assert b.call("wait_count", 40, 5.0) == 40
    assert b.call("bump", 0) == 40  # not run twice either


# -- failures ------------------------------------------------------------------------------------------


def test_killed_peer_fails_pending_calls_and_is_used_again_when_back(
    start_peers: Callable[..., list[Node]],
) -> None:
    timeout = 4.0  # a's call timeout: what every failure below would take
    a, b = start_peers(("a", {"timeout": timeout}), ("b", {}))
    link(a, b)
    via_acall = [a.call_async("arelay", "b", "slow", 30, f"x{i}") for i in range(3)]
    sent = time.monotonic()
    via_call = [a.call_async("relay", "b", "slow", 30, f"s{i}") for i in range(2)]
    b.expect_lines("SLOW START", 5)  # all five are running inside b
    b.handle.kill()
    b.handle.wait(5)
    killed = time.monotonic()
    # the DEALER sees the disconnect: pending async calls fail at once with ConnectionLost
    for f in via_acall:
        exc = remote_failure(f, timeout + 1)
        assert exc.type == "zcall.errors.ConnectionLost", exc
        assert b.endpoint in exc.message
    # at once; not seeing the disconnect would make them wait out a's 4 s timeout: half of that
    assert time.monotonic() - killed < timeout / 2
    # a keeps serving others while its blocking calls to b are still waiting out their timeout (sent
    # under timeout / 2 ago, by the bound just above plus the kill: they cannot have timed out yet)
    assert time.monotonic() - sent < timeout, "too slow to tell waiting calls from timed-out ones"
    assert not any(f.done() for f in via_call)
    assert a.call("whoami") == "a"
    for f in via_call:  # REQ cannot see the disconnect: CallTimeout after a's timeout
        exc = remote_failure(f, timeout + 3)
        assert exc.type == "zcall.errors.CallTimeout", exc
        assert b.endpoint in exc.message
    # at a's 4 s timeout from when they were sent; a call that never timed out would fail just above
    assert time.monotonic() - sent < timeout * 1.5
    # b comes back on the same endpoint: a uses it again, both ways of calling
    start_peers(("b", {"bind": b.endpoint}))
    assert a.call("arelay", "b", "whoami") == "b"
    assert a.call("relay", "b", "whoami") == "b"


# -- Peer internals that once failed (in one process: they are about one peer's threads and loop) --------


def test_peer_subscriptions_reach_the_publisher_and_run_once_per_event() -> None:
    got: dict[str, list[tuple[str, Any]]] = {"b": [], "c": []}
    last = {"b": threading.Event(), "c": threading.Event()}

    def recorder(who: str) -> Callable[[str, Any], None]:
        def record(topic: str, payload: Any) -> None:
            got[who].append((topic, payload))
            if payload == "last":
                last[who].set()

        return record

    with zcall.Peer("a") as a:
        b = zcall.Peer("b")
        b.on("orders.*", recorder("b"))
        b.connect("a", a.endpoint)  # b knows a only after on(), before start()
        c = zcall.Peer("c", peers={"a": a.endpoint})
        with b, c:
            c.on("orders.*", recorder("c"))  # c's client to a is made by on() itself
            deadline = time.monotonic() + 5
            while a.statistics()["server"]["subscribers"] < 2:  # each round is a call, not a sleep
                assert time.monotonic() < deadline, f"{a.statistics()['server']['subscribers']} subscribers"
                b.call("a", "zcall.ping")
            a.publish("orders.x", 1)
            a.publish("orders.y", "last")
            assert last["b"].wait(5) and last["c"].wait(5)
            b.call_async("a", "zcall.ping").result(5)  # round trips on the event connections:
            c.call_async("a", "zcall.ping").result(5)  # room for a duplicate to show up
            for who in ("b", "c"):
                assert got[who] == [("orders.x", 1), ("orders.y", "last")], who  # each exactly once


def test_making_clients_from_threads_while_coroutines_acall_does_not_freeze_the_loop() -> None:
    names = [f"b{i}" for i in range(8)]
    with zcall.Peer("target") as target:
        svc = zcall.Service("a")
        a = zcall.Peer("a", svc, peers={n: target.endpoint for n in names})

        @svc.method
        async def go(name: str) -> Any:
            return await a.acall(name, "zcall.ping")

        with a, zcall.Peer("me", peers={"a": a.endpoint}, timeout=5.0) as me:
            me.call("a", "zcall.ping")
            barrier = threading.Barrier(2)

            def make_clients() -> None:
                barrier.wait()
                for n in names:
                    a.client(n)

            t = threading.Thread(target=make_clients)
            t.start()
            barrier.wait()
            started = time.monotonic()
            futures = [me.call_async("a", "go", n) for n in reversed(names)]
            results = [f.result(10) for f in futures]
            t.join(10)
            assert time.monotonic() - started < 3.0
            assert len(results) == len(names) and all(results)
            assert sorted(a.statistics()["clients"]) == sorted(names)
