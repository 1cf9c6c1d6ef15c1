"""The in-flight call table of an async client: pending calls by id, their deadlines, the bound on them.

Pure (no socket, no loop): the client asks it what is due and when to wake next, so one timer serves
every call. Calls made with the usual timeout arrive in deadline order and join a line; a call whose
deadline would break that order goes to a heap. ``due`` is what the table sorts by: for a call with
attempts left it is the end of the current attempt, else the call's own deadline.

``Slots`` bounds the calls in flight: a non-blocking acquire from any thread (the callback face), an
awaitable one on the client's loop (the asyncio face waits for a slot within its timeout).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import threading
from typing import Any, Protocol

__all__ = ["CallTable", "Slots"]


class _Timed(Protocol):
    id: int
    due: float
    sched: int


class CallTable:
    """Pending calls by id, with one "next wake-up" for all their deadlines."""

    __slots__ = ("pending", "_line", "_heap", "_seq", "_compact_at")

    def __init__(self) -> None:
        self.pending: dict[int, Any] = {}
        # (due, filing number, call); an entry is live while the call is pending and was last filed by
        # it (``call.sched``): a call filed again (a resend moved its due) leaves its old entries stale
        self._line: collections.deque[tuple[float, int, Any]] = collections.deque()
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = itertools.count(1)
        self._compact_at = 64

    def __len__(self) -> int:
        return len(self.pending)

    def __contains__(self, rid: object) -> bool:
        return rid in self.pending

    def _live(self, entry: tuple[float, int, Any]) -> bool:
        call = entry[2]
        return call.sched == entry[1] and self.pending.get(call.id) is call

    def add(self, call: _Timed) -> None:
        """Track ``call`` (by ``call.id``) until it is popped; its ``due`` is when it must be looked at."""
        self.pending[call.id] = call
        # schedule(), inlined for the usual case (one call each, on the async clients' hot path)
        seq = next(self._seq)
        call.sched = seq
        due = call.due
        line = self._line
        if not line or due >= line[-1][0]:
            line.append((due, seq, call))
            if len(line) > self._compact_at:
                self._compact()
        else:
            heapq.heappush(self._heap, (due, seq, call))

    def schedule(self, call: _Timed) -> None:
        """File a tracked call under its current ``due`` (again, after a resend moved it)."""
        seq = next(self._seq)
        call.sched = seq
        due = call.due
        line = self._line
        if not line or due >= line[-1][0]:  # the usual case: calls made with one timeout come in order
            line.append((due, seq, call))
            if len(line) > self._compact_at:
                self._compact()
        else:
            heapq.heappush(self._heap, (due, seq, call))

    def _compact(self) -> None:
        """Finished calls stay filed until they reach the front; when they pile up behind a slow call,
        drop them (keeps the line within twice the pending calls, plus a little)."""
        self._line = collections.deque(e for e in self._line if self._live(e))
        self._compact_at = 2 * len(self.pending) + 64

    def pop(self, rid: int) -> Any:
        """Stop tracking the call with id ``rid``; returns it, or None if it is not pending."""
        return self.pending.pop(rid, None)

    def next_due(self) -> float | None:
        """When the earliest pending call is due (None when nothing is pending)."""
        line, heap = self._line, self._heap
        while line and not self._live(line[0]):
            line.popleft()
        while heap and not self._live(heap[0]):
            heapq.heappop(heap)
        if line and heap:
            return min(line[0][0], heap[0][0])
        if line:
            return line[0][0]
        return heap[0][0] if heap else None

    def due(self, now: float) -> list[Any]:
        """The pending calls due at ``now``; each stays pending, unfiled: pop it or ``schedule`` it again."""
        out = []
        line, heap = self._line, self._heap
        while line and (line[0][0] <= now or not self._live(line[0])):
            entry = line.popleft()
            if self._live(entry):
                entry[2].sched = 0
                out.append(entry[2])
        while heap and (heap[0][0] <= now or not self._live(heap[0])):
            entry = heapq.heappop(heap)
            if self._live(entry):
                entry[2].sched = 0
                out.append(entry[2])
        return out

    def clear(self) -> list[Any]:
        """Forget every call (the client closes); returns them."""
        calls = list(self.pending.values())
        self.pending.clear()
        self._line.clear()
        self._heap.clear()
        return calls


class Slots:
    """The bound on calls in flight: non-blocking acquire from any thread, awaitable on the home loop."""

    __slots__ = ("limit", "used", "_lock", "_waiters")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {limit!r}")
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_acquire(self) -> bool:
        with self._lock:
            if self.used < self.limit and not self._waiters:
                self.used += 1
                return True
            return False

    async def acquire(self, timeout: float) -> bool:
        if self.try_acquire():
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except (TimeoutError, asyncio.CancelledError):
            with self._lock:
                if fut in self._waiters:
                    self._waiters.remove(fut)
                elif fut.done() and not fut.cancelled():
                    self.used -= 1  # the slot was handed to us just as we gave up: give it back
                    self._wake()
            fut.cancel()
            raise

    def release(self) -> None:
        with self._lock:
            self.used -= 1
            self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used < self.limit:
            w = self._waiters.popleft()
            if not w.done():
                self.used += 1
                w.set_result(None)  # release() runs on the home loop, where the waiters wait
