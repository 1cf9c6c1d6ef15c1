"""A fault-injecting proxy for tests: drop, delay, duplicate or reorder messages, cut and restore the link.

``FaultProxy`` is the classic queue device with a saboteur inside: clients connect to its frontend (a
ROUTER), and its backend (a DEALER) connects to the server. Servers return the routing envelope they were
given, so it works for REQ→REP, REQ→ROUTER, DEALER→ROUTER and DEALER→REP pairings alike. It runs on its
own thread; the command methods are thread-safe and return once the proxy thread has applied them.

Faults are rules, per direction (``"requests"``: client → server, ``"replies"``: server → client)::

    with FaultProxy(server.endpoint) as proxy:
        client = zcall.SyncClient(proxy.endpoint, retries=1, timeout=0.3)
        proxy.drop("replies")                          # the next reply, once
        proxy.duplicate("replies", count=None)         # every reply from now on, twice
        proxy.delay("requests", 0.2, probability=0.1)  # 10% of requests, 200 ms late (seeded RNG)
        proxy.reorder("replies", 8)                    # hold 8 replies, release them newest first
        proxy.drop("requests", match=is_call)          # by predicate on the frames
        proxy.cut(); proxy.restore()                   # the link goes away, and comes back

A rule fires on a message it ``match``-es (every message by default: with zcall's own heartbeats on, a
ping or pong is a message too; ``is_call``/``is_reply`` select calls and their answers), with
``probability`` drawn from the proxy's seeded RNG, at most ``count`` times (``None``: forever). The
first rule (oldest first) that fires on a message decides its fate; the rest pass it on unchanged.
Everything the proxy did is counted in ``proxy.stats``; ``wait_for`` waits for a count (no sleeping).
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Literal

import zmq

from ..engine.sockets import monitor_socket
from ..protocol.wire import Kind, peek_kind

__all__ = [
    "REPLIES",
    "REQUESTS",
    "FaultProxy",
    "FaultRule",
    "is_call",
    "is_reply",
    "kind_of",
]

REQUESTS = "requests"
"""Messages from clients (frontend) towards the server (backend)."""
REPLIES = "replies"
"""Messages from the server (backend) back towards clients (frontend)."""

Direction = Literal["requests", "replies"]
Match = Callable[[list[bytes]], bool]
_DIRECTIONS = (REQUESTS, REPLIES)
_COUNTERS = (
    "received",  # messages that reached the proxy in this direction
    "forwarded",  # messages sent on (duplicates and late ones included)
    "dropped",  # dropped by a drop rule
    "delayed",  # held by a delay rule (each is forwarded later, unless the link is cut meanwhile)
    "duplicated",  # extra copies sent by a duplicate rule
    "reordered",  # messages held by a reorder rule and released out of arrival order
    "cut_dropped",  # lost because the link was cut (arrived while cut, or held when it was cut)
    "unroutable",  # replies for a client that is no longer connected (ROUTER_MANDATORY)
    "overflow",  # dropped because the next hop's queue was full (the proxy never blocks)
)


# -- predicates on frames --------------------------------------------------------------------------


def kind_of(frames: list[bytes]) -> Kind | None:
    """The zcall message kind of a multipart message (its last frame), or None if it is not one."""
    return peek_kind(frames[-1]) if frames else None


def is_call(frames: list[bytes]) -> bool:
    """True for a zcall CALL (not pings, cancels, notifies): ``match=is_call`` targets calls only."""
    return kind_of(frames) is Kind.CALL


def is_reply(frames: list[bytes]) -> bool:
    """True for the answer to a call (REPLY or ERROR, not pongs or events)."""
    return kind_of(frames) in (Kind.REPLY, Kind.ERROR)


# -- rules -----------------------------------------------------------------------------------------


class FaultRule:
    """One fault: what to do (``action``) to which messages of a direction, how likely, how many times.

    ``fired`` counts the messages it took; ``active`` is False once ``count`` is used up or it was
    cancelled. Made by ``FaultProxy.drop`` and friends, not directly.
    """

    __slots__ = ("action", "direction", "count", "probability", "match", "param", "fired", "_cancelled")

    def __init__(
        self,
        action: str,
        direction: str,
        count: int | None,
        probability: float,
        match: Match | None,
        param: float = 0.0,
    ) -> None:
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be 'requests' or 'replies', got {direction!r}")
        if count is not None and count < 1:
            raise ValueError(f"count must be >= 1 or None (forever), got {count!r}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], got {probability!r}")
        self.action = action
        self.direction = direction
        self.count = count
        self.probability = probability
        self.match = match
        self.param = param
        self.fired = 0
        self._cancelled = False

    @property
    def active(self) -> bool:
        """True while the rule may still fire."""
        return not self._cancelled and (self.count is None or self.fired < self.count)

    def cancel(self) -> None:
        """Stop firing (a message already held by it is still released as planned)."""
        self._cancelled = True

    def __repr__(self) -> str:
        left = "forever" if self.count is None else f"{self.count - self.fired} left"
        return f"<FaultRule {self.action} {self.direction} p={self.probability} fired={self.fired} {left}>"


class _Held:
    """Messages a reorder rule holds until it has ``count`` of them (or ``hold`` seconds passed)."""

    __slots__ = ("rule", "frames", "deadline")

    def __init__(self, rule: FaultRule, deadline: float) -> None:
        self.rule = rule
        self.frames: list[list[bytes]] = []
        self.deadline = deadline


# -- the proxy -------------------------------------------------------------------------------------


class FaultProxy:
    """A ROUTER→DEALER proxy on its own thread that injects faults on command (see the module doc).

    ``backend`` is the server's endpoint; clients connect to ``proxy.endpoint`` (the frontend, bound to
    ``frontend``, a free loopback port by default). ``seed`` makes probabilistic faults repeatable.
    ``hold`` bounds how long a reorder rule waits for its window to fill before releasing what it has.
    """

    def __init__(
        self,
        backend: str,
        frontend: str = "tcp://127.0.0.1:*",
        *,
        seed: int | None = 0,
        hold: float = 1.0,
        context: zmq.Context | None = None,
    ) -> None:
        self.backend = backend
        self._requested = frontend
        self._endpoint: str | None = None
        self._ctx = context or zmq.Context.instance()
        self._rng = random.Random(seed)
        self._hold = hold
        self._rules: list[FaultRule] = []
        self._held: dict[int, _Held] = {}  # id(rule) -> what a reorder rule holds
        self._delayed: list[tuple[float, int, str, list[bytes]]] = []  # heap: (due, seq, direction, frames)
        self._seq = 0
        self._cut: str | None = None  # None, "disconnect" or "blackhole"
        self._front: zmq.Socket | None = None
        self._front_monitor: zmq.Socket | None = None
        self._back: zmq.Socket | None = None
        self._poller = zmq.Poller()
        self._commands: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._cond = threading.Condition()
        self._stats: dict[str, Any] = {d: dict.fromkeys(_COUNTERS, 0) for d in _DIRECTIONS}
        self._stats.update(cuts=0, restores=0)
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._stopping = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """Where clients connect: the frontend endpoint actually bound (the real port for ``*``)."""
        if self._endpoint is None:
            raise RuntimeError("proxy is not started: call start() or use it as a context manager")
        return self._endpoint

    def start(self) -> FaultProxy:
        """Bind the frontend, connect the backend and start forwarding; returns once bound."""
        if self._thread is not None:
            raise RuntimeError("proxy already started")
        self._thread = threading.Thread(target=self._run, name="zcall-fault-proxy", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            self._close_pipe()
            self._closed = True
            raise self._start_error
        return self

    def close(self) -> None:
        """Stop the thread and close every socket with LINGER 0 (held messages are discarded)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            self._stopping = True
            self._wake()
            self._thread.join(10)
        self._close_pipe()

    def __enter__(self) -> FaultProxy:
        return self if self._thread is not None else self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- faults ------------------------------------------------------------------------------------

    def drop(
        self,
        direction: Direction,
        *,
        count: int | None = 1,
        probability: float = 1.0,
        match: Match | None = None,
    ) -> FaultRule:
        """Drop the next ``count`` matching messages (each with ``probability``)."""
        return self._add(FaultRule("drop", direction, count, probability, match))

    def delay(
        self,
        direction: Direction,
        seconds: float,
        *,
        count: int | None = 1,
        probability: float = 1.0,
        match: Match | None = None,
    ) -> FaultRule:
        """Forward the next ``count`` matching messages ``seconds`` late (later ones may overtake them)."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        return self._add(FaultRule("delay", direction, count, probability, match, seconds))

    def duplicate(
        self,
        direction: Direction,
        *,
        copies: int = 1,
        count: int | None = 1,
        probability: float = 1.0,
        match: Match | None = None,
    ) -> FaultRule:
        """Forward the next ``count`` matching messages ``1 + copies`` times, back to back."""
        if copies < 1:
            raise ValueError(f"copies must be >= 1, got {copies!r}")
        return self._add(FaultRule("duplicate", direction, count, probability, match, copies))

    def reorder(
        self,
        direction: Direction,
        count: int = 2,
        *,
        shuffle: bool = False,
        probability: float = 1.0,
        match: Match | None = None,
    ) -> FaultRule:
        """Hold the next ``count`` matching messages, then release them newest first (or shuffled by the
        seeded RNG). If the window is not full within ``hold`` seconds, what is held goes out reversed."""
        if count < 2:
            raise ValueError(f"reordering needs count >= 2, got {count!r}")
        return self._add(FaultRule("reorder", direction, count, probability, match, 1.0 if shuffle else 0.0))

    def clear(self, direction: Direction | None = None) -> None:
        """Cancel every rule (of one direction, or all); held messages are released at once."""

        def clear() -> None:
            for rule in self._rules:
                if direction is None or rule.direction == direction:
                    rule.cancel()
            for key, held in list(self._held.items()):
                if held.rule._cancelled:
                    self._release(key)
            self._rules = [r for r in self._rules if r.active]

        self._command(clear)

    @property
    def rules(self) -> list[FaultRule]:
        """The rules that may still fire, oldest first."""
        return [r for r in list(self._rules) if r.active]

    # -- the link ----------------------------------------------------------------------------------

    def cut(self, mode: Literal["disconnect", "blackhole"] = "disconnect") -> None:
        """Cut the link until ``restore()``.

        ``"disconnect"`` closes both proxy sockets: clients see their connection drop (zmq
        ``DISCONNECTED``; zcall's AsyncClient fails pending calls with ``ConnectionLost``) and cannot
        reconnect; the server sees the proxy go. ``"blackhole"`` keeps every connection up and silently
        drops everything, both ways (what a frozen network looks like; only heartbeats can tell).
        Messages held by delay/reorder rules are lost either way (counted as ``cut_dropped``).
        """
        if mode not in ("disconnect", "blackhole"):
            raise ValueError(f"mode must be 'disconnect' or 'blackhole', got {mode!r}")

        def cut() -> None:
            if self._cut is not None:
                raise RuntimeError(f"the link is already cut ({self._cut})")
            self._cut = mode
            self._discard_held()
            if mode == "disconnect":
                self._close_sockets()
            self._count(None, "cuts")

        self._command(cut)

    def restore(self) -> None:
        """Undo ``cut()``: rebind the frontend on the same endpoint and reconnect the backend."""

        def restore() -> None:
            if self._cut is None:
                return
            if self._cut == "disconnect":
                self._open_sockets(self.endpoint, rebind=True)
            self._cut = None
            self._count(None, "restores")

        self._command(restore)

    @property
    def is_cut(self) -> bool:
        """True between ``cut()`` and ``restore()``."""
        return self._cut is not None

    # -- what it did -------------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, Any]:
        """A snapshot: ``{"requests": {counter: n}, "replies": {...}, "cuts": n, "restores": n}``."""
        with self._cond:
            return copy.deepcopy(self._stats)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> dict[str, Any]:
        """Block until ``predicate(stats)`` holds (checked as the proxy counts); return those stats.

        Raises ``TimeoutError`` (with the stats) after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self._stats):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"proxy stats not reached within {timeout}s: {self._stats}")
                self._cond.wait(remaining)
            return copy.deepcopy(self._stats)

    def __repr__(self) -> str:
        state = "cut" if self._cut else ("closed" if self._closed else "running")
        return f"<FaultProxy {self._endpoint or self._requested} -> {self.backend} {state}>"

    # -- commands (run on the proxy thread) --------------------------------------------------------

    def _add(self, rule: FaultRule) -> FaultRule:
        self._command(lambda: self._rules.append(rule))
        return rule

    def _command(self, fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is self._thread:
            return fn()  # from a match predicate: already on the proxy thread
        if self._thread is None or self._closed or not self._thread.is_alive():
            raise RuntimeError("proxy is not running")
        fut: Future[Any] = Future()
        self._commands.put((fn, fut))
        self._wake()
        return fut.result(timeout=10)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _close_pipe(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._open_sockets(self._requested)
        except BaseException as exc:
            self._start_error = exc
            self._close_sockets()
            self._started.set()
            return
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._started.set()
        try:
            while not self._stopping:
                for fd_or_sock, _ev in self._poller.poll(self._next_timeout_ms()):
                    if fd_or_sock is self._front:
                        self._pump(self._front, REQUESTS)
                    elif fd_or_sock is self._back:
                        self._pump(self._back, REPLIES)
                    elif fd_or_sock == self._wake_r:
                        self._run_commands()
                self._due()
        finally:
            self._close_sockets()
            while True:  # fail commands nobody will run
                try:
                    _fn, fut = self._commands.get_nowait()
                except queue.Empty:
                    break
                fut.set_exception(RuntimeError("proxy closed"))

    def _open_sockets(self, endpoint: str, *, rebind: bool = False) -> None:
        front = self._ctx.socket(zmq.ROUTER)
        front.setsockopt(zmq.LINGER, 0)
        front.setsockopt(zmq.ROUTER_MANDATORY, 1)
        monitor = monitor_socket(front.context, front, zmq.EVENT_MONITOR_STOPPED)
        deadline = time.monotonic() + 5.0
        while True:
            try:
                front.bind(endpoint)
                break
            except zmq.ZMQError as exc:
                # the old listener is closed asynchronously by libzmq: a rebind may race it briefly
                if exc.errno != zmq.EADDRINUSE or not rebind or time.monotonic() > deadline:
                    front.disable_monitor()
                    monitor.close(0)
                    front.close(0)
                    raise OSError(exc.errno, f"proxy cannot bind {endpoint!r}: {exc}") from None
                time.sleep(0.01)
        self._endpoint = front.getsockopt_string(zmq.LAST_ENDPOINT) or endpoint
        back = self._ctx.socket(zmq.DEALER)
        back.setsockopt(zmq.LINGER, 0)
        back.connect(self.backend)
        self._front, self._front_monitor, self._back = front, monitor, back
        self._poller.register(front, zmq.POLLIN)
        self._poller.register(back, zmq.POLLIN)

    def _close_sockets(self) -> None:
        front, monitor, back = self._front, self._front_monitor, self._back
        self._front = self._front_monitor = self._back = None
        for s in (front, back):
            if s is not None:
                with contextlib.suppress(KeyError):
                    self._poller.unregister(s)
                s.close(0)
        if monitor is not None:
            # The frontend's listener closes in libzmq's I/O thread; its monitor stops once it has
            # (for ipc, the socket file is gone by then), so a rebind cannot race the old listener.
            with contextlib.suppress(zmq.ZMQError):
                if monitor.poll(2000):
                    monitor.recv_multipart()
            monitor.close(0)

    def _run_commands(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass
        while True:
            try:
                fn, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)
            with self._cond:
                self._cond.notify_all()

    def _pump(self, sock: zmq.Socket, direction: str) -> None:
        for _ in range(1000):  # drain what is ready, but let the other side and commands have a turn
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_message(direction, frames)

    def _on_message(self, direction: str, frames: list[bytes]) -> None:
        # Each message's counters change in one step, before anything is sent: whoever receives what
        # the proxy sent already sees it counted, and no one sees a message half counted.
        if self._cut is not None:
            self._bump(direction, received=1, cut_dropped=1)
            return
        rule = self._firing_rule(direction, frames)
        if rule is None:
            self._bump(direction, received=1, forwarded=1)
            self._send(direction, frames)
            return
        rule.fired += 1
        action = rule.action
        if action == "drop":
            self._bump(direction, received=1, dropped=1)
        elif action == "duplicate":
            extra = int(rule.param)
            self._bump(direction, received=1, duplicated=extra, forwarded=1 + extra)
            for _ in range(1 + extra):
                self._send(direction, frames)
        elif action == "delay":
            self._bump(direction, received=1, delayed=1)
            self._seq += 1
            heapq.heappush(self._delayed, (time.monotonic() + rule.param, self._seq, direction, frames))
        else:  # reorder
            self._bump(direction, received=1)
            held = self._held.get(id(rule))
            if held is None:
                held = self._held[id(rule)] = _Held(rule, time.monotonic() + self._hold)
            held.frames.append(frames)
            if not rule.active:
                self._release(id(rule))
        if not rule.active:
            self._rules = [r for r in self._rules if r.active]

    def _firing_rule(self, direction: str, frames: list[bytes]) -> FaultRule | None:
        for rule in self._rules:
            if rule.direction != direction or not rule.active:
                continue
            if rule.match is not None and not rule.match(frames):
                continue
            if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                continue
            return rule
        return None

    def _release(self, key: int) -> None:
        """Send what a reorder rule holds, out of order."""
        held = self._held.pop(key)
        batch = held.frames
        if held.rule.param:
            self._rng.shuffle(batch)
        else:
            batch.reverse()
        direction = held.rule.direction
        self._bump(direction, reordered=len(batch) if len(batch) > 1 else 0, forwarded=len(batch))
        for frames in batch:
            self._send(direction, frames)

    def _discard_held(self) -> None:
        for held in self._held.values():
            self._count(held.rule.direction, "cut_dropped", len(held.frames))
        self._held.clear()
        for _due, _seq, direction, _frames in self._delayed:
            self._count(direction, "cut_dropped")
        self._delayed.clear()

    def _next_timeout_ms(self) -> int | None:
        due = [h.deadline for h in self._held.values()]
        if self._delayed:
            due.append(self._delayed[0][0])
        if not due:
            return None
        return max(0, int((min(due) - time.monotonic()) * 1000) + 1)

    def _due(self) -> None:
        now = time.monotonic()
        while self._delayed and self._delayed[0][0] <= now:
            _due, _seq, direction, frames = heapq.heappop(self._delayed)
            self._bump(direction, forwarded=1)
            self._send(direction, frames)
        for key, held in list(self._held.items()):
            if held.deadline <= now:
                self._release(key)

    def _send(self, direction: str, frames: list[bytes]) -> None:
        """Send one message on (already counted as forwarded; recounted if it could not go)."""
        out = self._back if direction == REQUESTS else self._front
        if out is None or self._cut is not None:
            self._recount(direction, "forwarded", "cut_dropped")
            return
        try:
            out.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EAGAIN:
                self._recount(direction, "forwarded", "overflow")
            elif exc.errno == zmq.EHOSTUNREACH:
                self._recount(direction, "forwarded", "unroutable")
            else:
                raise

    def _recount(self, direction: str, was: str, now: str) -> None:
        with self._cond:
            self._stats[direction][was] -= 1
            self._stats[direction][now] += 1
            self._cond.notify_all()

    def _bump(self, direction: str, **counts: int) -> None:
        with self._cond:
            stats = self._stats[direction]
            for key, n in counts.items():
                stats[key] += n
            self._cond.notify_all()

    def _count(self, direction: str | None, key: str, n: int = 1) -> None:
        with self._cond:
            if direction is None:
                self._stats[key] += n
            else:
                self._stats[direction][key] += n
            self._cond.notify_all()
