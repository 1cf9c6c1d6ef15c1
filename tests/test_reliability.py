"""Reliability under injected faults, over real sockets, with zcall's test helpers and pytest fixtures.

Message-level faults come from ``FaultProxy``; process-level ones (SIGSTOP, SIGKILL, restarts) from
servers in child processes, each stopped and reaped by pid. Nothing waits by sleeping: tests wait on
READY lines, a handler's start line, liveness callbacks, futures or the proxy's counters. The only
sleeps are behaviour: how long a server stays frozen.
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import zcall
from zcall.engine.liveness import Heartbeat, State
from zcall.testing import FaultProxy, ProcessHandle, is_call, is_reply

pytestmark = pytest.mark.timeout(60)

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
TARGET = "helpers.fault_services:make_service"
FAST_HB = Heartbeat(interval=0.1, timeout=0.3)
SUSPECT_HB = Heartbeat(interval=0.1, timeout=1.0)
"""A client heartbeat with room for *suspect*: silent for two intervals (0.2 s) it is suspect, and
libzmq declares the connection dead only after 1 s (with FAST_HB the two are 0.1 s apart: a loaded
machine's late tick could skip suspect)."""

needs_signals = pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP/SIGKILL are POSIX")


@pytest.fixture
def fault_service() -> zcall.Service:
    """A fresh ``helpers.fault_services`` service (run counters at zero) for in-thread servers."""
    from helpers.fault_services import make_service

    return make_service()


@pytest.fixture
def start_server(zcall_server_process: Callable[..., ProcessHandle]) -> Callable[..., ProcessHandle]:
    """Factory: the fault service in a child AsyncServer, optionally on a given endpoint / heartbeat."""

    def start(endpoint: str = "tcp://127.0.0.1:*", heartbeat: Heartbeat | None = None) -> ProcessHandle:
        return zcall_server_process(
            TARGET, endpoint, kind="async", heartbeat=heartbeat, cwd=REPO_ROOT, pythonpath=[TESTS_DIR]
        )

    return start


class LivenessLog:
    """Records ``on_liveness`` transitions with their times; lets a test wait for a state."""

    def __init__(self) -> None:
        self.events: list[tuple[float, State]] = []
        self._cond = threading.Condition()

    def __call__(self, endpoint: str, state: State) -> None:
        with self._cond:
            self.events.append((time.monotonic(), state))
            self._cond.notify_all()

    def wait(self, state: State, after: float, timeout: float) -> float:
        """The time of the first transition to ``state`` at or after ``after``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, s in self.events:
                    if s is state and t >= after:
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {state.value} within {timeout}s; saw {self.states()}")
                self._cond.wait(left)

    def states(self, after: float = 0.0) -> list[str]:
        with self._cond:
            return [s.value for t, s in self.events if t >= after]


def wait_stopped(pid: int) -> None:
    """Block until the child ``pid`` is stopped by a signal (not a sleep: waitpid reports it)."""
    _pid, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), status


# -- at most once ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_lost_reply_is_retried_and_the_side_effect_happens_once(
    kind: str,
    fault_service: zcall.Service,
    zcall_server: Callable[..., Any],
    zcall_fault_proxy: Callable[..., FaultProxy],
) -> None:
    server = zcall_server(fault_service, kind=kind)
    proxy = zcall_fault_proxy(server.endpoint)
    with zcall.SyncClient(proxy.endpoint, retries=1, timeout=0.4) as client:
        proxy.drop("replies", match=is_reply)
        assert client.call("incr") == 1  # the first reply was lost: this is the resend's
        stats = proxy.stats
        assert stats["replies"]["dropped"] == 1 and stats["requests"]["forwarded"] == 2
        assert client.statistics()["attempts"] == 2
        assert client.call("runs_of", "incr") == 1  # ran once: the resend was answered from memory

        # The contrast, as documented: a method declared idempotent is not remembered, so the same
        # fault runs it twice.
        proxy.drop("replies", match=is_reply)
        assert client.call("incr_idem") == 2
        assert client.call("runs_of", "incr_idem") == 2


# -- replies matched by id -------------------------------------------------------------------------


def _settled(client: zcall.AsyncClient, proxy: FaultProxy) -> int:
    """Once every reply the proxy sent on (copies included) reached the client: its stale-reply count."""
    stats = proxy.wait_for(
        lambda s: s["replies"]["forwarded"] == s["replies"]["received"] + s["replies"]["duplicated"]
    )
    deadline = time.monotonic() + 5
    while client.statistics()["stale_replies"] < stats["replies"]["duplicated"]:
        if time.monotonic() > deadline:
            break  # the assertion below reports it
        time.sleep(0.005)  # polling a counter the client loop updates, not waiting for readiness
    return int(client.statistics()["stale_replies"])


@pytest.mark.parametrize("face", ["callback", "asyncio"])
def test_duplicated_and_reordered_replies_each_reach_their_own_call_once(
    face: str,
    fault_service: zcall.Service,
    zcall_server: Callable[..., Any],
    zcall_fault_proxy: Callable[..., FaultProxy],
) -> None:
    import asyncio

    server = zcall_server(fault_service, kind="async")
    proxy = zcall_fault_proxy(server.endpoint, seed=42)
    n = 60

    def sabotage() -> None:
        proxy.duplicate("replies", copies=2, count=None, probability=0.5, match=is_reply)
        for _ in range(4):
            proxy.reorder("replies", 6, shuffle=True, match=is_reply)

    if face == "callback":
        with zcall.AsyncClient(proxy.endpoint, timeout=5, heartbeat=None) as client:
            assert client.call_async("double", 0).result(5) == 0
            sabotage()
            seen: collections.Counter[int] = collections.Counter()
            results: dict[int, Any] = {}
            done = threading.Semaphore(0)

            def on_result(i: int) -> Callable[[Any], None]:
                def cb(value: Any) -> None:
                    seen[i] += 1
                    results[i] = value
                    done.release()

                return cb

            for i in range(n):
                client.call_async("double", i, callback=on_result(i), errback=lambda e: done.release())
            for _ in range(n):
                assert done.acquire(timeout=10)
            stale = _settled(client, proxy)
            assert set(seen.values()) == {1} and len(seen) == n  # each callback once, none late
            assert results == {i: 2 * i for i in range(n)}
    else:

        async def main() -> tuple[list[int], int]:
            async with zcall.AsyncClient(proxy.endpoint, timeout=5, heartbeat=None) as ac:
                assert await ac.call("double", 0) == 0
                sabotage()  # blocks this loop briefly: the client has nothing in flight
                results = await asyncio.gather(*(ac.call("double", i) for i in range(n)))
                stale = await asyncio.to_thread(_settled, ac, proxy)
                return results, stale

        results_list, stale = asyncio.run(main())
        assert results_list == [2 * i for i in range(n)]
    stats = proxy.stats["replies"]
    assert stats["duplicated"] > 0 and stats["reordered"] > 0
    # every extra copy arrived after its call was answered: dropped and counted, never delivered
    assert stale == stats["duplicated"]


# -- liveness --------------------------------------------------------------------------------------


@needs_signals
def test_frozen_server_is_declared_dead_fails_pending_calls_and_is_used_again_after_sigcont(
    zcall_spawn: Callable[..., ProcessHandle],
) -> None:
    """SIGSTOP: suspect once silent for two intervals, then dead within the heartbeat window, pending
    calls fail at once, and after SIGCONT the server is alive and used again without a backlog of
    pings (the server counts what it receives)."""
    handle = zcall_spawn(
        ["-m", "helpers.fault_services", "--heartbeat", "0.1,0.3"], cwd=REPO_ROOT, pythonpath=[TESTS_DIR]
    )
    log = LivenessLog()
    with zcall.AsyncClient(handle.endpoint, heartbeat=SUSPECT_HB, timeout=10) as client:
        client.on_liveness(log)
        assert client.call_async("double", 1).result(5) == 2
        assert client.liveness() == {handle.endpoint: State.ALIVE}
        pings_before = client.call_async("kinds_received").result(5)["counts"].get("PING", 0)

        frozen_for = 1.0  # ten heartbeat intervals: what would pile up if heartbeats queued
        t_stop = time.monotonic()
        os.kill(handle.pid, signal.SIGSTOP)
        try:
            wait_stopped(handle.pid)
            t0 = time.monotonic()
            pending = [client.call_async("double", i) for i in range(3)]
            t_suspect = log.wait(State.SUSPECT, t_stop, timeout=5)
            t_dead = log.wait(State.DEAD, t0, timeout=5)
            assert t_suspect < t_dead, "declared dead without being suspect first"
            assert t_dead - t0 < 2.0, f"declared dead {t_dead - t0:.2f}s after the freeze"
            for fut in pending:
                assert isinstance(fut.exception(timeout=2), zcall.ConnectionLost)
            t_failed = time.monotonic() - t0
            assert t_failed < 3.0  # promptly, not at their 10 s timeout
            assert client.liveness() == {handle.endpoint: State.DEAD}
            time.sleep(max(0.0, frozen_for - (time.monotonic() - t0)))  # the freeze is the behaviour
        finally:
            os.kill(handle.pid, signal.SIGCONT)
        t_cont = time.monotonic()
        t_alive = log.wait(State.ALIVE, t_cont, timeout=5)
        assert client.call_async("double", 21).result(5) == 42
        received = client.call_async("kinds_received").result(5)["counts"]
    backlog = received.get("PING", 0) - pings_before
    states = log.states(after=t_stop)
    print(
        f"\nSIGSTOP: suspect after {t_suspect - t_stop:.3f}s, dead after {t_dead - t0:.3f}s, pending "
        f"calls failed after {t_failed:.3f}s, "
        f"alive {t_alive - t_cont:.3f}s after SIGCONT; transitions {states}; pings the server took "
        f"from the freeze on: {backlog} (10 intervals missed); server received {received}"
    )
    assert states[:3] == ["suspect", "dead", "alive"], states  # suspect is required, not allowed
    assert backlog <= 3, f"{backlog} pings reached the server after it resumed: a heartbeat backlog"


@needs_signals
@pytest.mark.parametrize(
    ("method", "seconds"),
    [("block", 2.0), ("hog", 1.5)],
    ids=["blocking-function-in-pool", "coroutine-hogging-the-loop"],
)
def test_busy_handlers_do_not_make_a_live_server_look_dead(
    method: str, seconds: float, start_server: Callable[..., ProcessHandle]
) -> None:
    handle = start_server(heartbeat=FAST_HB)
    log = LivenessLog()
    with zcall.AsyncClient(handle.endpoint, heartbeat=FAST_HB, timeout=10) as client:
        client.on_liveness(log)
        assert client.call_async("double", 1).result(5) == 2
        t0 = time.monotonic()
        fut = client.call_async(method, seconds, "busy")
        handle.expect(f"{method.upper()} busy")
        assert fut.result(10) == "busy"  # the reply came over the same, never-dropped connection
        elapsed = time.monotonic() - t0
        states = log.states(after=t0)
        print(f"\n{method}({seconds}): {elapsed:.2f}s, transitions meanwhile: {states}")
        assert "dead" not in states, f"a busy server was declared dead: {states}"
        assert client.statistics()["connection_lost"] == 0
        assert client.call_async("double", 2).result(5) == 4


# -- killed server ---------------------------------------------------------------------------------


@needs_signals
def test_killed_server_fails_pending_calls_promptly_and_the_restart_is_used(
    start_server: Callable[..., ProcessHandle], zcall_tcp_endpoint: str
) -> None:
    first = start_server(zcall_tcp_endpoint, heartbeat=FAST_HB)
    with zcall.AsyncClient(zcall_tcp_endpoint, heartbeat=FAST_HB, timeout=10) as client:
        assert client.call_async("pid").result(5) == first.pid
        pending = [client.call_async("block", 5.0, f"k{i}") for i in range(3)]
        started = {first.expect("BLOCK ").split()[1] for _ in range(3)}  # in any order
        assert started == {"k0", "k1", "k2"}  # all three are running in the server
        t0 = time.monotonic()
        first.kill()
        for fut in pending:
            assert isinstance(fut.exception(timeout=4), zcall.ConnectionLost)
        assert time.monotonic() - t0 < 3.0  # promptly, not when the 5 s calls would have ended
        assert first.wait(5) == -signal.SIGKILL
        second = start_server(zcall_tcp_endpoint, heartbeat=FAST_HB)
        assert client.call_async("pid").result(5) == second.pid
        assert client.statistics()["connection_lost"] == 3


# -- soak ------------------------------------------------------------------------------------------


@needs_signals
def test_soak_every_call_resolves_exactly_once_through_kills_cuts_and_message_faults(
    start_server: Callable[..., ProcessHandle], zcall_tcp_endpoint: str
) -> None:
    total, in_flight = 1000, 50
    started = time.monotonic()
    servers = [start_server(zcall_tcp_endpoint)]
    with FaultProxy(zcall_tcp_endpoint, seed=2024) as proxy:
        proxy.drop("replies", count=None, probability=0.01, match=is_reply)
        proxy.duplicate("replies", count=None, probability=0.03, match=is_reply)
        proxy.delay("requests", 0.05, count=None, probability=0.03, match=is_call)
        resolved: collections.Counter[int] = collections.Counter()
        outcomes: collections.Counter[str] = collections.Counter()
        lock = threading.Lock()
        slots = threading.Semaphore(in_flight)
        all_done = threading.Event()
        issued = [0]
        milestones = {n: threading.Event() for n in (200, 400, 600, 800)}

        def settle(i: int, kind: str) -> None:
            with lock:
                resolved[i] += 1
                outcomes[kind] += 1
                if sum(outcomes.values()) == total:
                    all_done.set()
            slots.release()

        def on_ok(i: int) -> Callable[[Any], None]:
            return lambda value: settle(i, "ok" if value == 2 * i else "wrong result")

        def on_err(i: int) -> Callable[[BaseException], None]:
            return lambda exc: settle(i, type(exc).__name__)

        faults: list[str] = []

        def saboteur() -> None:
            """Kill and restart the server twice, cut and restore the link, reorder a few windows."""
            milestones[200].wait(30)
            servers[0].kill()
            servers[0].wait(5)
            servers.append(start_server(zcall_tcp_endpoint))
            faults.append("server SIGKILL + restart")
            milestones[400].wait(30)
            proxy.cut()
            proxy.restore()
            faults.append("link cut + restore")
            milestones[600].wait(30)
            servers[-1].kill()
            servers[-1].wait(5)
            servers.append(start_server(zcall_tcp_endpoint))
            faults.append("server SIGKILL + restart")
            milestones[800].wait(30)
            for _ in range(3):
                proxy.reorder("replies", 5, match=is_reply)
            faults.append("3 reorder windows")

        errors: list[BaseException] = []

        def run_saboteur() -> None:
            try:
                saboteur()
            except BaseException as exc:
                errors.append(exc)

        sab = threading.Thread(target=run_saboteur, daemon=True)
        sab.start()
        with zcall.AsyncClient(proxy.endpoint, timeout=1.0) as client:
            for i in range(total):
                assert slots.acquire(timeout=10), f"call {i}: no slot freed in 10 s (a call hangs)"
                client.call_async("double", i, callback=on_ok(i), errback=on_err(i))
                issued[0] += 1
                if issued[0] in milestones:
                    milestones[issued[0]].set()
            assert all_done.wait(20), f"only {sum(outcomes.values())} of {total} calls resolved"
            sab.join(30)
            stats = client.statistics()
        proxy_stats = proxy.stats
    duration = time.monotonic() - started
    assert errors == [], errors
    assert len(faults) == 4, faults
    assert len(resolved) == total and set(resolved.values()) == {1}, "a call resolved twice or never"
    assert sum(outcomes.values()) == total
    assert set(outcomes) <= {"ok", "CallTimeout", "ConnectionLost"}, outcomes
    assert outcomes["ok"] >= total * 0.8, outcomes
    assert stats["stale_replies"] >= 1 and proxy_stats["replies"]["duplicated"] >= 1
    injected = {
        d: {k: v for k, v in proxy_stats[d].items() if k not in ("received", "forwarded") and v}
        for d in ("requests", "replies")
    }
    print(
        f"\nsoak: {total} calls ({in_flight} in flight max) in {duration:.1f}s; "
        f"process/link faults: {faults}; "
        f"message faults: {injected}; outcomes: {dict(outcomes)}; client: stale_replies="
        f"{stats['stale_replies']} timeouts={stats['timeouts']} connection_lost={stats['connection_lost']}"
    )
