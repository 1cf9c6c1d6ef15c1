"""Synchronous serving: one call at a time, every request answered, in the order they are read.

REQ clients get REP's semantics, strictly request → reply, but the socket is a ROUTER driven the way
libzmq's REP drives one: each request is read whole with its envelope, handled, and answered on that
envelope before the next is read; NOTIFY and CANCEL get the empty-body ACK a REQ socket needs (docs/
protocol.md §1). Why not REP itself: a REP socket fed garbage by a raw TCP peer (a port scanner is
enough) lost some of the next calls of well-behaved clients in our measurements, and a ROUTER does
not; a ROUTER also lets a stop answer every queued request, and bounds the envelope it copies.

The socket lives on the server's own thread, which receives, runs the handler and replies: the fastest
path for one call at a time (no hand-off). A graceful ``stop(grace)`` answers every request it reads
from then on UNAVAILABLE; the call running when it began gets ``grace`` seconds. If that call is still
running when the grace period ends, the stopping thread *takes the socket over*: under a lock the
serving thread holds whenever it touches the socket after a handler, it answers that call
UNAVAILABLE, answers what is queued, and closes the socket; the serving thread, back from the handler,
sees the take-over and leaves without touching the socket again. The socket is owned by one thread at a
time, and the lock is the memory barrier libzmq asks for when a socket moves between threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import zmq

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
from ..protocol.codec import Codec, default_codec
from ..protocol.wire import (
    ACK,
    DELIMITER,
    MAX_REQUEST_FRAMES,
    Batch,
    Cancel,
    handshake_properties,
    split_routed,
)
from ..service.context import CallContext
from ..service.dispatch import Dispatcher, Subscribe
from ..service.invoke import run_to_completion
from ..service.registry import Service
from ..service.replycache import ReplyCache
from .lifecycle import DEFAULT_GRACE, Lifecycle
from .pulled import PULLED_MESSAGES, PulledStreams

if TYPE_CHECKING:
    from ..security import ServerSecurity

__all__ = ["SyncServer"]

log = logging.getLogger("zcall.server")

_server_numbers = itertools.count(1)  # names each server's inproc stop address; never reused
_NOBLOCK = int(zmq.NOBLOCK)
_WAITING_PER_CONNECTION = 8
"""Requests libzmq holds for one connection while the SyncServer is busy (its ROUTER's RCVHWM)."""
_NOBLOCK_SNDMORE = _NOBLOCK | int(zmq.SNDMORE)
_COPY_BELOW = 4096  # bodies smaller than this are copied out of their frame (cheaper than a view)
_IDLE_TICK_MS = 500  # a blocking recv re-checks for a stop this often (if the wake-up was lost)
_SLICE = 0.05  # how often a grace wait re-checks whether it was hurried


class SyncServer(Lifecycle):
    """Serve a ``Service`` over REP. ``start()`` runs it on a thread; ``serve_forever()`` blocks."""

    def __init__(
        self,
        service: Service,
        endpoint: str = DEFAULT_BIND,
        *,
        context: zmq.Context | None = None,
        codec: Codec = default_codec,
        send_tracebacks: bool = True,
        reply_cache: ReplyCache | None = None,
        security: ServerSecurity | None = None,
        check_replies: bool = True,
    ) -> None:
        self.service = service
        self._requested = endpoint
        self._security = security
        self._ctx = context or default_context()
        self._dispatch = Dispatcher(
            service,
            codec,
            send_tracebacks=send_tracebacks,
            reply_cache=reply_cache,
            check_replies=check_replies,
        )
        self._endpoint: str | None = None
        self._thread: threading.Thread | None = None
        self._bound = threading.Event()
        self._bind_error: BaseException | None = None
        # Not id(self): a stopped server's object id is soon reused while its inproc name may still be
        # registered (sockets close asynchronously), so the next server's bind failed with EADDRINUSE.
        n = next(_server_numbers)
        self._stop_addr = f"inproc://zcall-syncserver-stop-{n}"
        self._poke_body = b"\x00zcall-stop-" + os.urandom(8)  # what the stop wake-up request carries
        self._loop: asyncio.AbstractEventLoop | None = None
        # the take-over: the serving thread holds _lock whenever it touches the socket after a handler
        self._lock = threading.Lock()
        self._current: CallContext | None = None
        self._taken_over = False
        self._sock: zmq.Socket | None = None
        self._send: Any = None
        self._stop_lock = threading.Lock()
        self._stop_started = False
        self._hurried = False
        self._undeliverable = 0
        self._done = threading.Event()
        self._pulls = PulledStreams(self._dispatch, self._private_loop)  # streams, kept between pulls

    @property
    def endpoint(self) -> str:
        """The endpoint actually bound (the real port when bound with ``*``)."""
        if self._endpoint is None:
            raise RuntimeError("server is not bound yet: call start() or serve_forever() first")
        return self._endpoint

    @property
    def counters(self) -> dict[str, int]:
        """Calls served, errors, bad messages, expired calls, pings ... so far."""
        return dict(self._dispatch.counters)

    def statistics(self) -> dict[str, Any]:
        """This server's counters and calls in flight (0 or 1)."""
        d = self._dispatch
        return {**d.counters, "undeliverable": self._undeliverable, "in_flight": d.in_flight}

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> SyncServer:
        """Serve on a background thread; returns once bound (raises if binding failed)."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._thread = threading.Thread(target=self._run, name=f"zcall-sync-{self.service.name}", daemon=True)
        self._thread.start()
        self._bound.wait()
        if self._bind_error is not None:
            self._thread.join()
            self._done.set()
            raise self._bind_error
        return self

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop: refuse new calls, give the running one ``grace`` seconds, answer the rest, close."""
        with self._stop_lock:
            first = not self._stop_started
            self._stop_started = True
        self._wake_forever()
        thread = self._thread
        if thread is None or not self._bound.is_set() or self._bind_error is not None:
            self._done.set()
            return
        if not first:
            # another stop() runs (or was interrupted): wait for it, bounded, and never for a dead thread
            if thread is not threading.current_thread():
                deadline = time.monotonic() + grace + 5.0
                while not self._done.wait(_SLICE) and thread.is_alive() and time.monotonic() < deadline:
                    pass
                if not thread.is_alive():
                    self._done.set()
            return
        self._dispatch.stopping = True
        log.info("sync server %s stopping, grace %.1fs", self._endpoint, grace)
        self._poke()
        if thread is threading.current_thread():
            return  # stop() from inside a handler: the loop drains and closes once the handler returns
        deadline = time.monotonic() + grace
        while thread.is_alive() and not self._hurried:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            thread.join(min(left, _SLICE))
        if thread.is_alive():
            self._take_over()
        if not self._taken_over:
            thread.join(5.0)
        # else: the serving thread is inside a handler that outlived the grace period. It is a daemon
        # thread; it leaves without touching the socket when the handler returns, and does not keep
        # the process from exiting.
        self._done.set()

    def _hurry(self) -> None:
        self._hurried = True

    def _poke(self) -> None:
        """Wake the serving thread's blocking recv: one request on the socket's own inproc endpoint."""
        poke = self._ctx.socket(zmq.DEALER)
        try:
            poke.connect(self._stop_addr)
            with contextlib.suppress(zmq.Again):
                poke.send_multipart([b"", self._poke_body], zmq.NOBLOCK)
        finally:
            close_quietly(poke, 100)

    def _take_over(self) -> None:
        """The grace period is over and a handler still runs: answer for the serving thread and close."""
        with self._lock:
            sock, call = self._sock, self._current
            if sock is None or sock.closed or call is None:
                return  # the serving thread is between calls: it drains and closes by itself
            self._taken_over = True
            log.warning(
                "sync server %s: call %r still running after the grace period: answered UNAVAILABLE "
                "(its thread finishes on its own; its result is dropped)",
                self._endpoint,
                call.method,
            )
            send = fast_send(sock)
            frame, _ = self._dispatch.unavailable(call)
            self._reply(send, call._reply_to, frame)
            self._drain(sock, send)
            close_bound(sock, self._endpoint)

    # -- the loop ----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:
            if exc is not self._bind_error:
                log.exception("sync server %s: serving thread died", self._requested)
        finally:
            self._wake_forever()  # a serve_forever waiting in another thread must not wait for nothing
            if self._loop is not None:
                self._loop.close()
                self._loop = None

    def _serve(self) -> None:
        sock = new_socket(self._ctx, zmq.ROUTER)
        release_security = None
        try:
            try:
                sock.setsockopt(zmq.LINGER, 1000)
                sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a vanished client fails, counted
                # One request is served at a time: libzmq need not hold more than a few waiting per
                # connection (its default, 1000 of up to the frame limit each, is gigabytes); a client
                # pipelining further just waits in its own queue (backpressure, nothing dropped).
                sock.setsockopt(zmq.RCVHWM, _WAITING_PER_CONNECTION)
                apply_size_limit(sock, self._dispatch.codec.max_message_size)
                for prop in handshake_properties(self._dispatch.codec.max_message_size, batch=False):
                    sock.setsockopt(zmq.METADATA, prop)  # its size limit, so clients refuse what it would
                if self._security is not None:
                    release_security = self._security.apply(sock)
                self._endpoint = bind(sock, self._requested)
                sock.bind(self._stop_addr)  # where stop() wakes the blocking recv below
                sock.setsockopt(zmq.RCVTIMEO, _IDLE_TICK_MS)
                self._sock = sock
            except BaseException as exc:
                self._bind_error = exc
                raise
            finally:
                self._bound.set()
            log.info("sync server %r listening on %s", self.service.name, self._endpoint)
            self._loop_until_stopped(sock)
        finally:
            self._pulls.close_all()  # on the serving thread: a generator is never closed while it runs
            with self._lock:
                if not self._taken_over and not sock.closed:
                    close_bound(sock, self._endpoint)
            if release_security is not None:
                release_security()  # after the close: a CURVE socket without ZAP would admit anyone

    def _read(self, recv: Any, flags: int) -> tuple[list[bytes], Any] | None:
        """One request, whole: ``(envelope, body frame)``, or None after answering a malformed one.
        Frame.more instead of getsockopt(RCVMORE): pyzmq's getsockopt costs ~0.6 us a call. Frames past
        the limit are received (libzmq holds them anyway) but neither kept nor copied."""
        f = recv(flags, copy=False)
        frames = [f]
        while f.more:
            f = recv(flags, copy=False)
            if len(frames) <= MAX_REQUEST_FRAMES:
                frames.append(f)
            else:
                frames[-1] = f  # keep the count bounded: the message is refused anyway
        split = split_routed(frames) if not f.more else None
        if split is None:
            self._reply(self._send, [frames[0].bytes, DELIMITER], self._dispatch.bad_framing(len(frames) - 1))
            return None
        return [x.bytes for x in split[0]], split[1]

    def _reply(self, send: Any, envelope: list[bytes], frame: bytes | None) -> None:
        """Answer on ``envelope`` without ever blocking (a full or vanished client is counted)."""
        try:
            for part in envelope:
                send(part, _NOBLOCK_SNDMORE)
            send(ACK if frame is None else frame, _NOBLOCK)
        except zmq.ZMQError:
            self._undeliverable += 1

    def _loop_until_stopped(self, sock: zmq.Socket) -> None:
        # A blocking recv, no poller: one system call less per request than polling first.
        recv = sock.recv
        self._send = send = fast_send(sock)
        d, lock, poke, read, reply = self._dispatch, self._lock, self._poke_body, self._read, self._reply
        admit, finish, new_loop = d.admit, d.finish, self._private_loop
        while True:
            try:
                got = read(recv, 0)
            except zmq.Again:
                if d.stopping:
                    with lock:
                        if not self._taken_over:
                            self._drain(sock, send)
                    return
                self._pulls.expire()
                continue
            if got is None:
                continue
            envelope, f = got
            body = f.bytes if len(f) < _COPY_BELOW else f.buffer
            if body == poke:
                reply(send, envelope, None)
                with lock:
                    if not self._taken_over:
                        self._drain(sock, send)
                return
            r = admit(body, envelope, None, f, False)
            if type(r) is CallContext:
                self._current = r
                result = error = None
                try:
                    result = run_to_completion(r, new_loop)
                except BaseException as exc:  # whatever a handler raises is its answer
                    error = exc
                with lock:
                    self._current = None
                    if self._taken_over:
                        return  # stop() answered this call and closed the socket
                    frame, _ = finish(r, result, error)
                    reply(send, envelope, frame)
            elif type(r) is bytes:
                reply(send, envelope, r)
            elif type(r) is Batch:
                reply(send, envelope, d.batch_refused())  # one at a time: it never advertised BATCH
            elif type(r) in PULLED_MESSAGES:
                if not self._pull(envelope, r):
                    return  # stop() answered it and closed the socket
            elif type(r) is Subscribe:  # kept nowhere: a REP-style server cannot push events
                reply(send, envelope, d.subscribed(r, []))
            else:
                if type(r) is Cancel:
                    self._pulls.cancel(envelope, r)
                reply(send, envelope, None)  # a NOTIFY, a CANCEL, a subscribe: every request is answered

    def _pull(self, envelope: list[bytes], r: Any) -> bool:
        """A stream's request (``server.pulled``): made like a call (a stop may take over while it runs),
        answered once. False when the stop took the socket over meanwhile."""
        self._current = self._pulls.call_of(envelope, r)
        try:
            frame = self._pulls.answer(envelope, r)
        except Exception as exc:  # a bug here must not kill the serving thread
            log.exception("sync server %s: a stream's request failed", self._endpoint)
            frame = self._dispatch.internal_error(getattr(r, "id", 0), exc)
        with self._lock:
            self._current = None
            if self._taken_over:
                return False  # the socket is the stopping thread's now
            self._reply(self._send, envelope, frame)
        return True

    def _drain(self, sock: zmq.Socket, send: Any) -> None:
        """Answer whatever is already queued (stopping: UNAVAILABLE, or errors), without blocking."""
        d = self._dispatch
        while True:
            try:
                got = self._read(sock.recv, _NOBLOCK)
            except zmq.ZMQError:
                return
            if got is None:
                continue
            envelope, f = got
            body = f.bytes
            r = None if body == self._poke_body else d.admit(body, envelope, None, f, False)
            if type(r) is CallContext:  # cannot be admitted while stopping; answer it anyway
                r = d.unavailable(r)[0]
            elif type(r) in PULLED_MESSAGES:
                r = self._pulls.answer(envelope, r)  # stopping: a pull gets UNAVAILABLE
            self._reply(send, envelope, r if type(r) is bytes else None)

    def _private_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop
