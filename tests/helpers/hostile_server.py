"""A tiny server for the hostile-input, socket-hygiene and hardening tests, in a thread or a child process.

``make_service()`` builds a fresh ``Service`` whose ``probe()`` method reports the serving process's
resident memory (now and its peak since the last ``probe(reset_peak=True)``), how long its event loop
was held up (with ``--lag-monitor``) and its server's counters (bad messages, reply cache, subscribers,
in flight), so a test can check over the wire that a server under attack stays bounded. The other
methods are the handlers those tests need: gated calls a test releases (``hold``/``release``), calls
that never end, handlers that raise ``BaseException``s, results a caller cannot read. Handlers that
block print ``STARTED <tag>`` on stdout first, so a test can wait for them on the process's output.

Run as a program it serves one with ``AsyncServer`` (ROUTER), ``SyncServer`` (REP semantics on a
ROUTER) or a ``Peer`` and prints ``READY <endpoint>``::

    python -m helpers.hostile_server --kind async --bind tcp://127.0.0.1:* --max-message-size 4096
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import sys
import threading
import time
from typing import Any

import zcall
from zcall.service.replycache import ReplyCache
from zcall.tools.ready import announce

_print_lock = threading.Lock()


def say(line: str) -> None:
    """One stdout line in one write (handler threads print concurrently), flushed at once."""
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _status_kib(field: str) -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib() -> int:
    """This process's resident set size in KiB (VmRSS from /proc/self/status; 0 where there is none)."""
    return _status_kib("VmRSS")


def peak_rss_kib() -> int:
    """The largest resident set size since start or since ``reset_peak()`` (VmHWM), in KiB."""
    return _status_kib("VmHWM")


def reset_peak() -> bool:
    """Start measuring the peak RSS again from now (Linux: ``5`` into /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


class LagMonitor:
    """A timer on an event loop that wakes every ``tick`` seconds and records how late it woke: the
    longest time the loop was held up by anything (a message being decoded, a handler on the loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float = 0.002) -> None:
        self.loop = loop
        self.tick = tick
        self.max_lag = 0.0
        self._due = 0.0
        loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self._due = time.monotonic() + self.tick
        self.loop.call_at(self.loop.time() + self.tick, self._wake)

    def _wake(self) -> None:
        now = time.monotonic()
        self.max_lag = max(self.max_lag, now - self._due)
        self._due = now + self.tick
        self.loop.call_at(self.loop.time() + self.tick, self._wake)

    def take(self) -> float:
        """The longest lag since the last ``take`` (seconds), and start again. Counts the wake-up that is
        due now and has not run yet (this call may run before it, in the same loop pass)."""
        now = time.monotonic()
        lag = max(self.max_lag, now - self._due)
        self.max_lag = 0.0
        self._due = max(self._due, now)  # the late wake-up to come must not count this lag again
        return lag


class Boom(BaseException):
    """A BaseException that is neither SystemExit nor KeyboardInterrupt (what a handler may raise)."""


_RAISABLE: dict[str, type[BaseException]] = {
    "SystemExit": SystemExit,
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "Boom": Boom,
    "RuntimeError": RuntimeError,
}


class Explosive:
    """An ext type (code 42, registered by ``main``) whose encoder raises the exception ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name


def _explode(obj: Explosive) -> bytes:
    raise _RAISABLE[obj.name](f"{obj.name} from an ext type's encoder")


def register_explosive() -> None:
    """Register ``Explosive`` on the default codec: in a server process only (the test process's codec
    must keep ext type 42 unregistered, as the protocol vectors expect)."""
    zcall.register_type(Explosive, 42, _explode, lambda data: Explosive(data.decode()))


class Holder:
    """Where ``probe()`` finds the server serving the service (set once the server exists)."""

    server: Any = None
    lag: LagMonitor | None = None
    started: threading.Event
    naps: int  # how many times ``nap`` ran

    def __init__(self) -> None:
        self.started = threading.Event()
        self.naps = 0
        self.lock = threading.Lock()
        self.runs: collections.Counter[str] = collections.Counter()  # tag -> handler runs (hold, count)
        self.begun = 0  # handlers that printed STARTED
        self.gates: dict[str, threading.Event] = {}

    def gate(self, tag: str) -> threading.Event:
        with self.lock:
            return self.gates.setdefault(tag, threading.Event())

    def begin(self, tag: str) -> None:
        with self.lock:
            self.runs[tag] += 1
            self.begun += 1
        say(f"STARTED {tag}")


def make_service() -> tuple[zcall.Service, Holder]:
    """A fresh service (echo, blob, nap, probe) and the holder its ``probe`` reads the server from."""
    svc = zcall.Service("hostile")
    holder = Holder()

    @svc.method(inline=True)
    def echo(value: Any = None) -> Any:
        """Return value unchanged (on the loop: its reply is sent before the next message is read)."""
        return value

    @svc.method(inline=True)
    def blob(size: int) -> bytes:
        """``size`` zero bytes: a small request with a big reply (fills a slow reader's queue)."""
        return bytes(size)

    @svc.method
    def nap(seconds: float) -> float:
        """Sleep ``seconds`` in a worker thread (sets ``holder.started`` first) and return them."""
        with holder.lock:
            holder.naps += 1
        holder.started.set()
        time.sleep(seconds)
        return seconds

    @svc.method(inline=True)
    def bump(tag: str = "") -> str:
        """A non-idempotent call (a retry-marked one is kept in the reply cache)."""
        return tag

    @svc.method(inline=True)
    def probe(reset_peak: bool = False) -> dict[str, Any]:
        """RSS in KiB (now, and its peak since the last reset), the longest the loop was held up since
        the last probe (``lag_ms``, with a lag monitor) and the server's counters: what a hostile-input
        test checks stays bounded. ``reset_peak`` starts measuring the peak again once it is read."""
        srv = holder.server
        out: dict[str, Any] = {"rss_kib": rss_kib(), "peak_rss_kib": peak_rss_kib(), "pid": os.getpid()}
        if reset_peak:
            out["peak_reset"] = reset_peak_rss()
        if holder.lag is not None:
            out["lag_ms"] = holder.lag.take() * 1000
        if isinstance(srv, zcall.Peer):
            srv = srv._server
        if srv is not None:
            d = srv._dispatch
            out["counters"] = dict(d.counters)
            out["replies"] = len(d.replies)
            out["reply_bytes"] = d.replies.nbytes
            out["reply_cache"] = dict(d.replies.counters)
            out["reply_waiters"] = max((len(e[2] or ()) for e in d.replies._running.values()), default=0)
            out["in_flight"] = d.in_flight
            out["in_flight_bytes"] = d.in_flight_bytes
            if isinstance(srv, zcall.AsyncServer):
                out["stats"] = srv.statistics()
                subs = srv._subscribers._subs
                out["patterns"] = {ident.hex(): len(sub[1]) for ident, sub in subs.items()}
                out["pattern_chars"] = max((len(p) for sub in subs.values() for p in sub[1]), default=0)
        return out

    # -- gated and counted calls: a test decides when they end ------------------------------------

    @svc.method
    def hold(tag: str, timeout: float = 30.0, data: Any = None) -> str:
        """Count a run of ``tag``, print STARTED, then wait (a pool thread) until ``release(tag)``;
        ``data`` is only carried (what a queued call holds)."""
        holder.begin(tag)
        holder.gate(tag).wait(timeout)
        return tag

    @svc.method(inline=True)
    def release(tag: str) -> int:
        """Let every ``hold(tag)`` (running or future) return; how many runs of ``tag`` there were."""
        holder.gate(tag).set()
        return holder.runs[tag]

    @svc.method(inline=True)
    def runs(tag: str) -> int:
        """How many times a counted handler ran for ``tag``."""
        return holder.runs[tag]

    @svc.method(inline=True)
    def count(tag: str, pad: int = 0) -> str:
        """Count a run of ``tag`` and return it (with ``pad`` bytes of padding: a reply of that size)."""
        with holder.lock:
            holder.runs[tag] += 1
        return tag + "." * pad

    @svc.method
    async def asleep(seconds: float, tag: str) -> str:
        """A coroutine that prints STARTED, then sleeps ``seconds`` on the loop (without holding it)."""
        holder.begin(tag)
        await asyncio.sleep(seconds)
        return tag

    @svc.method
    async def wait_begun(n: int, timeout: float = 10.0) -> int:
        """Return once ``n`` handlers have printed STARTED (a coroutine: other calls go on meanwhile)."""
        deadline = time.monotonic() + timeout
        while holder.begun < n and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        return holder.begun

    # -- handlers that never end --------------------------------------------------------------------

    @svc.method
    def block_forever(tag: str) -> None:
        """A plain handler (pool thread; the serving thread on REP) that never returns."""
        holder.begin(tag)
        threading.Event().wait()

    @svc.method
    async def await_forever(tag: str) -> None:
        """A coroutine that never returns (until cancelled)."""
        holder.begin(tag)
        await asyncio.Event().wait()

    @svc.method(inline=True)
    def block_loop_forever(tag: str) -> None:
        """An inline handler that never returns: it holds the server's event loop for good."""
        holder.begin(tag)
        threading.Event().wait()

    # -- handlers that raise what is not an Exception ------------------------------------------------

    @svc.method(inline=True)
    def raise_inline(name: str) -> None:
        """Raise the BaseException called ``name`` on the loop (inline)."""
        raise _RAISABLE[name](f"{name} from an inline handler")

    @svc.method
    def raise_pool(name: str) -> None:
        """Raise the BaseException called ``name`` in a pool thread."""
        raise _RAISABLE[name](f"{name} from a pool handler")

    @svc.method
    async def raise_coroutine(name: str) -> None:
        """Raise the BaseException called ``name`` in a coroutine, after one await."""
        await asyncio.sleep(0)
        raise _RAISABLE[name](f"{name} from a coroutine handler")

    @svc.method(inline=True)
    def kill_loop() -> str:
        """Fault injection, not a handler failure: schedule a callback that raises KeyboardInterrupt
        out of the event loop itself (as a bug in zcall's own loop code would)."""

        def die() -> None:
            raise KeyboardInterrupt("injected into the loop")

        asyncio.get_running_loop().call_soon(die)
        return "scheduled"

    # -- results a caller cannot read -----------------------------------------------------------------

    @svc.method(inline=True)
    def int_keys() -> dict[Any, Any]:
        """A map with an int key: msgpack encodes it, a caller's decoder (strict_map_key) refuses it."""
        return {1: "one", "two": 2}

    @svc.method(inline=True)
    def int_keys_inside() -> list[Any]:
        """The int-keyed map one level down, inside an array."""
        return [0, {"ok": {7: "seven"}}]

    @svc.method(inline=True)
    def int_keys_subclass() -> dict[Any, Any]:
        """The int-keyed map as a dict subclass (a defaultdict), as real handlers often return."""
        d: collections.defaultdict[Any, int] = collections.defaultdict(int)
        d[1] += 1
        return d

    @svc.method(inline=True)
    def deep(depth: int) -> Any:
        """``depth`` nested one-item arrays."""
        v: Any = 0
        for _ in range(depth):
            v = [v]
        return v

    @svc.method
    def big(size: int) -> bytes:
        """``size`` zero bytes, made in a pool thread (a result too big to send)."""
        return bytes(size)

    @svc.method(inline=True)
    def explosive(name: str) -> Any:
        """A result whose registered ext encoder raises the BaseException called ``name`` (the reply
        path runs user code too)."""
        return Explosive(name)

    @svc.method
    def explosive_pool(name: str) -> Any:
        """``explosive`` from a pool thread."""
        return Explosive(name)

    @svc.method(inline=True)
    def publish(topic: str, payload: Any = None) -> int:
        """Publish an event from the server (AsyncServer or Peer) to its subscribers."""
        holder.server.publish(topic, payload)
        return 1

    def near(n: int) -> str:
        return "n" * n

    svc.add(near, name="n" * 200)  # a 200-character name, for the close-match limit

    return svc, holder


reset_peak_rss = reset_peak


def main() -> None:
    """Serve ``make_service()`` until SIGTERM/SIGINT; print ``READY <endpoint>`` once bound."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--kind", choices=["async", "sync", "peer"], default="async")
    p.add_argument("--bind", default="tcp://127.0.0.1:*")
    p.add_argument("--sync-bind", default=None, help="peer: also serve REQ callers here")
    p.add_argument("--max-message-size", type=int, default=None)
    p.add_argument("--max-decoded-bytes", type=int, default=None)
    p.add_argument("--max-in-flight", type=int, default=None)
    p.add_argument("--max-in-flight-bytes", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--reply-cache-bytes", type=int, default=None)
    p.add_argument("--reply-cache-ttl", type=float, default=None)
    p.add_argument("--grace", type=float, default=0.5)
    p.add_argument("--no-check-replies", action="store_true", help="send results without checking them")
    p.add_argument("--lag-monitor", action="store_true", help="record how long the event loop is held up")
    p.add_argument("--log-level", default="ERROR")
    ns = p.parse_args()
    # one line per bad message is the contract; the fuzz sends thousands, so keep them off the pipe
    logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("zcall").setLevel(getattr(logging, ns.log_level))
    register_explosive()
    svc, holder = make_service()
    kwargs: dict[str, Any] = {}
    if ns.max_message_size is not None or ns.max_decoded_bytes is not None:
        limits = {"max_message_size": ns.max_message_size, "max_decoded_bytes": ns.max_decoded_bytes}
        kwargs["codec"] = zcall.Codec(**{k: v for k, v in limits.items() if v is not None})
    if ns.reply_cache_bytes is not None or ns.reply_cache_ttl is not None:
        cache = {"max_bytes": ns.reply_cache_bytes, "ttl": ns.reply_cache_ttl}
        kwargs["reply_cache"] = ReplyCache(**{k: v for k, v in cache.items() if v is not None})
    if ns.no_check_replies:
        kwargs["check_replies"] = False
    for name in ("max_in_flight", "max_in_flight_bytes", "workers"):
        if getattr(ns, name) is not None:
            kwargs[name] = getattr(ns, name)
    server: Any
    if ns.kind == "peer":
        peer_knobs = ("codec", "max_in_flight", "max_in_flight_bytes", "workers")
        peer_kwargs = {k: v for k, v in kwargs.items() if k in peer_knobs}
        server = zcall.Peer("hostile", svc, bind=ns.bind, sync_bind=ns.sync_bind, **peer_kwargs)
    elif ns.kind == "sync":  # one call at a time: no pool, no limits on calls in flight
        sync_kwargs = {k: v for k, v in kwargs.items() if k in ("codec", "reply_cache", "check_replies")}
        server = zcall.SyncServer(svc, ns.bind, **sync_kwargs)
    else:
        server = zcall.AsyncServer(svc, ns.bind, **kwargs)
    holder.server = server

    def ready(endpoint: str) -> None:
        if ns.lag_monitor and ns.kind != "sync":
            loop = server._server._loop if ns.kind == "peer" else server._loop
            holder.lag = LagMonitor(loop)
        announce(endpoint)

    server.serve_forever(grace=ns.grace, on_ready=ready)


if __name__ == "__main__":
    main()
