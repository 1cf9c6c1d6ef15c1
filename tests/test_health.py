"""Health and readiness: zcall.health's watch form (events), ``zcall ping --wait``, wait_serving."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

import zcall
from helpers.cli_support import REPO_ROOT, child_env, zcall_cli
from zcall.testing import free_tcp_endpoint, running_server, spawn_server
from zcall.tools.health import HEALTH_TOPIC, NotServing, wait_serving, watch_health


class Recorder:
    """Health statuses as they arrive, with a wait on a condition (no sleeps)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, status: dict[str, Any]) -> None:
        with self._cond:
            self.seen.append(status["status"])
            self._cond.notify_all()

    def wait_for(self, statuses: list[str], timeout: float = 5.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.seen == statuses, timeout), self.seen


def make_service() -> tuple[zcall.Service, threading.Event, threading.Event]:
    svc = zcall.Service("watched")
    running, release = threading.Event(), threading.Event()

    @svc.method
    async def hold() -> str:
        running.set()
        await asyncio.to_thread(release.wait, 10)
        return "finished"

    return svc, running, release


@pytest.mark.timeout(30)
def test_a_watcher_sees_serving_changes_and_not_serving_the_moment_a_stop_begins() -> None:
    svc, running, release = make_service()
    server = zcall.AsyncServer(svc).start()
    rec = Recorder()
    with zcall.AsyncClient(server.endpoint, timeout=10) as client:
        watch_health(client, rec)
        rec.wait_for(["SERVING"])  # the current status first
        svc.serving = False
        rec.wait_for(["SERVING", "NOT_SERVING"])
        svc.serving = False  # no change: no event
        svc.serving = True
        rec.wait_for(["SERVING", "NOT_SERVING", "SERVING"])
        held = client.call_async("hold")
        assert running.wait(5)
        stopper = threading.Thread(target=server.stop, args=(5.0,))
        stopper.start()
        rec.wait_for(["SERVING", "NOT_SERVING", "SERVING", "NOT_SERVING"])
        assert not held.done()  # pushed while the call in flight still runs: before anything closed
        release.set()
        assert held.result(5) == "finished"
        stopper.join(10)
    assert not stopper.is_alive()
    assert rec.seen.count("NOT_SERVING") == 2  # the stop's event came once; serving changes after it: none


@pytest.mark.timeout(30)
def test_the_health_event_is_an_ordinary_event_any_subscriber_can_follow() -> None:
    svc, _, _ = make_service()
    got: list[Any] = []
    arrived = threading.Event()
    with zcall.AsyncServer(svc) as server, zcall.AsyncClient(server.endpoint, timeout=5) as client:
        client.on("zcall.*", lambda topic, payload: (got.append((topic, payload)), arrived.set()))
        assert client.call_async("zcall.health").result(5)["status"] == "SERVING"  # subscription is in
        svc.serving = False
        assert arrived.wait(5)
    assert got == [(HEALTH_TOPIC, {"status": "NOT_SERVING", "service": "watched"})]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_wait_serving_follows_a_service_that_becomes_ready(kind: str) -> None:
    svc, _, _ = make_service()
    svc.serving = False
    with running_server(svc, kind=kind) as server:  # type: ignore[arg-type]
        timer = threading.Timer(0.3, lambda: setattr(svc, "serving", True))
        timer.start()
        t0 = time.monotonic()
        try:
            answer = wait_serving(server.endpoint, 10)
        finally:
            timer.cancel()
        assert answer == {"status": "SERVING", "service": "watched"}
        assert time.monotonic() - t0 < 5
        svc.serving = False
        with pytest.raises(NotServing) as info:
            wait_serving(server.endpoint, 0.5)
        assert info.value.status["status"] == "NOT_SERVING"
        with pytest.raises(NotServing):
            wait_serving(server.endpoint, 0.5, service="another")  # SERVICE_UNKNOWN is not serving


@pytest.mark.timeout(60)
def test_zcall_ping_wait_exits_0_once_a_server_started_later_is_serving() -> None:
    endpoint = free_tcp_endpoint()
    probe = subprocess.Popen(
        [sys.executable, "-m", "zcall", "ping", "--wait", "20", endpoint],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=REPO_ROOT,
    )
    try:
        tests = [REPO_ROOT / "tests"]
        with spawn_server("helpers.services:service", endpoint, kind="async", pythonpath=tests):
            out, errs = probe.communicate(timeout=25)
    finally:
        if probe.poll() is None:
            probe.kill()
            probe.wait()
    assert probe.returncode == 0, errs
    assert "SERVING" in out and "testsvc" in out


@pytest.mark.timeout(60)
def test_zcall_ping_wait_exit_codes_for_nothing_there_and_not_serving() -> None:
    nothing = zcall_cli("ping", "--wait", "0.5", free_tcp_endpoint())
    assert nothing.returncode == 3, nothing.stderr
    assert "nothing answered" in nothing.stderr
    svc, _, _ = make_service()
    svc.serving = False
    with running_server(svc) as server:
        r = zcall_cli("ping", "--wait", "0.5", server.endpoint)
        assert r.returncode == 1 and "NOT_SERVING" in r.stderr, (r.stdout, r.stderr)
        bad = zcall_cli("ping", "--wait", "0", server.endpoint)
        assert bad.returncode == 2
