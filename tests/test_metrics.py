"""Call metrics core: exact counts, availability definition, histogram accuracy, wire form, caps, threads."""

from __future__ import annotations

import asyncio
import math
import random
import sys
import threading
from collections.abc import Iterator
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zcall.errors import (
    Backpressure,
    CallTimeout,
    ClientClosed,
    DeadlineExceeded,
    InvalidArguments,
    MethodNotFound,
    RemoteError,
    SerializationError,
    ServerBusy,
)
from zcall.protocol.codec import default_codec
from zcall.protocol.status import StatusCode
from zcall.service.metrics import (
    BOUNDS,
    MAX_NAME_LENGTH,
    NBUCKETS,
    OTHER,
    RELATIVE_ERROR,
    LatencyHistogram,
    MethodStats,
    Metrics,
    Outcome,
    format_table,
    outcome_for_exception,
    outcome_for_status,
)


class FakeClock:
    """A clock the test moves by hand, so durations and rates are exact."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def exact_quantile(samples: list[float], q: float) -> float:
    """Nearest-rank quantile: the ceil(q*n)-th smallest sample (rank at least 1), computed from scratch."""
    s = sorted(samples)
    k = max(1, math.ceil(q * len(s) - 1e-9))
    return s[min(k, len(s)) - 1]


def roundtrip(obj: object) -> object:
    """Through zcall's own msgpack codec (strict map keys, no ext types needed)."""
    return default_codec.unpackb(default_codec.packb(obj))


# -- counts and availability ----------------------------------------------------------------------------


def test_exact_counts_after_a_known_sequence() -> None:
    clock = FakeClock()
    m = Metrics(clock=clock)
    durations = {Outcome.OK: [0.001, 0.002, 0.004], Outcome.ERROR: [0.010, 0.020]}
    for outcome, ds in durations.items():
        for d in ds:
            tok = m.started("add")
            clock.t += d
            assert m.finished(tok, outcome) == pytest.approx(d)
    tok = m.started("add")
    clock.t += 5.0
    m.finished(tok, Outcome.TIMEOUT)
    m.record("add", Outcome.REJECTED)
    m.record("add", Outcome.REJECTED, 0.0001)
    tok = m.started("add")
    m.finished(tok, Outcome.CANCELLED)
    m.started("add")  # still in flight

    row = m.snapshot()["methods"]["add"]
    assert (row["calls"], row["ok"], row["errors"], row["timeouts"]) == (10, 3, 2, 1)
    assert (row["rejected"], row["cancelled"], row["in_flight"]) == (2, 1, 1)
    assert row["availability"] == 3 / 6
    # only OK and ERROR calls are timed
    timed = durations[Outcome.OK] + durations[Outcome.ERROR]
    assert row["histogram"]["count"] == len(timed)
    assert row["mean"] == pytest.approx(sum(timed) / len(timed))
    assert row["max"] == pytest.approx(0.020)
    st_ = m.stats("add")
    assert st_.calls == sum(st_.outcomes) + st_.in_flight


def test_availability_excludes_rejected_cancelled_and_in_flight() -> None:
    m = Metrics(clock=FakeClock())
    for _ in range(50):
        m.record("f", Outcome.REJECTED)
    m.record("f", Outcome.CANCELLED)
    m.started("f")
    assert m.stats("f").availability is None  # nothing the server answered for has finished
    m.record("f", Outcome.OK)
    assert m.stats("f").availability == 1.0  # 50 bad calls by the caller do not count against it
    m.record("f", Outcome.TIMEOUT)
    m.record("f", Outcome.ERROR)
    m.record("f", Outcome.OK)
    assert m.stats("f").availability == 2 / 4


def test_every_status_code_has_a_decided_outcome() -> None:
    expected = {
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
    assert set(expected) == set(StatusCode), "a new status code needs a decision here and in metrics"
    for code, outcome in expected.items():
        assert outcome_for_status(code) is outcome, code
    assert outcome_for_status(999) is Outcome.ERROR


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (None, Outcome.OK),
        (RemoteError("boom"), Outcome.ERROR),
        (MethodNotFound("x", code=StatusCode.METHOD_NOT_FOUND), Outcome.REJECTED),
        (InvalidArguments("x", code=StatusCode.INVALID_ARGUMENTS), Outcome.REJECTED),
        (ServerBusy("x", code=StatusCode.OVERLOADED), Outcome.ERROR),
        (DeadlineExceeded("x", code=StatusCode.DEADLINE_EXCEEDED), Outcome.TIMEOUT),
        (CallTimeout("m", ["tcp://127.0.0.1:1"], 1, 0.5), Outcome.TIMEOUT),
        (asyncio.CancelledError(), Outcome.CANCELLED),
        (ClientClosed("closed"), Outcome.CANCELLED),
        (SerializationError("no"), Outcome.REJECTED),
        (Backpressure("full"), Outcome.REJECTED),
        (OSError("other"), Outcome.ERROR),
    ],
)
def test_outcome_for_exception(exc: BaseException | None, outcome: Outcome) -> None:
    assert outcome_for_exception(exc) is outcome


# -- rates ----------------------------------------------------------------------------------------------


def test_rates_over_lifetime_and_recent_window() -> None:
    clock = FakeClock(5000.0)
    st_ = MethodStats("f", clock)
    assert st_.rate() is None and st_.recent_rate() is None
    for _ in range(40):  # 40 calls, one every 0.5 s: seconds 5000..5019
        st_.finished(st_.started(), Outcome.OK)
        clock.t += 0.5
    assert clock.t == 5020.0
    assert st_.rate() == pytest.approx(40 / 20.0)
    # whole seconds 5010..5019 hold 20 finishes, the current second 5020 none yet: over 10.0 s
    assert st_.recent_rate() == pytest.approx(20 / 10.0)
    clock.t += 0.5  # the current partial second counts too: 21 finishes over 10.5 s
    st_.finished(st_.started(), Outcome.OK)
    assert st_.recent_rate() == pytest.approx(21 / 10.5)
    assert st_.rate() == pytest.approx(41 / 20.5)
    clock.t = 5020.0
    clock.t += 30.0  # idle: the ring ages out, the lifetime average decays
    assert st_.recent_rate() == 0.0
    assert st_.rate() == pytest.approx(41 / 50.0)
    st_.finished(st_.started(), Outcome.ERROR)  # a finish after a long gap clears stale slots
    assert st_.recent_rate() == pytest.approx(1 / 10.0)


def test_rate_divides_by_at_least_one_second() -> None:
    clock = FakeClock()
    st_ = MethodStats("f", clock)
    for _ in range(5):
        st_.record(Outcome.OK, 0.0001)
    clock.t += 0.001
    assert st_.rate() == 5.0
    assert st_.recent_rate() == 5.0


def test_finish_reported_late_from_an_earlier_second_is_still_counted() -> None:
    clock = FakeClock(100.2)
    st_ = MethodStats("f", clock)
    st_.record(Outcome.OK, 0.001)  # ring now at second 100
    clock.t = 101.5
    st_.record(Outcome.OK, 0.001)  # ring advances to 101
    clock.t = 100.9  # a thread that read the clock earlier takes the lock later
    st_.record(Outcome.OK, 0.001)
    clock.t = 101.9
    assert st_.recent_rate() == pytest.approx(3 / (101.9 - 100.2))


# -- histogram accuracy ---------------------------------------------------------------------------------


def test_bucket_layout_and_error_bound() -> None:
    assert BOUNDS[0] == pytest.approx(1e-5) and BOUNDS[-1] == pytest.approx(100.0)
    assert all(a < b for a, b in pairwise(BOUNDS))
    assert math.isclose(RELATIVE_ERROR, 10 ** (1 / 20) - 1, rel_tol=1e-9)
    assert RELATIVE_ERROR < 0.125
    h = LatencyHistogram()
    assert h.quantile(0.5) is None and h.mean is None
    with pytest.raises(ValueError):
        h.quantile(1.5)


in_range = st.floats(min_value=BOUNDS[0], max_value=BOUNDS[-1], exclude_max=True, allow_nan=False)
any_latency = st.floats(min_value=0.0, max_value=1000.0, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(samples=st.lists(in_range, min_size=1, max_size=300), q=st.floats(min_value=0.0, max_value=1.0))
def test_quantile_within_documented_relative_error(samples: list[float], q: float) -> None:
    h = LatencyHistogram()
    for s in samples:
        h.record(s)
    exact = exact_quantile(samples, q)
    est = h.quantile(q)
    assert est is not None
    assert abs(est - exact) <= RELATIVE_ERROR * exact * (1 + 1e-9)
    assert h.count == len(samples)
    assert h.total == sum(samples)  # same order of additions: bit-exact
    assert h.min == min(samples) and h.max == max(samples)
    assert h.quantile(0.0) == min(samples) and h.quantile(1.0) == max(samples)


@settings(max_examples=100, deadline=None)
@given(samples=st.lists(any_latency, min_size=1, max_size=200), q=st.floats(min_value=0.0, max_value=1.0))
def test_quantile_outside_the_bucket_range(samples: list[float], q: float) -> None:
    h = LatencyHistogram()
    for s in samples:
        h.record(s)
    exact = exact_quantile(samples, q)
    est = h.quantile(q)
    assert est is not None
    assert min(samples) <= est <= max(samples)
    if exact < BOUNDS[0]:
        assert abs(est - exact) < BOUNDS[0]  # absolute bound below 10 µs
    elif exact >= BOUNDS[-1]:
        assert est >= BOUNDS[-1]
    else:
        assert abs(est - exact) <= RELATIVE_ERROR * exact * (1 + 1e-9)


def test_quantiles_on_a_known_distribution() -> None:
    samples = [i / 1000 for i in range(1, 1001)]  # 1 ms .. 1 s, uniform
    h = LatencyHistogram()
    for s in samples:
        h.record(s)
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = exact_quantile(samples, q)
        # dense data: interpolation does far better than the worst-case bound
        assert h.quantile(q) == pytest.approx(exact, rel=0.02), q


def test_broken_durations_count_as_zero() -> None:
    h = LatencyHistogram()
    h.record(-1.0)
    h.record(float("nan"))
    assert h.count == 2 and h.total == 0.0 and h.max == 0.0 and h.counts[0] == 2


@settings(max_examples=100, deadline=None)
@given(a=st.lists(any_latency, max_size=100), b=st.lists(any_latency, max_size=100))
def test_merge_equals_recording_both(a: list[float], b: list[float]) -> None:
    ha, hb, hboth = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for s in a:
        ha.record(s)
    for s in b:
        hb.record(s)
    for s in a + b:
        hboth.record(s)
    merged = ha.copy().merge(hb)
    assert merged.counts == hboth.counts
    assert (merged.count, merged.min, merged.max) == (hboth.count, hboth.min, hboth.max)
    assert merged.total == pytest.approx(hboth.total, rel=1e-12, abs=1e-15)
    for q in (0.0, 0.5, 0.99, 1.0):
        if hboth.count:
            assert merged.quantile(q) == pytest.approx(hboth.quantile(q), rel=1e-9, abs=1e-15)
        else:
            assert merged.quantile(q) is None


# -- wire form ------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(samples=st.lists(any_latency, max_size=200))
def test_histogram_round_trips_through_msgpack(samples: list[float]) -> None:
    h = LatencyHistogram()
    for s in samples:
        h.record(s)
    wire = default_codec.packb(h.to_dict())
    back = LatencyHistogram.from_dict(default_codec.unpackb(wire))
    assert back == h
    assert len(h.to_dict()["buckets"]) == 2 * sum(1 for c in h.counts if c)  # sparse


def test_from_dict_refuses_bad_data() -> None:
    h = LatencyHistogram()
    h.record(0.001)
    h.record(0.002)
    good = h.to_dict()
    assert LatencyHistogram.from_dict(good) == h
    bad_variants = [
        {**good, "layout": [-6, 2, 20]},
        {**good, "count": 3},
        {**good, "count": True},
        {**good, "buckets": good["buckets"][:-1]},
        {**good, "buckets": [NBUCKETS, 2]},
        {**good, "buckets": [5, -2]},
        {**good, "buckets": list(reversed(good["buckets"]))},
        {**good, "min": -1.0},
        {**good, "min": 1.0, "max": 0.5},
        {**good, "total": "x"},
        {"count": 0},
        [],
    ]
    for bad in bad_variants:
        with pytest.raises(ValueError):
            LatencyHistogram.from_dict(bad)  # type: ignore[arg-type]


wire_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 500) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=20,
)


@settings(max_examples=120, deadline=None)
@given(
    data=st.fixed_dictionaries(
        {},
        optional={
            "layout": st.just([-5, 2, 20]) | wire_values,
            "count": st.integers(-2, 10) | wire_values,
            "total": wire_values,
            "min": wire_values,
            "max": wire_values,
            "buckets": st.lists(st.integers(-2, NBUCKETS + 1), max_size=8) | wire_values,
        },
    )
)
def test_from_dict_on_garbage_raises_only_value_error(data: dict[str, object]) -> None:
    try:
        h = LatencyHistogram.from_dict(data)
    except ValueError:
        return
    assert sum(h.counts) == h.count >= 0
    h.quantile(0.5)


def test_snapshot_is_plain_msgpack_data() -> None:
    clock = FakeClock()
    m = Metrics(clock=clock)
    tok = m.started("echo")
    clock.t += 0.003
    m.finished(tok)
    m.record("nope", Outcome.REJECTED)
    snap = m.snapshot()
    back = roundtrip(snap)
    assert back == snap
    assert set(back["methods"]) == {"echo", "nope"}
    assert LatencyHistogram.from_dict(back["methods"]["echo"]["histogram"]) == m.stats("echo").histogram


# -- registry bounds ------------------------------------------------------------------------------------


def test_method_name_cap_aggregates_into_other() -> None:
    m = Metrics(max_methods=5, clock=FakeClock())
    m.declare(["real.a", "real.b"])
    rnd = random.Random(7)
    sprayed = [f"junk{rnd.getrandbits(64):x}" for _ in range(500)]
    for name in sprayed:
        m.record(name, Outcome.REJECTED)
    m.record("real.a", Outcome.OK)
    assert len(m) == 6  # five names + OTHER
    assert "real.a" in m and "real.b" in m and OTHER in m
    assert m.stats("real.a").ok == 1
    kept = [n for n in m.names() if n.startswith("junk")]
    assert len(kept) == 3
    assert m.stats(OTHER).rejected == 500 - 3
    # a name first seen after the cap always lands in OTHER, start and finish alike
    tok = m.started("late")
    assert m.stats(OTHER).in_flight == 1
    m.finished(tok)
    assert m.stats(OTHER).in_flight == 0 and "late" not in m


def test_long_and_non_string_names_go_to_other() -> None:
    m = Metrics(clock=FakeClock())
    m.record("x" * (MAX_NAME_LENGTH + 1), Outcome.REJECTED)
    m.record(b"bytes", Outcome.REJECTED)  # type: ignore[arg-type]
    m.record(("t",), Outcome.REJECTED)  # type: ignore[arg-type]
    assert m.names() == [OTHER]
    assert m.stats(OTHER).rejected == 3
    roundtrip(m.snapshot())  # keys stay msgpack strings


def test_memory_stays_bounded_under_name_spraying() -> None:
    m = Metrics(max_methods=50)
    for i in range(5000):
        m.finished(m.started(f"m{i}"), Outcome.REJECTED)
    assert len(m) == 51
    total = sum(m.stats(n).calls for n in m.names())
    assert total == 5000


def test_max_methods_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Metrics(max_methods=0)


def test_reset_zeroes_but_keeps_in_flight_consistent() -> None:
    clock = FakeClock()
    m = Metrics(clock=clock)
    for _ in range(3):
        m.finished(m.started("f"), Outcome.ERROR)
    pending = m.started("f")
    m.reset()
    st_ = m.stats("f")
    assert (st_.calls, st_.in_flight, sum(st_.outcomes), st_.histogram.count) == (1, 1, 0, 0)
    clock.t += 0.5
    m.finished(pending, Outcome.OK)
    assert (st_.calls, st_.ok, st_.in_flight) == (1, 1, 0)
    assert st_.availability == 1.0
    assert m.names() == ["f"]


# -- threads --------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_switch_interval() -> Iterator[None]:
    """Force frequent thread switches so unprotected read-modify-writes would lose updates."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def test_concurrent_recording_is_exact(tiny_switch_interval: None) -> None:
    m = Metrics()
    nthreads, per_thread = 8, 3000
    names = ["a", "b", "c"]
    outcomes = list(Outcome)
    go = threading.Barrier(nthreads + 1)
    stop_reading = threading.Event()
    errors: list[BaseException] = []

    def caller(seed: int) -> None:
        try:
            go.wait()
            for i in range(per_thread):
                name = names[(seed + i) % 3]
                tok = m.started(name)
                m.finished(tok, outcomes[i % len(outcomes)])
                if i % 7 == 0:
                    m.record(f"t{seed}.{i % 20}", Outcome.OK, 0.001)  # new names race too
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            go.wait()
            while not stop_reading.is_set():
                format_table(m.snapshot())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(nthreads)]
    r = threading.Thread(target=reader)
    for t in [*threads, r]:
        t.start()
    for t in threads:
        t.join(30)
    stop_reading.set()
    r.join(30)
    assert not errors, errors

    total_calls = nthreads * per_thread
    rows = [m.stats(n) for n in names]
    assert sum(s.calls for s in rows) == total_calls
    assert all(s.in_flight == 0 for s in rows)
    per_outcome = total_calls // len(outcomes)
    for o in Outcome:
        assert sum(s.outcomes[o] for s in rows) == per_outcome
    assert sum(s.histogram.count for s in rows) == 2 * per_outcome  # OK and ERROR are timed
    extra = [m.stats(n) for n in m.names() if n.startswith("t")]
    assert len(extra) == nthreads * 20
    assert sum(s.ok for s in extra) == nthreads * len(range(0, per_thread, 7))


# -- table ----------------------------------------------------------------------------------------------


def test_format_table_shows_each_method_and_a_total() -> None:
    clock = FakeClock()
    m = Metrics(clock=clock)
    for d in (0.001, 0.003):
        tok = m.started("math.add")
        clock.t += d
        m.finished(tok, Outcome.OK)
    tok = m.started("math.div")
    clock.t += 0.002
    m.finished(tok, Outcome.ERROR)
    m.record("math.div", Outcome.OK, 0.002)
    m.started("math.div")
    clock.t += 1.0
    text = format_table(roundtrip(m.snapshot()))  # a snapshot received over the wire
    lines = text.splitlines()
    assert lines[0].split() == [
        "method",
        "calls",
        "ok",
        "err",
        "tmo",
        "rej",
        "infl",
        "calls/s",
        "10s/s",
        "mean",
        "ms",
        "p50",
        "ms",
        "p99",
        "ms",
        "avail",
        "%",
    ]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"math.add", "math.div", "TOTAL"}
    assert rows["math.add"][1:7] == ["2", "2", "0", "0", "0", "0"]
    assert rows["math.add"][9] == "2.000"  # mean ms, exact
    assert rows["math.add"][-1] == "100.00"
    assert rows["math.div"][1:7] == ["3", "1", "1", "0", "0", "1"]
    assert rows["math.div"][-1] == "50.00"
    assert rows["TOTAL"][1:7] == ["5", "3", "1", "0", "0", "1"]
    assert rows["TOTAL"][-1] == "75.00"


def test_format_table_when_empty_and_for_other_last() -> None:
    assert "(no calls yet)" in format_table(Metrics().snapshot())
    m = Metrics(max_methods=1, clock=FakeClock())
    m.record("zz", Outcome.REJECTED)
    m.record("aa", Outcome.REJECTED)
    text = format_table(m.snapshot())
    names = [line.split()[0] for line in text.splitlines()[2:]]
    assert names == ["zz", OTHER, "TOTAL"]
    assert " - " in text  # no availability yet: shown as "-"


def test_format_table_survives_a_peer_row_with_a_bad_histogram() -> None:
    m = Metrics(clock=FakeClock())
    m.record("a", Outcome.OK, 0.004)
    m.record("b", Outcome.OK, 0.001)
    snap = m.snapshot()
    snap["methods"]["b"]["histogram"] = {"layout": [0, 0, 0]}
    rows = {line.split()[0]: line.split() for line in format_table(snap).splitlines()[2:]}
    assert rows["TOTAL"][1] == "2"
    assert rows["TOTAL"][9] == "4.000"  # mean from the one usable histogram
