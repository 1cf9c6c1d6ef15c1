"""``zcall launch`` and ``zcall.launch``: a topology comes up, survives crashes, and never leaves orphans."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import zcall
from helpers.cli_support import REPO_ROOT, TESTS_DIR, child_env, kill_pids, wait_gone, zcall_cli
from zcall.testing import ProcessHandle, spawn
from zcall.tools.launch import Launcher, PeerSpec, Topology, TopologyError, load_topology

MESH = f"""
[launch]
startup_timeout = 20.0
stop_timeout = 3.0
pythonpath = [{json.dumps(str(TESTS_DIR))}]

[[peer]]
name = "calc"
target = "helpers.mesh_services:calc"
bind = "tcp://127.0.0.1:*"
restart = "on-failure"

[[peer]]
name = "store"
target = "helpers.mesh_services:store"
sync_bind = "tcp://127.0.0.1:*"

[[peer]]
name = "gateway"
target = "helpers.mesh_services:gateway"
peers = ["calc", "store"]
env = {{ ZCALL_TEST_MARK = "gw" }}
"""


class Mesh:
    """A running ``zcall launch`` process and what its ready file says."""

    def __init__(self, handle: ProcessHandle, ready_file: Path, run_dir: Path) -> None:
        self.handle = handle
        self.ready_file = ready_file
        self.run_dir = run_dir
        """The launcher's XDG_RUNTIME_DIR: its own state file is in run_dir/zcall/."""
        ready = self.ready()
        self.peers: dict[str, dict] = ready["peers"]
        self.launcher_pid: int = ready["launcher_pid"]

    def ready(self) -> dict:
        """What the ready file says now."""
        return json.loads(self.ready_file.read_text())

    def endpoint(self, name: str) -> str:
        return self.peers[name]["endpoint"]

    def pids(self) -> list[int]:
        return [p["pid"] for p in self.peers.values()]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator:
    """Factory: ``launch(toml_text)`` runs ``zcall launch`` on it and returns once it printed LAUNCHED.

    Teardown stops every launcher (SIGTERM) and SIGKILLs any peer pid it ever reported that is still alive.
    """
    started: list[ProcessHandle] = []
    seen_pids: list[int] = []

    def start(text: str = MESH) -> Mesh:
        topo = tmp_path / f"mesh{len(started)}.toml"
        topo.write_text(text)
        ready_file = tmp_path / f"ready{len(started)}.json"
        run_dir = tmp_path / f"run{len(started)}"  # the launcher's state directory, apart from the user's
        run_dir.mkdir()
        handle = spawn(
            ["-m", "zcall", "launch", str(topo), "--ready-file", str(ready_file)],
            ready_prefix="LAUNCHED",
            timeout=30,
            env={**child_env(), "XDG_RUNTIME_DIR": str(run_dir)},
            cwd=REPO_ROOT,
        )
        started.append(handle)
        mesh = Mesh(handle, ready_file, run_dir)
        seen_pids.extend(mesh.pids())
        mesh.seen_pids = seen_pids  # type: ignore[attr-defined]
        return mesh

    try:
        yield start
    finally:
        for h in started:
            h.stop(timeout=8)
        kill_pids(seen_pids)


def ping_pid(endpoint: str) -> int:
    with zcall.SyncClient(endpoint, timeout=5) as c:
        return c.call("zcall.ping")["pid"]


def test_launch_brings_up_a_mesh_that_calls_across_peers(launch) -> None:
    mesh = launch()
    out = mesh.handle.stdout_lines
    for name in ("calc", "store", "gateway"):
        assert ping_pid(mesh.endpoint(name)) == mesh.peers[name]["pid"]
        assert f"peer {name} up at {mesh.endpoint(name)} (pid {mesh.peers[name]['pid']})" in out
        assert any(line.split()[:2] == [name, mesh.endpoint(name)] for line in out)  # the table
    with zcall.SyncClient(mesh.endpoint("gateway"), timeout=5) as c:
        assert c.call("double_via_calc", 21) == 42  # gateway -> calc (async, DEALER)
        assert c.call("double_via_calc_sync", 5) == 10  # gateway -> calc (blocking, REQ)
    with zcall.SyncClient(mesh.peers["store"]["sync_endpoint"], timeout=5) as c:  # the REP beside the ROUTER
        c.call("put", "k", [1, 2])
        assert c.call("get", "k") == [1, 2]
    mesh.handle.terminate()
    assert mesh.handle.expect("stopping", timeout=10) == "stopping 3 peers (SIGTERM)"
    assert mesh.handle.wait(timeout=10) == 0
    assert wait_gone(mesh.pids(), timeout=5) == []
    assert "on stop" not in mesh.handle.stderr  # every peer exited 0 on SIGTERM
    assert "Fatal Python error" not in mesh.handle.stderr


def test_launch_restarts_a_crashed_peer_on_failure(launch) -> None:
    mesh = launch()
    old = mesh.peers["calc"]["pid"]
    os.kill(old, signal.SIGKILL)
    line = mesh.handle.expect("peer calc up at", timeout=20)
    new = int(line.rsplit("(pid ", 1)[1].split(",")[0])
    mesh.seen_pids.append(new)
    assert new != old
    assert line == f"peer calc up at {mesh.endpoint('calc')} (pid {new}, restart 1)"  # the same endpoint
    calc = mesh.ready()["peers"]["calc"]  # rewritten before that line was printed
    assert (calc["pid"], calc["state"], calc["restarts"], calc["last_exit"]) == (new, "up", 1, -9)
    assert ping_pid(mesh.endpoint("calc")) == new
    with zcall.SyncClient(mesh.endpoint("gateway"), timeout=5) as c:
        assert c.call("double_via_calc", 4) == 8  # the others still reach it
    assert "was killed by SIGKILL" in mesh.handle.stderr and "restarting" in mesh.handle.stderr


def test_no_orphans_when_the_launcher_is_sigkilled(launch) -> None:
    mesh = launch()
    children = mesh.pids()
    assert len(children) == 3 and wait_gone(children, timeout=0) == children  # all alive
    mesh.handle.kill()  # SIGKILL: no chance to clean up
    mesh.handle.wait(timeout=5)
    assert wait_gone(children, timeout=5) == []


def test_topology_is_validated_with_clear_messages(tmp_path: Path) -> None:
    bad = {
        'peer = [{name = "a", target = "m:a", bnd = "tcp://x:1"}]': "unknown key(s) 'bnd'",
        'peer = [{name = "a", target = "m:a", peers = ["zz"]}]': "knows 'zz', which is not a peer",
        'peer = [{name = "a", target = "m:a", restart = "sometimes"}]': "restart must be one of",
        'peer = [{name = "a", target = "m.a"}]': "target must be 'module:attr'",
        'peer = [{name = "a", target = "m:a"}, {name = "a", target = "m:b"}]': "two peers are named 'a'",
        "[launch]\nstartup_timeout = 1": "no peers",
        "[[peer]\n": "not valid TOML",
    }
    for text, message in bad.items():
        path = tmp_path / "t.toml"
        path.write_text(text)
        with pytest.raises(TopologyError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_topology(path)
    topo = load_topology(_write(tmp_path, MESH))
    assert [p.name for p in topo.peers] == ["calc", "store", "gateway"]
    assert topo.peers[2].env == {"ZCALL_TEST_MARK": "gw"} and topo.cwd == str(tmp_path)
    r = zcall_cli("launch", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "no such topology file" in r.stderr


def test_a_peer_that_cannot_start_fails_the_launch_with_its_stderr(tmp_path: Path) -> None:
    text = MESH.replace("helpers.mesh_services:store", "helpers.no_such_module:store")
    r = zcall_cli("launch", str(_write(tmp_path, text)), timeout=40)
    assert r.returncode == 1
    assert "peer 'store' exited with code 2 before it was ready" in r.stderr
    assert "cannot import module 'helpers.no_such_module'" in r.stderr


def test_launcher_api_starts_and_stops_peers_in_process() -> None:
    topo = Topology(
        [
            PeerSpec("calc", "helpers.mesh_services:calc"),
            PeerSpec("gateway", "helpers.mesh_services:gateway", peers=["calc"]),
        ],
        pythonpath=[str(TESTS_DIR)],
        stop_timeout=3,
    )
    with Launcher(topo, show_output=False) as mesh:
        pids = [p for p in mesh.pids.values() if p is not None]
        assert len(pids) == 2 and os.getpid() not in pids
        with zcall.SyncClient(mesh.endpoints["gateway"], timeout=5) as c:
            assert c.call("double_via_calc", 50) == 100
    assert wait_gone(pids, timeout=0) == []  # stop() reaped them: gone at once
    assert [pp.returncode for pp in mesh.processes.values()] == [0, 0]  # clean exits on SIGTERM


def test_launch_peers_script_stays_up_until_sigterm() -> None:
    """``scripts/launch_peers.py --stay``: the Launcher API, supervised until a signal, then no orphans."""
    handle = spawn(
        [str(REPO_ROOT / "scripts" / "launch_peers.py"), "--stay"], ready_prefix="mesh is up", timeout=40
    )
    try:
        rows = [line.split() for line in handle.stdout_lines if line.split()[:1] in (["rates"], ["api"])]
        pids = [int(row[2]) for row in rows]
        assert len(pids) == 2 and wait_gone(pids, timeout=0) == pids  # up
        assert "balance: 150.5" in handle.stdout_lines
        handle.terminate()
        assert handle.wait(timeout=20) == 0, handle.stderr
        assert handle.expect("all peers stopped", timeout=5)
        assert wait_gone(pids, timeout=5) == []
    finally:
        handle.stop(timeout=8)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mesh.toml"
    path.write_text(text)
    return path
