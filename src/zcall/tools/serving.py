"""Serve until told to stop: the child side of what ``zcall.tools.process`` starts.

``SyncServer`` and ``AsyncServer`` have ``serve_forever(grace=, on_ready=)`` (``zcall.server.lifecycle``):
use that. ``serve_until_stopped`` is the same contract for anything that only has ``start()``,
``endpoint`` and ``stop(grace)`` (a ``Peer`` today), under the one stop-on-signal helper
(``zcall.server.signals.StopSignal``), plus an optional stop on stdin's end of file (a launcher gone).
``stop_on_stdin_eof`` adds that stdin watch to a ``serve_forever``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from ..server.signals import StopSignal
from .ready import announce

__all__ = ["Servable", "serve_until_stopped", "stop_on_stdin_eof"]

log = logging.getLogger("zcall.serve")


class Servable(Protocol):
    """What ``serve_until_stopped`` serves: a ``Peer``, or a server."""

    @property
    def endpoint(self) -> str: ...

    def start(self) -> Any: ...

    def stop(self, grace: float = ...) -> None: ...


def _ignore_repeat() -> None:
    """A second signal while stopping: the stop under way is bounded by its grace period already."""


def serve_until_stopped(
    server: Servable,
    *,
    grace: float = 5.0,
    on_ready: Callable[[str], Any] | None = announce,
    stdin_eof: bool = False,
    on_repeat: Callable[[], None] | None = None,
) -> str:
    """``start()``, then ``on_ready(endpoint)`` (default: print the READY line), then block until
    SIGINT/SIGTERM (main thread only) or stdin's end of file (with ``stdin_eof``), then ``stop(grace)``.
    Returns why it stopped ("SIGTERM", "stdin closed").

    The handlers are in place *before* ``start()``, so a signal sent the moment the READY line is read
    still stops it cleanly. A repeated signal calls ``on_repeat`` (from the handler: no locks; e.g. cut
    the grace short); without one it changes nothing, since the stop under way ends within ``grace``.
    """
    with StopSignal(stdin_eof=stdin_eof, on_repeat=on_repeat or _ignore_repeat) as stop:
        server.start()
        try:
            if on_ready is not None:
                on_ready(server.endpoint)
            stop.wait()
            log.info("%s stopping (%s)", getattr(server, "name", type(server).__name__), stop.reason)
        finally:
            server.stop(grace)
    return stop.reason


def stop_on_stdin_eof(stop: Callable[[], Any]) -> None:
    """Call ``stop()`` from a thread once stdin reaches end of file (the process that started us, and
    held the other end of the pipe, is gone). For ``serve_forever``, pass ``lambda: server.stop(grace)``:
    a ``stop()`` from another thread ends it."""
    watch = StopSignal(signals=(), stdin_eof=True).install()

    def run() -> None:
        watch.wait()
        log.info("stopping (%s)", watch.reason)
        stop()

    threading.Thread(target=run, daemon=True, name="zcall-stdin-stop").start()
