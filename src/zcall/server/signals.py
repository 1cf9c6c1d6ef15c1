"""Stopping on a signal, safely: the one helper every server, the CLI, the launcher and the patterns use.

A signal handler runs *inside* whatever the main thread was doing, so it must not take a lock: a second
signal arriving while the first handler holds ``threading.Event``'s lock deadlocks the process. Here a
handler only sets a plain attribute and writes one byte to a non-blocking self-pipe (``Waker``); the
waiting thread wakes from ``select``. (A launcher that dies can send several SIGTERMs in a row: Linux
repeats ``PR_SET_PDEATHSIG`` each time the child is reparented between the dying threads.)
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType
from typing import Any

__all__ = ["StopSignal", "Waker"]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Waker:
    """A self-pipe: ``poke()`` from any thread or signal handler (lock-free), ``wait(timeout)`` in one."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def poke(self) -> None:
        """Wake the waiter (now, or at its next ``wait``). Never blocks, never raises."""
        with contextlib.suppress(OSError):  # full: the waiter wakes anyway; closed: nobody waits
            os.write(self._w, b"!")

    def wait(self, timeout: float | None = None) -> None:
        """Return after a poke (even one made before the call) or after ``timeout`` seconds."""
        with contextlib.suppress(OSError):  # EINTR is retried by Python (PEP 475); EBADF: closed
            select.select([self._r], [], [], None if timeout is None else max(0.0, timeout))
            with contextlib.suppress(BlockingIOError):
                while os.read(self._r, 4096):
                    pass

    def close(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


class StopSignal:
    """Wait until SIGINT/SIGTERM (main thread only), stdin reaching EOF (optional), or ``request()``.

    Use as a context manager around the wait and the stop that follows: the previous handlers come back
    on exit. A signal after the first calls ``on_repeat`` (from the handler: it must not take a lock), so
    a second Ctrl-C can cut a long grace period short; without ``on_repeat`` a second SIGINT raises
    ``KeyboardInterrupt``. ``reason`` says what stopped it ("SIGTERM", "stdin closed", "requested").
    """

    def __init__(
        self,
        signals: Iterable[int] = _STOP_SIGNALS,
        *,
        stdin_eof: bool = False,
        on_repeat: Callable[[], None] | None = None,
    ) -> None:
        self._signals = tuple(signals)
        self._stdin_eof = stdin_eof
        self._on_repeat = on_repeat
        self._waker = Waker()
        self._previous: dict[int, Any] = {}
        self.requested = False
        """True once a stop was asked for (a plain attribute: signal handlers set it)."""
        self.reason = ""
        self.signals_received: list[int] = []

    # -- asking -------------------------------------------------------------------------------------

    def request(self, reason: str = "requested") -> None:
        """Ask for a stop from any thread (lock-free)."""
        if not self.requested:
            self.reason = reason
        self.requested = True
        self._waker.poke()

    def poke(self) -> None:
        """Wake the waiter without asking for a stop (it re-checks whatever it waits for)."""
        self._waker.poke()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals_received.append(signum)
        if self.requested:
            if self._on_repeat is not None:
                self._on_repeat()  # e.g. cut the grace period short
            elif signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.request(signal.Signals(signum).name)

    def _watch_stdin(self) -> None:
        # os.read on the raw fd, not sys.stdin: a daemon thread blocked inside a buffered reader holds its
        # lock, and the interpreter aborts at exit ("could not acquire lock for <stdin>", SIGABRT).
        with contextlib.suppress(OSError):
            while os.read(0, 65536):
                pass
        self.request("stdin closed")

    # -- waiting -------------------------------------------------------------------------------------

    def install(self) -> StopSignal:
        """Install the handlers (main thread only; elsewhere only ``request()`` and stdin stop it)."""
        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        if self._stdin_eof:
            threading.Thread(target=self._watch_stdin, daemon=True, name="zcall-stdin-eof").start()
        return self

    def restore(self) -> None:
        """Put the previous handlers back (idempotent)."""
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a stop is requested (True) or ``timeout`` passes (False)."""
        if timeout is None:
            while not self.requested:
                self._waker.wait(None)
            return True
        if not self.requested:
            self._waker.wait(timeout)
        return self.requested

    def __enter__(self) -> StopSignal:
        return self.install()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.restore()
