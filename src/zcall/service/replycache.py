"""At-most-once execution for retried calls: a bounded, expiring memory of recent replies by request id.

A caller that may resend a request marks it (meta ``retry: true``). The server remembers such a call
while it runs and its reply frame for ``ttl`` seconds after, so a resend is answered from memory instead
of running the handler twice. Memory is bounded by entry count and by reply bytes; the oldest entries
go first. I/O-free: servers feed it ids and frames.

Request ids carry the caller's random 32-bit prefix (``ids.IdSource``), so the id alone stands for the
pair (client, request) even when the retry comes on a new socket with a new routing id.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["IN_PROGRESS", "ReplyCache"]


class _InProgress:
    __slots__ = ()

    def __repr__(self) -> str:
        return "IN_PROGRESS"


IN_PROGRESS: Any = _InProgress()
"""``begin`` result: the call is still running; answer the resend when it finishes."""


class ReplyCache:
    """Recent replies by request id, bounded by ``max_entries``, ``max_bytes`` and ``ttl`` seconds."""

    __slots__ = (
        "max_entries",
        "max_bytes",
        "ttl",
        "max_waiters",
        "_clock",
        "_entries",
        "_running",
        "_bytes",
        "counters",
    )

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        ttl: float = 60.0,
        max_waiters: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_waiters = max_waiters
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._clock = clock
        # Completed calls, oldest first (so expiry and eviction pop from the front):
        # id -> [expires_at, frame, None]
        self._entries: OrderedDict[Hashable, list[Any]] = OrderedDict()
        # Calls still running: never expired (a call that runs longer than ttl is still the one a resend
        # must join), bounded by the server's calls in flight. id -> [None, IN_PROGRESS, waiters or None]
        self._running: dict[Hashable, list[Any]] = {}
        self._bytes = 0
        self.counters = {"hits": 0, "joined": 0, "evicted": 0, "expired": 0, "waiters_dropped": 0}

    def __len__(self) -> int:
        return len(self._entries) + len(self._running)

    @property
    def nbytes(self) -> int:
        """Bytes of reply frames held now."""
        return self._bytes

    def begin(self, rid: Hashable) -> Any:
        """``None``: a new call (now marked running); ``IN_PROGRESS``; or the cached reply frame.

        ``rid`` is any hashable key; zcall's servers use ``(request id, method)``."""
        self._expire()
        if rid in self._running:
            self.counters["joined"] += 1
            return IN_PROGRESS
        e = self._entries.get(rid)
        if e is None:
            self._running[rid] = [None, IN_PROGRESS, None]
            self._evict()
            return None
        self.counters["hits"] += 1
        return e[1]

    def wait(self, rid: Hashable, waiter: Any) -> bool:
        """Remember someone else to answer when the running call ``rid`` completes (a resend). At most
        ``max_waiters`` per call: False (not remembered, counted) beyond that, since any one of them
        answers the caller, and a peer resending without end must not grow memory."""
        e = self._running.get(rid)
        if e is not None:
            if e[2] is None:
                e[2] = []
            if len(e[2]) >= self.max_waiters:
                self.counters["waiters_dropped"] += 1
                return False
            e[2].append(waiter)
            return True
        return False

    def complete(self, rid: Hashable, frame: bytes) -> list[Any]:
        """Store the reply of ``rid``; returns the waiters that joined while it ran (to answer too)."""
        e = self._running.pop(rid, None)
        if e is None:  # evicted while running: nothing to remember it by
            return []
        self._entries[rid] = [self._clock() + self.ttl, frame, None]
        self._bytes += len(frame)
        self._evict()
        return e[2] or []

    def forget(self, rid: Hashable) -> list[Any]:
        """Drop ``rid`` (refused, cancelled or cut short: a resend may run it); returns the waiters that
        had joined it (answer them as the call was answered)."""
        e = self._running.pop(rid, None)
        if e is not None:
            return e[2] or []
        e = self._entries.pop(rid, None)
        if e is not None:
            self._bytes -= len(e[1])
        return []

    def _expire(self) -> None:
        entries = self._entries
        if not entries:
            return
        now = self._clock()
        while entries:
            _rid, e = next(iter(entries.items()))
            if e[0] > now:
                break
            entries.popitem(last=False)
            self._bytes -= len(e[1])
            self.counters["expired"] += 1

    def _evict(self) -> None:
        """Over a bound: the oldest kept replies go first; running calls only when no reply is left."""
        entries, running = self._entries, self._running
        while entries and (len(entries) + len(running) > self.max_entries or self._bytes > self.max_bytes):
            _rid, e = entries.popitem(last=False)
            self._bytes -= len(e[1])
            self.counters["evicted"] += 1
        while len(running) > self.max_entries:
            running.pop(next(iter(running)))
            self.counters["evicted"] += 1
