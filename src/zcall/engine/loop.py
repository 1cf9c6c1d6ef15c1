"""The event loop that drives every async socket of a process (the engine thread), and how to reach it.

zcall objects made inside a running asyncio loop live on that loop. Objects made from plain threads share
one *engine*: an asyncio loop on a daemon thread that zcall starts on first use and stops when the last
object using it closes (and at interpreter exit). Sockets are created, used and closed on their loop's
thread only.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from . import fork

__all__ = ["Engine", "engine", "on_loop", "run_on", "running_loop"]

log = logging.getLogger("zcall.engine")

T = TypeVar("T")


class Engine:
    """A background asyncio loop shared by zcall objects created outside asyncio; reference-counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._users = 0
        self._death_hooks: list[Callable[[], None]] = []

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

    def release(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """One user fewer; the last one stops the loop thread (joined unless called from it).

        ``loop``: the loop that user got from ``acquire``; a release for another one (a loop inherited
        across ``os.fork``, see ``engine.fork``) is ignored, so it cannot stop the child's own engine."""
        with self._lock:
            if loop is not None and loop is not self._loop:
                return
            self._users -= 1
            if self._users > 0 or self._loop is None:
                return
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        if thread is not threading.current_thread():
            thread.join(10)  # type: ignore[union-attr]

    def stop(self) -> None:
        """Stop the loop thread now, whatever the users (interpreter exit). A loop held by something that
        never returns is left behind after a short wait (the thread is a daemon), never waited for."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
            self._users = 0
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
            if thread is not threading.current_thread():
                thread.join(2)  # type: ignore[union-attr]

    def abandon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Forget ``loop``, which something holds for good (its daemon thread is left to the exit): the
        next user starts a fresh engine, and the interpreter's exit does not wait for it."""
        with self._lock:
            if self._loop is loop:
                self._loop = self._thread = None
                self._users = 0

    def _reset_after_fork(self) -> asyncio.AbstractEventLoop | None:
        """In a forked child: forget the parent's loop (its thread did not survive); returns it."""
        loop = self._loop
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._loop = self._thread = None
        self._users = 0
        return loop

    def on_death(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Call ``hook()`` (from the dying thread) if the engine loop ever dies; returns its remover.

        ``serve_forever`` uses it: a process whose loop died must end (non-zero) for a supervisor to
        restart it, not linger with its sockets bound and every call timing out."""
        self._death_hooks.append(hook)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._death_hooks.remove(hook)

        return remove

    def _run(self, loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        died = False
        try:
            try:
                loop.run_forever()
            except BaseException:
                died = True
                # Nothing zcall runs lets an exception out of a loop callback (handlers' BaseExceptions
                # are their answers); if something did, say so loudly and let the next user start afresh.
                log.critical("zcall's engine loop died; its clients and servers stop working", exc_info=True)
                with self._lock:
                    if self._loop is loop:
                        self._loop = self._thread = None
                        self._users = 0
                raise
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            if died:
                for hook in list(self._death_hooks):
                    try:
                        hook()
                    except Exception:  # one hook must not keep the others from running
                        log.exception("engine death hook failed")


engine = Engine()
"""The process-wide engine."""

atexit.register(engine.stop)
fork.install()  # a forked child gets a fresh engine, and a clear error from the parent's objects


def run_on(loop: asyncio.AbstractEventLoop, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
    """Run ``fn(*args)`` on ``loop``'s thread and return its result (directly if already there)."""
    if on_loop(loop):
        return fn(*args)
    if loop.is_closed():
        raise RuntimeError("the event loop this zcall object lives on is closed (its thread ended)")
    fut: concurrent.futures.Future[T] = concurrent.futures.Future()

    def job() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:
            fut.set_exception(exc)

    loop.call_soon_threadsafe(job)
    return fut.result(timeout)


def on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this thread is running ``loop`` now, without ``asyncio.get_running_loop()``: in CPython
    3.11 that makes a ``getpid()`` system call every time (a fork check), which the hot paths cannot
    afford (measured at 16% of an async client's time). A running loop records its thread's ident."""
    return getattr(loop, "_thread_id", None) == threading.get_ident()


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
