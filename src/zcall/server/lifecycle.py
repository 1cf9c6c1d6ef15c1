"""One lifecycle for every server kind and for ``Peer``: start, stop(grace), serve_forever, serve, aclose.

The contract (docs/reliability.md, "Graceful shutdown"):

- ``start()`` serves in the background (a thread, or zcall's engine loop) and returns once bound;
- ``stop(grace)`` stops from any other thread: new calls are answered UNAVAILABLE at once, calls already
  running get ``grace`` seconds to finish, the rest are answered UNAVAILABLE, every answer is flushed
  before the socket closes, and the port is free when it returns. Idempotent; a second call waits for
  the first to finish;
- ``serve_forever(grace=, on_ready=)`` starts, calls ``on_ready(endpoint)``, blocks until SIGINT/SIGTERM
  (handled here, in the main thread) or ``stop()`` from elsewhere, then stops with ``grace``; a second
  signal cuts the grace period short;
- ``await serve(grace=, on_ready=)`` serves from asyncio until ``aclose()`` or cancellation (which closes
  with ``grace``); ``await aclose(grace)``; ``with``/``async with`` start and stop around a block.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from ..engine.loop import engine
from .signals import StopSignal

__all__ = ["DEFAULT_GRACE", "Lifecycle"]

DEFAULT_GRACE = 5.0
"""Seconds in-flight calls get to finish when a server stops."""

S = TypeVar("S", bound="Lifecycle")


class Lifecycle:
    """The shared half of a server's lifecycle; subclasses implement ``start``, ``stop`` and ``endpoint``.

    Thread-served kinds get ``serve``/``aclose`` for asyncio from here (through a worker thread); the
    loop-served kind overrides them to run on the caller's loop.
    """

    _forever: StopSignal | None = None
    _done: threading.Event
    """Set once the server has stopped for good (subclasses make it in ``__init__``)."""

    # -- what each kind implements ------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    def start(self: S) -> S:
        raise NotImplementedError

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        raise NotImplementedError

    def _hurry(self) -> None:
        """Cut a running grace period short (called from a signal handler: no locks)."""

    # -- shared -------------------------------------------------------------------------------------

    def _wake_forever(self) -> None:
        """``stop()`` (or a dying server) wakes a ``serve_forever``/``wait`` blocked in another thread."""
        forever = self._forever
        if forever is not None:
            forever.request("stop() called")

    def serve_forever(
        self, grace: float = DEFAULT_GRACE, on_ready: Callable[[str], Any] | None = None
    ) -> None:
        """Serve until SIGINT/SIGTERM (handled here, main thread) or ``stop()``, then stop with ``grace``.

        ``on_ready(endpoint)`` runs once bound (e.g. to print the real port of a ``*`` bind)."""
        with StopSignal(on_repeat=self._hurry) as stop:
            self._forever = stop
            died, unhook = self._watch_engine(stop)
            try:
                self.start()
                if on_ready is not None:
                    on_ready(self.endpoint)
                stop.wait()
            finally:
                self._forever = None
                unhook()
                self._stop_or_fail(grace, died)

    def wait(self, grace: float = DEFAULT_GRACE) -> None:
        """Block until a ``start()``-ed server is stopped; SIGINT/SIGTERM stop it (with ``grace``)."""
        with StopSignal(on_repeat=self._hurry) as stop:
            self._forever = stop
            died, unhook = self._watch_engine(stop)
            try:
                stop.wait()
            finally:
                self._forever = None
                unhook()
                self._stop_or_fail(grace, died)

    @staticmethod
    def _watch_engine(stop: StopSignal) -> tuple[list[bool], Callable[[], None]]:
        """Wake ``stop`` if zcall's engine loop dies (it is logged CRITICAL where it happens)."""
        died: list[bool] = []

        def on_death() -> None:
            died.append(True)
            stop.request("zcall's engine loop died")

        return died, engine.on_death(on_death)

    def _stop_or_fail(self, grace: float, died: list[bool]) -> None:
        if died:  # nothing can be served or stopped on a dead loop: end, so a supervisor restarts us
            raise RuntimeError(
                "zcall's engine loop died (see the CRITICAL log line): this server cannot serve any "
                "more; the process must restart"
            )
        self.stop(grace)

    async def serve(self, grace: float = DEFAULT_GRACE, on_ready: Callable[[str], Any] | None = None) -> None:
        """Serve until ``aclose()`` or until cancelled (which stops with ``grace``), from asyncio."""
        await asyncio.to_thread(self.start)
        if on_ready is not None:
            on_ready(self.endpoint)
        try:
            await asyncio.to_thread(self._done.wait)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(self.stop, grace))
            raise

    async def aclose(self, grace: float = DEFAULT_GRACE) -> None:
        """``stop(grace)`` for asyncio code (the loop keeps running meanwhile)."""
        await asyncio.to_thread(self.stop, grace)

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self: S) -> S:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
