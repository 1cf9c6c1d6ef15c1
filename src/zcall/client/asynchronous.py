"""Asynchronous calls over DEALER sockets: an asyncio face and a callback face over one core.

The client lives on one loop (its *home*): the running asyncio loop where it was made, or zcall's engine
thread when made from a plain thread. Both faces share the pending-call table, the timers and the
sockets; they differ only in the future they hand back:

- asyncio: ``await client.call(method, *args, **kwargs)``;
- callbacks, from any thread: ``client.call_async(method, *args, callback=..., errback=...)`` returns a
  ``concurrent.futures.Future``. Callbacks run on the client's loop thread (or at once, in the caller's
  thread, when registered on a finished future); an exception inside one is logged, never lost.

One DEALER per endpoint; calls go only to connections the monitor reports up, so nothing queues towards
a server that is not connected (not ZMQ_IMMEDIATE: on a disconnect it discards replies not yet read): a
call waits (until its deadline) for a connection, calls spread round-robin over connected servers, and
when a connection drops the calls pending on it fail with ``ConnectionLost`` at once (or are resent, for
calls marked idempotent).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import inspect
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from ..engine.liveness import DEFAULT_HEARTBEAT, Heartbeat, State
from ..engine.loop import engine, run_on, running_loop
from ..engine.reader import Reader
from ..engine.sockets import apply_size_limit, close_quietly, fast_send, normalize_endpoints
from ..errors import (
    AuthenticationFailed,
    Backpressure,
    CallTimeout,
    ClientClosed,
    ConnectionLost,
    ProtocolError,
)
from ..protocol.codec import Codec, default_codec
from ..protocol.ids import IdSource
from ..protocol.status import StatusCode
from ..protocol.topics import SUBSCRIBE_METHOD, topic_matches
from ..protocol.wire import (
    ErrorReply,
    Event,
    Kind,
    Notify,
    Pong,
    Reply,
    call_frame,
    decode,
    encode,
    reply_fields,
)
from ..service.metrics import CallToken, Metrics, Outcome, outcome_for_status

if TYPE_CHECKING:
    from ..security import ClientSecurity

__all__ = ["AsyncCallOptions", "AsyncClient"]

log = logging.getLogger("zcall.client")

DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_IN_FLIGHT = 1000

# plain ints: combining pyzmq's enum flags (NOBLOCK | SNDMORE) costs about a microsecond each time
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK_SNDMORE = _NOBLOCK | _SNDMORE
_OK = int(Outcome.OK)
_ERROR = int(Outcome.ERROR)
_TIMEOUT = int(Outcome.TIMEOUT)
_CANCELLED = int(Outcome.CANCELLED)
_MONITORED = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_PROTOCOL_ERRORS = {getattr(zmq, n): n for n in dir(zmq) if n.startswith("PROTOCOL_ERROR_")}


class _Pending:
    """One call awaiting its reply."""

    __slots__ = (
        "id",
        "method",
        "fut",
        "timer",
        "channel",
        "frame",
        "started",
        "deadline",
        "idempotent",
        "aio",
        "token",
        "callback",
        "errback",
    )

    def __init__(
        self, rid: int, method: str, fut: Any, frame: bytes, deadline: float, idempotent: bool, aio: bool
    ) -> None:
        self.callback: Callable[[Any], Any] | None = None
        self.errback: Callable[[BaseException], Any] | None = None
        self.id = rid
        self.method = method
        self.fut = fut
        self.frame = frame
        self.deadline = deadline
        self.idempotent = idempotent
        self.aio = aio
        self.timer: asyncio.TimerHandle | None = None
        self.channel: _Channel | None = None
        self.started = 0.0
        self.token: CallToken | None = None


class _Channel:
    """One DEALER connected to one endpoint, with its reader and its connection monitor."""

    __slots__ = (
        "endpoint",
        "sock",
        "reader",
        "monitor",
        "monitor_reader",
        "connected",
        "last_seq",
        "state",
        "last_heard",
        "ping_out",
        "refused",
        "closed_in_handshake",
        "send",
    )

    def __init__(self, client: AsyncClient, endpoint: str) -> None:
        self.endpoint = endpoint
        ctx, loop = client._ctx, client._loop
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 0)  # 1 would drop replies still unread when the server hangs up
        apply_size_limit(sock, client._codec.max_message_size)
        if client._heartbeat is not None:
            client._heartbeat.apply(sock)
        if client._security is not None:
            client._security.apply(sock)
        self.monitor = sock.get_monitor_socket(_MONITORED)
        sock.connect(endpoint)
        self.sock = sock
        self.send = fast_send(sock)
        self.connected = False
        self.last_seq = 0
        self.state = State.DEAD
        self.last_heard = 0.0
        self.ping_out = False
        self.refused: str | None = None  # why the last handshake failed for good (no service here)
        self.closed_in_handshake = 0  # CURVE handshakes the server cut short in a row (wrong server key?)
        self.reader = Reader(
            loop, sock, lambda frames: client._on_frames(self, frames), client._flush_waiting
        )
        self.monitor_reader = Reader(loop, self.monitor, lambda frames: client._on_monitor(self, frames))
        self.reader.start()
        self.monitor_reader.start()

    def close(self) -> None:
        self.reader.stop()
        self.monitor_reader.stop()
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        close_quietly(self.monitor)
        close_quietly(self.sock)


class CallFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """The callback face's future. Waiting on it from the client's own loop thread (in a callback or an
    event handler) before it is done raises at once: that thread is the one that would resolve it."""

    def __init__(self, home_thread: int | None) -> None:
        super().__init__()
        self._home_thread = home_thread
        self._on_cancel: Callable[[], None] | None = None

    def cancel(self) -> bool:
        """Cancel the call: this future now, the server best effort (a cancel message); a late reply is
        dropped."""
        cancelled = super().cancel()
        if cancelled and self._on_cancel is not None:
            self._on_cancel()
        return cancelled

    def _check_thread(self) -> None:
        if not self.done() and threading.get_ident() == self._home_thread:
            raise RuntimeError(
                "waiting for a zcall call on the client's own loop thread (inside a callback, errback or "
                "event handler) would deadlock: chain with add_done_callback(), or use await client.call()"
            )

    def result(self, timeout: float | None = None) -> Any:
        self._check_thread()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._check_thread()
        return super().exception(timeout)


class _Slots:
    """The bound on calls in flight: non-blocking acquire from any thread, awaitable on the home loop."""

    __slots__ = ("limit", "used", "_lock", "_waiters")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_acquire(self) -> bool:
        with self._lock:
            if self.used < self.limit and not self._waiters:
                self.used += 1
                return True
            return False

    async def acquire(self, timeout: float) -> bool:
        if self.try_acquire():
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except (TimeoutError, asyncio.CancelledError):
            with self._lock:
                if fut in self._waiters:
                    self._waiters.remove(fut)
                elif fut.done() and not fut.cancelled():
                    self.used -= 1  # the slot was handed to us just as we gave up: give it back
                    self._wake()
            fut.cancel()
            raise

    def release(self) -> None:
        with self._lock:
            self.used -= 1
            self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used < self.limit:
            w = self._waiters.popleft()
            if not w.done():
                self.used += 1
                w.set_result(None)


class AsyncClient:
    """Asynchronous calls to one endpoint or several; asyncio and callback faces over one core."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        headers: dict[str, Any] | None = None,
        heartbeat: Heartbeat | None = DEFAULT_HEARTBEAT,
        context: zmq.Context | None = None,
        codec: Codec = default_codec,
        security: ClientSecurity | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight!r}")
        self.endpoints = normalize_endpoints(endpoints)
        self.timeout = timeout
        self.headers = headers
        self._ctx = context or zmq.Context.instance()
        self._codec = codec
        self._heartbeat = heartbeat
        self._security = security
        self._refused = False  # every endpoint refused the handshake: calls fail at once
        self._liveness_callbacks: list[Callable[[str, State], Any]] = []
        self._tick_handle: asyncio.TimerHandle | None = None
        self._deadline_line: collections.deque[_Pending] = collections.deque()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._sweep_at = 0.0
        self._ids = IdSource()
        self._slots = _Slots(max_in_flight)
        self.metrics = Metrics()
        """Per remote method: calls, outcomes, latency, throughput, availability (``statistics()``)."""
        self._pending: dict[int, _Pending] = {}
        self._waiting: collections.deque[tuple[_Pending | None, bytes, float]] = collections.deque()
        self._inbox: collections.deque[Callable[[], None] | _Pending] = collections.deque()
        self._inbox_scheduled = False
        self._handlers: dict[str, list[Callable[[str, Any], Any]]] = {}
        self._channels: list[_Channel] = []
        self._rr = itertools.count()
        self._closed = False
        self.counters = {
            "calls": 0,
            "replies": 0,
            "errors": 0,
            "timeouts": 0,
            "stale_replies": 0,
            "bad_replies": 0,
            "cancelled": 0,
            "connection_lost": 0,
            "resent": 0,
            "notifies_dropped": 0,
            "events": 0,
            "events_missed": 0,
            "callback_errors": 0,
            "handshake_failures": 0,
        }
        try:
            self._loop = asyncio.get_running_loop()
            self._uses_engine = False
        except RuntimeError:
            self._loop = engine.acquire()
            self._uses_engine = True
        self._thread_id: int | None = None
        try:
            run_on(self._loop, self._open)
        except BaseException:
            if self._uses_engine:
                engine.release()
            raise

    def _open(self) -> None:
        self._thread_id = threading.get_ident()
        self._channels = [_Channel(self, ep) for ep in self.endpoints]
        if self._heartbeat is not None:
            self._tick_handle = self._loop.call_later(self._heartbeat.interval, self._tick)

    # -- the asyncio face --------------------------------------------------------------------------

    async def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` and await its result; every keyword goes to the remote method."""
        return await self._acall(method, args, kwargs, self.timeout, self.headers, False)

    async def _acall(
        self,
        method: str,
        args: Any,
        kwargs: dict[str, Any],
        timeout: float,
        headers: dict[str, Any] | None,
        idempotent: bool,
    ) -> Any:
        loop = self._loop
        if asyncio.get_running_loop() is not loop:  # a client from another loop or the engine: bridge
            cf = self._submit(method, args, kwargs, timeout, headers, idempotent)
            return await asyncio.wrap_future(cf)
        if self._closed:
            raise ClientClosed("AsyncClient is closed")
        deadline = loop.time() + timeout
        if not self._slots.try_acquire():
            try:
                await self._slots.acquire(timeout)
            except TimeoutError:
                raise CallTimeout(
                    method, self.endpoints, 0, timeout, f"no free slot: {self._slots.limit} calls in flight"
                ) from None
        rid = self._ids.next()
        try:
            frame = call_frame(rid, method, args, kwargs, int(timeout * 1000), headers, self._codec)
        except BaseException:
            self._slots.release()
            raise
        fut = loop.create_future()
        p = _Pending(rid, method, fut, frame, deadline, idempotent, True)
        self._start(p)
        try:
            return await fut
        except asyncio.CancelledError:
            if self._pending.pop(rid, None) is not None:
                self._abandon(p, _CANCELLED, send_cancel=True)
                self.counters["cancelled"] += 1
            raise

    # -- the callback face -------------------------------------------------------------------------

    def call_async(
        self,
        method: str,
        /,
        *args: Any,
        callback: Callable[[Any], Any] | None = None,
        errback: Callable[[BaseException], Any] | None = None,
        **kwargs: Any,
    ) -> concurrent.futures.Future[Any]:
        """Send the call and return at once with a future; ``callback(result)`` or ``errback(exc)`` follows.

        Raises ``Backpressure`` at once when ``max_in_flight`` calls are already pending (this face never
        blocks). ``callback``/``errback`` are zcall's: a remote keyword with those names needs ``options``.
        """
        return self._submit(method, args, kwargs, self.timeout, self.headers, False, callback, errback)

    def _submit(
        self,
        method: str,
        args: Any,
        kwargs: dict[str, Any],
        timeout: float,
        headers: dict[str, Any] | None,
        idempotent: bool,
        callback: Callable[[Any], Any] | None = None,
        errback: Callable[[BaseException], Any] | None = None,
    ) -> concurrent.futures.Future[Any]:
        if self._closed:
            raise ClientClosed("AsyncClient is closed")
        if not self._slots.try_acquire():
            raise Backpressure(
                f"{self._slots.limit} calls already in flight on this client: wait for some to finish "
                "or raise max_in_flight"
            )
        rid = self._ids.next()
        try:
            frame = call_frame(rid, method, args, kwargs, int(timeout * 1000), headers, self._codec)
        except BaseException:
            self._slots.release()
            raise
        fut = CallFuture(self._thread_id)
        deadline = self._loop.time() + timeout
        p = _Pending(rid, method, fut, frame, deadline, idempotent, False)
        # callback/errback are called by the client as it settles the call (no done-callback on the
        # future: that costs two more Condition round trips per call); a user's cancel() comes back
        # through the future's hook, from any thread, and is tidied up on the loop.
        p.callback, p.errback = callback, errback
        fut._on_cancel = lambda: self._run_soon(lambda: self._cancel_from_user(p))
        self._run_soon(p)
        return fut

    def _settle_ok(self, p: _Pending, result: Any) -> None:
        """The call succeeded: resolve its future, then its callback (callback face)."""
        fut = p.fut
        if fut.done():
            return  # cancelled meanwhile
        try:
            fut.set_result(result)
        except (asyncio.InvalidStateError, concurrent.futures.InvalidStateError):
            return
        if p.callback is not None:
            try:
                p.callback(result)
            except Exception:
                self.counters["callback_errors"] += 1
                log.exception("callback for call %r raised (the client keeps going)", p.method)

    def _settle_err(self, p: _Pending, exc: BaseException) -> None:
        """The call failed: resolve its future, then its errback (or log, when it has only a callback)."""
        fut = p.fut
        if fut.done():
            return
        try:
            fut.set_exception(exc)
        except (asyncio.InvalidStateError, concurrent.futures.InvalidStateError):
            return
        if p.errback is not None:
            try:
                p.errback(exc)
            except Exception:
                self.counters["callback_errors"] += 1
                log.exception("errback for call %r raised (the client keeps going)", p.method)
        elif p.callback is not None:
            log.warning("call %r failed and has no errback: %s", p.method, exc)

    def _cancel_from_user(self, p: _Pending) -> None:
        if self._pending.pop(p.id, None) is not None:
            self.counters["cancelled"] += 1
            self._abandon(p, _CANCELLED, send_cancel=True)

    # -- one-way calls and events ------------------------------------------------------------------

    def notify(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        """Send a one-way call: no reply, no error back (a failing handler is only logged remotely)."""
        self._notify(method, args, kwargs, self.timeout, self.headers)

    def _notify(
        self, method: str, args: Any, kwargs: dict[str, Any], timeout: float, headers: dict[str, Any] | None
    ) -> None:
        if self._closed:
            raise ClientClosed("AsyncClient is closed")
        meta_deadline = int(timeout * 1000)
        frame = encode(Notify(self._ids.next(), method, args, kwargs, meta_deadline, headers), self._codec)
        deadline = self._loop.time() + timeout
        self._run_soon(lambda: self._send_or_wait(None, frame, deadline))

    def on(self, topic: str, handler: Callable[[str, Any], Any]) -> None:
        """Call ``handler(topic, payload)`` for each pushed event on ``topic`` (``"orders.*"``: a prefix).

        Delivery is at most once: events published while this client is not connected, or dropped at a
        full queue, are gone (``statistics()["events_missed"]`` counts the gaps it sees).
        """
        self._handlers.setdefault(topic, []).append(handler)
        self._run_soon(self._resubscribe)

    def off(self, topic: str, handler: Callable[[str, Any], Any] | None = None) -> None:
        """Remove one handler for ``topic``, or all of them."""
        hs = self._handlers.get(topic, [])
        if handler is None:
            hs.clear()
        elif handler in hs:
            hs.remove(handler)
        if not hs:
            self._handlers.pop(topic, None)
        self._run_soon(self._resubscribe)

    # -- options, stats, lifecycle -----------------------------------------------------------------

    def options(
        self,
        *,
        timeout: float | None = None,
        headers: dict[str, Any] | None = None,
        idempotent: bool = False,
    ) -> AsyncCallOptions:
        """A view with other per-call settings; ``idempotent=True`` resends on another connection."""
        return AsyncCallOptions(
            self,
            self.timeout if timeout is None else timeout,
            self.headers if headers is None else headers,
            idempotent,
        )

    def statistics(self) -> dict[str, Any]:
        """Counters, calls in flight, and which endpoints are connected right now."""
        return {
            **self.counters,
            "methods": self.metrics.snapshot()["methods"],
            "in_flight": len(self._pending),
            "waiting": len(self._waiting),
            "connected": [ch.endpoint for ch in self._channels if ch.connected],
        }

    def liveness(self) -> dict[str, State]:
        """What this client believes of each endpoint now: alive, suspect or dead."""
        return {ch.endpoint: ch.state for ch in self._channels}

    def on_liveness(self, callback: Callable[[str, State], Any]) -> None:
        """Call ``callback(endpoint, state)`` on the client's loop whenever an endpoint changes state."""
        self._liveness_callbacks.append(callback)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Fail pending calls with ``ClientClosed`` and close the sockets; never hangs."""
        if self._closed:
            return
        loop = self._loop
        if running_loop() is loop or loop.is_closed() or not loop.is_running():
            # on the loop, or nobody runs it (an asyncio client closed after its loop finished): no
            # other thread can be using the sockets, so close them right here
            self._close_now()
        else:
            try:
                run_on(loop, self._close_now, timeout=10)
            except RuntimeError:  # the loop went away meanwhile: nothing left to close on it
                self._closed = True
        if self._uses_engine:
            self._uses_engine = False
            engine.release()

    async def aclose(self) -> None:
        """``close()`` for asyncio code."""
        self.close()

    def __enter__(self) -> AsyncClient:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        self._deadline_line.clear()
        self._drain_inbox()
        pending, self._pending = self._pending, {}
        for p in pending.values():  # calls still waiting for a connection are in here too
            self._finish(p, _CANCELLED)
            self._settle_err(p, ClientClosed(f"client closed while call {p.method!r} was pending"))
        self._waiting.clear()
        for ch in self._channels:
            ch.close()

    # -- the core (home loop thread only) ----------------------------------------------------------

    def _run_soon(self, job: Callable[[], None] | _Pending) -> None:
        """Run ``job`` on the home loop: now if we are on it, else through the inbox (one wake-up a batch).

        A ``_Pending`` job means "start this call" (no closure to build on the hot path)."""
        if threading.get_ident() == self._thread_id:
            if type(job) is _Pending:
                self._start(job)
            else:
                job()  # type: ignore[operator]
            return
        self._inbox.append(job)
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain_inbox)
            except RuntimeError:  # loop closed
                self._inbox_scheduled = False
                raise ClientClosed("AsyncClient's loop is closed") from None

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False
        inbox = self._inbox
        start = self._start
        while inbox:
            job = inbox.popleft()
            try:
                if type(job) is _Pending:
                    start(job)
                else:
                    job()  # type: ignore[operator]
            except Exception:
                log.exception("zcall client internal job failed")

    def _start(self, p: _Pending) -> None:
        if self._closed:
            self._slots.release()
            self._settle_err(p, ClientClosed("AsyncClient is closed"))
            return
        if not p.aio and p.fut.cancelled():
            # Not set_running_or_notify_cancel(): a RUNNING future refuses cancel(), and a call
            # awaiting its reply must stay cancellable (the cancel then reaches the server).
            self._slots.release()  # cancelled before it was sent
            return
        self.counters["calls"] += 1
        p.token = self.metrics.started(p.method)
        loop = self._loop
        p.started = loop.time()
        # One timer per client, not per call: calls with the usual (shared) timeout join a line ordered
        # by deadline, swept by a single timer; a call whose deadline would break the order gets its own.
        line = self._deadline_line
        pending = self._pending
        while line and line[0].id not in pending:
            line.popleft()  # finished calls leave from the front (replies mostly come in order)
        if len(line) > 2 * len(pending) + 64:  # a slow call at the front holds finished ones: compact
            self._deadline_line = line = collections.deque(q for q in line if q.id in pending)
        if not line or p.deadline >= line[-1].deadline:
            line.append(p)
            if self._sweep_handle is None or p.deadline < self._sweep_at:
                if self._sweep_handle is not None:  # set for a call that finished; this one is due first
                    self._sweep_handle.cancel()
                self._sweep_at = p.deadline
                self._sweep_handle = loop.call_at(p.deadline, self._sweep)
        else:
            p.timer = loop.call_at(p.deadline, self._expire, p)
        pending[p.id] = p
        self._send_or_wait(p, p.frame, p.deadline)

    def _pick(self) -> _Channel | None:
        chans = self._channels
        if len(chans) == 1:
            return chans[0] if chans[0].connected else None
        n = len(chans)
        start = next(self._rr)
        fallback = None
        for i in range(n):
            ch = chans[(start + i) % n]
            if ch.connected:
                if ch.state is State.ALIVE:
                    return ch
                fallback = fallback or ch  # suspect: only when nobody better is connected
        return fallback

    def _send_or_wait(self, p: _Pending | None, frame: bytes, deadline: float) -> None:
        waiting = self._waiting
        if waiting or not self._try_send(p, frame):
            if self._refused:
                self._refuse(p)
                return
            now = self._loop.time()
            while waiting and waiting[0][0] is None and waiting[0][2] <= now:
                waiting.popleft()  # expired notifies: never let a dead server pile them up
                self.counters["notifies_dropped"] += 1
            waiting.append((p, frame, deadline))

    def _try_send(self, p: _Pending | None, frame: bytes) -> bool:
        ch = self._pick()
        if ch is None:
            return False
        send = ch.send
        try:
            send(b"", _NOBLOCK_SNDMORE)
            send(frame, _NOBLOCK)
        except zmq.Again:
            ch.reader.want_writable()
            return False
        if p is not None:
            p.channel = ch
        ch.reader.check()
        return True

    def _flush_waiting(self) -> None:
        waiting = self._waiting
        now = self._loop.time()
        while waiting:
            p, frame, deadline = waiting[0]
            if p is None and deadline <= now:
                waiting.popleft()
                self.counters["notifies_dropped"] += 1
                continue
            if p is not None and p.id not in self._pending:
                waiting.popleft()  # timed out or cancelled while waiting
                continue
            if not self._try_send(p, frame):
                return
            waiting.popleft()

    def _unqueue(self, p: _Pending) -> None:
        """Take a call that will not be sent out of the waiting line (bounded by max_in_flight)."""
        for i, (q, _f, _d) in enumerate(self._waiting):
            if q is p:
                del self._waiting[i]
                return

    def _sweep(self) -> None:
        """The deadline line's timer: expire every call at its deadline, then wait for the next one."""
        self._sweep_handle = None
        line = self._deadline_line
        pending = self._pending
        now = self._loop.time()
        while line and (line[0].id not in pending or line[0].deadline <= now):
            p = line.popleft()
            if p.id in pending:
                self._expire(p)
        if line and not self._closed:
            self._sweep_at = line[0].deadline
            self._sweep_handle = self._loop.call_at(self._sweep_at, self._sweep)

    def _expire(self, p: _Pending) -> None:
        if self._pending.pop(p.id, None) is None:
            return
        self.counters["timeouts"] += 1
        sent = p.channel is not None
        self._abandon(p, _TIMEOUT, send_cancel=sent)
        if not sent:
            self._unqueue(p)
        where = [p.channel.endpoint] if p.channel is not None else self.endpoints
        detail = "" if sent else "never sent: no server connected"
        refused = [f"{ch.endpoint}: {ch.refused}" for ch in self._channels if ch.refused]
        if not sent and refused:
            detail += "; handshake failed at " + "; ".join(refused)
        self._settle_err(p, CallTimeout(p.method, where, 1, self._loop.time() - p.started, detail))

    def _abandon(self, p: _Pending, outcome: int, *, send_cancel: bool) -> None:
        """Forget a call that will not be answered here (timed out or cancelled); tell the server."""
        self._finish(p, outcome)
        ch = p.channel
        if send_cancel and ch is not None and ch.connected:
            try:
                ch.sock.send(b"", _NOBLOCK_SNDMORE)
                ch.sock.send(self._codec.packb([1, Kind.CANCEL, p.id]), _NOBLOCK)
                ch.reader.check()
            except zmq.ZMQError:
                pass

    def _on_frames(self, ch: _Channel, frames: list[bytes]) -> None:
        ch.last_heard = self._loop.time()
        if ch.state is not State.ALIVE and ch.connected:
            self._set_state(ch, State.ALIVE)
        body = frames[-1]
        if not body:
            return  # an empty-body ACK from a REP server (notify / cancel)
        fast = reply_fields(body, self._codec)
        if fast is not None:  # the common case, a REPLY, without building a message object
            p = self._pending.pop(fast[0], None)
            if p is None:
                self.counters["stale_replies"] += 1
                return
            self._finish(p, _OK)
            self.counters["replies"] += 1
            self._settle_ok(p, fast[1])
            return
        try:
            msg = decode(body, self._codec)
        except ProtocolError as exc:
            self.counters["bad_replies"] += 1
            log.warning("bad reply from %s: %s", ch.endpoint, exc)
            rid = getattr(exc, "id", None)
            p = self._pending.pop(rid, None) if rid else None
            if p is not None:
                self._finish(p, _ERROR)
                self._settle_err(p, exc)
            return
        kind = type(msg)
        if kind is Reply or kind is ErrorReply:
            p = self._pending.pop(msg.id, None)
            if p is None:
                self.counters["stale_replies"] += 1
                return
            if kind is Reply:
                self._finish(p, _OK)
                self.counters["replies"] += 1
                self._settle_ok(p, msg.result)  # type: ignore[union-attr]
            else:
                err = msg.error  # type: ignore[union-attr]
                self._finish(p, outcome_for_status(err.code))
                self.counters["errors"] += 1
                if err.code == StatusCode.DEADLINE_EXCEEDED:
                    exc2: BaseException = CallTimeout(
                        p.method,
                        [ch.endpoint],
                        1,
                        self._loop.time() - p.started,
                        "server dropped it: deadline passed",
                    )
                else:
                    exc2 = err.to_exception(p.method)
                self._settle_err(p, exc2)
        elif kind is Event:
            self._on_event(ch, msg)  # type: ignore[arg-type]
        elif kind is Pong:
            ch.ping_out = False

    def _finish(self, p: _Pending, outcome: int) -> None:
        """The call is over for this client: stop its timer, free its slot, record its outcome."""
        if p.timer is not None:
            p.timer.cancel()
        self._slots.release()
        if p.token is not None:
            self.metrics.finished(p.token, outcome)

    def _on_event(self, ch: _Channel, ev: Event) -> None:
        self.counters["events"] += 1
        if ch.last_seq and ev.id > ch.last_seq + 1:
            self.counters["events_missed"] += ev.id - ch.last_seq - 1
        ch.last_seq = ev.id
        for pattern, handlers in list(self._handlers.items()):
            if topic_matches(pattern, ev.topic):
                for h in list(handlers):
                    try:
                        r = h(ev.topic, ev.payload)
                        if inspect.isawaitable(r):
                            asyncio.ensure_future(r, loop=self._loop).add_done_callback(_log_handler_failure)
                    except Exception:
                        self.counters["callback_errors"] += 1
                        log.exception("event handler for %r raised (the client keeps going)", ev.topic)

    def _on_monitor(self, ch: _Channel, frames: list[bytes]) -> None:
        try:
            parsed = parse_monitor_message(frames)
        except Exception:
            return
        event = parsed["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            ch.refused, ch.closed_in_handshake, self._refused = None, 0, False
            ch.connected = True
            ch.last_seq = 0
            ch.last_heard = self._loop.time()
            ch.ping_out = False
            self._set_state(ch, State.ALIVE)
            self._subscribe(ch)
            self._flush_waiting()
        elif event == zmq.EVENT_DISCONNECTED:
            ch.connected = False
            self._set_state(ch, State.DEAD)
            self._connection_lost(ch)
        else:
            self._handshake_failed(ch, event, int(parsed["value"]))

    def _handshake_failed(self, ch: _Channel, event: int, value: int) -> None:
        """A connection attempt failed its security handshake: say why, and stop waiting if all are refused.

        libzmq does not retry after an AUTH or PROTOCOL failure, so calls waiting for that endpoint would
        only time out. NO_DETAIL (the server hung up mid-handshake, as it does on a wrong server key) is
        retried by libzmq and may be a server going down, so it counts after two in a row, with CURVE on.
        """
        self.counters["handshake_failures"] += 1
        curve = self._security is not None
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            reason = (
                f"the server refused this client (ZAP status {value}): its public key is not in the "
                "server's allow-list, or its address is not allowed"
            )
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                reason = (
                    "the server does not use CURVE: drop security= or secure the server"
                    if curve
                    else "the server requires CURVE: pass security=ClientSecurity(secret, server key)"
                )
            else:
                reason = f"protocol error {_PROTOCOL_ERRORS.get(value, value)}"
        else:  # NO_DETAIL
            ch.closed_in_handshake += 1
            if not curve or ch.closed_in_handshake < 2:
                return
            reason = (
                "the server closed the connection during the CURVE handshake: most likely the server "
                "public key given to security= is not this server's"
            )
        if ch.refused is None:
            log.info("%s: security handshake failed: %s", ch.endpoint, reason)
        ch.refused = reason
        if not any(c.connected for c in self._channels) and all(c.refused for c in self._channels):
            self._refused = True
            waiting, self._waiting = list(self._waiting), collections.deque()
            for p, _frame, _deadline in waiting:
                self._refuse(p)

    def _refuse(self, p: _Pending | None) -> None:
        """Fail a call (or drop a notify) that no endpoint will take: every handshake was refused."""
        if p is None:
            self.counters["notifies_dropped"] += 1
            return
        if self._pending.pop(p.id, None) is None:
            return
        self._finish(p, _ERROR)
        chans = [c for c in self._channels if c.refused]
        where = ", ".join(c.endpoint for c in chans)
        if len(chans) == 1:
            reason = str(chans[0].refused)
        else:
            reason = "; ".join(f"{c.endpoint}: {c.refused}" for c in chans)
        self._settle_err(p, AuthenticationFailed(p.method, where, reason))

    def _set_state(self, ch: _Channel, state: State) -> None:
        if ch.state is state:
            return
        old, ch.state = ch.state, state
        log.info("%s: %s -> %s", ch.endpoint, old.value, state.value)
        for cb in list(self._liveness_callbacks):
            try:
                cb(ch.endpoint, state)
            except Exception:
                self.counters["callback_errors"] += 1
                log.exception("liveness callback raised (the client keeps going)")

    def _tick(self) -> None:
        """Every heartbeat interval: ping quiet connections (one ping at most), mark silent ones suspect."""
        hb = self._heartbeat
        if self._closed or hb is None:
            return
        now = self._loop.time()
        for ch in self._channels:
            if not ch.connected:
                continue
            quiet = now - ch.last_heard
            if quiet > 2 * hb.interval and ch.state is State.ALIVE:
                self._set_state(ch, State.SUSPECT)
            if quiet > hb.interval and not ch.ping_out:
                try:
                    ch.sock.send(b"", _NOBLOCK_SNDMORE)
                    ch.sock.send(self._codec.packb([1, Kind.PING, self._ids.next()]), _NOBLOCK)
                    ch.ping_out = True
                    ch.reader.check()
                except zmq.ZMQError:
                    pass
        self._tick_handle = self._loop.call_later(hb.interval, self._tick)

    def _connection_lost(self, ch: _Channel) -> None:
        # The monitor is a separate socket: replies that came in just before the disconnect may still
        # be queued on the DEALER. Take them first, or their calls would fail with ConnectionLost.
        while True:
            try:
                frames = ch.sock.recv_multipart(_NOBLOCK)
            except zmq.ZMQError:
                break
            self._on_frames(ch, frames)
        lost = [p for p in self._pending.values() if p.channel is ch]
        for p in lost:
            if p.idempotent:
                p.channel = None
                self.counters["resent"] += 1
                self._send_or_wait(p, p.frame, p.deadline)
                continue
            del self._pending[p.id]
            self._finish(p, _ERROR)
            self.counters["connection_lost"] += 1
            self._settle_err(p, ConnectionLost(p.method, ch.endpoint))

    def _subscribe(self, ch: _Channel) -> None:
        if not self._handlers and not ch.last_seq:
            return
        frame = encode(Notify(self._ids.next(), SUBSCRIBE_METHOD, [sorted(self._handlers)], {}), self._codec)
        try:
            ch.sock.send(b"", _NOBLOCK_SNDMORE)
            ch.sock.send(frame, _NOBLOCK)
            ch.reader.check()
        except zmq.ZMQError:
            pass

    def _resubscribe(self) -> None:
        for ch in self._channels:
            if ch.connected:
                self._subscribe(ch)


class AsyncCallOptions:
    """An ``AsyncClient`` with other per-call settings; shares the client's sockets and table."""

    __slots__ = ("_client", "timeout", "headers", "idempotent")

    def __init__(
        self, client: AsyncClient, timeout: float, headers: dict[str, Any] | None, idempotent: bool
    ) -> None:
        self._client = client
        self.timeout = timeout
        self.headers = headers
        self.idempotent = idempotent

    async def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Like ``AsyncClient.call`` with these settings."""
        return await self._client._acall(method, args, kwargs, self.timeout, self.headers, self.idempotent)

    def call_async(
        self,
        method: str,
        /,
        *args: Any,
        callback: Callable[[Any], Any] | None = None,
        errback: Callable[[BaseException], Any] | None = None,
        **kwargs: Any,
    ) -> concurrent.futures.Future[Any]:
        """Like ``AsyncClient.call_async`` with these settings."""
        c = self._client
        return c._submit(method, args, kwargs, self.timeout, self.headers, self.idempotent, callback, errback)

    def notify(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        """Like ``AsyncClient.notify`` with these settings."""
        self._client._notify(method, args, kwargs, self.timeout, self.headers)


def _log_handler_failure(f: asyncio.Future[Any]) -> None:
    if not f.cancelled() and f.exception() is not None:
        log.error("async event handler raised: %r", f.exception())
