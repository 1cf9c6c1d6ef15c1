"""The event loop that drives every async socket of a process, and the per-socket reader.

zcall objects made inside a running asyncio loop live on that loop. Objects made from plain threads share
one *engine*: an asyncio loop on a daemon thread that zcall starts on first use and stops when the last
object using it closes (and at interpreter exit). Sockets are created, used and closed on their loop's
thread only.

``Reader`` is the one long-lived reader per socket: zmq's FD is edge-triggered, so each wake-up drains
until EAGAIN, and a send made outside the drain re-checks ``EVENTS`` (a send can swallow the edge that
announced incoming messages).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import zmq

__all__ = ["Engine", "Reader", "engine", "run_on", "running_loop"]

log = logging.getLogger("zcall.engine")

T = TypeVar("T")

# plain ints: combining pyzmq's enum flags (NOBLOCK | SNDMORE) costs about a microsecond each time
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_EVENTS = int(zmq.EVENTS)
_NOBLOCK = int(zmq.NOBLOCK)


class Engine:
    """A background asyncio loop shared by zcall objects created outside asyncio; reference-counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._users = 0

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    def acquire(self) -> asyncio.AbstractEventLoop:
        """Start the loop thread if needed and count one more user; returns the loop."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                started = threading.Event()
                t = threading.Thread(target=self._run, args=(loop, started), name="zcall-engine", daemon=True)
                t.start()
                started.wait()
                self._loop, self._thread = loop, t
            self._users += 1
            return self._loop

    def release(self) -> None:
        """One user fewer; the last one stops the loop thread (joined unless called from it)."""
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._loop is None:
                return
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        if thread is not threading.current_thread():
            thread.join(10)  # type: ignore[union-attr]

    def stop(self) -> None:
        """Stop the loop thread now, whatever the users (interpreter exit)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            self._users = 0
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not threading.current_thread():
                thread.join(10)  # type: ignore[union-attr]

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        try:
            loop.run_forever()
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


engine = Engine()
"""The process-wide engine."""

atexit.register(engine.stop)


def run_on(loop: asyncio.AbstractEventLoop, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
    """Run ``fn(*args)`` on ``loop``'s thread and return its result (directly if already there)."""
    if running_loop() is loop:
        return fn(*args)
    fut: concurrent.futures.Future[T] = concurrent.futures.Future()

    def job() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:
            fut.set_exception(exc)

    loop.call_soon_threadsafe(job)
    return fut.result(timeout)


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Reader:
    """Drains one zmq socket on a loop: calls ``on_message(frames)`` for every message, forever.

    ``check()`` must follow any send made outside ``on_message`` (the edge-triggered FD may have been
    consumed by that send): it schedules one more drain, once per loop iteration however many sends
    called it. ``on_writable`` (optional) runs when the socket can send again after EAGAIN.

    pyzmq's ``getsockopt`` costs about a microsecond, so the hot path avoids it: message boundaries come
    from ``Frame.more`` and a send is followed by a scheduled drain rather than an ``EVENTS`` query.
    """

    __slots__ = (
        "_loop",
        "_sock",
        "_fd",
        "_on_message",
        "_on_writable",
        "_scheduled",
        "_active",
        "_budget",
        "_want_out",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: zmq.Socket,
        on_message: Callable[[list[bytes]], None],
        on_writable: Callable[[], None] | None = None,
        budget: int = 256,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]
        self._on_message = on_message
        self._on_writable = on_writable
        self._scheduled = False
        self._active = False
        self._budget = budget
        self._want_out = False

    def start(self) -> None:
        self._active = True
        self._loop.add_reader(self._fd, self._ready)
        self._schedule()

    def stop(self) -> None:
        if self._active:
            self._active = False
            self._loop.remove_reader(self._fd)

    def check(self) -> None:
        """After a send from outside the drain: make sure a drain runs soon (once per loop pass)."""
        if not self._scheduled and self._active:
            self._scheduled = True
            self._loop.call_soon(self._ready)

    def want_writable(self) -> None:
        """Ask for ``on_writable`` once the socket can send (checks now, else on the next FD edge)."""
        self._want_out = True
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._ready)

    def _ready(self) -> None:
        self._scheduled = False
        if not self._active:
            return
        sock = self._sock
        recv = sock.recv
        on_message = self._on_message
        try:
            for _ in range(self._budget):
                try:
                    f = recv(_NOBLOCK, copy=False)
                except zmq.Again:
                    break
                frames = [f.bytes]
                while f.more:  # the rest of a multipart message is already here: zmq delivers it whole
                    f = recv(_NOBLOCK, copy=False)
                    frames.append(f.bytes)
                on_message(frames)
            else:  # budget spent: yield to other callbacks, come back for the rest
                self._schedule()
            if self._want_out and sock.getsockopt(_EVENTS) & _POLLOUT:  # type: ignore[operator]
                self._want_out = False
                self._on_writable()  # type: ignore[misc]
        except zmq.ZMQError as exc:
            if exc.errno == zmq.ENOTSOCK or sock.closed:
                self.stop()
                return
            log.exception("socket error while draining")
        except Exception:
            log.exception("unexpected error while handling a message (the reader keeps going)")
            self._schedule()
