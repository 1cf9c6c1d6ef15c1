"""zcall.testing itself: endpoints, spawn's READY handshake and its failures, process cleanup."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable

import pytest

import zcall
from zcall.testing import (
    ProcessHandle,
    SpawnError,
    free_tcp_endpoint,
    ipc_endpoint,
    load_service,
    running_server,
    spawn,
)


def pid_exists(pid: int) -> bool:
    """True while ``pid`` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_free_tcp_endpoint_is_bindable() -> None:
    ep = free_tcp_endpoint()
    host, port = ep.removeprefix("tcp://").rsplit(":", 1)
    assert host == "127.0.0.1"
    with socket.socket() as s:
        s.bind((host, int(port)))  # it is free


def test_ipc_endpoint_is_unique_and_short_enough(tmp_path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    eps = {ipc_endpoint(deep) for _ in range(50)} | {ipc_endpoint(tmp_path), ipc_endpoint()}
    assert len(eps) == 52
    for ep in eps:
        assert ep.startswith("ipc://")
        assert len(ep.removeprefix("ipc://").encode()) < 100
    short = ipc_endpoint("/tmp")
    assert os.path.dirname(short.removeprefix("ipc://")) == "/tmp"
    with running_server(zcall.Service("x"), ipc_endpoint(deep)) as server:  # long dir: falls back, binds
        assert server.endpoint.startswith("ipc://")


def test_spawn_parses_the_endpoint_from_the_ready_line() -> None:
    code = "import time; print('noise'); print('READY tcp://127.0.0.1:1234', flush=True); time.sleep(60)"
    with spawn(["-c", code]) as proc:
        assert proc.endpoint == "tcp://127.0.0.1:1234"
        assert proc.stdout_lines == ["noise", "READY tcp://127.0.0.1:1234"]
        assert proc.alive()
    assert not pid_exists(proc.pid)


def test_spawn_reports_a_child_that_dies_before_ready_with_its_stderr() -> None:
    t0 = time.monotonic()
    with pytest.raises(SpawnError) as info:
        spawn(["-m", "zcall.testing", "serve", "no_such_module_xyz:service"])
    assert time.monotonic() - t0 < 5
    assert "no_such_module_xyz" in str(info.value)
    assert "cannot import module 'no_such_module_xyz'" in info.value.stderr  # a usage error, not a traceback
    assert info.value.returncode == 2


def test_spawn_times_out_and_leaves_no_process() -> None:
    code = (
        "import sys, time; print('starting', flush=True); sys.stderr.write('stuck here\\n'); time.sleep(60)"
    )
    t0 = time.monotonic()
    with pytest.raises(SpawnError) as info:
        spawn(["-c", code], timeout=0.5)
    assert time.monotonic() - t0 < 3
    assert "within 0.5s" in str(info.value)
    assert "stuck" in info.value.stderr
    assert info.value.pid is not None and not pid_exists(info.value.pid)


def test_stop_kills_a_process_that_ignores_sigterm() -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('READY -', flush=True); time.sleep(60)"
    )
    proc = spawn(["-c", code])
    assert proc.stop(timeout=0.3) == -signal.SIGKILL
    assert not pid_exists(proc.pid)


def test_own_group_stop_also_ends_grandchildren() -> None:
    code = (
        "import subprocess, sys, time; "
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print('READY', c.pid, flush=True); time.sleep(60)"
    )
    with spawn(["-c", code], own_group=True) as proc:
        grandchild = int(proc.endpoint)
        assert pid_exists(grandchild)
    # the grandchild's parent is gone, so init reaps it: wait for that rather than sleeping blindly
    deadline = time.monotonic() + 5
    while pid_exists(grandchild) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pid_exists(grandchild)


def test_runner_serves_a_factory_and_refuses_non_services(tmp_path) -> None:
    mod = tmp_path / "zc_factory_mod.py"
    mod.write_text(
        "import zcall\n"
        "def make():\n"
        "    s = zcall.Service('made')\n"
        "    s.add(lambda: 'hi', name='hello')\n"
        "    return s\n"
        "not_a_service = 3\n"
    )
    serve = ["-m", "zcall.testing", "serve", "zc_factory_mod:make"]
    with (
        spawn(serve, pythonpath=[tmp_path]) as proc,
        zcall.SyncClient(proc.endpoint, timeout=5.0) as client,
    ):
        assert client.call("hello") == "hi"
    with pytest.raises(SpawnError, match=r"not a zcall\.Service"):
        spawn(["-m", "zcall.testing", "serve", "zc_factory_mod:not_a_service"], pythonpath=[tmp_path])
    with pytest.raises(ValueError, match="MODULE:ATTR"):
        load_service("no_colon")


def test_runner_reports_a_bind_error(spawn_test_server: Callable[..., ProcessHandle]) -> None:
    with (
        running_server(zcall.Service("x")) as server,
        pytest.raises(SpawnError, match="Address already in use"),
    ):
        spawn_test_server(server.endpoint)
