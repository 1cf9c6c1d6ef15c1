"""Shutdown that loses nothing, over real processes stopped with SIGTERM (docs/reliability.md, Shutdown).

Every call that reached a stopping server gets exactly one answer: its result if it finishes within the
grace period, UNAVAILABLE otherwise (and at once for a call that arrives once the stop began), all
delivered before the socket closes; no caller sees ConnectionLost or waits out its timeout; the process
exits within grace plus a small bound, even with a handler blocked forever. Checked on AsyncServer,
SyncServer (``zcall serve --sync --grace`` and ``serve_forever``) and Peer (``zcall serve``).
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq

import zcall
from helpers.hardening import (
    PING,
    PONG,
    REPLY,
    REPO_ROOT,
    TESTS_DIR,
    UNAVAILABLE,
    call_body,
    decode,
    raw,
    spawn_hostile,
)
from zcall.testing import ProcessHandle, free_tcp_endpoint, spawn

pytestmark = [pytest.mark.timeout(90), pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX")]

EXIT_BOUND = 3.0
"""Seconds after the grace period within which a stopped server process has exited. The work after the
grace period is bounded by the close's LINGER (1 s) and the interpreter's exit: a process that waited for
its blocked handler would take forever, one that waited for its 60 s calls would take 60 s."""


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.term()


def zcall_serve(*args: str) -> ProcessHandle:
    """``zcall serve helpers.hostile_cli:service ARGS`` in a child process, once it printed READY."""
    return spawn(
        ["-m", "zcall", "serve", "helpers.hostile_cli:service", *args],
        cwd=REPO_ROOT,
        pythonpath=[TESTS_DIR],
        timeout=15.0,
    )


def sigterm_and_time_exit(h: ProcessHandle, grace: float) -> float:
    """SIGTERM now; wait for the exit (code 0); seconds it took."""
    t0 = time.monotonic()
    h.terminate()
    code = h.wait(grace + EXIT_BOUND + 10)
    took = time.monotonic() - t0
    assert code == 0, (code, h.stderr[-2000:])
    return took


def outcome(fut: Any, timeout: float) -> str:
    """What a call future ended with: ``result:VALUE``, ``UNAVAILABLE``, or the exception's type."""
    exc = fut.exception(timeout)
    if exc is None:
        return f"result:{fut.result()}"
    if isinstance(exc, zcall.ServerBusy) and exc.code is zcall.StatusCode.UNAVAILABLE:
        return "UNAVAILABLE"
    return type(exc).__name__


# -- many calls in flight over DEALER/ROUTER ----------------------------------------------------------


def two_hundred_coroutine_calls_under_sigterm(h: ProcessHandle, grace: float) -> None:
    """100 calls that end within the grace period, 100 that would take a minute, then 20 more once the
    stop has begun: 100 results and 120 UNAVAILABLE, no ConnectionLost, no duplicates."""
    with zcall.AsyncClient(h.endpoint, timeout=30.0) as c:
        short = [c.call_async("asleep", 1.0, f"short{i}") for i in range(100)]
        long = [c.call_async("asleep", 60.0, f"long{i}") for i in range(100)]
        assert c.call_async("wait_begun", 200).result(15) == 200  # all 200 are running
        took = [0.0]

        def stop() -> None:
            took[0] = sigterm_and_time_exit(h, grace)

        stopper = threading.Thread(target=stop)
        stopper.start()
        t0 = time.monotonic()
        while c.call_async("zcall.health").result(10)["status"] == "SERVING":  # answered while stopping
            assert time.monotonic() - t0 < grace, "the stop never began"
        late = [c.call_async("echo", i) for i in range(20)]
        late_outcomes = collections.Counter(outcome(f, 10) for f in late)
        short_outcomes = collections.Counter(outcome(f, grace + 10) for f in short)
        long_outcomes = collections.Counter(outcome(f, grace + 10) for f in long)
        answered_after = time.monotonic() - t0
        stopper.join(grace + EXIT_BOUND + 15)
        stats = c.statistics()
    results = sum(n for k, n in short_outcomes.items() if k.startswith("result:"))
    print(
        f"\nSIGTERM with 200 in flight, grace {grace}s: short ones {results} results and "
        f"{ {k: n for k, n in short_outcomes.items() if not k.startswith('result:')} }, long "
        f"{dict(long_outcomes)}, late {dict(late_outcomes)}; all answered {answered_after:.2f}s after "
        f"the stop began, exit {took[0]:.2f}s after SIGTERM; client: connection_lost "
        f"{stats['connection_lost']}, stale replies {stats['stale_replies']}"
    )
    assert short_outcomes == {f"result:short{i}": 1 for i in range(100)}
    assert long_outcomes == {"UNAVAILABLE": 100}
    assert late_outcomes == {"UNAVAILABLE": 20}
    assert stats["connection_lost"] == 0 and stats["timeouts"] == 0
    assert stats["stale_replies"] == 0  # exactly one answer each: a second would be counted here
    assert took[0] < grace + EXIT_BOUND


def test_async_server_under_sigterm_answers_each_of_200_calls_exactly_once() -> None:
    grace = 2.5
    with spawn_hostile("async", "--grace", str(grace)) as h:
        two_hundred_coroutine_calls_under_sigterm(h, grace)


def test_peer_under_sigterm_answers_each_of_200_calls_exactly_once() -> None:
    grace = 2.5
    with zcall_serve("--grace", str(grace)) as h:
        two_hundred_coroutine_calls_under_sigterm(h, grace)


# -- many callers waiting on a one-call-at-a-time server ---------------------------------------------


def connected_req_sockets(ctx: zmq.Context, endpoint: str, n: int) -> list[zmq.Socket]:
    """``n`` REQ sockets, each connected and handshaken (a PING answered on it), so that what they send
    next reaches the server in a millisecond: a call still in a listen backlog has not *arrived*."""
    socks = []
    for _ in range(n):
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 10_000)
        s.connect(endpoint)
        socks.append(s)
    for i, s in enumerate(socks):
        s.send(msgpack.packb([1, PING, 10_000 + i]))
    for i, s in enumerate(socks):
        assert decode(s.recv()) == [1, PONG, 10_000 + i]
    return socks


def waiting_callers_under_sigterm(
    h: ProcessHandle, ctx: zmq.Context, endpoint: str, grace: float, running_for: float
) -> tuple[str, collections.Counter[str], float, float]:
    """One REQ caller runs ``asleep(running_for)``; 199 more queue behind it; then SIGTERM. Returns the
    running call's answer, the queued ones', when the last answer came and when the process exited
    (seconds after SIGTERM)."""
    socks = connected_req_sockets(ctx, endpoint, 200)
    try:
        socks[0].send(call_body(1, "asleep", [running_for, "running"], meta={"deadline": 60_000}))
        h.expect("STARTED running")
        for i, s in enumerate(socks[1:], 2):
            s.send(call_body(i, "echo", [i], meta={"deadline": 60_000}))
        t0 = time.monotonic()
        h.terminate()
        poller = zmq.Poller()
        for s in socks:
            poller.register(s, zmq.POLLIN)
        answers: dict[int, list[Any]] = {}
        last = 0.0
        while len(answers) < len(socks) and time.monotonic() - t0 < grace + 15:  # 15: the callers' timeout
            for s, _ in poller.poll(100):
                m = decode(s.recv())
                assert m[2] not in answers, m  # REQ: one answer per request, never two
                answers[m[2]] = m
                poller.unregister(s)
                last = time.monotonic() - t0
        code = h.wait(grace + EXIT_BOUND + 10)
        exited = time.monotonic() - t0
        assert code == 0, h.stderr[-2000:]
    finally:
        for s in socks:
            s.close(linger=0)
    assert len(answers) == 200, f"{200 - len(answers)} callers got no answer"

    def name(m: list[Any]) -> str:
        if m[1] == REPLY:
            return f"result:{m[3]}"
        return "UNAVAILABLE" if m[3]["code"] == UNAVAILABLE else str(m[3])

    queued = collections.Counter(name(answers[i]) for i in range(2, 201))
    return name(answers[1]), queued, last, exited


@pytest.mark.parametrize("how", ["zcall serve --sync", "serve_forever"])
def test_sync_server_under_sigterm_answers_200_waiting_callers_promptly(how: str, ctx: zmq.Context) -> None:
    """The issue's run: --grace was dropped for --sync and 177 of 200 waiting callers timed out. Now the
    running call finishes within the grace period and every queued caller is answered UNAVAILABLE as
    soon as it is read, long before its own timeout."""
    grace = 3.0
    h = (
        zcall_serve("--sync", "--grace", str(grace))
        if how != "serve_forever"
        else spawn_hostile("sync", "--grace", str(grace))
    )
    with h:
        running, queued, last, exited = waiting_callers_under_sigterm(h, ctx, h.endpoint, grace, 1.0)
    print(
        f"\n{how}: running call {running}, queued {dict(queued)}; last answer {last:.2f}s, exit {exited:.2f}s"
    )
    assert running == "result:running"
    assert queued == {"UNAVAILABLE": 199}
    assert last < 1.0 + EXIT_BOUND  # when the running call ended, not when the callers time out (15 s)
    assert exited < grace + EXIT_BOUND


def test_sync_server_grace_expiry_answers_the_running_call_and_the_queue_unavailable(
    ctx: zmq.Context,
) -> None:
    """The running call outlives the grace period: the stopping thread takes the socket over, answers it
    and the 199 queued callers UNAVAILABLE, and the process exits (the handler's thread is a daemon)."""
    grace = 1.0
    with zcall_serve("--sync", "--grace", str(grace)) as h:
        running, queued, last, exited = waiting_callers_under_sigterm(h, ctx, h.endpoint, grace, 60.0)
    print(f"\nrunning call {running}, queued {dict(queued)}; last answer {last:.2f}s, exit {exited:.2f}s")
    assert running == "UNAVAILABLE"
    assert queued == {"UNAVAILABLE": 199}
    assert grace * 0.9 < last < grace + EXIT_BOUND
    assert exited < grace + EXIT_BOUND


def test_peer_sync_callers_and_async_callers_are_all_answered_under_sigterm(ctx: zmq.Context) -> None:
    """A Peer stops both its servers at once: REQ callers on its sync endpoint (one running, 49 queued)
    and a DEALER caller are answered within the grace period."""
    grace = 2.0
    sync_ep = free_tcp_endpoint()
    with (
        zcall_serve("--grace", str(grace), "--sync-bind", sync_ep) as h,
        raw(ctx, zmq.DEALER, h.endpoint) as d,
    ):
        d.send(900, "asleep", 60.0, "async-long", meta={"deadline": 60_000})
        h.expect("STARTED async-long")
        socks = connected_req_sockets(ctx, sync_ep, 50)
        try:
            socks[0].send(call_body(1, "asleep", [60.0, "sync-long"], meta={"deadline": 60_000}))
            h.expect("STARTED sync-long")
            for i, s in enumerate(socks[1:], 2):
                s.send(call_body(i, "echo", [i]))
            t0 = time.monotonic()
            h.terminate()
            codes = collections.Counter(decode(s.recv())[3]["code"] for s in socks)
            async_answer = d.recv()
            code = h.wait(grace + EXIT_BOUND + 10)
            exited = time.monotonic() - t0
        finally:
            for s in socks:
                s.close(linger=0)
    print(f"\npeer: sync callers {dict(codes)}, async caller {async_answer[3]['code']}, exit {exited:.2f}s")
    assert codes == {UNAVAILABLE: 50}
    assert async_answer[2] == 900 and async_answer[3]["code"] == UNAVAILABLE
    assert code == 0 and exited < grace + EXIT_BOUND


# -- handlers blocked forever ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "method"),
    [
        ("async", "block_forever"),
        ("async", "await_forever"),
        ("sync", "block_forever"),
        ("sync", "await_forever"),
        ("peer", "block_forever"),
    ],
)
def test_a_handler_blocked_forever_does_not_keep_the_process_alive(
    kind: str, method: str, ctx: zmq.Context
) -> None:
    """Its caller gets UNAVAILABLE at the end of the grace period and the process exits right after:
    a pool thread or the sync server's serving thread is a daemon thread, abandoned at exit; a
    coroutine is cancelled."""
    grace = 1.0
    with spawn_hostile(kind, "--grace", str(grace)) as h, raw(ctx, zmq.DEALER, h.endpoint) as d:
        d.send(5, method, "stuck", meta={"deadline": 60_000})
        h.expect("STARTED stuck")
        t0 = time.monotonic()
        h.terminate()
        m = d.recv()
        answered = time.monotonic() - t0
        code = h.wait(grace + EXIT_BOUND + 10)
        exited = time.monotonic() - t0
    print(f"\n{kind} {method}: answered {answered:.2f}s, exited {exited:.2f}s after SIGTERM (grace {grace}s)")
    assert m[2] == 5 and m[3]["code"] == UNAVAILABLE, m
    assert code == 0
    assert grace * 0.9 < answered < grace + EXIT_BOUND
    assert exited < grace + EXIT_BOUND


def test_an_inline_handler_blocked_forever_does_not_keep_the_process_alive(ctx: zmq.Context) -> None:
    grace = 1.0
    with spawn_hostile("async", "--grace", str(grace)) as h, raw(ctx, zmq.DEALER, h.endpoint) as d:
        d.send(5, "block_loop_forever", "stuck-loop")
        h.expect("STARTED stuck-loop")
        t0 = time.monotonic()
        h.terminate()
        try:
            code = h.wait(grace + EXIT_BOUND)
        finally:
            h.kill()
    assert code == 0 and time.monotonic() - t0 < grace + EXIT_BOUND
