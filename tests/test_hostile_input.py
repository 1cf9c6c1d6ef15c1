"""Hostile input over real sockets: thousands of malformed requests to a ROUTER server (AsyncServer, via a
raw DEALER) and a REP server (SyncServer, via a raw REQ), each in its own process.

Every request gets the answer docs/protocol.md section 10 prescribes (checked against this suite's own
reading of the rules in ``helpers.hostile_input``), or is dropped where the spec says so; afterwards a
normal call still works and the server's memory has not grown. Oversized frames: between the codec's
limit and twice it, MESSAGE_TOO_LARGE; beyond, libzmq (MAXMSGSIZE) cuts the connection.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zmq.utils.monitor import recv_monitor_message

import zcall
from conftest import REPO_ROOT, TESTS_DIR
from helpers.hostile_input import (
    CALL,
    MESSAGE_TOO_LARGE,
    PING,
    Case,
    Tally,
    bulk_cases,
    hypothesis_cases,
    pack,
    read_answer,
    send_rep,
    send_router,
)
from zcall.engine.sockets import frame_limit
from zcall.testing import ProcessHandle, ipc_endpoint, spawn

LIMIT = 8192  # the fuzzed servers' max_message_size: oversized requests stay cheap
BATCH = 100  # cases per hypothesis example
EXAMPLES = 30  # hypothesis examples per server: 3,000 structured cases
BULK = 8000  # seeded cases per server on top
RSS_MARGIN_KIB = 30 * 1024
SEED = 20_240_611
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def spawn_hostile(kind: str, endpoint: str = "tcp://127.0.0.1:*") -> ProcessHandle:
    """``helpers.hostile_server`` as a ROUTER ("async") or REP ("sync") server process, limit LIMIT."""
    return spawn(
        [
            "-m",
            "helpers.hostile_server",
            "--kind",
            kind,
            "--bind",
            endpoint,
            "--max-message-size",
            str(LIMIT),
        ],
        cwd=REPO_ROOT,
        pythonpath=[TESTS_DIR],
        timeout=15.0,
    )


@pytest.fixture
def router_server() -> Iterator[ProcessHandle]:
    with spawn_hostile("async") as h:
        yield h


@pytest.fixture
def rep_server() -> Iterator[ProcessHandle]:
    with spawn_hostile("sync") as h:
        yield h


@contextlib.contextmanager
def raw(ctx: zmq.Context, kind: int, endpoint: str, timeout_ms: int = 5000) -> Iterator[zmq.Socket]:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.term()


def probe(sock: zmq.Socket, *, dealer: bool) -> dict[str, Any]:
    """Ask the server process for its RSS and counters through the raw socket itself."""
    body = pack([1, CALL, 7, "probe", [], {}, {}])
    sock.send_multipart([b"", body] if dealer else [body])
    m = msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
    assert m[:3] == [1, 2, 7], m
    return m[3]


def normal_call_works(endpoint: str, kind: str) -> None:
    """A zcall client on a new connection gets a real answer."""
    if kind == "async":
        with zcall.AsyncClient(endpoint, timeout=5.0) as c:
            assert c.call_async("echo", "still serving").result(10) == "still serving"
    else:
        with zcall.SyncClient(endpoint, timeout=5.0) as c:
            assert c.call("echo", "still serving") == "still serving"


def report(
    server: str, tally: Tally, before: dict[str, Any], after: dict[str, Any], dropped: int = 0
) -> None:
    print(
        f"\n{server}: {tally.total} malformed requests ({dropped} dropped as documented), "
        f"{tally.skipped_valid} valid by chance and not sent"
    )
    print(f"  by family: {dict(sorted(tally.sent.items()))}")
    print(f"  answers:   {dict(sorted(tally.answers.items()))}")
    print(
        f"  RSS before {before['rss_kib']} KiB, after {after['rss_kib']} KiB "
        f"({after['rss_kib'] - before['rss_kib']:+d} KiB)"
    )


def assert_sound(tally: Tally, before: dict[str, Any], after: dict[str, Any], minimum: int) -> None:
    assert not tally.mismatches, "\n".join(tally.mismatches)
    assert tally.total >= minimum
    # one answer read off the socket per request sent: none missing (an extra one would shift every
    # later answer into a mismatch, and the probe after the fuzz would read it instead of its reply)
    assert tally.received == tally.total, (tally.received, tally.total, tally.answers.get("NO ANSWER"))
    # every error answer for bad input was also counted by the server (its "bad_messages")
    errors = sum(n for name, n in tally.answers.items() if name not in ("PONG", "REPLY"))
    counted = after["counters"]["bad_messages"] - before["counters"]["bad_messages"]
    assert counted == errors
    assert after["rss_kib"] - before["rss_kib"] < RSS_MARGIN_KIB


# -- fuzz: ROUTER ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_router_server_answers_every_malformed_request_and_stays_bounded(
    router_server: ProcessHandle, ctx: zmq.Context
) -> None:
    ep = router_server.endpoint
    tally = Tally()
    with raw(ctx, zmq.DEALER, ep) as sock:
        send_router(sock, bulk_cases(SEED - 1, 300, LIMIT), LIMIT, Tally())  # warm up allocators
        before = probe(sock, dealer=True)

        @FUZZ
        @given(st.lists(hypothesis_cases(), min_size=BATCH, max_size=BATCH))
        def structured(cases: list[Case]) -> None:
            send_router(sock, cases, LIMIT, tally)

        structured()
        for i in range(BULK // 500):
            send_router(sock, bulk_cases(SEED + i, 500, LIMIT), LIMIT, tally)
        after = probe(sock, dealer=True)
    report("ROUTER (AsyncServer)", tally, before, after)
    assert_sound(tally, before, after, minimum=10_000)
    assert after["stats"]["in_flight"] == 1  # the probe call itself, and nothing left over
    normal_call_works(ep, "async")


# -- fuzz: REP ---------------------------------------------------------------------------------------


def no_delimiter_answered_by_sync_server(ctx: zmq.Context, endpoint: str, n: int) -> int:
    """A DEALER omitting the delimiter: the sync server (a ROUTER answering like REP) answers each with
    PROTOCOL_ERROR id 0 on [identity, ""], as the async server does, then answers a well-framed PING."""
    with raw(ctx, zmq.DEALER, endpoint) as d:
        for i in range(n):
            d.send_multipart([pack([1, PING, 1000 + i])] + [b"x"] * (i % 3))
        d.send_multipart([b"", pack([1, PING, 424242])])
        for _ in range(n):
            assert read_answer(d.recv_multipart()) == ("error", 4, 0)  # PROTOCOL_ERROR, id 0
        assert read_answer(d.recv_multipart()) == ("pong", 0, 424242)
        assert d.poll(100) == 0  # nothing else comes (the sleep is the behaviour: silence)
    return n


@pytest.mark.timeout(60)
def test_rep_server_answers_every_malformed_request_and_stays_bounded(
    rep_server: ProcessHandle, ctx: zmq.Context
) -> None:
    ep = rep_server.endpoint
    tally = Tally()
    with raw(ctx, zmq.REQ, ep) as sock:
        send_rep(sock, bulk_cases(SEED - 1, 300, LIMIT, no_delimiter=False), LIMIT, Tally())
        before = probe(sock, dealer=False)

        @FUZZ
        @given(st.lists(hypothesis_cases().filter(lambda c: c.delim), min_size=BATCH, max_size=BATCH))
        def structured(cases: list[Case]) -> None:
            send_rep(sock, cases, LIMIT, tally)

        structured()
        for i in range(BULK // 500):
            send_rep(sock, bulk_cases(SEED + i, 500, LIMIT, no_delimiter=False), LIMIT, tally)
        answered = no_delimiter_answered_by_sync_server(ctx, ep, 200)
        tally.sent["no delimiter (DEALER)"] += answered
        tally.answers["PROTOCOL_ERROR"] += answered  # each one answered and counted by the server
        tally.received += answered
        after = probe(sock, dealer=False)
    report("SyncServer", tally, before, after)
    assert_sound(tally, before, after, minimum=10_000)
    normal_call_works(ep, "sync")


@pytest.mark.timeout(30)
def test_router_server_over_ipc_survives_a_fuzz_batch(ctx: zmq.Context, tmp_path: Any) -> None:
    with spawn_hostile("async", ipc_endpoint(tmp_path)) as h:
        assert h.endpoint.startswith("ipc://")
        tally = Tally()
        with raw(ctx, zmq.DEALER, h.endpoint) as sock:
            before = probe(sock, dealer=True)
            for i in range(3):
                send_router(sock, bulk_cases(SEED + 100 + i, 400, LIMIT), LIMIT, tally)
            after = probe(sock, dealer=True)
        assert_sound(tally, before, after, minimum=1000)
        normal_call_works(h.endpoint, "async")


# -- oversized -----------------------------------------------------------------------------------------


def wait_disconnected(monitor: zmq.Socket, timeout: float = 5.0) -> None:
    """Block until the monitored socket reports its connection closed (the server cut it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if monitor.poll(100) and recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED:
            return
    raise AssertionError("the server did not cut the connection")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["async", "sync"])
def test_oversized_requests_too_large_up_to_the_frame_limit_then_the_connection_is_cut(
    kind: str, ctx: zmq.Context
) -> None:
    dealer = kind == "async"
    sock_kind = zmq.DEALER if dealer else zmq.REQ
    with spawn_hostile(kind) as h:
        with raw(ctx, sock_kind, h.endpoint) as sock:
            before = probe(sock, dealer=dealer)
            wall = frame_limit(LIMIT)  # the limit plus an eighth (at least 64 KiB): libzmq's MAXMSGSIZE
            for size in (LIMIT + 1, wall):  # read, refused unread: MESSAGE_TOO_LARGE with id 0
                sock.send_multipart([b"", b"\x00" * size] if dealer else [b"\x00" * size])
                assert read_answer(sock.recv_multipart()) == ("error", MESSAGE_TOO_LARGE, 0)
            monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            try:
                big = b"\x00" * (wall + 1)  # over MAXMSGSIZE: libzmq drops it and the connection
                sock.send_multipart([b"", big] if dealer else [big])
                wait_disconnected(monitor)
            finally:
                sock.disable_monitor()
                monitor.close(linger=0)
        with raw(ctx, sock_kind, h.endpoint) as fresh:
            after = probe(fresh, dealer=dealer)
        # the two refusals were counted; the dropped one never reached zcall at all
        assert after["counters"]["bad_messages"] - before["counters"]["bad_messages"] == 2
        normal_call_works(h.endpoint, kind)
