"""Asynchronous serving over a ROUTER socket: many calls in flight from many clients at once.

Coroutine handlers run as tasks on the server's loop. Plain functions run in a bounded thread pool so a
slow one cannot stall the loop (and with it every other call, ping and cancel); a plain function declared
``inline=True`` runs on the loop itself, which is fastest for handlers that do not block. Bad input and
handler exceptions become error replies and log lines; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import zmq

from ..engine.liveness import DEFAULT_HEARTBEAT, Heartbeat
from ..engine.loop import engine, run_on, running_loop
from ..engine.reader import Reader
from ..engine.sockets import DEFAULT_BIND, apply_size_limit, bind, close_quietly, fast_send, release_endpoint
from ..protocol.codec import Codec, default_codec
from ..protocol.status import StatusCode
from ..protocol.wire import PROTOCOL_VERSION, Call, Cancel, ErrorRecord, Kind, Notify, Ping
from ..service.dispatch import NEVER_AWAITABLE, Dispatcher
from ..service.metrics import CallToken, Outcome
from ..service.registry import Method, Rejected, Service
from ..service.replycache import IN_PROGRESS, ReplyCache

if TYPE_CHECKING:
    from ..security import ServerSecurity

__all__ = ["AsyncServer", "SUBSCRIBE_METHOD"]

log = logging.getLogger("zcall.server")

SUBSCRIBE_METHOD = "zcall.subscribe"
"""NOTIFY a client sends to tell a server which event topics it wants (protocol plumbing)."""

DEFAULT_MAX_IN_FLIGHT = 1000
_SWEEP_MIN = 64  # the subscriber table is never swept for gone clients below this size
_CANCELLED = int(Outcome.CANCELLED)
_EVENT_HEAD = bytes([0x95, PROTOCOL_VERSION, Kind.EVENT])  # msgpack fixarray(5), version, kind

# plain ints: combining pyzmq's enum flags (NOBLOCK | SNDMORE) costs about a microsecond each time
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK_SNDMORE = _NOBLOCK | _SNDMORE


class _Expired(Exception):
    """A queued call whose deadline passed before a worker thread picked it up."""


def topic_matches(pattern: str, topic: str) -> bool:
    """``orders.*`` matches ``orders.new``; ``*`` matches everything; anything else matches exactly."""
    if pattern.endswith("*"):
        return topic.startswith(pattern[:-1])
    return pattern == topic


class AsyncServer:
    """Serve a ``Service`` over ROUTER: ``start()``/``stop()`` from threads, ``await serve()`` in asyncio."""

    def __init__(
        self,
        service: Service,
        endpoint: str = DEFAULT_BIND,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        workers: int | None = None,
        context: zmq.Context | None = None,
        codec: Codec = default_codec,
        send_tracebacks: bool = True,
        reply_cache: ReplyCache | None = None,
        heartbeat: Heartbeat | None = DEFAULT_HEARTBEAT,
        security: ServerSecurity | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.service = service
        self.max_in_flight = max_in_flight
        self._requested = endpoint
        self._workers = workers or min(32, (os.cpu_count() or 1) + 4)
        self._ctx = context or zmq.Context.instance()
        self._dispatch = Dispatcher(service, codec, send_tracebacks=send_tracebacks, reply_cache=reply_cache)
        self._codec = codec
        self._heartbeat = heartbeat
        self._security = security
        self._release_security: Callable[[], None] | None = None
        self._endpoint: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: zmq.Socket | None = None
        self._fast_send: Callable[[bytes, int], Any] | None = None
        self._reader: Reader | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._in_flight: dict[tuple[bytes, int], asyncio.Future[Any]] = {}
        self._idle: asyncio.Event | None = None
        self._closing = False
        self._closed: asyncio.Event | None = None
        self._uses_engine = False
        # routing id -> [envelope, topic patterns, last event sequence number sent to it]
        self._subscribers: dict[bytes, list[Any]] = {}
        self._sweep_at = _SWEEP_MIN  # table size at which gone subscribers are swept out
        self._notifying = 0  # one-way calls queued or running (bounded by max_in_flight too)
        self._send_errno: int | None = 0  # errno of the last failed _send (EAGAIN: slow, EHOSTUNREACH: gone)
        self.counters = {"undeliverable": 0, "overloaded": 0, "cancelled": 0, "events_sent": 0, "pings": 0}

    # -- properties --------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The endpoint actually bound (the real port when bound with ``*``)."""
        if self._endpoint is None:
            raise RuntimeError("server is not bound yet: call start() or await serve() first")
        return self._endpoint

    @property
    def in_flight(self) -> int:
        """Calls received and not yet answered."""
        return len(self._in_flight)

    def statistics(self) -> dict[str, Any]:
        """Counters for this server: calls, errors, bad messages, in flight, undeliverable replies..."""
        return {
            **self._dispatch.counters,
            **self.counters,
            "in_flight": len(self._in_flight),
            "subscribers": len(self._subscribers),
        }

    # -- lifecycle: threads ------------------------------------------------------------------------

    def start(self) -> AsyncServer:
        """Serve on zcall's engine thread; returns once bound (raises if binding failed)."""
        if self._loop is not None:
            raise RuntimeError("server already started")
        loop = engine.acquire()
        self._uses_engine = True
        try:
            run_on(loop, self._open, loop)
        except BaseException:
            self._uses_engine = False
            engine.release()
            raise
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let in-flight calls finish within ``grace`` seconds, then close."""
        loop = self._loop
        if loop is None or self._closing:
            return
        if running_loop() is loop:
            raise RuntimeError("stop() would block the server's own loop: use 'await server.aclose()'")
        asyncio.run_coroutine_threadsafe(self.aclose(grace), loop).result(grace + 10)
        if self._uses_engine:
            self._uses_engine = False
            engine.release()

    def __enter__(self) -> AsyncServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def serve_forever(self, grace: float = 5.0, on_ready: Callable[[str], Any] | None = None) -> None:
        """Serve in this thread (its own asyncio loop) until Ctrl-C or SIGTERM, then stop with ``grace``.

        ``on_ready(endpoint)`` runs once bound (e.g. to print the real port of a ``*`` bind)."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            task = asyncio.current_task()
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
            await self.serve(grace, on_ready)

        with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
            asyncio.run(main())

    # -- lifecycle: asyncio ------------------------------------------------------------------------

    async def serve(self, grace: float = 5.0, on_ready: Callable[[str], Any] | None = None) -> None:
        """Serve on the running loop until ``aclose()`` (or until cancelled, which closes with ``grace``)."""
        if self._loop is None:
            self._open(asyncio.get_running_loop())
        if on_ready is not None:
            on_ready(self.endpoint)
        assert self._closed is not None
        try:
            await self._closed.wait()
        except asyncio.CancelledError:
            await self.aclose(grace)
            raise

    async def __aenter__(self) -> AsyncServer:
        if self._loop is None:
            self._open(asyncio.get_running_loop())
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self, grace: float = 5.0) -> None:
        """Graceful stop on the server's loop: refuse new calls, wait ``grace`` for in-flight ones, close."""
        if self._closing or self._loop is None:
            if self._closed is not None:
                await self._closed.wait()
            return
        self._closing = True
        log.info(
            "server %s stopping: %d call(s) in flight, grace %.1fs", self._endpoint, self.in_flight, grace
        )
        if self._in_flight:
            assert self._idle is not None
            self._idle.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for (ident, rid), fut in list(self._in_flight.items()):
            fut.cancel()
            record = ErrorRecord(
                StatusCode.UNAVAILABLE, "zcall.ServerBusy", "server stopped before the call finished"
            )
            self._send([ident, b""], self._dispatch.error_frame(rid, record))
        self._in_flight.clear()
        if self._reader is not None:
            self._reader.stop()
        if self._sock is not None and self._endpoint is not None:
            release_endpoint(self._sock, self._endpoint)  # the port is free once we return
        close_quietly(self._sock, linger_ms=int(min(grace, 1.0) * 1000))
        if self._release_security is not None:
            self._release_security()  # after the close: a CURVE socket without ZAP would admit anyone
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        assert self._closed is not None
        self._closed.set()
        log.info("server %s stopped", self._endpoint)

    # -- events ------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: Any = None) -> None:
        """Push an event to every connected client subscribed to ``topic`` (at most once; thread-safe)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("server is not started")
        if running_loop() is loop:
            self._publish(topic, payload)
        else:
            loop.call_soon_threadsafe(self._publish, topic, payload)

    def _publish(self, topic: str, payload: Any) -> int:
        if self._sock is None or self._closing:
            return 0
        # Each subscriber numbers its own events (so a gap means a lost event it wanted); the topic and
        # payload are encoded once and each frame is the array header + its sequence number + that tail.
        tail = self._codec.packb(topic) + self._codec.packb(payload)
        sent = 0
        for ident, sub in list(self._subscribers.items()):
            envelope, patterns, seq = sub
            if any(topic_matches(p, topic) for p in patterns):
                sub[2] = seq = seq + 1
                if self._send(envelope, _EVENT_HEAD + self._codec.packb(seq) + tail):
                    sent += 1
                elif self._send_errno == zmq.EHOSTUNREACH:
                    self._subscribers.pop(ident, None)  # gone: forget it (bounded state)
                # EAGAIN: a slow subscriber's queue is full; this event is lost, the subscription stays
        self.counters["events_sent"] += sent
        if self._reader is not None:
            self._reader.check()
        return sent

    # -- the socket --------------------------------------------------------------------------------

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        try:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.LINGER, 0)
            apply_size_limit(sock, self._codec.max_message_size)
            if self._heartbeat is not None:
                self._heartbeat.apply(sock)  # dead clients are dropped, so replies to them fail fast
            if self._security is not None:
                self._release_security = self._security.apply(sock)
            self._endpoint = bind(sock, self._requested)
        except BaseException:
            close_quietly(sock)
            if self._release_security is not None:
                self._release_security()
            raise
        self._loop = loop
        self._sock = sock
        self._fast_send = fast_send(sock)
        self._idle = asyncio.Event()
        self._closed = asyncio.Event()
        self._reader = Reader(loop, sock, self._on_message)
        self._reader.start()
        log.info("async server %r listening on %s", self.service.name, self._endpoint)

    def _send(self, envelope: list[bytes], body: bytes) -> bool:
        """Send one reply; never blocks. A vanished client or a full queue is counted, not raised."""
        sock = self._sock
        if sock is None or sock.closed:
            self.counters["undeliverable"] += 1
            return False
        send = self._fast_send
        assert send is not None
        try:
            for part in envelope:
                send(part, _NOBLOCK_SNDMORE)
            send(body, _NOBLOCK)
            return True
        except zmq.ZMQError as exc:
            # EHOSTUNREACH: the client is gone (ROUTER_MANDATORY); EAGAIN: its queue is full.
            self._send_errno = exc.errno
            self.counters["undeliverable"] += 1
            log.debug("reply undeliverable: %s", exc)
            return False

    def _on_message(self, frames: list[bytes]) -> None:
        n = len(frames)
        if n < 3 or frames[-2] != b"":
            if n >= 1:
                self._send([frames[0], b""], self._dispatch.bad_frames(n - 1))
            return
        envelope = frames[:-1]
        d = self._dispatch
        msg = d.decode(frames[-1])
        if isinstance(msg, Call):
            self._start_call(envelope, msg)
        elif isinstance(msg, bytes):
            self._send(envelope, msg)
        elif isinstance(msg, Ping):
            self.counters["pings"] += 1
            self._send(envelope, self._codec.packb([PROTOCOL_VERSION, Kind.PONG, msg.id]))
        elif isinstance(msg, Notify):
            self._notify(envelope, msg)
        elif isinstance(msg, Cancel):
            fut = self._in_flight.pop((envelope[0], msg.id), None)
            if fut is not None:
                fut.cancel()
                self.counters["cancelled"] += 1
                self._call_done()
        else:
            self._send(envelope, d.unexpected(msg))

    def _refuse(self, msg: Call) -> ErrorRecord | None:
        if self._closing:
            return ErrorRecord(StatusCode.UNAVAILABLE, "zcall.ServerBusy", "server is shutting down")
        if len(self._in_flight) >= self.max_in_flight:
            self.counters["overloaded"] += 1
            return ErrorRecord(
                StatusCode.OVERLOADED,
                "zcall.ServerBusy",
                f"server at its limit of {self.max_in_flight} calls in flight; retry later",
            )
        if msg.deadline_ms == 0:
            return ErrorRecord(
                StatusCode.DEADLINE_EXCEEDED, "zcall.DeadlineExceeded", "deadline passed on arrival"
            )
        return None

    def _start_call(self, envelope: list[bytes], msg: Call) -> None:
        d = self._dispatch
        try:
            method = d.prepare(msg)
        except Rejected as r:
            self._send(envelope, d.rejected_frame(msg.id, r.record))
            return
        if self._closing or len(self._in_flight) >= self.max_in_flight or msg.deadline_ms == 0:
            refusal = self._refuse(msg)
            if refusal is not None:
                self._send(envelope, d.rejected_frame(msg.id, refusal, method=method.name))
                return
        # at most once: a resend is answered from the reply cache, never run again. The key holds the
        # method too, so a guessed id alone cannot fetch another caller's reply.
        cached = (msg.id, msg.method) if msg.retry and not method.idempotent else None
        if cached is not None:
            replies = d.replies
            seen = replies.begin(cached)
            if seen is IN_PROGRESS:
                replies.wait(cached, envelope)
                return
            if seen is not None:
                self._send(envelope, seen)
                return
        token = d.metrics.started(method.name)
        if method.inline and not method.is_coroutine:
            try:
                result = method.fn(*msg.args, **msg.kwargs)
            except Exception as exc:
                self._reply(envelope, msg.id, cached, d.exception_frame(msg.id, method.name, exc, token))
                return
            if type(result) in NEVER_AWAITABLE or not asyncio.iscoroutine(result):
                self._reply(envelope, msg.id, cached, d.reply_frame(msg.id, result, token))
                return
            fut: asyncio.Future[Any] = asyncio.ensure_future(result, loop=self._loop)
        elif method.is_coroutine:
            fut = self._loop.create_task(method.fn(*msg.args, **msg.kwargs))  # type: ignore[union-attr]
        else:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self._workers, thread_name_prefix=f"zcall-{self.service.name}"
                )
            deadline = None if msg.deadline_ms is None else time.monotonic() + msg.deadline_ms / 1000
            try:
                fut = self._loop.run_in_executor(  # type: ignore[union-attr]
                    self._pool, _run_blocking, method.fn, msg.args, msg.kwargs, deadline
                )
            except RuntimeError:  # the pool is shut down (interpreter exit): refuse, do not crash
                record = ErrorRecord(StatusCode.UNAVAILABLE, "zcall.ServerBusy", "server is shutting down")
                self._reply(envelope, msg.id, cached, d.rejected_frame(msg.id, record, token=token))
                return
        key = (envelope[0], msg.id)
        self._in_flight[key] = fut
        fut.add_done_callback(lambda f: self._finish(key, envelope, msg.id, method, cached, token, f))

    def _reply(self, envelope: list[bytes], rid: int, cached: tuple[int, str] | None, frame: bytes) -> None:
        """Send a call's reply, and (for a cached call) keep it and answer resends that joined meanwhile."""
        self._send(envelope, frame)
        if cached is not None:
            for other in self._dispatch.replies.complete(cached, frame):
                self._send(other, frame)

    def _finish(
        self,
        key: tuple[bytes, int],
        envelope: list[bytes],
        rid: int,
        method: Method,
        cached: tuple[int, str] | None,
        token: CallToken,
        fut: asyncio.Future[Any],
    ) -> None:
        d = self._dispatch
        if self._in_flight.pop(key, None) is None:
            d.metrics.finished(token, _CANCELLED)
            if cached is not None:
                d.replies.forget(cached)  # cancelled: a resend may run it afresh
            return  # cancelled by the caller or answered by shutdown: nothing to send
        if fut.cancelled():
            if cached is not None:
                d.replies.forget(cached)
                cached = None
            record = ErrorRecord(StatusCode.CANCELLED, "zcall.Cancelled", "call cancelled")
            frame = d.rejected_frame(rid, record, token=token)
        else:
            exc = fut.exception()
            if exc is None:
                frame = d.reply_frame(rid, fut.result(), token)
            elif isinstance(exc, _Expired):
                frame = d.rejected_frame(
                    rid,
                    ErrorRecord(
                        StatusCode.DEADLINE_EXCEEDED, "zcall.DeadlineExceeded", "deadline passed in queue"
                    ),
                    token=token,
                )
            else:
                frame = d.exception_frame(rid, method.name, exc, token)
        self._reply(envelope, rid, cached, frame)
        self._reader.check()  # type: ignore[union-attr]
        self._call_done()

    def _call_done(self) -> None:
        if not self._in_flight and self._closing and self._idle is not None:
            self._idle.set()

    def _sweep_subscribers(self) -> None:
        """Forget subscribers that are gone, even those no event would reach: run when the table doubles,
        it keeps it within twice the live ones. An empty body (receivers ignore it) probes each; under
        ROUTER_MANDATORY it fails at once with EHOSTUNREACH for a routing id that has disconnected."""
        for ident, sub in list(self._subscribers.items()):
            try:
                self._sock.send_multipart([*sub[0], b""], _NOBLOCK)  # type: ignore[union-attr]
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:
                    del self._subscribers[ident]
        self._sweep_at = max(_SWEEP_MIN, 2 * len(self._subscribers))

    def _notify(self, envelope: list[bytes], msg: Notify) -> None:
        if msg.method == SUBSCRIBE_METHOD:
            wanted = msg.args[0] if msg.args else []
            patterns = [p for p in wanted if isinstance(p, str)] if type(wanted) is list else []
            if patterns:
                old = self._subscribers.get(envelope[0])
                self._subscribers[envelope[0]] = [envelope, patterns, old[2] if old else 0]
                if len(self._subscribers) >= self._sweep_at:
                    self._sweep_subscribers()
            else:
                self._subscribers.pop(envelope[0], None)
            return
        d = self._dispatch
        try:
            method = d.prepare(msg)  # type: ignore[arg-type]
        except Rejected as r:
            log.warning("notify %r refused: %s", msg.method, r)
            return
        if self._closing:
            return
        if not method.inline or method.is_coroutine:  # work that queues: bounded like calls
            if len(self._in_flight) + self._notifying >= self.max_in_flight:
                self.counters["overloaded"] += 1  # no one to tell: dropped, counted
                return
            self._notifying += 1
        if method.is_coroutine:
            task = self._loop.create_task(method.fn(*msg.args, **msg.kwargs))  # type: ignore[union-attr]
            task.add_done_callback(_log_notify_failure(msg.method))
            task.add_done_callback(self._notify_done)
        elif method.inline:
            try:
                method.fn(*msg.args, **msg.kwargs)
            except Exception as exc:
                log.info("notify handler %r raised %s: %s", msg.method, type(exc).__name__, exc)
        else:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self._workers, thread_name_prefix=f"zcall-{self.service.name}"
                )
            f = self._loop.run_in_executor(self._pool, _run_blocking, method.fn, msg.args, msg.kwargs, None)  # type: ignore[union-attr]
            f.add_done_callback(_log_notify_failure(msg.method))
            f.add_done_callback(self._notify_done)

    def _notify_done(self, _f: asyncio.Future[Any]) -> None:
        self._notifying -= 1


def _run_blocking(fn: Callable[..., Any], args: Any, kwargs: dict[str, Any], deadline: float | None) -> Any:
    if deadline is not None and time.monotonic() > deadline:
        raise _Expired
    return fn(*args, **kwargs)


def _log_notify_failure(name: str) -> Callable[[asyncio.Future[Any]], None]:
    def done(f: asyncio.Future[Any]) -> None:
        if not f.cancelled() and f.exception() is not None:
            exc = f.exception()
            log.info("notify handler %r raised %s: %s", name, type(exc).__name__, exc)

    return done
