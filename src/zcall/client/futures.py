"""The callback face's future: a ``concurrent.futures.Future`` that will not deadlock its own loop."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["CallFuture"]


class CallFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """The callback face's future. Waiting on it from the client's own loop thread (in a callback or an
    event handler) before it is done raises at once: that thread is the one that would resolve it."""

    def __init__(self, home_thread: int | None) -> None:
        super().__init__()
        self._home_thread = home_thread
        self._on_cancel: Callable[[], None] | None = None

    def cancel(self) -> bool:
        """Cancel the call: this future now, the server best effort (a cancel message); a late reply is
        dropped."""
        cancelled = super().cancel()
        if cancelled and self._on_cancel is not None:
            self._on_cancel()
        return cancelled

    def _check_thread(self) -> None:
        if not self.done() and threading.get_ident() == self._home_thread:
            raise RuntimeError(
                "waiting for a zcall call on the client's own loop thread (inside a callback, errback or "
                "event handler) would deadlock: chain with add_done_callback(), or use await client.call()"
            )

    def result(self, timeout: float | None = None) -> Any:
        self._check_thread()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._check_thread()
        return super().exception(timeout)
