"""Call metrics: counts, latency, throughput and availability per method (pure: no I/O, no sockets).

A server keeps one ``Metrics`` keyed by method name, a client one keyed by remote method name. Wiring is
two calls on the hot path::

    token = metrics.started(name)          # counts the attempt, in_flight += 1, reads the clock
    ...                                    # the call
    metrics.finished(token, Outcome.OK)    # in_flight -= 1, counts the outcome, records the latency

Outcomes and what they mean (``outcome_for_status`` / ``outcome_for_exception`` map zcall's codes and
exceptions onto them):

=========  ========================================================  ===============  ==============
outcome    meaning                                                   in availability  in latency
=========  ========================================================  ===============  ==============
OK         a result came back                                        success          yes
ERROR      the callee failed: handler raised, INTERNAL, OVERLOADED,  failure          yes
           UNAVAILABLE (shed or shutting down)
TIMEOUT    no reply in time, or the callee dropped it for deadline   failure          no
REJECTED   the caller's fault: no such method, bad arguments, bad    excluded         no
           message, not allowed, arguments not encodable, local
           backpressure
CANCELLED  the caller gave up (cancelled, client closed)             excluded         no
=========  ========================================================  ===============  ==============

**Availability** = ok / (ok + errors + timeouts): of the finished calls the callee was responsible for,
the share that succeeded. Calls still in flight, rejected and cancelled calls are not in the denominator
(a caller spraying bad names or arguments must not make a healthy server look unavailable). ``None``
until such a call has finished.

**Latency** is recorded for OK and ERROR calls (a response came back, so its time is a response time).
A timeout's "latency" is the configured timeout, not a measurement, and rejected calls answer in
microseconds; both would only distort the distribution, so they are counted but not timed.

**Throughput** counts finished calls (every outcome). ``rate`` is finished calls / time since the
first call; ``recent_rate`` uses a ring of per-second counters over the last ``RECENT_WINDOW`` (10)
whole seconds plus the current partial one. Both divide by at least one second, so a burst shorter
than a second is reported as "so many calls in the last second", never extrapolated.

**Memory** is constant per method: a histogram with a fixed bucket layout (``NBUCKETS`` ints; no list of
samples) and a 16-slot ring. The registry keeps at most ``max_methods`` names (default 1,000); further
names, names longer than ``MAX_NAME_LENGTH`` and non-``str`` names are aggregated under ``"<other>"``,
so a caller spraying random method names cannot grow memory. Servers should ``declare()`` their own
method names up front so those always get their own row.

**Cost** (timeit, Python 3.11, this project's idle 2-core box): ``metrics.started(name)`` +
``metrics.finished(token, OK)`` is about 0.9-1.0 µs per call; through a cached ``MethodStats`` handle
(``stats.finished(stats.started(), OK)``) about 0.8 µs. Of that, the two uncontended lock round trips
are ~0.27 µs and the two clock reads ~0.1 µs. Hoist ``OK = Outcome.OK`` out of hot loops (an enum
attribute lookup costs ~0.1 µs). Every update happens under a per-method ``threading.Lock``, so many
threads may record into one registry.

**Histogram accuracy**: buckets are log-spaced, ``PER_DECADE`` (20) per decade from 10 µs to 100 s, so
consecutive bounds differ by a factor 10**(1/20) ~ 1.122. A quantile is the nearest-rank sample (the
``ceil(q*n)``-th smallest) estimated by linear interpolation inside its bucket, clamped to the exact
min/max. For samples in [10 µs, 100 s) its relative error is at most ``RELATIVE_ERROR`` (~12.2 %); below
10 µs the absolute error is under 10 µs; above 100 s the estimate lies between 100 s and the exact max.
``q=0`` and ``q=1`` are exact (min and max), as are ``count``, ``total`` and ``mean``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from enum import IntEnum
from itertools import pairwise
from typing import Any

from ..errors import Backpressure, CallTimeout, ClientClosed, RemoteError, SerializationError
from ..protocol.status import StatusCode

__all__ = [
    "BOUNDS",
    "MAX_NAME_LENGTH",
    "OTHER",
    "RECENT_WINDOW",
    "RELATIVE_ERROR",
    "CallToken",
    "StreamStats",
    "LatencyHistogram",
    "MethodStats",
    "Metrics",
    "Outcome",
    "format_table",
    "nearest_rank",
    "outcome_for_exception",
    "outcome_for_status",
]

# -- histogram layout (fixed: every histogram, local or received, has exactly these buckets) ------------

LOWEST_EXP = -5  # 10 µs
HIGHEST_EXP = 2  # 100 s
PER_DECADE = 20
BOUNDS: tuple[float, ...] = tuple(
    10.0 ** (LOWEST_EXP + i / PER_DECADE) for i in range((HIGHEST_EXP - LOWEST_EXP) * PER_DECADE + 1)
)
"""Bucket upper bounds in seconds. Bucket 0 is [0, BOUNDS[0]); bucket i is [BOUNDS[i-1], BOUNDS[i]);
the last bucket, ``len(BOUNDS)``, is [BOUNDS[-1], inf)."""
NBUCKETS = len(BOUNDS) + 1
RELATIVE_ERROR: float = max(b / a for a, b in pairwise(BOUNDS)) - 1.0
"""Worst relative error of a quantile estimate for samples within [BOUNDS[0], BOUNDS[-1])."""
_LAYOUT = [LOWEST_EXP, HIGHEST_EXP, PER_DECADE]

OTHER = "<other>"
"""The row that aggregates every method name beyond the registry's cap (and over-long names)."""
MAX_NAME_LENGTH = 200
"""Longer method names are aggregated under ``OTHER`` instead of being kept as keys."""
RECENT_WINDOW = 10
"""Seconds covered by ``recent_rate``."""
_RING = 16  # > RECENT_WINDOW, so late finishes from a slightly earlier second still land in their slot
_MIN_SPAN = 1.0  # rates divide by at least this many seconds


class Outcome(IntEnum):
    """How a call ended, as far as metrics are concerned (see the module docstring for the table)."""

    OK = 0
    ERROR = 1
    TIMEOUT = 2
    REJECTED = 3
    CANCELLED = 4


_OK = int(Outcome.OK)
_ERROR = int(Outcome.ERROR)

_STATUS_OUTCOME: dict[int, Outcome] = {
    StatusCode.OK: Outcome.OK,
    StatusCode.HANDLER_ERROR: Outcome.ERROR,
    StatusCode.INTERNAL: Outcome.ERROR,
    StatusCode.OVERLOADED: Outcome.ERROR,
    StatusCode.UNAVAILABLE: Outcome.ERROR,
    StatusCode.DEADLINE_EXCEEDED: Outcome.TIMEOUT,
    StatusCode.METHOD_NOT_FOUND: Outcome.REJECTED,
    StatusCode.INVALID_ARGUMENTS: Outcome.REJECTED,
    StatusCode.PROTOCOL_ERROR: Outcome.REJECTED,
    StatusCode.UNSUPPORTED_VERSION: Outcome.REJECTED,
    StatusCode.MESSAGE_TOO_LARGE: Outcome.REJECTED,
    StatusCode.CANCELLED: Outcome.CANCELLED,
    StatusCode.PERMISSION_DENIED: Outcome.REJECTED,
}


def outcome_for_status(code: int) -> Outcome:
    """The outcome a call ending with wire status ``code`` counts as (unknown codes count as ERROR)."""
    return _STATUS_OUTCOME.get(code, Outcome.ERROR)


def outcome_for_exception(exc: BaseException | None) -> Outcome:
    """The outcome a client call that raised ``exc`` counts as (``None``: it returned, so OK)."""
    if exc is None:
        return Outcome.OK
    if isinstance(exc, RemoteError):
        return outcome_for_status(exc.remote.code)
    if isinstance(exc, CallTimeout | TimeoutError):
        return Outcome.TIMEOUT
    if isinstance(exc, asyncio.CancelledError | concurrent.futures.CancelledError | ClientClosed):
        return Outcome.CANCELLED
    if isinstance(exc, SerializationError | Backpressure):
        return Outcome.REJECTED  # refused locally before anything was sent
    return Outcome.ERROR


# -- histogram ------------------------------------------------------------------------------------------


class LatencyHistogram:
    """Latencies in seconds, in fixed log-spaced buckets: constant memory, mergeable, msgpack-able."""

    __slots__ = ("counts", "count", "total", "min", "max")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * NBUCKETS
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = 0.0

    def record(self, seconds: float) -> None:
        """Add one sample; negative or NaN durations (a broken clock) count as 0."""
        if not seconds >= 0.0:
            seconds = 0.0
        self.counts[bisect_right(BOUNDS, seconds)] += 1
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds
        if seconds < self.min:
            self.min = seconds

    @property
    def mean(self) -> float | None:
        """Exact mean of the samples, or ``None`` when empty."""
        return self.total / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """Estimate of the nearest-rank ``q`` quantile (0 <= q <= 1); error bound in the module docs."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within [0, 1], got {q!r}")
        n = self.count
        if not n:
            return None
        k = nearest_rank(q, n)
        if k == 1:
            return self.min
        if k == n:
            return self.max
        cum = 0
        for i, c in enumerate(self.counts):
            if c and cum + c >= k:
                lo = BOUNDS[i - 1] if i else 0.0
                hi = BOUNDS[i] if i < len(BOUNDS) else self.max
                lo = max(lo, self.min)
                hi = min(hi, self.max)
                return lo + (hi - lo) * (k - cum - 0.5) / c
            cum += c
        return self.max  # unreachable when counts and count agree

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """Add ``other``'s samples into this histogram (as if each had been recorded here); returns self."""
        mine = self.counts
        for i, c in enumerate(other.counts):
            if c:
                mine[i] += c
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    def copy(self) -> LatencyHistogram:
        """An independent copy."""
        h = LatencyHistogram()
        return h.merge(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for msgpack: the layout, exact count/total/min/max, and non-empty buckets only."""
        sparse: list[int] = []
        for i, c in enumerate(self.counts):
            if c:
                sparse += (i, c)
        return {
            "layout": list(_LAYOUT),
            "count": self.count,
            "total": self.total,
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "buckets": sparse,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        """Rebuild a histogram from ``to_dict()`` output, e.g. received from a peer (validated)."""
        try:
            layout = list(data["layout"])
            count, total = data["count"], data["total"]
            lo, hi, sparse = data["min"], data["max"], data["buckets"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a histogram dict: {exc!r}") from None
        if layout != _LAYOUT:
            raise ValueError(f"histogram layout {layout!r} differs from this one {_LAYOUT!r}")
        if not _is_int(count) or count < 0:
            raise ValueError(f"histogram count must be a non-negative int, got {count!r}")
        if not isinstance(sparse, list | tuple) or len(sparse) % 2 or len(sparse) > 2 * NBUCKETS:
            raise ValueError("histogram buckets must be a flat [index, count, ...] list")
        h = cls()
        last = -1
        for j in range(0, len(sparse), 2):
            i, c = sparse[j], sparse[j + 1]
            if not (_is_int(i) and _is_int(c)) or not last < i < NBUCKETS or c <= 0:
                raise ValueError(f"bad histogram bucket {i!r}: {c!r}")
            h.counts[i] = c
            last = i
        if sum(h.counts) != count:
            raise ValueError("histogram bucket counts do not add up to its count")
        h.count = count
        if count:
            for v in (total, lo, hi):
                if not _is_real(v) or not v >= 0.0:
                    raise ValueError(f"histogram total/min/max must be non-negative numbers, got {v!r}")
            if lo > hi:
                raise ValueError("histogram min is above its max")
            h.total, h.min, h.max = float(total), float(lo), float(hi)
        return h

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyHistogram):
            return NotImplemented
        return (self.counts, self.count, self.total, self.min, self.max) == (
            other.counts,
            other.count,
            other.total,
            other.min,
            other.max,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"<LatencyHistogram count={self.count} mean={self.mean} max={self.max if self.count else None}>"
        )


def nearest_rank(q: float, n: int) -> int:
    """The 1-based rank of the nearest-rank ``q`` quantile among ``n`` samples: ceil(q*n), at least 1."""
    return min(n, max(1, math.ceil(q * n - 1e-9)))


def _is_int(v: Any) -> bool:
    return type(v) is int


def _is_real(v: Any) -> bool:
    return type(v) in (int, float)


# -- per-method stats -----------------------------------------------------------------------------------

CallToken = tuple["MethodStats", float]
"""What ``Metrics.started`` returns and ``Metrics.finished`` takes: the stats row and the start time."""


class MethodStats:
    """Counters, latency histogram and throughput ring for one method; every update under its lock."""

    __slots__ = (
        "name",
        "calls",
        "in_flight",
        "outcomes",
        "histogram",
        "first",
        "last",
        "_clock",
        "_lock",
        "_ring",
        "_ring_sec",
        "stream",
    )

    def __init__(self, name: str, clock: Callable[[], float] = time.perf_counter) -> None:
        self.name = name
        self.stream: StreamStats | None = None
        """This method's stream counters, from its first stream on (``streams()``); None before."""
        self._clock = clock
        self._lock = threading.Lock()
        self.calls = 0
        """Attempted calls: started or recorded, finished or not."""
        self.in_flight = 0
        self.outcomes = [0] * len(Outcome)
        """Finished calls by ``Outcome`` (index with the enum)."""
        self.histogram = LatencyHistogram()
        self.first: float | None = None
        """Clock time of the first call since creation or reset."""
        self.last: float | None = None
        """Clock time of the latest finished call."""
        self._ring = [0] * _RING
        self._ring_sec = 0

    # -- hot path ---------------------------------------------------------------------------------------

    def started(self) -> float:
        """Count an attempt now in flight; returns its start time (pass it to ``finished``)."""
        t = self._clock()
        with self._lock:
            if not self.calls:
                self.first = t
            self.calls += 1
            self.in_flight += 1
        return t

    def finished(self, started_at: float, outcome: int = _OK) -> float:
        """End a call begun by ``started``; returns its duration in seconds."""
        now = self._clock()
        dt = now - started_at
        with self._lock:  # _finish inlined (keep the two in step): this is the hot path
            self.in_flight -= 1
            self.outcomes[outcome] += 1
            if outcome <= _ERROR:
                h = self.histogram
                if not dt >= 0.0:
                    dt = 0.0
                h.counts[bisect_right(BOUNDS, dt)] += 1
                h.count += 1
                h.total += dt
                if dt > h.max:
                    h.max = dt
                if dt < h.min:
                    h.min = dt
            sec = int(now)
            rs = self._ring_sec
            if sec == rs:
                self._ring[sec % _RING] += 1
            else:
                self._tick(sec, rs)
            self.last = now
        return dt

    def record(self, outcome: int, seconds: float | None = None) -> None:
        """Count a call that was never in flight (e.g. rejected on arrival), timed ``seconds`` if given."""
        now = self._clock()
        with self._lock:
            if not self.calls:
                self.first = now
            self.calls += 1
            self._finish(now, seconds, outcome)

    def _finish(self, now: float, dt: float | None, outcome: int) -> None:
        # caller holds the lock
        self.outcomes[outcome] += 1
        if dt is not None and outcome <= _ERROR:
            h = self.histogram
            if not dt >= 0.0:
                dt = 0.0
            h.counts[bisect_right(BOUNDS, dt)] += 1
            h.count += 1
            h.total += dt
            if dt > h.max:
                h.max = dt
            if dt < h.min:
                h.min = dt
        sec = int(now)
        rs = self._ring_sec
        if sec == rs:
            self._ring[sec % _RING] += 1
        else:
            self._tick(sec, rs)
        self.last = now

    def _tick(self, sec: int, rs: int) -> None:
        # count one finish in second ``sec`` when the ring's newest second is ``rs`` (lock held)
        ring = self._ring
        if sec > rs:
            for s in range(max(rs + 1, sec - _RING + 1), sec + 1):
                ring[s % _RING] = 0
            self._ring_sec = sec
            ring[sec % _RING] += 1
        elif rs - sec < _RING:  # finished in an earlier second still held by the ring
            ring[sec % _RING] += 1

    def streams(self) -> StreamStats:
        """The stream counters of this method (made on its first stream)."""
        st = self.stream
        if st is None:
            with self._lock:
                st = self.stream
                if st is None:
                    st = self.stream = StreamStats()
        return st

    # -- derived values ---------------------------------------------------------------------------------

    @property
    def ok(self) -> int:
        return self.outcomes[Outcome.OK]

    @property
    def errors(self) -> int:
        return self.outcomes[Outcome.ERROR]

    @property
    def timeouts(self) -> int:
        return self.outcomes[Outcome.TIMEOUT]

    @property
    def rejected(self) -> int:
        return self.outcomes[Outcome.REJECTED]

    @property
    def cancelled(self) -> int:
        return self.outcomes[Outcome.CANCELLED]

    @property
    def availability(self) -> float | None:
        """ok / (ok + errors + timeouts); ``None`` before any such call finished."""
        return _availability(self.ok, self.errors, self.timeouts)

    def rate(self, now: float | None = None) -> float | None:
        """Finished calls per second since the first call (over at least one second)."""
        with self._lock:
            return self._rate(self._clock() if now is None else now)

    def recent_rate(self, now: float | None = None) -> float | None:
        """Finished calls per second over the last ``RECENT_WINDOW`` whole seconds plus the current partial
        one (so over 10 to 11 s, or since the first call if later, but at least one second)."""
        with self._lock:
            return self._recent_rate(self._clock() if now is None else now)

    def _rate(self, now: float) -> float | None:
        if self.first is None:
            return None
        return sum(self.outcomes) / max(now - self.first, _MIN_SPAN)

    def _recent_rate(self, now: float) -> float | None:
        if self.first is None:
            return None
        sec = int(now)
        n = 0
        for s in range(sec - RECENT_WINDOW, sec + 1):  # whole seconds, then the current partial one
            if self._ring_sec - _RING < s <= self._ring_sec:
                n += self._ring[s % _RING]
        start = max(float(sec - RECENT_WINDOW), self.first)
        return n / max(now - start, _MIN_SPAN)

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Plain, msgpack-able data: counters, derived rates/latencies (seconds) and the histogram."""
        with self._lock:
            now = self._clock() if now is None else now
            h = self.histogram
            d: dict[str, Any] = {
                "calls": self.calls,
                "ok": self.ok,
                "errors": self.errors,
                "timeouts": self.timeouts,
                "rejected": self.rejected,
                "cancelled": self.cancelled,
                "in_flight": self.in_flight,
                "availability": self.availability,
                "rate": self._rate(now),
                "recent_rate": self._recent_rate(now),
                "window_s": None if self.first is None else now - self.first,
                "idle_s": None if self.last is None else now - self.last,
                "mean": h.mean,
                "p50": h.quantile(0.5),
                "p99": h.quantile(0.99),
                "max": h.max if h.count else None,
                "histogram": h.to_dict(),
            }
        if self.stream is not None:
            d["stream"] = self.stream.snapshot()
        return d

    def reset(self) -> None:
        """Zero every counter. Calls still in flight stay in flight and count as attempts of the new
        window, so ``calls == sum(outcomes) + in_flight`` keeps holding."""
        with self._lock:
            self.calls = self.in_flight
            self.outcomes = [0] * len(Outcome)
            self.histogram = LatencyHistogram()
            self.first = self._clock() if self.in_flight else None
            self.last = None
            self._ring = [0] * _RING
            self._ring_sec = 0
        if self.stream is not None:
            self.stream.reset()

    def __repr__(self) -> str:
        return (
            f"<MethodStats {self.name!r} calls={self.calls} ok={self.ok} errors={self.errors} "
            f"timeouts={self.timeouts} rejected={self.rejected} in_flight={self.in_flight}>"
        )


class StreamStats:
    """The streams of one method: how many were opened, how many are open, and the items and bytes they
    moved each way (``sent`` from this side: a server's results, a client's input). A stream's latency,
    outcome and availability are its method's row: a stream is one call, from open to end."""

    __slots__ = ("opened", "open", "items_sent", "items_received", "bytes_sent", "bytes_received", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.opened = 0
        self.open = 0
        self.items_sent = self.items_received = self.bytes_sent = self.bytes_received = 0

    def started(self) -> None:
        with self._lock:
            self.opened += 1
            self.open += 1

    def ended(self) -> None:
        with self._lock:
            self.open -= 1

    def add(self, items_sent: int, items_received: int, bytes_sent: int, bytes_received: int) -> None:
        """What a stream moved since it last reported (``engine.streams.Tally.flush``)."""
        with self._lock:
            self.items_sent += items_sent
            self.items_received += items_received
            self.bytes_sent += bytes_sent
            self.bytes_received += bytes_received

    def reset(self) -> None:
        """Zero the counters; streams still open stay open (and count as opened in the new window)."""
        with self._lock:
            self.opened = self.open
            self.items_sent = self.items_received = self.bytes_sent = self.bytes_received = 0

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "opened": self.opened,
                "open": self.open,
                "items_sent": self.items_sent,
                "items_received": self.items_received,
                "bytes_sent": self.bytes_sent,
                "bytes_received": self.bytes_received,
            }

    def __repr__(self) -> str:
        return f"<StreamStats opened={self.opened} open={self.open} sent={self.items_sent}>"


def _availability(ok: int, errors: int, timeouts: int) -> float | None:
    denominator = ok + errors + timeouts
    return ok / denominator if denominator else None


# -- registry -------------------------------------------------------------------------------------------


class Metrics:
    """Per-method ``MethodStats`` by name, bounded to ``max_methods`` names; safe to share between threads."""

    def __init__(self, *, max_methods: int = 1000, clock: Callable[[], float] = time.perf_counter) -> None:
        if max_methods < 1:
            raise ValueError(f"max_methods must be >= 1, got {max_methods!r}")
        self.max_methods = max_methods
        self._clock = clock
        self._stats: dict[str, MethodStats] = {}
        self._lock = threading.Lock()
        self._since = clock()

    # -- hot path ---------------------------------------------------------------------------------------

    def started(self, name: str) -> CallToken:
        """Count a call to ``name`` as started and in flight; pass the token to ``finished``."""
        st = self._stats.get(name)
        if st is None:
            st = self.stats(name)
        return st, st.started()

    def finished(self, token: CallToken, outcome: int = _OK) -> float:
        """End the call ``token`` came from with ``outcome`` (an ``Outcome``); returns its duration."""
        st, t0 = token
        return st.finished(t0, outcome)

    def record(self, name: str, outcome: int, seconds: float | None = None) -> None:
        """Count a call to ``name`` that was never in flight (e.g. rejected on arrival)."""
        st = self._stats.get(name)
        if st is None:
            st = self.stats(name)
        st.record(outcome, seconds)

    # -- registry -------------------------------------------------------------------------------------

    def stats(self, name: str) -> MethodStats:
        """The stats row for ``name`` (created if new; ``OTHER``'s once the cap is reached). Cacheable."""
        st = self._stats.get(name)
        if st is not None:
            return st
        with self._lock:
            st = self._stats.get(name)
            if st is not None:
                return st
            if (
                type(name) is not str
                or len(name) > MAX_NAME_LENGTH
                or len(self._stats) - (OTHER in self._stats) >= self.max_methods
            ):
                name = OTHER
            st = self._stats.get(name)
            if st is None:
                st = self._stats[name] = MethodStats(name, self._clock)
            return st

    def declare(self, names: Iterable[str]) -> None:
        """Create rows for ``names`` now (a server's own methods), so later name spraying cannot crowd
        them into ``OTHER``; they count toward ``max_methods``."""
        for name in names:
            self.stats(name)

    def names(self) -> list[str]:
        """Names that have a row, sorted."""
        return sorted(self._stats)

    def __contains__(self, name: object) -> bool:
        return name in self._stats

    def __len__(self) -> int:
        return len(self._stats)

    def snapshot(self) -> dict[str, Any]:
        """Every row as plain msgpack-able data: ``{"version", "uptime_s", "methods": {name: row}}``.

        Rows are read one at a time (each consistent in itself, not all at one instant)."""
        now = self._clock()
        with self._lock:
            rows = list(self._stats.values())
        return {
            "version": 1,
            "uptime_s": now - self._since,
            "methods": {st.name: st.snapshot(now) for st in sorted(rows, key=lambda s: s.name)},
        }

    def reset(self) -> None:
        """Zero every row (rows and their names stay; in-flight calls stay in flight)."""
        with self._lock:
            rows = list(self._stats.values())
            self._since = self._clock()
        for st in rows:
            st.reset()


# -- presentation ---------------------------------------------------------------------------------------

_COLUMNS = (
    ("method", "<"),
    ("calls", ">"),
    ("ok", ">"),
    ("err", ">"),
    ("tmo", ">"),
    ("rej", ">"),
    ("infl", ">"),
    ("calls/s", ">"),
    ("10s/s", ">"),
    ("mean ms", ">"),
    ("p50 ms", ">"),
    ("p99 ms", ">"),
    ("avail %", ">"),
)
_MAX_NAME_COLUMN = 40


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.3f}"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _row(name: str, m: Mapping[str, Any]) -> list[str]:
    if len(name) > _MAX_NAME_COLUMN:
        name = name[: _MAX_NAME_COLUMN - 3] + "..."
    avail = m.get("availability")
    return [
        name,
        str(m["calls"]),
        str(m["ok"]),
        str(m["errors"]),
        str(m["timeouts"]),
        str(m.get("rejected", 0)),
        str(m["in_flight"]),
        _num(m.get("rate"), ".1f"),
        _num(m.get("recent_rate"), ".1f"),
        _ms(m.get("mean")),
        _ms(m.get("p50")),
        _ms(m.get("p99")),
        "-" if avail is None else f"{avail * 100:.2f}",
    ]


def _total(methods: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    keys = ("calls", "ok", "errors", "timeouts", "rejected", "in_flight")
    t: dict[str, Any] = {k: sum(m.get(k, 0) for m in methods.values()) for k in keys}
    for k in ("rate", "recent_rate"):
        vals = [m[k] for m in methods.values() if m.get(k) is not None]
        t[k] = sum(vals) if vals else None
    h = LatencyHistogram()
    for m in methods.values():
        try:
            h.merge(LatencyHistogram.from_dict(m["histogram"]))
        except (KeyError, ValueError):  # a peer's row without a usable histogram: leave it out
            continue
    t.update(mean=h.mean, p50=h.quantile(0.5), p99=h.quantile(0.99))
    t["availability"] = _availability(t["ok"], t["errors"], t["timeouts"])
    return t


def format_table(snapshot: Mapping[str, Any]) -> str:
    """A fixed-width text table of a ``Metrics.snapshot()`` (local or received), one row per method,
    plus a total row when there are several methods."""
    methods: Mapping[str, Mapping[str, Any]] = snapshot.get("methods", {})
    rows = [_row(name, m) for name, m in sorted(methods.items(), key=lambda kv: (kv[0] == OTHER, kv[0]))]
    if len(methods) > 1:
        rows.append(_row("TOTAL", _total(methods)))
    header = [c for c, _ in _COLUMNS]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if align == "<" else c.rjust(w)
            for c, w, (_, align) in zip(cells, widths, _COLUMNS, strict=True)
        ).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    if not rows:
        out.append("(no calls yet)")
    return "\n".join(out)
