"""The ``zcall`` command line, run as users run it: a subprocess per command; exit code and output checked."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq.auth

import zcall
from helpers.cli_support import REPO_ROOT, TESTS_DIR, child_env, zcall_cli
from zcall.testing import ProcessHandle, spawn
from zcall.tools.process import start


def serve(*args: str) -> ProcessHandle:
    """``python -m zcall serve ARGS``, returned once it printed ``READY <endpoint> name=<name>``."""
    return spawn(["-m", "zcall", "serve", *args], cwd=REPO_ROOT, pythonpath=[TESTS_DIR], timeout=15)


@pytest.fixture(scope="module")
def served() -> Iterator[ProcessHandle]:
    """The test service (tests/helpers/services.py) behind ``zcall serve``, shared by the module."""
    handle = serve("helpers.services:service")
    try:
        yield handle
    finally:
        handle.stop(timeout=5)


def test_serve_prints_ready_and_stops_with_code_0_on_sigterm() -> None:
    handle = serve("helpers.mesh_services:Greeter", "--name", "greeter")
    try:
        assert handle.ready is not None and handle.ready.name == "greeter"
        assert handle.endpoint.startswith("tcp://127.0.0.1:")
        assert handle.ready_line == f"READY {handle.endpoint} name=greeter"
        with zcall.SyncClient(handle.endpoint, timeout=5) as c:
            assert c.call("hello", "bob") == "hello, bob!"
            assert c.call("zcall.ping")["pid"] == handle.pid
            with pytest.raises(zcall.MethodNotFound):
                c.call("_secret")
        for _ in range(5):  # a dying launcher can deliver several SIGTERMs: stop once, cleanly, no deadlock
            handle.send_signal(signal.SIGTERM)
        code = handle.wait(timeout=10)
    finally:
        handle.stop(timeout=5)
    assert code == 0, handle.stderr
    assert "serving async (ROUTER)" in handle.stderr


def test_serve_sync_serves_over_rep_and_ctrl_c_exits_0() -> None:
    handle = serve("helpers.services:service", "--sync", "--name", "repsvc")
    try:
        ctx = zmq.Context.instance()
        req = ctx.socket(zmq.REQ)  # a plain REQ only works against REP (a ROUTER needs no empty frame)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(handle.endpoint)
        with zcall.SyncClient(handle.endpoint, timeout=5) as c:
            assert c.call("double", 4) == 8
        req.close()
        handle.send_signal(signal.SIGINT)
        assert handle.wait(timeout=10) == 0, handle.stderr
    finally:
        handle.stop(timeout=5)
    assert "serving sync (REP)" in handle.stderr


@pytest.mark.parametrize(("grace", "twice"), [("0.5", False), ("30", True)], ids=["grace", "twice"])
def test_serve_sync_stop_honours_grace_and_a_second_ctrl_c_cuts_it(grace: str, twice: bool) -> None:
    """A call still running at stop is answered UNAVAILABLE once ``--grace`` is over, or at once on a
    second Ctrl-C, and the server exits 0 (it used to drop ``--grace``, and hang on the second Ctrl-C)."""
    stopping = threading.Event()  # the first signal was handled: the server logged that it stops
    argv = [sys.executable, "-m", "zcall", "serve", "helpers.services:service", "--sync", "--grace", grace]
    on_stderr = lambda line: "stopping" in line and stopping.set()  # noqa: E731
    with start(argv, env=child_env(), cwd=REPO_ROOT, on_stderr=on_stderr) as handle:
        endpoint = handle.wait_ready(15).endpoint
        with zcall.AsyncClient(endpoint, timeout=60) as client:
            pending = client.call_async("slow", 3, "late")  # without the fix: it finishes
            handle.expect("SLOW START late", timeout=10)
            t0 = time.monotonic()
            handle.send_signal(signal.SIGINT)
            if twice:  # only once the first was handled: Python runs one handler for signals that pile up
                assert stopping.wait(10), handle.stderr
                handle.send_signal(signal.SIGINT)
            exc = pending.exception(timeout=20)
            answered_after = time.monotonic() - t0
        assert isinstance(exc, zcall.ServerBusy), exc
        assert answered_after < 2.5, answered_after  # about half the 5 s default grace (30 s: far off)
        assert handle.wait(timeout=20) == 0, handle.stderr


def test_serve_stops_cleanly_when_its_stdin_closes() -> None:
    argv = [sys.executable, "-m", "zcall", "serve", "helpers.services:service", "--stop-on-stdin-eof"]
    with start(argv, keep_stdin=True, env=child_env(), cwd=REPO_ROOT) as handle:
        ready = handle.wait_ready(15)
        assert ready.name == "testsvc" and ready.endpoint.startswith("tcp://")
        assert handle.proc.stdin is not None
        handle.proc.stdin.close()  # what a launcher's death looks like from here
        code = handle.wait(timeout=10)
    assert code == 0, handle.stderr
    assert "stdin closed" in handle.stderr and "Fatal Python error" not in handle.stderr


def test_serve_bad_target_is_a_usage_error() -> None:
    r = zcall_cli("serve", "no_such_module_here:thing")
    assert r.returncode == 2
    assert "cannot import module 'no_such_module_here'" in r.stderr
    r = zcall_cli("serve", "helpers.services")
    assert r.returncode == 2
    assert "MODULE:ATTR" in r.stderr


def test_call_prints_the_result(served: ProcessHandle) -> None:
    r = zcall_cli("call", served.endpoint, "double", "21")
    assert (r.returncode, r.stdout.strip()) == (0, "42"), r.stderr
    r = zcall_cli("call", served.endpoint, "echo", "hello world")
    assert (r.returncode, r.stdout.strip()) == (0, "hello world"), r.stderr


def test_call_json_keywords_and_value_parsing(served: ProcessHandle) -> None:
    r = zcall_cli(
        "call",
        served.endpoint,
        "describe",
        "1",
        "2",
        "--kw",
        "scale=3",
        "--kw",
        'tag="7"',
        "--kw",
        "n=[1,2]",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "a": 1,
        "b": 2,
        "scale": 3,
        "extra": {"tag": "7", "n": [1, 2]},
        "total": 9,
    }


def test_call_prints_a_streams_items_as_they_arrive(served: ProcessHandle) -> None:
    for extra in ([], ["--async"]):
        r = zcall_cli("call", *extra, served.endpoint, "count", "3", "--json")
        assert (r.returncode, r.stdout.splitlines()) == (0, ["0", "1", "2"]), r.stderr
    argv = [sys.executable, "-m", "zcall", "call", served.endpoint, "count", "3", "--kw", "every=0.4"]
    t0 = time.monotonic()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=child_env()) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        first_at = time.monotonic() - t0
        rest = proc.stdout.read()
        assert proc.wait(10) == 0
    took = time.monotonic() - t0
    assert (first, rest) == ("0\n", "1\n2\n")
    assert took - first_at >= 0.6, (first_at, took)  # the first line came while the stream went on


def test_call_async_uses_a_dealer(served: ProcessHandle) -> None:
    r = zcall_cli("call", "--async", served.endpoint, "adouble", "5", "--json")
    assert (r.returncode, json.loads(r.stdout)) == (0, 10), r.stderr


def test_call_remote_error_exits_1_with_type_message_and_traceback(served: ProcessHandle) -> None:
    r = zcall_cli("call", served.endpoint, "boom", "kaboom")
    assert r.returncode == 1
    assert r.stdout == ""
    assert "ValueError" in r.stderr and "kaboom" in r.stderr
    assert "remote traceback" in r.stderr and "raise ValueError(message)" in r.stderr
    r = zcall_cli("call", served.endpoint, "doubel", "1")
    assert r.returncode == 1
    assert "MethodNotFound" in r.stderr and "did you mean 'double'" in r.stderr


def test_serve_no_tracebacks_keeps_type_and_message_but_not_the_traceback() -> None:
    handle = serve("helpers.services:service", "--no-tracebacks")
    try:
        r = zcall_cli("call", handle.endpoint, "boom", "kaboom")
        assert r.returncode == 1
        assert "ValueError" in r.stderr and "kaboom" in r.stderr
        assert "raise ValueError(message)" not in r.stderr
    finally:
        handle.stop(timeout=5)


def test_call_timeout_exits_3_naming_endpoint_and_attempts(unused_tcp_endpoint: str) -> None:
    for extra in ([], ["--async"]):
        r = zcall_cli("call", *extra, unused_tcp_endpoint, "double", "1", "--timeout", "0.3")
        assert r.returncode == 3, r.stderr
        assert unused_tcp_endpoint in r.stderr
        # REQ sends and waits; DEALER never sends to an endpoint that is not connected
        assert ("1 attempt" if not extra else "0 attempts") in r.stderr


def test_bad_usage_exits_2(served: ProcessHandle) -> None:
    r = zcall_cli("call", "not-an-endpoint", "double", "1")
    assert r.returncode == 2 and "not an endpoint" in r.stderr
    r = zcall_cli("call", served.endpoint, "double", "--kw", "no-equals-sign")
    assert r.returncode == 2 and "NAME=VALUE" in r.stderr
    r = zcall_cli("call", served.endpoint)
    assert r.returncode == 2 and "METHOD" in r.stderr


def test_ls_lists_signatures_and_docs_aligned(served: ProcessHandle) -> None:
    r = zcall_cli("ls", served.endpoint)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    double = next(line for line in lines if line.startswith("double("))
    boom = next(line for line in lines if line.startswith("boom("))
    assert double.startswith("double(x: int) -> int") and double.endswith("Return twice x.")
    assert double.index("Return twice x.") == boom.index("Always raise")  # the doc column is aligned
    assert any(line.startswith("zcall.ping()") for line in lines)
    count = next(line for line in lines if line.startswith("count("))
    assert count.endswith("[stream]")  # a generator: it answers stream(), not call()
    assert lines[-1].startswith("(9 methods, ")


def test_ping_reports_rtt_service_and_pid(served: ProcessHandle) -> None:
    r = zcall_cli("ping", served.endpoint, "--count", "3", "--interval", "0")
    assert r.returncode == 0, r.stderr
    pongs = [line for line in r.stdout.splitlines() if line.startswith("pong from")]
    assert len(pongs) == 3
    assert all(f"testsvc (pid {served.pid}," in p and " ms" in p for p in pongs)
    assert "3 pings, 3 answered, 0 lost" in r.stdout


def test_ping_no_server_exits_3(unused_tcp_endpoint: str) -> None:
    r = zcall_cli("ping", unused_tcp_endpoint, "--timeout", "0.2")
    assert r.returncode == 3
    assert "no pong" in r.stdout


def test_stats_counts_calls() -> None:
    handle = serve("helpers.services:service")  # a fresh server: known counts
    try:
        with zcall.SyncClient(handle.endpoint, timeout=5) as c:
            for i in range(3):
                assert c.call("double", i) == 2 * i
            with pytest.raises(zcall.RemoteError):
                c.call("boom", "x")
        r = zcall_cli("stats", handle.endpoint, "--json")
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        assert data["service"] == "testsvc"
        assert data["methods"]["double"]["calls"] == 3 and data["methods"]["double"]["ok"] == 3
        assert data["methods"]["boom"]["errors"] == 1
        r = zcall_cli("stats", handle.endpoint)
        assert r.returncode == 0, r.stderr
        rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line[:1].isalpha()}
        assert rows["double"][1:4] == ["3", "3", "0"]  # calls, ok, err
        assert rows["boom"][1:4] == ["1", "0", "1"]
        assert r.stdout.startswith(f"service testsvc at {handle.endpoint} (pid {handle.pid}")
    finally:
        handle.stop(timeout=5)


def test_stats_watch_refreshes_until_ctrl_c(served: ProcessHandle) -> None:
    watcher = spawn(
        ["-m", "zcall", "stats", served.endpoint, "--watch", "0.1"],
        ready_prefix="-- ",
        env=child_env(),
        timeout=30,
    )
    try:
        watcher.expect("-- ", timeout=30)  # a second refresh (generous: a loaded box starts slowly)
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(timeout=10) == 0
    finally:
        watcher.stop(timeout=5)
    assert any(line.startswith("method") for line in watcher.stdout_lines)


def test_keygen_writes_a_loadable_curve_pair(tmp_path: Path) -> None:
    r = zcall_cli("keygen", "server", "--dir", str(tmp_path / "keys"))
    assert r.returncode == 0, r.stderr
    public, secret = tmp_path / "keys" / "server.key", tmp_path / "keys" / "server.key_secret"
    assert str(public) in r.stdout and str(secret) in r.stdout
    pub_only = zmq.auth.load_certificate(str(public))
    pub, sec = zmq.auth.load_certificate(str(secret))
    assert pub_only[0] == pub and len(pub) == 40 and sec is not None and len(sec) == 40
    assert secret.stat().st_mode & 0o077 == 0
    r = zcall_cli("keygen", "server", "--dir", str(tmp_path / "keys"))
    assert r.returncode == 1 and "--force" in r.stderr
    assert zmq.auth.load_certificate(str(secret)) == (pub, sec)  # not overwritten


def test_help_and_python_dash_m() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "zcall", "--help"], capture_output=True, text=True, timeout=30, env=child_env()
    )
    assert r.returncode == 0
    for cmd in ("serve", "call", "ls", "ping", "stats", "keygen", "launch", "demo"):
        assert cmd in r.stdout
    r = zcall_cli("call", "--help")
    assert r.returncode == 0 and "--timeout" in r.stdout and "exits 3" in r.stdout


def test_demo_runs_the_tour_and_exits_0() -> None:
    r = zcall_cli("demo", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "sync call result: 20" in out
    assert "async call result: 20" in out
    assert "event received: stock.changed" in out
    assert "nested call result: {'item': 'widget', 'qty': 3, 'unit': 2.5, 'total': 7.5" in out
    speedup = next(line for line in out.splitlines() if "speedup:" in line)
    assert float(speedup.split("speedup:")[1].split("x")[0]) > 5  # 100 in flight vs one at a time
    assert "slow_lookup" in out and "every peer process has exited" in out
