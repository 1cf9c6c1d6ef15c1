"""The reply cache's bounds (service/replycache.py), pure: entries, bytes, age and joined resends, on a
fake clock. The defaults are the table's (docs/reliability.md): 10,000 replies, 64 MiB, 60 s, 8
waiters per running call. Over sockets: test_hardening_promises.py and test_hardening_bounds.py."""

from __future__ import annotations

from zcall.service.replycache import IN_PROGRESS, ReplyCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def done(cache: ReplyCache, key: object, frame: bytes) -> list[object]:
    assert cache.begin(key) is None
    return cache.complete(key, frame)


def test_the_defaults_are_the_documented_bounds() -> None:
    c = ReplyCache()
    assert (c.max_entries, c.max_bytes, c.ttl, c.max_waiters) == (10_000, 64 * 1024 * 1024, 60.0, 8)


def test_a_call_is_new_then_running_then_answered_from_memory() -> None:
    c = ReplyCache(clock=Clock())
    assert c.begin("a") is None
    assert c.begin("a") is IN_PROGRESS
    assert c.complete("a", b"reply") == []
    assert c.begin("a") == b"reply"
    assert (len(c), c.nbytes) == (1, 5)
    assert c.counters["joined"] == 1 and c.counters["hits"] == 1


def test_the_default_entry_limit_keeps_the_newest_10000() -> None:
    c = ReplyCache(clock=Clock())
    for i in range(10_001):
        done(c, i, b"x")
    assert len(c) == 10_000 and c.counters["evicted"] == 1
    assert c.begin(0) is None  # the oldest went: its resend is a new call
    assert c.begin(10_000) == b"x"


def test_the_byte_limit_drops_the_oldest_replies_first() -> None:
    c = ReplyCache(max_bytes=100, clock=Clock())
    done(c, "old", b"o" * 60)
    done(c, "new", b"n" * 60)  # 120 > 100: the older one goes
    assert c.nbytes == 60 and c.begin("new") == b"n" * 60
    assert c.begin("old") is None
    assert c.counters["evicted"] == 1


def test_a_reply_larger_than_the_byte_limit_is_not_kept_at_all() -> None:
    c = ReplyCache(max_bytes=100, clock=Clock())
    done(c, "huge", b"h" * 101)
    assert (len(c), c.nbytes) == (0, 0)
    assert c.begin("huge") is None


def test_the_default_byte_limit_is_64_mib() -> None:
    c = ReplyCache(clock=Clock())
    mib = b"m" * (1024 * 1024)
    for i in range(64):
        done(c, i, mib)
    assert c.nbytes == 64 * len(mib) and c.counters["evicted"] == 0  # exactly the limit fits
    done(c, 64, b"+")
    assert c.counters["evicted"] == 1 and c.begin(0) is None


def test_the_age_limit_counts_from_the_reply_and_is_60_s_by_default() -> None:
    clock = Clock()
    c = ReplyCache(clock=clock)
    assert c.begin("a") is None
    clock.now += 30  # it ran 30 s
    c.complete("a", b"reply")
    clock.now += 59.999
    assert c.begin("a") == b"reply"  # 59.999 s after its reply: still kept
    clock.now += 0.001
    assert c.begin("a") is None  # 60 s: forgotten, the resend runs afresh
    assert c.counters["expired"] == 1


def test_expired_replies_give_their_bytes_back() -> None:
    clock = Clock()
    c = ReplyCache(ttl=1.0, clock=clock)
    for i in range(5):
        done(c, i, b"x" * 10)
    clock.now += 1.0
    assert c.begin("next") is None  # any begin expires what is due
    assert (len(c), c.nbytes) == (1, 0)


def test_a_running_call_keeps_at_most_8_joined_resends_and_hands_them_over_once() -> None:
    c = ReplyCache(clock=Clock())
    assert c.begin("run") is None
    joined = [c.wait("run", f"envelope-{i}") for i in range(300)]
    assert joined == [True] * 8 + [False] * 292
    assert c.counters["waiters_dropped"] == 292
    assert c.complete("run", b"reply") == [f"envelope-{i}" for i in range(8)]
    assert c.wait("run", "late") is False  # done: a resend now gets the reply itself
    assert c.begin("run") == b"reply"


def test_a_forgotten_call_hands_over_its_waiters_and_its_bytes() -> None:
    c = ReplyCache(clock=Clock())
    assert c.begin("cut") is None
    c.wait("cut", "e1")
    assert c.forget("cut") == ["e1"]
    assert c.begin("cut") is None  # a resend runs afresh (cancelled or cut short by a stop)
    c.complete("cut", b"12345")
    assert c.forget("cut") == [] and c.nbytes == 0


def test_a_call_still_running_after_the_age_limit_is_not_run_again_by_a_resend() -> None:
    clock = Clock()
    c = ReplyCache(clock=clock)
    assert c.begin("long") is None
    c.wait("long", "joined-early")
    clock.now += 61  # still running
    assert c.begin("long") is IN_PROGRESS
    assert c.complete("long", b"reply") == ["joined-early"]
