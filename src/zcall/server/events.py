"""The subscriber table of a publishing (ROUTER) server: who wants which topics, numbered per subscriber.

I/O-free: the server asks it whom an event goes to and tells it who turned out to be gone. Each
subscriber (one connection: one ROUTER routing id) has its own sequence counter, which a resubscribe
on the same connection keeps (docs/protocol.md §7), so a gap always means a lost event.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..protocol.topics import topic_matches

__all__ = ["Subscribers"]

_SWEEP_MIN = 64  # the table is never swept for gone subscribers below this size


class Subscribers:
    """Routing id → (reply envelope, topic patterns, last sequence number sent)."""

    __slots__ = ("_subs", "_sweep_at")

    def __init__(self) -> None:
        self._subs: dict[bytes, list[Any]] = {}
        self._sweep_at = _SWEEP_MIN

    def __len__(self) -> int:
        return len(self._subs)

    def update(self, routing_id: bytes, envelope: list[bytes], patterns: list[str]) -> bool:
        """Replace a connection's patterns (``[]`` unsubscribes); True when the table is due a sweep."""
        if not patterns:
            self._subs.pop(routing_id, None)
            return False
        old = self._subs.get(routing_id)
        self._subs[routing_id] = [envelope, list(patterns), old[2] if old else 0]
        return len(self._subs) >= self._sweep_at

    def for_topic(self, topic: str) -> Iterator[tuple[bytes, list[bytes], int]]:
        """(routing id, envelope, sequence number) for each subscriber of ``topic``; numbers the event."""
        for ident, sub in list(self._subs.items()):
            if any(topic_matches(p, topic) for p in sub[1]):
                sub[2] += 1
                yield ident, sub[0], sub[2]

    def envelopes(self) -> list[tuple[bytes, list[bytes]]]:
        """Every subscriber (for a sweep)."""
        return [(ident, sub[0]) for ident, sub in self._subs.items()]

    def forget(self, routing_id: bytes) -> None:
        """A subscriber turned out to be gone."""
        self._subs.pop(routing_id, None)

    def swept(self) -> None:
        """A sweep is done: the next is due when the table has doubled (so it stays within twice the live
        subscribers)."""
        self._sweep_at = max(_SWEEP_MIN, 2 * len(self._subs))
