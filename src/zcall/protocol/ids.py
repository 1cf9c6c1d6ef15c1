"""Request ids: unique per process run, so a server can tell retries of one call from new calls."""

from __future__ import annotations

import itertools
import secrets

__all__ = ["IdSource"]


class IdSource:
    """Hands out 64-bit ids: a random 32-bit prefix for this source, then a 32-bit counter.

    The prefix makes ids from different clients (and from a restarted client) collide only by chance
    (about 1 in 4 billion per pair), so a server may key per-call state by id alone. Thread-safe:
    ``next`` on ``itertools.count`` is atomic in CPython.
    """

    __slots__ = ("_base", "_count")

    def __init__(self) -> None:
        self._base = (secrets.randbits(32) or 1) << 32  # never 0: id 0 means "unreadable id" on the wire
        self._count = itertools.count(1)

    def next(self) -> int:
        return self._base | (next(self._count) & 0xFFFFFFFF)
