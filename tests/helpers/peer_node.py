"""A zcall ``Peer`` in its own process, for the peer integration tests and patterns.

    python tests/helpers/peer_node.py --name a [--bind tcp://127.0.0.1:*] [--peer b=tcp://...]...
        [--subscribe 'orders.*']... [--timeout 5]

prints ``READY <endpoint> name=<name>`` (``zcall.tools.ready``) once bound and serves until SIGTERM/SIGINT.
Its handlers give tests a handle on everything a peer does: who am I, nested calls to other peers
(blocking and coroutine), events, notifications with a visible side effect, a slow call. Handlers that
tests synchronise on print a marker line (``SLOW START <tag>``, ``RELAY <peer> <method>``) so a test
waits on stdout instead of sleeping.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import threading
import time
from typing import Any

import zcall
from zcall.tools.ready import announce
from zcall.tools.serving import serve_until_stopped

service = zcall.Service("peer_node")
node: zcall.Peer  # set by main(); the handlers below act through it

_lock = threading.Condition()
_counter = 0
_received: list[list[Any]] = []
_stdout_lock = threading.Lock()


def say(line: str) -> None:
    """Print one whole marker line (print() from two threads can interleave text and newline)."""
    with _stdout_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


# -- identity and plain calls ------------------------------------------------------------------------


@service.method
def whoami() -> str:
    """This peer's name."""
    return node.name


@service.method
def echo(value: Any) -> Any:
    """Return value unchanged."""
    return value


@service.method
def slow(seconds: float, tag: str = "") -> str:
    """Print ``SLOW START <tag>``, sleep ``seconds``, return ``tag`` (a call that stays pending)."""
    say(f"SLOW START {tag}")
    time.sleep(seconds)
    return tag


@service.method
def connect_peer(name: str, endpoint: str) -> list[str]:
    """Learn (or re-learn) peer ``name`` at ``endpoint``; returns the names now known."""
    node.connect(name, endpoint)
    return sorted(node.peers)


@service.method
def stats() -> dict[str, Any]:
    """This peer's ``statistics()``."""
    return node.statistics()


# -- nested calls ----------------------------------------------------------------------------------------


@service.method
def relay(peer: str, method: str, *args: Any, timeout: float | None = None) -> Any:
    """Blocking handler (thread pool) that calls ``method(*args)`` on ``peer`` with ``Peer.call``."""
    say(f"RELAY {peer} {method}")
    if timeout is None:
        return node.call(peer, method, *args)
    return node.sync_client(peer).options(timeout=timeout).call(method, *args)


@service.method
async def arelay(peer: str, method: str, *args: Any, timeout: float | None = None) -> Any:
    """Coroutine handler (the peer's loop) that calls ``method(*args)`` on ``peer`` with ``await acall``."""
    say(f"RELAY {peer} {method}")
    if timeout is None:
        return await node.acall(peer, method, *args)
    return await node.client(peer).options(timeout=timeout).call(method, *args)


@service.method(inline=True)
def call_inline(peer: str, method: str) -> Any:
    """Misuse on purpose: a blocking ``Peer.call`` from an inline handler (runs on the peer's loop)."""
    return node.call(peer, method)


@service.method
async def call_in_coroutine(peer: str, method: str) -> Any:
    """Misuse on purpose: a blocking ``Peer.call`` from a coroutine handler."""
    return node.call(peer, method)


@service.method
def hammer(peer: str, n: int, mode: str = "async") -> list[Any]:
    """Call ``echo(i)`` on ``peer`` for i in range(n), all at once; returns the results in order.

    ``mode="async"``: n futures from ``call_async`` in flight together; ``"sync"``: ``Peer.call`` from 4
    threads.
    """
    if mode == "async":
        futures = [node.call_async(peer, "echo", i) for i in range(n)]
        return [f.result(30) for f in futures]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda i: node.call(peer, "echo", i), range(n)))


# -- events and notifications --------------------------------------------------------------------------


@service.method
def publish_event(topic: str, payload: Any = None) -> None:
    """Publish ``payload`` on ``topic`` to this peer's subscribers."""
    node.publish(topic, payload)


@service.method
def subscribers() -> int:
    """How many peers are subscribed to this peer's events (reached this peer's server)."""
    return node.statistics()["server"]["subscribers"]


@service.method
def subscribe(topic: str) -> None:
    """Start recording events on ``topic`` from every known peer (``received`` returns them)."""
    node.on(topic, _record)


def _record(topic: str, payload: Any) -> None:
    with _lock:
        _received.append([topic, payload])
        _lock.notify_all()


@service.method
def received() -> list[list[Any]]:
    """Every event recorded so far, as [topic, payload], in arrival order."""
    with _lock:
        return list(_received)


@service.method
def wait_event(topic: str, timeout: float = 5.0) -> list[list[Any]]:
    """Block until an event on ``topic`` has been recorded (or ``timeout``); return every event so far."""
    with _lock:
        _lock.wait_for(lambda: any(t == topic for t, _ in _received), timeout)
        return list(_received)


@service.method
def bump(n: int = 1) -> int:
    """Add n to this process's counter (the side effect of a notification); returns the new value."""
    global _counter
    with _lock:
        _counter += n
        _lock.notify_all()
        return _counter


@service.method
def wait_count(at_least: int, timeout: float = 5.0) -> int:
    """Block until the counter reaches ``at_least`` (or ``timeout``); return the counter."""
    with _lock:
        _lock.wait_for(lambda: _counter >= at_least, timeout)
        return _counter


@service.method
def send_notify(peer: str, method: str, *args: Any) -> None:
    """One-way call ``method(*args)`` on ``peer`` (``Peer.notify``)."""
    node.notify(peer, method, *args)


# -- the process ---------------------------------------------------------------------------------------


def _parse_peer(text: str) -> tuple[str, str]:
    name, sep, endpoint = text.partition("=")
    if not sep or not name or "://" not in endpoint:
        raise argparse.ArgumentTypeError(f"expected NAME=ENDPOINT, got {text!r}")
    return name, endpoint


def main(argv: list[str] | None = None) -> int:
    """Serve a peer until SIGTERM/SIGINT; print ``READY <endpoint> name=<name>`` once bound."""
    global node
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--bind", default="tcp://127.0.0.1:*", metavar="ENDPOINT")
    parser.add_argument("--peer", action="append", default=[], type=_parse_peer, metavar="NAME=ENDPOINT")
    parser.add_argument("--subscribe", action="append", default=[], metavar="TOPIC")
    parser.add_argument("--timeout", type=float, default=5.0, help="default call timeout, seconds")
    ns = parser.parse_args(argv)

    node = zcall.Peer(ns.name, service, bind=ns.bind, peers=dict(ns.peer), timeout=ns.timeout)

    def ready(endpoint: str) -> None:
        for topic in ns.subscribe:
            node.on(topic, _record)
        with _stdout_lock:  # one whole line, even while a handler prints a marker
            announce(endpoint, name=ns.name)

    serve_until_stopped(node, grace=1.0, on_ready=ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
