"""Synchronous serving over a REP socket: one call at a time, strictly request → reply.

The REP socket lives on the server's own thread, which receives, runs the handler and replies: the
fastest path for one call at a time (no hand-off). A graceful ``stop(grace)`` answers every request it
reads from then on UNAVAILABLE; the call running when it began gets ``grace`` seconds. If that call is
still running when the grace period ends, the stopping thread *takes the socket over*: under a lock the
serving thread holds whenever it touches the socket, it answers that call UNAVAILABLE, answers what is
queued, and closes the socket; the serving thread, back from the handler, sees the take-over and leaves
without touching the socket again. The socket is owned by one thread at a time, and the lock is the
memory barrier libzmq asks for when a socket moves between threads.
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

from ..engine.sockets import DEFAULT_BIND, apply_size_limit, bind, close_bound, close_quietly, fast_send
from ..protocol.codec import Codec, default_codec
from ..protocol.wire import ACK
from ..service.context import CallContext
from ..service.dispatch import Dispatcher
from ..service.invoke import run_to_completion
from ..service.registry import Service
from ..service.replycache import ReplyCache
from .lifecycle import DEFAULT_GRACE, Lifecycle

if TYPE_CHECKING:
    from ..security import ServerSecurity

__all__ = ["SyncServer"]

log = logging.getLogger("zcall.server")

_server_numbers = itertools.count(1)  # names each server's inproc stop address; never reused
_NOBLOCK = int(zmq.NOBLOCK)
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
    ) -> None:
        self.service = service
        self._requested = endpoint
        self._security = security
        self._ctx = context or zmq.Context.instance()
        self._dispatch = Dispatcher(service, codec, send_tracebacks=send_tracebacks, reply_cache=reply_cache)
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
        self._stop_lock = threading.Lock()
        self._stop_started = False
        self._hurried = False
        self._done = threading.Event()

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
        return {**self._dispatch.counters, "in_flight": self._dispatch.in_flight}

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
            if thread is not threading.current_thread():
                self._done.wait()
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
            send(frame if frame is not None else ACK, _NOBLOCK)
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
        rep = self._ctx.socket(zmq.REP)
        release_security = None
        try:
            try:
                rep.setsockopt(zmq.LINGER, 1000)
                apply_size_limit(rep, self._dispatch.codec.max_message_size)
                if self._security is not None:
                    release_security = self._security.apply(rep)
                self._endpoint = bind(rep, self._requested)
                rep.bind(self._stop_addr)  # where stop() wakes the blocking recv below
                rep.setsockopt(zmq.RCVTIMEO, _IDLE_TICK_MS)
                self._sock = rep
            except BaseException as exc:
                self._bind_error = exc
                raise
            finally:
                self._bound.set()
            log.info("sync server %r listening on %s", self.service.name, self._endpoint)
            self._loop_until_stopped(rep)
        finally:
            with self._lock:
                if not self._taken_over and not rep.closed:
                    close_bound(rep, self._endpoint)
            if release_security is not None:
                release_security()  # after the close: a CURVE socket without ZAP would admit anyone

    def _loop_until_stopped(self, rep: zmq.Socket) -> None:
        # A blocking recv, no poller: one system call less per request than polling first.
        # Frame.more instead of getsockopt(RCVMORE): pyzmq's getsockopt costs ~0.6 us a call.
        recv, send = rep.recv, fast_send(rep)
        d, lock, poke = self._dispatch, self._lock, self._poke_body
        admit, finish, new_loop = d.admit, d.finish, self._private_loop
        while True:
            try:
                f = recv(0, copy=False)
            except zmq.Again:
                if d.stopping:
                    with lock:
                        if not self._taken_over:
                            self._drain(rep, send)
                    return
                continue
            if f.more:
                n = 1
                while f.more:
                    f = recv(0, copy=False)
                    n += 1
                send(d.bad_framing(n), 0)
                continue
            body = f.bytes
            if body == poke:
                send(ACK, 0)
                with lock:
                    if not self._taken_over:
                        self._drain(rep, send)
                return
            r = admit(body, frame=f, can_wait=False)
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
                    send(frame if frame is not None else ACK, 0)
            elif type(r) is bytes:
                send(r, 0)
            else:
                send(ACK, 0)  # a NOTIFY refused, a CANCEL, a subscribe: REP answers every request

    def _drain(self, rep: zmq.Socket, send: Any) -> None:
        """Answer whatever is already queued (stopping: UNAVAILABLE, or errors), without blocking."""
        d = self._dispatch
        while True:
            try:
                f = rep.recv(_NOBLOCK, copy=False)
            except zmq.ZMQError:
                return
            if f.more:
                n = 1
                while f.more:
                    f = rep.recv(_NOBLOCK, copy=False)
                    n += 1
                send(d.bad_framing(n), _NOBLOCK)
                continue
            body = f.bytes
            r = None if body == self._poke_body else d.admit(body, frame=f, can_wait=False)
            if type(r) is CallContext:  # cannot be admitted while stopping; answer it anyway
                frame, _ = d.unavailable(r)
                send(frame if frame is not None else ACK, _NOBLOCK)
            elif type(r) is bytes:
                send(r, _NOBLOCK)
            else:
                send(ACK, _NOBLOCK)

    def _private_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop
