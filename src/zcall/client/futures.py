"""The callback face's future: a ``concurrent.futures.Future`` that is cheap to make and will not
deadlock its own loop.

A plain ``concurrent.futures.Future`` builds a ``threading.Condition`` (an RLock and a deque) in its
constructor: about 0.7 us, for every call, though most callback-face calls are never waited on. Here
the condition is a plain lock until somebody waits (``result()``/``exception()`` with a future not yet
done, ``concurrent.futures.wait``): only then is the real ``Condition`` made, on that same lock.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["CallFuture"]

_PENDING = "PENDING"  # concurrent.futures._base's state names (stable since Python 3.2)


class _LazyCondition:
    """A ``threading.Condition`` that is only a ``Lock`` until the first ``wait``."""

    __slots__ = ("_lock", "_cond")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond: threading.Condition | None = None

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._lock.__exit__(*exc)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def _real(self) -> threading.Condition:
        cond = self._cond
        if cond is None:  # called with the lock held (Condition.wait's contract), so no race here
            cond = self._cond = threading.Condition(self._lock)  # type: ignore[arg-type]
        return cond

    def wait(self, timeout: float | None = None) -> bool:
        return self._real().wait(timeout)

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        return self._real().wait_for(predicate, timeout)

    def notify(self, n: int = 1) -> None:
        if self._cond is not None:
            self._cond.notify(n)

    def notify_all(self) -> None:
        if self._cond is not None:
            self._cond.notify_all()


class CallFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """The callback face's future. Waiting on it from the client's own loop thread (in a callback or an
    event handler) before it is done raises at once: that thread is the one that would resolve it."""

    def __init__(self, home_thread: int | None) -> None:
        # concurrent.futures.Future.__init__, with a lazy condition (see the module docstring)
        self._condition = _LazyCondition()  # type: ignore[assignment]
        self._state = _PENDING
        self._result = None
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []
        self._home_thread = home_thread
        self._on_cancel: Callable[[Any], None] | None = None  # told (with _call) when cancelled
        self._call: Any = None

    def cancel(self) -> bool:
        """Cancel the call: this future now, the server best effort (a cancel message); a late reply is
        dropped."""
        cancelled = super().cancel()
        if cancelled and self._on_cancel is not None:
            self._on_cancel(self._call)
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
