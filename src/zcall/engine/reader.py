"""The one long-lived reader per socket: drains everything ready, re-checks after sends made elsewhere.

zmq's FD is edge-triggered, so each wake-up drains until EAGAIN, and a send made outside the drain
re-checks ``EVENTS`` (a send can swallow the edge that announced incoming messages). A pending ``recv``
is never cancelled: the reader is the only thing that receives on its socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import zmq

__all__ = ["Reader"]

log = logging.getLogger("zcall.engine")

# plain ints: combining pyzmq's enum flags (NOBLOCK | SNDMORE) costs about a microsecond each time
_POLLOUT = int(zmq.POLLOUT)
_EVENTS = int(zmq.EVENTS)
_NOBLOCK = int(zmq.NOBLOCK)


class Reader:
    """Drains one zmq socket on a loop: calls ``on_message(frames)`` for every message, forever.

    ``frames`` are bytes, or with ``keep_frames=True`` the ``zmq.Frame`` objects themselves (a server
    reads the caller's address and CURVE key from them, and decodes the body without copying it).

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
        "_keep_frames",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: zmq.Socket,
        on_message: Callable[[list[Any]], None],
        on_writable: Callable[[], None] | None = None,
        budget: int = 256,
        keep_frames: bool = False,
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
        self._keep_frames = keep_frames

    def keep_frames(self, keep: bool) -> None:
        """Hand over ``zmq.Frame`` objects (True) or bytes (False) from the next message on."""
        self._keep_frames = keep

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
        keep = self._keep_frames
        try:
            for _ in range(self._budget):
                try:
                    f = recv(_NOBLOCK, copy=False)
                except zmq.Again:
                    break
                frames = [f if keep else f.bytes]
                while f.more:  # the rest of a multipart message is already here: zmq delivers it whole
                    f = recv(_NOBLOCK, copy=False)
                    frames.append(f if keep else f.bytes)
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
