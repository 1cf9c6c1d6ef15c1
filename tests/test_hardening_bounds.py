"""The bounds of docs/reliability.md's table, checked over real sockets against server processes.

Each test sends what a hostile peer would (raw frames, built by hand), then reads the server's own
figures through its ``probe`` method (``helpers.hostile_server``): resident memory now and its peak
since the probe reset it, how long the event loop was held up (a 2 ms timer on the loop that records
how late it woke), the dispatcher's counters. The sizes are scaled down from the issue's (40 frames
of 1 MiB, not 100 of 8 MiB) through the servers' knobs, so the bound is the same multiple of the limit.
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

import zcall
from helpers.hardening import (
    CALL,
    CANCEL,
    ERROR,
    EVENT,
    KIB,
    METHOD_NOT_FOUND,
    MIB,
    NOTIFY,
    OVERLOADED,
    PING,
    PONG,
    PROTOCOL_ERROR,
    REPLY,
    call_body,
    decode,
    error_of,
    raw,
    spawn_hostile,
)
from zcall.engine.sockets import frame_limit
from zcall.protocol.codec import DEFAULT_MAX_DECODED_BYTES, DEFAULT_MAX_MESSAGE_SIZE
from zcall.protocol.wire import MAX_REQUEST_FRAMES
from zcall.service.dispatch import MAX_PATTERN_LENGTH, MAX_PATTERNS
from zcall.service.registry import MAX_HINTED_NAME
from zcall.testing import ProcessHandle

pytestmark = pytest.mark.timeout(60)

SMALL_LIMIT = 1 * MIB  # max_message_size of the server that gets the many-frames message
SLACK_KIB = 16 * 1024  # allocator noise, a thread stack or two: what "no growth" may still show


@pytest.fixture(scope="module")
def servers() -> Iterator[Callable[..., ProcessHandle]]:
    """``servers(kind, *options)``: a hostile server process with those options, started once per module
    (tests that share one reset what they measure first); all are stopped by pid at the end."""
    started: dict[tuple[str, ...], ProcessHandle] = {}

    def get(kind: str, *options: str) -> ProcessHandle:
        key = (kind, *options)
        h = started.get(key)
        if h is None or not h.alive():
            lag = ("--lag-monitor",) if kind != "sync" else ()
            h = started[key] = spawn_hostile(kind, *lag, *options)
        return h

    yield get
    for h in started.values():
        h.stop(timeout=5.0)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.term()


def still_serving(endpoint: str) -> None:
    """A zcall client on a fresh connection gets a real answer."""
    with zcall.SyncClient(endpoint, timeout=10.0) as c:
        assert c.call("echo", "still serving") == "still serving"


def dense_call(rid: int, n: int, item: bytes, method: str = "echo", first: tuple[Any, ...] = ()) -> bytes:
    """A CALL whose arguments are ``first``, then one array of ``n`` copies of ``item`` (an encoded
    value), built as bytes."""
    head = b"\x97" + b"".join(msgpack.packb(x) for x in (1, CALL, rid, method))
    args = bytes([0x90 + len(first) + 1]) + b"".join(msgpack.packb(x) for x in first)
    return head + args + b"\xdd" + struct.pack(">I", n) + item * n + b"\x80\x80"


# -- bytes and frames per message --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_message_of_many_large_frames_is_refused_unread_and_costs_no_more_than_libzmq_held(
    kind: str, servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    """40 frames of 1 MiB against a 1 MiB limit: each frame passes MAXMSGSIZE, so libzmq buffers the
    whole 40 MiB message before zcall sees it (not zcall's to bound). zcall refuses it (PROTOCOL_ERROR,
    id 0) without copying a frame: the peak is what libzmq held, and it is all given back."""
    h = servers(kind, "--max-message-size", str(SMALL_LIMIT))
    nframes, size = 40, SMALL_LIMIT
    assert size <= frame_limit(SMALL_LIMIT) and nframes > MAX_REQUEST_FRAMES
    held_by_libzmq_kib = nframes * size // KIB
    with raw(ctx, zmq.DEALER, h.endpoint, timeout_ms=20_000) as d:
        start = d.probe(reset_peak=True)
        peaks, lags = [], []
        for i in range(3):
            d.sock.send_multipart([b""] + [bytes([65 + i]) * size for _ in range(nframes)])
            rid, code, text = error_of(d.recv())
            assert (rid, code) == (0, PROTOCOL_ERROR) and "exactly one body frame" in text, text
            after = d.probe(reset_peak=True)
            peaks.append(after["peak_rss_kib"] - start["rss_kib"])
            lags.append(after.get("lag_ms", 0.0))
        end = d.probe()
    grown = end["rss_kib"] - start["rss_kib"]
    print(
        f"\n{kind}: {nframes} x {size // KIB} KiB frames: peak RSS +{peaks} KiB (libzmq held "
        f"{held_by_libzmq_kib} KiB), after three: {grown:+d} KiB, loop held up {lags} ms"
    )
    # the peak is libzmq's buffer of one message, nothing more: a copy of the frames would double it
    assert max(peaks) < held_by_libzmq_kib + SLACK_KIB, peaks
    assert grown < SLACK_KIB  # freed once refused: three messages leave nothing behind
    assert end["counters"]["bad_messages"] - start["counters"]["bad_messages"] == 3
    still_serving(h.endpoint)


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_requests_of_up_to_max_request_frames_are_served_and_one_more_is_refused(
    kind: str, servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    """MAX_REQUEST_FRAMES (18) on the server's side: its identity, up to 15 more routing frames (a chain
    of proxies), the delimiter, the body. The reply goes back on the same envelope."""
    assert MAX_REQUEST_FRAMES == 18  # the table's figure
    h = servers(kind)
    with raw(ctx, zmq.DEALER, h.endpoint) as d:
        hops = [f"hop{i}".encode() for i in range(15)]  # + identity, delimiter, body: 18 frames
        d.sock.send_multipart([*hops, b"", call_body(5, "echo", ["routed"])])
        frames = d.sock.recv_multipart()
        assert frames[:-1] == [*hops, b""]  # the envelope, unchanged
        assert decode(frames[-1]) == [1, REPLY, 5, "routed"]
        d.sock.send_multipart([*hops, b"extra", b"", call_body(6, "echo", ["one too many"])])
        frames = d.sock.recv_multipart()
        assert frames[:-1] == [b""]  # answered on [identity, ""]: the rest of the envelope is not trusted
        rid, code, text = error_of(decode(frames[-1]))
        assert (rid, code) == (0, PROTOCOL_ERROR), text


# -- decoded size: containers counted, the rest not --------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_dense_body_of_empty_maps_is_refused_at_the_decode_budget(
    kind: str, servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    """4 million empty maps in 4 MB (default limits: 16 MiB, 64 MiB decode budget): refused once the
    maps decoded so far would cost 64 MiB (about a million), so the peak is about the budget, not the
    ~300 MB all of them would take. The loop is held while it decodes (figures in the table)."""
    h = servers(kind)
    body = dense_call(11, 4_000_000, b"\x80")
    with raw(ctx, zmq.DEALER, h.endpoint, timeout_ms=30_000) as d:
        start = d.probe(reset_peak=True)
        t0 = time.monotonic()
        d.send_body(body)
        rid, code, text = error_of(d.recv())
        took = time.monotonic() - t0
        after = d.probe()
    assert (rid, code) == (0, PROTOCOL_ERROR) and "maps and arrays" in text, text
    peak_kib = after["peak_rss_kib"] - start["rss_kib"]
    print(
        f"\n{kind}: {len(body)} bytes of empty maps refused in {took * 1000:.0f} ms; peak RSS "
        f"+{peak_kib} KiB (budget {DEFAULT_MAX_DECODED_BYTES // KIB} KiB); loop held "
        f"{after.get('lag_ms', float('nan')):.0f} ms"
    )
    if kind == "async":  # the table's figure: 0.3-0.8 s measured on 2 cores, here with room for load
        assert after["lag_ms"] < 2000
    # the budget estimates CPython's sizes; the real cost measured ~1.2x it (GC headers, the array)
    assert peak_kib < (DEFAULT_MAX_DECODED_BYTES * 3 // 2 + 2 * len(body)) // KIB, peak_kib
    assert after["rss_kib"] - start["rss_kib"] < SLACK_KIB + 2 * len(body) // KIB
    still_serving(h.endpoint)


def test_strings_are_not_counted_and_decode_to_about_25_times_their_size(
    servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    """What the decode budget does not cover, measured: 5.5 million 2-character strings (16.5 MB, under
    the 16 MiB limit) to a method that does not exist. The whole body is decoded before the method is
    looked up, so any server holds them all: about 25x the wire size (the table's figure: a 3-byte
    string is a 56-byte object and an 8-byte slot in its array, beside the 1x of the frame itself)."""
    h = servers("async")
    body = dense_call(12, 5_500_000, b"\xa2ab", method="no.such.method")
    assert len(body) <= DEFAULT_MAX_MESSAGE_SIZE
    with raw(ctx, zmq.DEALER, h.endpoint, timeout_ms=60_000) as d:
        start = d.probe(reset_peak=True)
        d.send_body(body)
        rid, code, _text = error_of(d.recv())
        after = d.probe()
    assert (rid, code) == (12, METHOD_NOT_FOUND)
    multiple = (after["peak_rss_kib"] - start["rss_kib"]) * KIB / len(body)
    print(
        f"\n{len(body)} bytes of strings: peak RSS {multiple:.1f}x the wire size, loop held "
        f"{after['lag_ms']:.0f} ms"
    )
    assert multiple < 30  # the documented ~25x
    still_serving(h.endpoint)


@pytest.mark.xfail(
    strict=True,
    reason="decoding runs on the server's event loop (server/asynchronous.py _on_message -> "
    "Dispatcher.admit -> Codec.unpackb), so one dense body holds it for the whole decode: 0.3-0.8 s "
    "for 4 MB of empty maps, 0.8-2.8 s for 4 MB of empty arrays (the cyclic GC runs over the growing "
    "lists), on 2 cores; the issue asks for a few milliseconds. Fix: decode bodies over a few KiB off "
    "the loop (the GIL's switch interval then lets the loop run), and without the cyclic GC",
)
@pytest.mark.parametrize("item", [b"\x80", b"\x90"], ids=["empty-maps", "empty-arrays"])
def test_one_dense_message_holds_the_loop_for_at_most_a_few_milliseconds(
    item: bytes, servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    h = servers("async")
    with raw(ctx, zmq.DEALER, h.endpoint, timeout_ms=30_000) as d:
        d.probe()  # the lag so far is not this message's
        d.send_body(dense_call(13, 4_000_000, item))
        assert error_of(d.recv())[1] == PROTOCOL_ERROR
        lag_ms = d.probe()["lag_ms"]
    print(f"\nloop held {lag_ms:.0f} ms by one dense message")
    assert lag_ms < 100


# -- queued work ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "peer"])
def test_request_bytes_in_flight_are_bounded_and_calls_beyond_are_overloaded(
    servers: Callable[..., ProcessHandle], ctx: zmq.Context, kind: str
) -> None:
    """max_in_flight_bytes = 4 MiB, one worker held busy: of twenty 1 MiB calls queued behind it, those
    that fit are admitted and the rest are OVERLOADED at once; what queued calls hold stays within
    about twice the knob (each keeps its frame and its decoded argument)."""
    limit = 4 * MIB
    h = servers(kind, "--workers", "1", "--max-in-flight-bytes", str(limit))
    data = bytes(MIB)
    with raw(ctx, zmq.DEALER, h.endpoint) as d:
        start = d.probe(reset_peak=True)
        d.send(1, "hold", "gate")
        h.expect("STARTED gate")  # the only worker is busy: every call from now on queues
        sizes = [len(call_body(100 + i, "hold", [f"q{i}", 30.0, data])) for i in range(20)]
        for i in range(20):
            d.send(100 + i, "hold", f"q{i}", 30.0, data)
        fits = 0
        while sum(sizes[: fits + 1]) + len(call_body(1, "hold", ["gate"])) <= limit:
            fits += 1
        refused = [d.recv() for _ in range(20 - fits)]
        assert all(error_of(m)[1] == OVERLOADED for m in refused), refused
        assert sorted(m[2] for m in refused) == list(range(100 + fits, 120))
        assert "request bytes in flight" in error_of(refused[0])[2]
        mid = d.probe()
        assert mid["in_flight"] == 1 + fits + 1  # gate, the queued ones, this probe
        assert mid["in_flight_bytes"] <= limit
        for i, tag in enumerate(["gate"] + [f"q{i}" for i in range(fits)]):
            d.send(2 + i, "release", tag)
        answers = {m[2]: m for m in (d.recv() for _ in range(2 * (1 + fits)))}
        assert sorted(answers) == sorted([*range(2, 3 + fits), 1, *range(100, 100 + fits)])
        assert all(m[1] == REPLY for m in answers.values())
        end = d.probe()
    peak_kib = mid["peak_rss_kib"] - start["rss_kib"]
    print(f"\n{fits} of 20 x 1 MiB calls queued, {20 - fits} OVERLOADED; peak RSS +{peak_kib} KiB")
    assert fits == 3
    assert peak_kib < (2 * limit + 2 * MIB) // KIB + SLACK_KIB
    assert (end["in_flight"], end["in_flight_bytes"]) == (1, len(call_body(7, "probe", [False])))


def test_queued_calls_hold_a_small_multiple_of_max_in_flight_bytes_even_when_dense(
    servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    """A dense request is charged what it holds decoded (Codec.held_by), not its wire size: with a 1 MiB
    limit and one call running, ten 100 KB bodies of empty maps (~6.4 MB each once decoded) are all
    OVERLOADED at once instead of queueing ~64 MB."""
    limit = 1 * MIB
    h = servers("async", "--workers", "1", "--max-in-flight-bytes", str(limit))
    with raw(ctx, zmq.DEALER, h.endpoint, timeout_ms=30_000) as d:
        start = d.probe(reset_peak=True)
        d.send(1, "hold", "dense-gate")
        h.expect("STARTED dense-gate")
        for i in range(10):  # 100,000 empty maps each: 100 KB on the wire, ~6.4 MB decoded
            d.send_body(dense_call(200 + i, 100_000, b"\x80", method="hold", first=(f"d{i}", 30.0)))
        refused = [d.recv() for _ in range(10)]
        assert sorted(m[2] for m in refused) == list(range(200, 210))
        assert all(error_of(m)[1] == OVERLOADED for m in refused), refused
        mid = d.probe()
        assert mid["in_flight"] == 2 and mid["in_flight_bytes"] <= limit  # the gate and this probe
        d.send(2, "release", "dense-gate")
        assert {d.recv()[2] for _ in range(2)} == {1, 2}
    peak_kib = mid["peak_rss_kib"] - start["rss_kib"]
    print(f"\n10 dense calls refused, none queued; peak RSS +{peak_kib} KiB for {limit // KIB} KiB")
    assert peak_kib < 4 * limit // KIB + SLACK_KIB


def test_a_sync_server_holds_few_waiting_requests_per_connection(
    servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    limit = 16 * KIB
    h = servers("sync", "--max-message-size", str(limit))
    body = bytes(64 * KIB)  # over the limit, under the frame wall: read, then refused unread
    with raw(ctx, zmq.DEALER, h.endpoint, timeout_ms=20_000) as d:
        start = d.probe(reset_peak=True)
        d.send(1, "hold", "sync-gate", 2.0)  # holds the serving thread 2 s (nothing can release it)
        h.expect("STARTED sync-gate")
        d.sock.setsockopt(zmq.SNDTIMEO, 3000)
        sent = 0
        with contextlib.suppress(zmq.Again):
            for _ in range(2000):
                d.sock.send_multipart([b"", body])
                sent += 1
        answers = [d.recv() for _ in range(1 + sent)]
        end = d.probe()
    assert all(m[1] == ERROR for m in answers[1:]) and answers[0][2] == 1
    peak_kib = end["peak_rss_kib"] - start["rss_kib"]
    print(f"\n{sent} requests of 64 KiB behind a 2 s call: peak RSS +{peak_kib} KiB")
    assert peak_kib < (16 * len(body)) // KIB + SLACK_KIB


def test_calls_in_flight_are_bounded_at_the_default_of_1000(
    servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    """max_in_flight's default (1000): a thousand coroutine calls held open, the next one OVERLOADED."""
    h = servers("async")
    with raw(ctx, zmq.DEALER, h.endpoint) as d:
        for i in range(1000):
            d.send(1000 + i, "asleep", 30.0, f"f{i}")
        d.send(5000, "echo", "one more")
        rid, code, text = error_of(d.recv())
        assert (rid, code) == (5000, OVERLOADED) and "1000 calls in flight" in text, text
        for i in range(1000):  # give them up: the server cancels each (no answer on ROUTER)
            d.sock.send_multipart([b"", msgpack.packb([1, CANCEL, 1000 + i])])
        assert d.probe()["in_flight"] == 1  # only the probe: the thousand are gone


# -- method names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_12_mib_unknown_method_name_is_answered_at_once(
    kind: str, servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    """The issue's 12 MiB name held the loop 3.1 s (a close-match search over it); now the search is
    skipped past MAX_HINTED_NAME characters and the answer names only the first 200."""
    h = servers(kind)
    name = "x" * (12 * MIB)
    with raw(ctx, zmq.DEALER, h.endpoint, timeout_ms=20_000) as d:
        d.probe()
        t0 = time.monotonic()
        d.send(21, name)
        body = d.sock.recv_multipart()[-1]
        took = time.monotonic() - t0
        after = d.probe()
    rid, code, text = error_of(decode(body))
    assert (rid, code) == (21, METHOD_NOT_FOUND)
    assert decode(body)[3]["data"] == {"close": []}
    assert len(body) < 2 * KIB and "x" * MAX_HINTED_NAME + "..." in text
    print(
        f"\n{kind}: 12 MiB unknown name answered in {took * 1000:.0f} ms, loop held "
        f"{after.get('lag_ms', float('nan')):.0f} ms"
    )
    assert took < 1.5  # the search took 3.1 s: half of that on a loaded machine
    if kind == "async":
        assert after["lag_ms"] < 1500


def test_close_matches_are_searched_for_names_of_up_to_max_hinted_name_characters(
    servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    """MAX_HINTED_NAME (200): the service has a method named 200 n's; a 200-character typo of it gets
    the hint, a 201-character one does not (no search), however close."""
    assert MAX_HINTED_NAME == 200  # the table's figure
    h = servers("async")
    with raw(ctx, zmq.DEALER, h.endpoint) as d:
        typo = "n" * 199 + "m"
        m = d.call(31, typo)
        assert error_of(m)[1] == METHOD_NOT_FOUND and m[3]["data"] == {"close": ["n" * 200]}
        m = d.call(32, typo + "n")
        assert error_of(m)[1] == METHOD_NOT_FOUND and m[3]["data"] == {"close": []}


# -- per-connection state -----------------------------------------------------------------------------


def subscribe(d: Any, patterns: list[Any]) -> None:
    d.sock.send_multipart([b"", call_body(9, "zcall.subscribe", [patterns], kind=NOTIFY)])


def events_before_reply(d: Any, rid: int) -> list[list[Any]]:
    """Messages up to the reply to ``rid``: the EVENTs the server sent before answering it."""
    events = []
    while True:
        m = d.recv()
        if m[1] == EVENT:
            events.append(m)
        elif m[2] == rid:
            return events


@pytest.mark.parametrize("kind", ["async", "peer"])
def test_a_connection_keeps_at_most_max_patterns_patterns_of_max_pattern_length(
    kind: str, servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    """10,000 patterns in one subscribe: the first 64 are kept (a publish scans at most those), so a
    pattern after them gets no events; a 257-character pattern is dropped, a 256-character one kept."""
    assert (MAX_PATTERNS, MAX_PATTERN_LENGTH) == (64, 256)  # the table's figures
    h = servers(kind)
    with raw(ctx, zmq.DEALER, h.endpoint) as d:
        subscribe(d, [f"none.{i}" for i in range(10_000)] + ["ev.*"])
        p = d.probe()  # read after the subscribe on the same connection: it has been applied
        assert max(p["patterns"].values()) == 64
        d.send(41, "publish", "ev.x", 1)
        assert events_before_reply(d, 41) == []  # "ev.*" was the 10,001st: not kept
        subscribe(d, [f"none.{i}" for i in range(63)] + ["ev.*"])
        d.send(42, "publish", "ev.x", 2)
        assert [m[4] for m in events_before_reply(d, 42)] == [2]  # the 64th is kept
        long_ok = "t" * 255 + "*"
        subscribe(d, ["u" * 256 + "*", long_ok, 7, None])
        p = d.probe()
        assert max(p["patterns"].values()) == 1 and p["pattern_chars"] == 256
        d.send(43, "publish", "t" * 300, 3)
        assert [m[4] for m in events_before_reply(d, 43)] == [3]
        assert p["counters"]["bad_messages"] >= 2  # both oversized subscribes were counted


@pytest.mark.parametrize("kind", ["async", "peer"])
def test_resends_of_a_running_call_keep_at_most_max_waiters_and_it_runs_once(
    kind: str, servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    """The issue's 300,000 resends of one running retry call were all held; now a running call keeps
    8 joined resends (ReplyCache.max_waiters) and drops the rest, counted. 300 resends here: the
    handler runs once, and its answer goes out 1 + 8 times."""
    h = servers(kind)
    tag = f"waiters-{kind}"
    retry = {"retry": True, "deadline": 30_000}
    with raw(ctx, zmq.DEALER, h.endpoint) as d:
        before = d.probe()
        d.send(77, "hold", tag, meta=retry)
        h.expect(f"STARTED {tag}")
        for _ in range(300):
            d.send(77, "hold", tag, meta=retry)
        p = d.probe()  # read after the 300 resends: they have all been admitted or dropped
        assert p["reply_waiters"] == 8
        dropped = p["reply_cache"]["waiters_dropped"] - before["reply_cache"]["waiters_dropped"]
        joined = p["reply_cache"]["joined"] - before["reply_cache"]["joined"]
        assert (joined, dropped) == (300, 292)
        assert d.result(78, "release", tag) == 1  # ran once
        answers = [d.recv() for _ in range(9)]
        assert answers == [[1, REPLY, 77, tag]] * 9
        d.sock.send_multipart([b"", msgpack.packb([1, PING, 79])])
        assert d.recv() == [1, PONG, 79]  # and not a tenth answer: all nine left in one go
        assert d.result(80, "runs", tag) == 1
