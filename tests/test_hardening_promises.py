"""Promises the rest of the suite would not catch breaking, each pinned over real sockets.

- at most once when a resend arrives while the first attempt still runs: the handler runs once, and
  both attempts get its answer (same connection, another connection, every server kind);
- the reply cache's byte and age limits, at a server with tiny ones (the pure cache: test_hardening_
  replycache.py);
- a call whose deadline passed while it waited for a pool thread is not started; a SyncServer measures
  a deadline from when it reads the request (its time in libzmq's queue is invisible to it);
- a sync call's timeout is its whole budget, even when its pooled connection was refused meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

import zcall
from helpers.hardening import DEADLINE_EXCEEDED, REPLY, error_of, raw, spawn_hostile
from zcall.security import ClientSecurity, ServerSecurity
from zcall.testing import ProcessHandle, free_tcp_endpoint

pytestmark = pytest.mark.timeout(60)

RETRY = {"retry": True, "deadline": 30_000}


@pytest.fixture(scope="module")
def servers() -> Iterator[Callable[..., ProcessHandle]]:
    started: dict[tuple[str, ...], ProcessHandle] = {}

    def get(kind: str, *options: str) -> ProcessHandle:
        key = (kind, *options)
        if key not in started or not started[key].alive():
            started[key] = spawn_hostile(kind, *options)
        return started[key]

    yield get
    for h in started.values():
        h.stop(timeout=5.0)


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.term()


# -- at most once ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "peer"])
@pytest.mark.parametrize("where", ["same-connection", "other-connection"])
def test_a_resend_while_the_first_attempt_runs_joins_it_and_the_handler_runs_once(
    where: str, kind: str, servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    """The same retry-marked CALL twice (the resend after a lost reply, or after a reconnect: a new
    routing id): the second joins the running first; one run, and each attempt gets the answer."""
    h = servers(kind)
    tag = f"once-{kind}-{where}"
    rid = 500 + 10 * ["same-connection", "other-connection"].index(where)  # one id per test: the
    # cache keys on (id, method), so a second test reusing an id would be answered from the first's
    with raw(ctx, zmq.DEALER, h.endpoint) as first, raw(ctx, zmq.DEALER, h.endpoint) as other:
        second = first if where == "same-connection" else other
        first.send(rid, "hold", tag, meta=RETRY)
        h.expect(f"STARTED {tag}")
        second.send(rid, "hold", tag, meta=RETRY)
        assert second.probe()["reply_cache"]["joined"] >= 1  # read after the resend: it joined
        assert other.result(rid + 1, "release", tag) == 1
        answers = [first.recv(), second.recv()]
        assert answers == [[1, REPLY, rid, tag]] * 2
        assert other.result(rid + 2, "runs", tag) == 1  # the handler ran once
        # and a resend after it ended is answered from the cache, not run again
        other.send(rid, "hold", tag, meta=RETRY)
        assert other.recv() == [1, REPLY, rid, tag]
        assert other.result(rid + 3, "runs", tag) == 1


def test_a_sync_server_answers_a_resend_of_a_call_it_has_run_from_its_cache(
    servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    """One call at a time: a resend queued behind the first attempt (from another REQ socket, as Lazy
    Pirate makes after a timeout) is read once the first has ended, and answered from the cache."""
    h = servers("sync")
    with raw(ctx, zmq.REQ, h.endpoint) as first, raw(ctx, zmq.REQ, h.endpoint) as resend:
        first.send(601, "asleep", 0.3, "sync-once", meta=RETRY)
        h.expect("STARTED sync-once")
        resend.send(601, "asleep", 0.3, "sync-once", meta=RETRY)
        assert first.recv() == [1, REPLY, 601, "sync-once"]
        assert resend.recv() == [1, REPLY, 601, "sync-once"]
        assert first.result(602, "runs", "sync-once") == 1


# -- the reply cache's limits at a server ------------------------------------------------------------


def test_a_reply_pushed_out_by_the_byte_limit_is_forgotten_and_a_resend_runs_again(
    servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    """max_bytes = 3000: two 2 KB replies do not fit, so the older goes; its resend runs the handler
    again (at-most-once holds only within the cache's bounds), the newer one's is answered from memory."""
    h = servers("async", "--reply-cache-bytes", "3000")
    with raw(ctx, zmq.DEALER, h.endpoint) as d:
        a = d.call(701, "count", "bytes-a", 2000, meta=RETRY)
        b = d.call(702, "count", "bytes-b", 2000, meta=RETRY)
        p = d.probe()
        assert (p["replies"], p["reply_cache"]["evicted"]) == (1, 1) and 2000 < p["reply_bytes"] <= 3000
        assert d.call(702, "count", "bytes-b", 2000, meta=RETRY) == b  # kept
        assert d.result(703, "runs", "bytes-b") == 1
        assert d.call(701, "count", "bytes-a", 2000, meta=RETRY) == a  # the same answer, but ...
        assert d.result(704, "runs", "bytes-a") == 2  # ... it ran again: it was forgotten


def test_a_reply_older_than_the_age_limit_is_forgotten_and_a_resend_runs_again(
    servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    """ttl = 1 s: a resend within it is answered from memory; one after it runs the handler again."""
    h = servers("async", "--reply-cache-ttl", "1.0")
    with raw(ctx, zmq.DEALER, h.endpoint) as d:
        t0 = time.monotonic()
        d.call(801, "count", "age", meta=RETRY)
        d.call(801, "count", "age", meta=RETRY)
        assert time.monotonic() - t0 < 0.5  # the resend came well within the ttl ...
        assert d.result(802, "runs", "age") == 1  # ... and was answered from memory
        time.sleep(max(0.0, 1.2 - (time.monotonic() - t0)))  # the behaviour: the reply grows old
        d.call(801, "count", "age", meta=RETRY)
        assert d.result(803, "runs", "age") == 2
        assert d.probe()["reply_cache"]["expired"] >= 1


# -- deadlines ----------------------------------------------------------------------------------------


def test_a_call_whose_deadline_passes_while_it_waits_for_a_pool_thread_is_not_started(
    servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    """One worker, held: a call with a 200 ms deadline waits behind it past its deadline and is answered
    DEADLINE_EXCEEDED without running; one with time left runs."""
    h = servers("async", "--workers", "1")
    with raw(ctx, zmq.DEALER, h.endpoint) as d:
        before = d.probe()["counters"]["expired"]
        d.send(901, "hold", "pool-gate")
        h.expect("STARTED pool-gate")
        d.send(902, "hold", "too-late", meta={"deadline": 200})
        d.send(903, "hold", "in-time", meta={"deadline": 30_000})
        t0 = time.monotonic()
        time.sleep(0.4)  # the behaviour: the queued call's deadline passes while the worker is held
        d.send(904, "release", "pool-gate")
        d.send(905, "release", "in-time")
        answers = {m[2]: m for m in (d.recv() for _ in range(5))}
        assert time.monotonic() - t0 > 0.2
        assert error_of(answers[902])[1] == DEADLINE_EXCEEDED
        assert answers[901][3] == "pool-gate" and answers[903][3] == "in-time"
        assert d.result(906, "runs", "too-late") == 0  # never started
        assert d.probe()["counters"]["expired"] == before + 1


def test_a_sync_server_measures_a_deadline_from_when_it_reads_the_request(
    servers: Callable[..., ProcessHandle], ctx: zmq.Context
) -> None:
    """What the table says a SyncServer cannot do: a request that waited in libzmq's queue behind a
    running call, past its 200 ms deadline, is read with its 200 ms still ahead of it, and runs (its
    caller gave up long ago). A DEALER/ROUTER server would have refused it (previous test)."""
    h = servers("sync")
    with raw(ctx, zmq.REQ, h.endpoint) as busy, raw(ctx, zmq.REQ, h.endpoint) as late:
        busy.send(951, "asleep", 0.6, "sync-busy")
        h.expect("STARTED sync-busy")
        late.send(952, "count", "sync-late", meta={"deadline": 200})
        assert busy.recv()[1] == REPLY
        assert late.recv() == [1, REPLY, 952, "sync-late"]  # run, 0.4 s after its deadline
        assert busy.result(953, "runs", "sync-late") == 1


# -- a timeout is the whole call's budget, whatever the server does -----------------------------------


def test_a_sync_call_times_out_even_when_its_pooled_connection_was_refused_on_reconnect(
    tmp_path: Path,
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    server_public, server_secret = zmq.auth.create_certificates(tmp_path, "server")
    client_public, client_secret = zmq.auth.create_certificates(allowed, "client")
    svc = zcall.Service("revoking")
    svc.add(lambda x: 2 * x, name="double")
    endpoint = free_tcp_endpoint()

    def serve() -> zcall.SyncServer:  # either server kind: the client is what blocks
        security = ServerSecurity(server_secret, allow_keys_dir=allowed)
        return zcall.SyncServer(svc, endpoint, security=security).start()

    refused = threading.Event()

    class Refusals(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "refused a CURVE connection" in record.getMessage():
                refused.set()

    watch, logger = Refusals(), logging.getLogger("zcall")
    old_level = logger.level
    logger.addHandler(watch)
    logger.setLevel(logging.INFO)
    ctx = zmq.Context()
    client = zcall.SyncClient(
        endpoint, timeout=1.0, context=ctx, security=ClientSecurity(client_secret, server_public)
    )
    server = serve()
    outcome: dict[str, Any] = {}
    try:
        assert client.call("double", 1) == 2  # its REQ socket goes back to the pool, connected
        server.stop(0.2)
        os.unlink(client_public)  # the client's key is revoked, and the server comes back
        server = serve()
        assert refused.wait(10)  # the pooled socket reconnected and was refused
        (pooled,) = client._idle[endpoint]
        deadline = time.monotonic() + 10
        while int(pooled.sock.getsockopt(zmq.EVENTS)) & zmq.POLLOUT:  # until libzmq dropped its pipe
            assert time.monotonic() < deadline, "the refused connection's pipe was never dropped"
            time.sleep(0.01)

        def call() -> None:
            t0 = time.monotonic()
            try:
                outcome["result"] = client.call("double", 2)
            except Exception as exc:  # a send still blocked at the end gets ETERM (a ZMQError)
                outcome["result"] = exc
            outcome["took"] = time.monotonic() - t0

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(3.0)  # the call's timeout is 1 s
        blocked = caller.is_alive()
    finally:
        server.stop(0.2)
        logger.removeHandler(watch)
        logger.setLevel(old_level)
        client.close()
        ctx.term()  # a send still blocked ends with ETERM here
    assert not blocked, "the call was still blocked 3 s into its 1 s timeout"
    assert isinstance(outcome["result"], zcall.CallTimeout) and outcome["took"] < 2.0, outcome
