"""Which endpoint a call goes to, and where its next attempt goes: one policy for every client face.

Pure: the client reports what happened (``failed``, ``answered``) and asks for an order. New calls go
round-robin over the endpoints that have not failed; an endpoint whose attempt timed out (or whose
connection dropped) goes behind the others until it answers again (the ZeroMQ Guide's Freelance, model
one, with load spread over the healthy servers); a retry goes to the next endpoint, not the one that
just failed, when there is another.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

__all__ = ["Failover"]


class Failover:
    """Round-robin over healthy endpoints; failed ones last, oldest failure first."""

    __slots__ = ("endpoints", "degraded", "_failed", "_rr", "_single")

    def __init__(self, endpoints: Sequence[str]) -> None:
        self.endpoints = list(endpoints)
        self._failed: dict[str, int] = {}  # endpoint -> order of failure (insertion order is kept)
        self._rr = itertools.count()
        self._single = len(self.endpoints) == 1
        self.degraded = False
        """True while some endpoint is marked failed (a cheap check for the hot path)."""

    def order(self, tried: Sequence[str] = ()) -> list[str]:
        """Every endpoint, best first for this attempt: healthy ones in round-robin order, then failed
        ones (oldest failure first); endpoints this call already ``tried`` go after the untried."""
        eps = self.endpoints
        if self._single:
            return eps
        n = len(eps)
        start = next(self._rr) % n
        rotated = eps[start:] + eps[:start]
        failed = self._failed
        healthy = [e for e in rotated if e not in failed]
        ordered = healthy + [e for e in failed if e in eps]
        if tried:
            ordered = [e for e in ordered if e not in tried] + [e for e in ordered if e in tried]
        return ordered

    def failed(self, endpoint: str) -> None:
        """An attempt at ``endpoint`` got no answer: try the others first from now on."""
        if not self._single:
            self._failed.pop(endpoint, None)
            self._failed[endpoint] = 1  # re-inserted: the newest failure goes last
            self.degraded = True

    def answered(self, endpoint: str) -> None:
        """``endpoint`` answered: it is healthy again."""
        if self._failed:
            self._failed.pop(endpoint, None)
            self.degraded = bool(self._failed)

    def is_failed(self, endpoint: str) -> bool:
        return endpoint in self._failed
