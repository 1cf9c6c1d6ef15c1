"""Synchronous serving over a REP socket: one call at a time, strictly request → reply."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import zmq

from ..engine.sockets import DEFAULT_BIND, apply_size_limit, bind, close_quietly, fast_send, release_endpoint
from ..protocol.codec import Codec, default_codec
from ..protocol.status import StatusCode
from ..protocol.wire import PROTOCOL_VERSION, Call, Cancel, Kind, Notify, Ping
from ..service.dispatch import ACK, NEVER_AWAITABLE, Dispatcher
from ..service.registry import Rejected, Service
from ..service.replycache import IN_PROGRESS, ReplyCache

if TYPE_CHECKING:
    from ..security import ServerSecurity

__all__ = ["SyncServer"]

log = logging.getLogger("zcall.server")


_server_numbers = itertools.count(1)  # names each server's inproc stop address; never reused


class _Shutdown(BaseException):
    """Raised from the SIGTERM handler to unwind ``serve_forever``."""


@contextlib.contextmanager
def _signals_stop() -> Iterator[None]:
    """In the main thread, make SIGTERM unwind like Ctrl-C for the duration of the block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise _Shutdown

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class SyncServer:
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
        self._stop_addr = f"inproc://zcall-syncserver-stop-{next(_server_numbers)}"
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def endpoint(self) -> str:
        """The endpoint actually bound (the real port when bound with ``*``)."""
        if self._endpoint is None:
            raise RuntimeError("server is not bound yet: call start() or serve_forever() first")
        return self._endpoint

    @property
    def counters(self) -> dict[str, int]:
        """Calls served, errors, bad messages and expired calls so far."""
        return dict(self._dispatch.counters)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> SyncServer:
        """Serve on a background thread; returns once bound (raises if binding failed)."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._thread = threading.Thread(
            target=self._run_thread, name=f"zcall-sync-{self.service.name}", daemon=True
        )
        self._thread.start()
        self._bound.wait()
        if self._bind_error is not None:
            self._thread.join()
            self._thread = None
            raise self._bind_error
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop serving (the call in progress, if any, finishes first) and close the socket."""
        if self._stopping:
            return
        self._stopping = True
        if self._thread is not None and self._bound.is_set() and self._bind_error is None:
            # One request on the REP socket's own inproc endpoint wakes its blocking recv. NOBLOCK: if
            # the serving thread is already closing, there is no peer and it is stopping anyway.
            poke = self._ctx.socket(zmq.DEALER)
            try:
                poke.connect(self._stop_addr)
                with contextlib.suppress(zmq.Again):
                    poke.send_multipart([b"", b"stop"], zmq.NOBLOCK)
            finally:
                close_quietly(poke, 100)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def serve_forever(self, on_ready: Callable[[str], Any] | None = None) -> None:
        """Serve in this thread until KeyboardInterrupt or SIGTERM (handled here), or ``stop()``.

        ``on_ready(endpoint)`` runs once bound (e.g. to print the real port of a ``*`` bind)."""
        with _signals_stop():
            try:
                self._run(on_ready)
            except (KeyboardInterrupt, _Shutdown):
                log.info("sync server %s stopping on signal", self._endpoint)

    def wait(self) -> None:
        """Block until a ``start()``-ed server stops; Ctrl-C or SIGTERM stops it cleanly."""
        if self._thread is None:
            raise RuntimeError("server is not started: call start() first")
        with _signals_stop():
            try:
                self._thread.join()
            except (KeyboardInterrupt, _Shutdown):
                log.info("sync server %s stopping on signal", self._endpoint)
            finally:
                self.stop()

    def __enter__(self) -> SyncServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the loop ----------------------------------------------------------------------------------

    def _run_thread(self) -> None:
        try:
            self._run()
        except BaseException as exc:
            if exc is not self._bind_error:
                raise
            # start() re-raises the bind error in the caller's thread; raising it here as well only
            # printed a second, unhandled "Exception in thread" traceback.

    def _run(self, on_ready: Callable[[str], Any] | None = None) -> None:
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
                # Also wake 4 times a second when idle: a signal landing just before recv() starts does
                # not interrupt it, and its Python handler (which stops us) runs once recv returns.
                rep.setsockopt(zmq.RCVTIMEO, 250)
            except BaseException as exc:
                self._bind_error = exc
                raise
            finally:
                self._bound.set()
            log.info("sync server %r listening on %s", self.service.name, self._endpoint)
            if on_ready is not None:
                on_ready(self._endpoint)
            # A blocking recv, no poller: one system call less per request than polling first.
            # Frame.more instead of getsockopt(RCVMORE): pyzmq's getsockopt costs ~0.6 us a call.
            recv, send, handle = rep.recv, fast_send(rep), self._handle
            while not self._stopping:
                try:
                    f = recv(0, copy=False)
                except zmq.Again:
                    continue
                if f.more:
                    n = 1
                    while f.more:
                        f = recv(0, copy=False)
                        n += 1
                    send(self._dispatch.bad_frames(n), 0)
                    continue
                if self._stopping:
                    break  # the stop poke (or a request racing with stop: its client times out)
                send(handle(f.bytes), 0)
        finally:
            if self._endpoint is not None and not rep.closed:
                release_endpoint(rep, self._endpoint)
            close_quietly(rep, 1000)
            if release_security is not None:
                release_security()  # after the close: a CURVE socket without ZAP would admit anyone
            if self._loop is not None:
                self._loop.close()
                self._loop = None

    def _handle(self, frame: bytes) -> bytes:
        d = self._dispatch
        msg = d.decode(frame)
        if isinstance(msg, bytes):
            return msg
        if isinstance(msg, Call):
            try:
                method = d.prepare(msg)
            except Rejected as r:
                return d.rejected_frame(msg.id, r.record)
            if msg.deadline_ms == 0:
                expired = Rejected(StatusCode.DEADLINE_EXCEEDED, "deadline passed before the call started")
                return d.rejected_frame(msg.id, expired.record, method=method.name)
            # at most once: a resend is answered from the reply cache, never run again (keyed with the
            # method too, so a guessed id alone cannot fetch another caller's reply)
            cached = (msg.id, msg.method) if msg.retry and not method.idempotent else None
            if cached is not None:
                seen = d.replies.begin(cached)
                if seen is not None and seen is not IN_PROGRESS:
                    return seen  # type: ignore[no-any-return]
            token = d.metrics.started(method.name)
            try:
                result = method.fn(*msg.args, **msg.kwargs)
                plain = type(result) in NEVER_AWAITABLE
                if method.is_coroutine or (not plain and inspect.isawaitable(result)):
                    result = self._run_coroutine(result)
            except Exception as exc:
                frame = d.exception_frame(msg.id, method.name, exc, token)
            else:
                frame = d.reply_frame(msg.id, result, token)
            if cached is not None:
                d.replies.complete(cached, frame)
            return frame
        if isinstance(msg, Ping):
            return d.codec.packb([PROTOCOL_VERSION, Kind.PONG, msg.id])
        if isinstance(msg, Notify):
            try:
                method = d.prepare(msg)
                result = method.fn(*msg.args, **msg.kwargs)
                if inspect.isawaitable(result):
                    self._run_coroutine(result)
            except Rejected as r:
                log.warning("notify %r refused: %s", msg.method, r)
            except Exception as exc:
                log.info("notify handler %r raised %s: %s", msg.method, type(exc).__name__, exc)
            return ACK
        if isinstance(msg, Cancel):
            return ACK  # nothing to cancel: a REP server runs one call at a time, already finished
        return d.unexpected(msg)

    def _run_coroutine(self, awaitable: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(awaitable)
