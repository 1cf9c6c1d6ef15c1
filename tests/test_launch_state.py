"""``zcall launch``'s state: a ready file that stays current across restarts, restart counts and limits,
peers called by name (``zcall call @calc ...``), ``zcall ps``, and Ctrl-C's exit code. Real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.cli_support import REPO_ROOT, TESTS_DIR, child_env, kill_pids, wait_gone
from zcall.testing import ProcessHandle, spawn

pytestmark = pytest.mark.timeout(90)

TOPOLOGY = f"""
[launch]
startup_timeout = 20.0
stop_timeout = 3.0
pythonpath = [{json.dumps(str(TESTS_DIR))}]

[[peer]]
name = "calc"
target = "helpers.mesh_services:calc"
restart = "on-failure"
max_restarts = 1

[[peer]]
name = "store"
target = "helpers.mesh_services:store"
"""


class Launched:
    """One ``zcall launch`` child: its handle, its ready file, its state directory."""

    def __init__(self, handle: ProcessHandle, ready_file: Path, run_dir: Path) -> None:
        self.handle = handle
        self.ready_file = ready_file
        self.run_dir = run_dir

    def ready(self) -> dict[str, Any]:
        return json.loads(self.ready_file.read_text())

    def peer(self, name: str) -> dict[str, Any]:
        return self.ready()["peers"][name]

    @property
    def state_file(self) -> Path:
        return self.run_dir / "zcall" / f"mesh-{self.handle.pid}.json"


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Any]:
    """``launch(run_dir=None)``: a ``zcall launch`` of TOPOLOGY, returned once LAUNCHED; its own state
    directory (XDG_RUNTIME_DIR) is under tmp_path, never the user's. Teardown stops every launcher and
    SIGKILLs any peer pid still alive."""
    started: list[Launched] = []
    topo = tmp_path / "mesh.toml"
    topo.write_text(TOPOLOGY)

    def start(run_dir: Path | None = None) -> Launched:
        n = len(started)
        run = run_dir or tmp_path / f"run{n}"
        run.mkdir(exist_ok=True)
        ready_file = tmp_path / f"ready{n}.json"
        handle = spawn(
            ["-m", "zcall", "launch", str(topo), "--ready-file", str(ready_file)],
            ready_prefix="LAUNCHED",
            timeout=30,
            env={**child_env(), "XDG_RUNTIME_DIR": str(run)},
            cwd=REPO_ROOT,
        )
        launched = Launched(handle, ready_file, run)
        started.append(launched)
        return launched

    pids: list[int] = []
    try:
        yield start
    finally:
        for ln in started:
            pids += [p["pid"] for p in ln.ready()["peers"].values() if p["pid"]]
            ln.handle.stop(timeout=8)
        kill_pids(pids)


def cli(*args: str, run_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m zcall ARGS`` with XDG_RUNTIME_DIR=run_dir (where it looks for running launchers)."""
    return subprocess.run(
        [sys.executable, "-m", "zcall", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**child_env(), "XDG_RUNTIME_DIR": str(run_dir), **env},
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
    )


def test_the_ready_file_follows_restarts_up_to_the_limit(launch: Any) -> None:
    mesh = launch()
    out = mesh.handle.stdout_lines
    header = next(line for line in out if line.startswith("NAME"))
    assert header.split() == ["NAME", "ENDPOINT", "PID", "STATE", "RESTARTS", "SYNC", "ENDPOINT"]
    calc_row = next(line.split() for line in out if line.startswith("calc "))
    assert calc_row[3:5] == ["up", "0/1"], calc_row
    first = mesh.peer("calc")
    assert (first["state"], first["restarts"], first["max_restarts"]) == ("up", 0, 1)
    own = json.loads(mesh.state_file.read_text())  # the launcher's own state file says the same
    assert own["peers"]["calc"]["pid"] == first["pid"] and own["launcher_pid"] == mesh.handle.pid

    os.kill(first["pid"], signal.SIGKILL)
    line = mesh.handle.expect("peer calc up at", timeout=20)
    assert line.endswith(", restart 1 of 1)"), line
    second = mesh.peer("calc")  # rewritten (atomically) before that line: the new pid, not the dead one
    assert second["pid"] != first["pid"] and second["pid"] is not None
    assert (second["state"], second["restarts"], second["last_exit"]) == ("up", 1, -9)
    assert json.loads(mesh.state_file.read_text())["peers"]["calc"]["pid"] == second["pid"]
    r = cli("ps", run_dir=mesh.run_dir)
    row = next(line.split() for line in r.stdout.splitlines() if line.startswith("calc "))
    assert row[2:5] == [str(second["pid"]), "up", "1/1"], r.stdout

    os.kill(second["pid"], signal.SIGKILL)  # the limit is reached: it stays down, the mesh goes on
    line = mesh.handle.expect("peer calc down", timeout=20)
    assert "restart limit 1 reached" in line, line
    assert wait_gone([second["pid"]], timeout=5) == []
    third = mesh.peer("calc")
    assert (third["pid"], third["state"], third["restarts"]) == (None, "down", 1)
    r = cli("ps", "--mesh", str(mesh.ready_file), run_dir=mesh.run_dir)
    row = next(line.split() for line in r.stdout.splitlines() if line.startswith("calc "))
    assert row[2:5] == ["-", "down", "1/1"], r.stdout
    assert mesh.handle.alive()  # store is still up


def test_a_launched_peer_is_called_by_name(launch: Any) -> None:
    mesh = launch()
    run = mesh.run_dir
    r = cli("call", "@calc", "double", "21", run_dir=run)  # found among the running launchers
    assert (r.returncode, r.stdout.strip()) == (0, "42"), r.stderr
    r = cli("call", "@calc", "pid", run_dir=run)
    assert int(r.stdout) == mesh.peer("calc")["pid"]
    r = cli("ls", "@store", run_dir=run)
    assert r.returncode == 0 and "put(" in r.stdout, r.stderr
    r = cli("ping", "@calc", run_dir=run)
    assert r.returncode == 0 and f"pid {mesh.peer('calc')['pid']}" in r.stdout, r.stderr
    r = cli("stats", "@calc", "--json", run_dir=run)
    assert r.returncode == 0 and json.loads(r.stdout)["methods"]["double"]["calls"] == 1, r.stderr
    elsewhere = mesh.run_dir.parent / "empty"
    elsewhere.mkdir()
    r = cli("call", "@calc", "double", "2", run_dir=elsewhere, ZCALL_MESH=str(mesh.ready_file))
    assert (r.returncode, r.stdout.strip()) == (0, "4"), r.stderr
    r = cli("call", "@calc", "double", "3", "--mesh", str(mesh.ready_file), run_dir=elsewhere)
    assert (r.returncode, r.stdout.strip()) == (0, "6"), r.stderr

    r = cli("call", "@calc", "double", "2", run_dir=elsewhere)
    assert r.returncode == 2 and "no running 'zcall launch' found" in r.stderr and "--mesh" in r.stderr
    r = cli("call", "@nosuch", "double", "2", run_dir=run)
    assert r.returncode == 2 and "no peer 'nosuch'" in r.stderr and "calc, store" in r.stderr

    other = launch(run_dir=run)  # a second mesh with the same names, in the same state directory
    r = cli("call", "@calc", "double", "2", run_dir=run)
    assert r.returncode == 2 and "2 running meshes have a peer 'calc'" in r.stderr, r.stderr
    r = cli("call", "@calc", "pid", "--mesh", str(other.ready_file), run_dir=run)
    assert int(r.stdout) == other.peer("calc")["pid"], r.stderr


def test_ctrl_c_stops_the_mesh_and_exits_130(launch: Any) -> None:
    mesh = launch()
    pids = [p["pid"] for p in mesh.ready()["peers"].values()]
    assert mesh.state_file.is_file()
    mesh.handle.send_signal(signal.SIGINT)
    assert mesh.handle.expect("stopping", timeout=10) == "stopping 2 peers (SIGINT)"
    assert mesh.handle.wait(timeout=15) == 130, mesh.handle.stderr
    assert wait_gone(pids, timeout=5) == []
    final = mesh.ready()  # left behind, saying what happened
    assert final["state"] == "stopped" and {p["state"] for p in final["peers"].values()} == {"stopped"}
    assert all(p["pid"] is None for p in final["peers"].values())
    assert not mesh.state_file.exists()  # the launcher's own state file goes with it
    r = cli("call", "@calc", "double", "1", run_dir=mesh.run_dir)
    assert r.returncode == 2 and "no running 'zcall launch'" in r.stderr
