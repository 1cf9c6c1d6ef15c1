"""Asynchronous serving over a ROUTER socket: many calls in flight from many clients at once.

The dispatcher decides what a request is and whether it runs; this server only chooses *how* a handler
runs: coroutine handlers as tasks on the server's loop; plain functions in a bounded thread pool, so a
slow one cannot stall the loop (and with it every other call, ping and cancel); a plain function
declared ``inline=True`` on the loop itself, which is fastest for handlers that do not block.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from ..engine import fork
from ..engine.liveness import DEFAULT_HEARTBEAT, Heartbeat
from ..engine.loop import engine, on_loop, run_on, running_loop
from ..engine.reader import Reader
from ..engine.sockets import (
    DEFAULT_BIND,
    apply_size_limit,
    bind,
    close_bound,
    close_quietly,
    default_context,
    fast_send,
    new_socket,
)
from ..engine.streams import DEFAULT_WINDOW
from ..engine.workers import Job, Workers
from ..protocol.codec import Codec, default_codec
from ..protocol.topics import SUBSCRIBE_METHOD, topic_matches
from ..protocol.wire import (
    ACK,
    DELIMITER,
    MAX_BATCH_ITEMS,
    Batch,
    Cancel,
    batch_frame,
    event_frame,
    event_tail,
    handshake_properties,
    request_fields_of,
    split_routed,
)
from ..service.context import CallContext
from ..service.dispatch import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_IN_FLIGHT_BYTES,
    NEVER_AWAITABLE,
    Dispatcher,
    StreamStart,
    Subscribe,
)
from ..service.invoke import run_plain, run_queued, start_task
from ..service.registry import Service
from ..service.replycache import ReplyCache
from .events import Subscribers
from .health import HealthEvents
from .lifecycle import DEFAULT_GRACE, Lifecycle
from .streams import STREAM_MESSAGES, RouterStreams

if TYPE_CHECKING:
    from ..security import ServerSecurity

__all__ = ["SUBSCRIBE_METHOD", "AsyncServer", "topic_matches"]

log = logging.getLogger("zcall.server")

_HELD_LOOP_SLACK = 1.5
"""Seconds past the grace period ``stop()`` waits for a loop that something holds before giving up."""

# plain ints: combining pyzmq's enum flags (NOBLOCK | SNDMORE) costs about a microsecond each time
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK_SNDMORE = _NOBLOCK | _SNDMORE
_CLOSE_LINGER_MS = 1000  # how long queued answers may take to leave once the socket closes
_COPY_BELOW = 4096


class AsyncServer(Lifecycle):
    """Serve a ``Service`` over ROUTER: ``start()``/``stop()`` from threads, ``await serve()`` in asyncio."""

    def __init__(
        self,
        service: Service,
        endpoint: str = DEFAULT_BIND,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_in_flight_bytes: int = DEFAULT_MAX_IN_FLIGHT_BYTES,
        workers: int | None = None,
        context: zmq.Context | None = None,
        codec: Codec = default_codec,
        send_tracebacks: bool = True,
        reply_cache: ReplyCache | None = None,
        heartbeat: Heartbeat | None = DEFAULT_HEARTBEAT,
        security: ServerSecurity | None = None,
        check_replies: bool = True,
        stream_window: int = DEFAULT_WINDOW,
    ) -> None:
        """``stream_window``: how many of a caller's stream items this server takes before it grants more
        (a handler's input holds at most that many)."""
        self.service = service
        self._dispatch = Dispatcher(
            service,
            codec,
            send_tracebacks=send_tracebacks,
            reply_cache=reply_cache,
            max_in_flight=max_in_flight,
            max_in_flight_bytes=max_in_flight_bytes,
            check_replies=check_replies,
        )
        self.max_in_flight = max_in_flight
        self._requested = endpoint
        self._workers = workers or min(32, (os.cpu_count() or 1) + 4)
        self._ctx = context or default_context()
        self._codec = codec
        self._heartbeat = heartbeat
        self._security = security
        self._release_security: Callable[[], None] | None = None
        self._endpoint: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: zmq.Socket | None = None
        self._fast_send: Callable[[bytes, int], Any] | None = None
        self._reader: Reader | None = None
        self._pool: Workers | None = None
        # (routing id, call id) -> (call, its task or pool job) for calls running off the loop's current step
        self._running: dict[tuple[bytes, int], tuple[CallContext, Any]] = {}
        self._idle: asyncio.Event | None = None
        self._closing = False
        self._closed: asyncio.Event | None = None
        self._done = threading.Event()
        self._uses_engine = False
        self._subscribers = Subscribers()
        self._batch_out: dict[bytes, tuple[list[bytes], list[bytes]]] = {}  # answers to batching clients
        self._flush_scheduled = False
        self._send_errno: int | None = 0  # errno of the last failed _send (EAGAIN: slow, EHOSTUNREACH: gone)
        self.counters = {"undeliverable": 0, "events_sent": 0, "batches_received": 0, "batches_sent": 0}
        self._health: HealthEvents | None = None
        self._streams = RouterStreams(self, stream_window)

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
        return self._dispatch.in_flight

    def statistics(self) -> dict[str, Any]:
        """Counters for this server: calls, errors, bad messages, in flight, undeliverable replies..."""
        return {
            **self._dispatch.counters,
            **self.counters,
            "in_flight": self._dispatch.in_flight,
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
            self._done.set()
            raise
        return self

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop accepting, let in-flight calls finish within ``grace`` seconds, then close."""
        self._wake_forever()
        loop = self._loop
        if loop is None or fork.inherited(loop):  # not started, or started before os.fork: the parent's
            self._done.set()
            return
        if running_loop() is loop:
            raise RuntimeError("stop() would block the server's own loop: use 'await server.aclose()'")
        if not loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(self.aclose(grace), loop).result(grace + _HELD_LOOP_SLACK)
            except RuntimeError:  # the loop stopped meanwhile (interpreter exit)
                pass
            except concurrent.futures.TimeoutError:
                # Something holds the loop (an inline handler that never returns): no clean close is
                # possible, and waiting longer would only keep the process from exiting.
                log.critical(
                    "server %r: its event loop has been held for %.1f s past the grace period (an inline "
                    "handler that never returns?): closing without answering its calls",
                    self.service.name,
                    _HELD_LOOP_SLACK,
                )
                self._done.set()
                if self._uses_engine:  # releasing would join the held loop thread: leave it (a daemon)
                    self._uses_engine = False
                    engine.abandon(loop)
                return
        self._done.wait(grace + _HELD_LOOP_SLACK)
        if self._uses_engine:
            self._uses_engine = False
            engine.release(loop)

    def _hurry(self) -> None:
        loop, idle = self._loop, self._idle
        if loop is not None and idle is not None:
            loop.call_soon_threadsafe(idle.set)  # no lock taken: safe from a signal handler

    # -- lifecycle: asyncio ------------------------------------------------------------------------

    async def serve(self, grace: float = DEFAULT_GRACE, on_ready: Callable[[str], Any] | None = None) -> None:
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

    async def aclose(self, grace: float = DEFAULT_GRACE) -> None:
        """Graceful stop on the server's loop: refuse new calls, wait ``grace`` for in-flight ones, answer
        the rest UNAVAILABLE, then close once those answers are on their way."""
        if self._loop is not None and running_loop() is not self._loop:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.aclose(grace), self._loop))
            return
        if self._closing or self._loop is None:
            if self._closed is not None:
                await self._closed.wait()
            return
        if self._health is not None:
            self._health.stopping()  # NOT_SERVING pushed to watchers before anything is refused
        self._closing = True
        d = self._dispatch
        d.stopping = True
        self._wake_forever()
        log.info("server %s stopping: %d call(s) in flight, grace %.1fs", self._endpoint, d.in_flight, grace)
        if self._running:
            assert self._idle is not None
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                pass
        running, self._running = self._running, {}
        for call, fut in running.values():
            fut.cancel()
            frame, waiters = d.unavailable(call)
            if frame is not None:
                for envelope in (call._reply_to, *waiters):
                    self._send(envelope, frame)
        self._streams.close()
        if self._reader is not None:
            self._reader.stop()
        if self._sock is not None:
            close_bound(self._sock, self._endpoint, _CLOSE_LINGER_MS)  # answers leave, then the port is free
        if self._release_security is not None:
            self._release_security()  # after the close: a CURVE socket without ZAP would admit anyone
        if self._pool is not None:
            self._pool.close()  # daemon threads: a handler still blocked never holds the process
        assert self._closed is not None
        self._closed.set()
        self._done.set()
        log.info("server %s stopped", self._endpoint)

    # -- events ------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: Any = None) -> None:
        """Push an event to every connected client subscribed to ``topic`` (at most once; thread-safe)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("server is not started")
        if on_loop(loop):
            self._publish(topic, payload)
        else:
            loop.call_soon_threadsafe(self._publish, topic, payload)

    def _publish(self, topic: str, payload: Any) -> int:
        if self._sock is None or self._closing:
            return 0
        tail = event_tail(topic, payload, self._codec)  # encoded once; each frame adds its own number
        sent = 0
        for ident, envelope, seq in self._subscribers.for_topic(topic):
            if self._send(envelope, event_frame(seq, tail)):
                sent += 1
            elif self._send_errno == zmq.EHOSTUNREACH:
                self._subscribers.forget(ident)  # gone: forget it (bounded state)
            # EAGAIN: a slow subscriber's queue is full; this event is lost, the subscription stays
        self.counters["events_sent"] += sent
        if self._reader is not None:
            self._reader.check()
        return sent

    def _sweep_subscribers(self) -> None:
        """Forget subscribers that are gone, even those no event would reach. An empty body (clients
        ignore it) probes each; under ROUTER_MANDATORY it fails at once with EHOSTUNREACH for a routing id
        that has disconnected."""
        for ident, envelope in self._subscribers.envelopes():
            try:
                self._sock.send_multipart([*envelope, ACK], _NOBLOCK)  # type: ignore[union-attr]
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH:
                    self._subscribers.forget(ident)
        self._subscribers.swept()

    # -- the socket --------------------------------------------------------------------------------

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        sock = new_socket(self._ctx, zmq.ROUTER)
        try:
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.LINGER, 0)
            # advertise BATCH and the size limit in the handshake: zcall clients then send several
            # calls per message, in batches this server can read
            for prop in handshake_properties(self._codec.max_message_size, batch=True):
                sock.setsockopt(zmq.METADATA, prop)
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
        self._reader = Reader(loop, sock, self._on_message, keep_frames=True)
        self._reader.start()
        self._health = HealthEvents(self.service, self.publish)
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

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        split = split_routed(frames)
        if split is None:
            if frames:
                ident = frames[0].bytes
                if self._batch_out:
                    self._flush_to(ident)
                self._send([ident, DELIMITER], self._dispatch.bad_framing(len(frames) - 1))
            return
        body_frame = split[1]
        envelope = [f.bytes for f in split[0]]
        ident = envelope[0]
        # a small body is copied (cheaper than a memoryview); a large one is decoded where it lies
        body = body_frame.bytes if len(body_frame) < _COPY_BELOW else body_frame.buffer
        r = self._dispatch.admit(body, envelope, ident, body_frame)
        t = type(r)
        if t is CallContext:
            self._run(r)  # type: ignore[arg-type]
        elif t is bytes:
            if self._batch_out:
                self._flush_to(ident)  # the answers before it leave first
            self._send(envelope, r)  # type: ignore[arg-type]
        elif t is Batch:
            held = self._codec.held_by(body)
            self._on_batch(envelope, ident, body_frame, r.items, held)  # type: ignore[union-attr]
        else:
            self._on_control(envelope, ident, r)

    def _on_control(self, envelope: list[bytes], ident: bytes, r: Any) -> None:
        t = type(r)
        if t is Cancel:
            if not (self._streams.open and self._streams.on_cancel(ident, r.id, envelope)):
                self._cancel(ident, r.id)
        elif t is Subscribe:
            if self._subscribers.update(ident, envelope, r.patterns):
                self._sweep_subscribers()
            answer = self._dispatch.subscribed(r, r.patterns)  # the CALL form: the patterns now kept
            if answer is not None:
                if self._batch_out:
                    self._flush_to(ident)
                self._send(envelope, answer)
        elif t is StreamStart:
            self._streams.start(r.call, envelope)
        elif t in STREAM_MESSAGES:
            self._streams.on_message(envelope, ident, r)

    def _on_batch(self, envelope: list[bytes], ident: bytes, frame: Any, items: list[Any], size: int) -> None:
        """A BATCH: each item as if it had come alone, in order; the answers to its calls leave in
        batches too (``_send_batched``)."""
        d = self._dispatch
        self.counters["batches_received"] += 1
        share = size // max(1, len(items))
        for item in items:
            fields = request_fields_of(item)
            r: Any
            if fields is not None:
                r = d.admit_fields(fields, share, envelope, ident, frame)
                if type(r) is CallContext:
                    r._batched = True
                    self._run(r)
                    continue
            else:
                r = d.other_item(item, envelope, ident, frame)
            if type(r) is bytes:
                self._send_batched(envelope, ident, r)
            elif r is not None:
                self._on_control(envelope, ident, r)

    def _send_batched(self, envelope: list[bytes], ident: bytes, frame: bytes) -> None:
        """Queue an answer for a client that batches: every answer to it in this loop pass leaves as one
        BATCH at the end of the pass (``_flush_batched``); an answer that leaves on its own sends the queue
        first (``_flush_to``), so one connection's answers keep their order."""
        out = self._batch_out
        q = out.get(ident)
        if q is None:
            out[ident] = (envelope, [frame])
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._loop.call_soon(self._flush_batched)  # type: ignore[union-attr]
        else:
            q[1].append(frame)

    def _flush_batched(self) -> None:
        self._flush_scheduled = False
        out, self._batch_out = self._batch_out, {}
        for envelope, frames in out.values():
            self._send_queued(envelope, frames)
        if self._reader is not None:
            self._reader.check()

    def _flush_to(self, ident: Any) -> None:
        """Send what is queued for ``ident`` now: an answer about to leave on its own must not overtake
        the batched answers before it."""
        q = self._batch_out.pop(ident, None)
        if q is not None:
            self._send_queued(*q)

    def _send_queued(self, envelope: list[bytes], frames: list[bytes]) -> None:
        """The queued answers to one connection: alone if one, else in BATCHes of at most
        ``MAX_BATCH_ITEMS`` messages and half the message size limit."""
        if len(frames) == 1:
            self._send(envelope, frames[0])
            return
        limit = self._codec.max_message_size // 2
        chunk: list[bytes] = []
        nbytes = 0
        for f in frames:
            if chunk and (len(chunk) >= MAX_BATCH_ITEMS or nbytes + len(f) > limit):
                self._send_chunk(envelope, chunk)
                chunk, nbytes = [], 0
            chunk.append(f)
            nbytes += len(f)
        self._send_chunk(envelope, chunk)

    def _send_chunk(self, envelope: list[bytes], chunk: list[bytes]) -> None:
        if len(chunk) == 1:
            self._send(envelope, chunk[0])
        else:
            self.counters["batches_sent"] += 1
            self._send(envelope, batch_frame(chunk))

    # -- how a handler runs: the only choice this server makes --------------------------------------

    def _run(self, call: CallContext) -> None:
        entry = call._entry
        loop = self._loop
        assert entry is not None and loop is not None
        if entry.inline and not entry.is_coroutine:
            try:
                result = run_plain(call)
            except BaseException as exc:  # whatever a handler raises is its answer
                self._answer(call, None, exc)
                return
            if type(result) in NEVER_AWAITABLE or not asyncio.iscoroutine(result):
                # _answer, inlined: the fastest path there is (an inline handler's result)
                frame, waiters = self._dispatch.finish(call, result, None)
                if frame is not None:
                    if call._batched:
                        self._send_batched(call._reply_to, call.routing_id, frame)  # type: ignore[arg-type]
                    else:
                        if self._batch_out:
                            self._flush_to(call.routing_id)
                        self._send(call._reply_to, frame)
                    for other in waiters:
                        self._send(other, frame)
                return
            fut: asyncio.Future[Any] = start_task(loop, result, call)
        elif entry.is_coroutine:
            try:
                coro = entry.fn(*call._args, **call._kwargs)
            except BaseException as exc:  # e.g. a callable object whose __call__ raised
                self._answer(call, None, exc)
                return
            fut = start_task(loop, coro, call)
        else:
            pool = self._pool
            if pool is None:
                pool = self._pool = Workers(loop, self._workers, f"zcall-{self.service.name}")
            job = Job(run_queued, call, self._job_done)
            try:
                pool.submit(job)
            except RuntimeError as exc:  # the pool is closed (stopping): refuse, do not crash
                self._answer(call, None, exc)
                return
            self._running[(call.routing_id or b"", call.id)] = (call, job)
            return
        key = (call.routing_id or b"", call.id)
        self._running[key] = (call, fut)
        fut.add_done_callback(functools.partial(self._finished, key, call))

    def _job_done(self, job: Job, result: Any, error: BaseException | None) -> None:
        """A pool job finished (on the loop, in a batch with the others that finished meanwhile)."""
        call: CallContext = job.arg
        if self._running.pop((call.routing_id or b"", call.id), None) is None:
            return  # cancelled by the caller, or answered by the shutdown
        self._answer(call, result, error)
        self._reader.check()  # type: ignore[union-attr]
        if self._closing and not self._running and self._idle is not None:
            self._idle.set()

    def _finished(self, key: tuple[bytes, int], call: CallContext, fut: asyncio.Future[Any]) -> None:
        if self._running.pop(key, None) is None:
            return  # cancelled by the caller, or answered by the shutdown: nothing more to send
        if fut.cancelled():
            self._answer(call, None, asyncio.CancelledError())
        else:
            exc = fut.exception()
            self._answer(call, None if exc is not None else fut.result(), exc)
        self._reader.check()  # type: ignore[union-attr]
        if self._closing and not self._running and self._idle is not None:
            self._idle.set()

    def _answer(self, call: CallContext, result: Any, error: BaseException | None) -> None:
        frame, waiters = self._dispatch.finish(call, result, error)
        if frame is not None:
            if call._batched:
                self._send_batched(call._reply_to, call.routing_id, frame)  # type: ignore[arg-type]
            else:
                if self._batch_out:
                    self._flush_to(call.routing_id)
                self._send(call._reply_to, frame)
            for other in waiters:  # resends that joined this call while it ran
                self._send(other, frame)

    def _cancel(self, ident: bytes, rid: int) -> None:
        """A CANCEL from the caller's connection: drop that call; it gets no answer (the caller forgot it)."""
        entry = self._running.pop((ident, rid), None)
        if entry is None:
            return
        call, fut = entry
        fut.cancel()
        self._dispatch.finish(call, error=asyncio.CancelledError())
        if self._closing and not self._running and self._idle is not None:
            self._idle.set()
