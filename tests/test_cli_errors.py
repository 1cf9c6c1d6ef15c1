"""How the one-shot commands fail, run as users run them: ``--json`` errors, the slow-or-missing hint,
malformed endpoints (exit 2) and Ctrl-C (exit 130). Real server processes, real CLI processes."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator

import pytest

from helpers.cli_support import REPO_ROOT, TESTS_DIR, child_env, zcall_cli
from zcall.testing import ProcessHandle, spawn
from zcall.tools.process import start

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def served() -> Iterator[ProcessHandle]:
    """``zcall serve helpers.services:service``: a Peer, so an AsyncServer (ROUTER) with a thread pool."""
    argv = ["-m", "zcall", "serve", "helpers.services:service"]
    handle = spawn(argv, cwd=REPO_ROOT, pythonpath=[TESTS_DIR])
    try:
        yield handle
    finally:
        handle.stop(timeout=5)


def json_error(stderr: str) -> dict:
    """The one JSON object a failed ``--json`` command writes on stderr (its last line)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, stderr
    data = json.loads(lines[-1])
    assert set(data) == {"error"}, data
    return data["error"]


def test_a_remote_error_in_json(served: ProcessHandle) -> None:
    r = zcall_cli("call", served.endpoint, "boom", "kaboom", "--json")
    assert r.returncode == 1 and r.stdout == ""
    e = json_error(r.stderr)
    assert e["type"] == "RemoteError" and e["remote_type"] == "ValueError" and e["message"] == "kaboom"
    assert (e["code"], e["code_name"]) == (1, "HANDLER_ERROR")
    assert (e["endpoint"], e["exit_code"], e["method"]) == (served.endpoint, 1, "boom")
    assert "raise ValueError(message)" in e["traceback"]
    r = zcall_cli("call", served.endpoint, "doubel", "1", "--json")
    e = json_error(r.stderr)
    assert (r.returncode, e["type"], e["code_name"]) == (1, "MethodNotFound", "METHOD_NOT_FOUND")
    assert e["data"]["close"][0] == "double"


def test_a_timeout_in_json_says_whether_the_server_is_alive(
    served: ProcessHandle, unused_tcp_endpoint: str
) -> None:
    r = zcall_cli("call", served.endpoint, "slow", "1", "--timeout", "0.3", "--json")
    e = json_error(r.stderr)
    assert (r.returncode, e["type"], e["exit_code"], e["code"]) == (3, "CallTimeout", 3, None)
    assert e["alive"] is True and "slow, not missing" in e["hint"]
    missing = unused_tcp_endpoint
    for cmd in (["call", missing, "double", "1"], ["ls", missing], ["stats", missing]):
        r = zcall_cli(*cmd, "--timeout", "0.3", "--json")
        e = json_error(r.stderr)
        assert (r.returncode, e["type"], e["alive"], e["endpoint"]) == (3, "CallTimeout", False, missing)
        assert "is a zcall server running there?" in e["hint"] and r.stdout == ""


def test_a_slow_server_is_told_from_a_missing_one(served: ProcessHandle, unused_tcp_endpoint: str) -> None:
    for extra in ([], ["--async"]):
        r = zcall_cli("call", *extra, served.endpoint, "slow", "2", "--timeout", "0.3")
        assert r.returncode == 3, r.stderr
        assert f"the server at {served.endpoint} is alive (service testsvc, pid {served.pid}" in r.stderr
        assert "'slow' did not answer within 0.3s: it is slow, not missing" in r.stderr
        assert "is a zcall server running there?" not in r.stderr
    r = zcall_cli("call", unused_tcp_endpoint, "slow", "2", "--timeout", "0.3")
    assert r.returncode == 3 and "nothing answered zcall.ping" in r.stderr
    assert "is a zcall server running there?" in r.stderr and "is alive" not in r.stderr


@pytest.mark.parametrize(
    "cmd",
    [
        ["call", "tcp://localhost:x", "double", "1"],
        ["ls", "tcp://localhost:x"],
        ["ping", "tcp://localhost:x"],
        ["stats", "tcp://localhost:x"],
        ["stubs", "tcp://localhost:x"],
        ["serve", "helpers.services:service", "--bind", "tcp://localhost:x"],
        ["serve", "helpers.services:service", "--peer", "other=tcp://localhost:x"],
    ],
    ids=lambda cmd: cmd[0] + ("-" + cmd[2] if cmd[0] == "serve" else ""),
)
def test_a_malformed_endpoint_exits_2_naming_it(cmd: list[str]) -> None:
    r = zcall_cli(*cmd)
    assert r.returncode == 2, r.stderr
    assert "bad endpoint 'tcp://localhost:x': the port 'x' is not a number" in r.stderr
    assert "Traceback" not in r.stderr and "ZMQError" not in r.stderr


def test_a_malformed_endpoint_in_json() -> None:
    r = zcall_cli("call", "tcp://localhost:x", "double", "1", "--json")
    e = json_error(r.stderr)
    assert (r.returncode, e["type"], e["exit_code"]) == (2, "UsageError", 2)
    assert "tcp://localhost:x" in e["message"]


@pytest.mark.parametrize("extra", [[], ["--async"]], ids=["req", "dealer"])
def test_ctrl_c_during_a_call_exits_130(served: ProcessHandle, extra: list[str]) -> None:
    tag = f"ctrlc{len(extra)}"
    argv = [sys.executable, "-m", "zcall", "call", *extra, served.endpoint, "slow", "2", tag]
    with start(argv, env=child_env(), cwd=REPO_ROOT) as cli:
        served.expect(f"SLOW START {tag}", timeout=20)  # the call is running in the server
        cli.send_signal(signal.SIGINT)
        code = cli.wait(timeout=10)
    assert code == 130, cli.stderr
    assert "interrupted" in cli.stderr and "Traceback" not in cli.stderr
