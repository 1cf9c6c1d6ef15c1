"""zcall's pytest plugin: the fixtures as a user's test sees them, cleanup by pid even when a test fails,
cheap import without pytest, and loading it twice (entry point + ``pytest_plugins``) without an error."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import zcall
from zcall.testing import FaultProxy, ProcessHandle

pytest_plugins = ["pytester"]

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

svc = zcall.Service("plugin")
svc.add(lambda x: x * 3, name="triple")


# -- the fixtures ----------------------------------------------------------------------------------


def test_endpoint_fixtures(zcall_tcp_endpoint: str, zcall_ipc_endpoint: str) -> None:
    assert zcall_tcp_endpoint.startswith("tcp://127.0.0.1:") and not zcall_tcp_endpoint.endswith(":*")
    assert zcall_ipc_endpoint.startswith("ipc://")
    assert not os.path.exists(zcall_ipc_endpoint.removeprefix("ipc://"))  # fresh: nothing bound there


def test_bind_endpoint_runs_a_test_over_tcp_and_ipc(
    zcall_bind_endpoint: str, zcall_server: Callable[..., Any], zcall_client: Callable[..., Any]
) -> None:
    server = zcall_server(svc, zcall_bind_endpoint, kind="async")
    assert server.endpoint.split("://")[0] == zcall_bind_endpoint.split("://")[0]
    assert zcall_client(server.endpoint, kind="async").call_async("triple", 2).result(5) == 6


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_server_in_a_thread_and_a_client(
    kind: str, zcall_server: Callable[..., Any], zcall_client: Callable[..., Any]
) -> None:
    server = zcall_server(svc, kind=kind)
    assert type(server).__name__ == ("SyncServer" if kind == "sync" else "AsyncServer")
    assert zcall_client(server.endpoint, timeout=2).call("triple", 3) == 9


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_server_in_a_process(
    kind: str, zcall_server_process: Callable[..., ProcessHandle], zcall_client: Callable[..., Any]
) -> None:
    handle = zcall_server_process(
        "helpers.services:service", kind=kind, cwd=REPO_ROOT, pythonpath=[TESTS_DIR]
    )
    assert handle.alive() and handle.endpoint.startswith("tcp://127.0.0.1:")
    assert zcall_client(handle.endpoint, timeout=5).call("pid") == handle.pid


def test_fault_proxy_fixture(
    zcall_server: Callable[..., Any],
    zcall_fault_proxy: Callable[..., FaultProxy],
    zcall_client: Callable[..., Any],
) -> None:
    proxy = zcall_fault_proxy(zcall_server(svc).endpoint)
    client = zcall_client(proxy.endpoint, timeout=0.3, retries=1)
    proxy.drop("requests")
    assert client.call("triple", 1) == 3  # the first request was lost, the retry went through
    assert proxy.stats["requests"]["dropped"] == 1


def test_spawn_fixture_waits_for_the_ready_line(zcall_spawn: Callable[..., ProcessHandle]) -> None:
    code = "import time; time.sleep(0.2); print('READY here', flush=True); time.sleep(60)"
    handle = zcall_spawn(["-c", code])
    assert handle.endpoint == "here" and handle.alive()


def test_every_process_is_stopped_by_pid_even_when_the_test_fails(pytester: pytest.Pytester) -> None:
    pidfile = pytester.path / "pids"
    pytester.makeconftest('pytest_plugins = ["zcall.pytest_plugin"]')
    pytester.makepyfile(
        test_inner=f"""
        def test_spawns_then_fails(zcall_spawn):
            ignores_term = (
                "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('READY', flush=True); time.sleep(60)"
            )
            handles = [zcall_spawn(["-c", ignores_term]) for _ in range(2)]
            with open({str(pidfile)!r}, "w") as f:
                f.write(" ".join(str(h.pid) for h in handles))
            assert False, "the test fails; its processes must still go"
        """
    )
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2
    for pid in pids:  # reaped: not even a zombie is left
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# -- loading ---------------------------------------------------------------------------------------


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env, check=False
    )


def test_plugin_imports_cheaply_and_without_pytest() -> None:
    cheap = _python(
        "import sys, zcall.pytest_plugin as p; "
        "assert 'zcall.testing' not in sys.modules and 'zcall.testing.faultproxy' not in sys.modules; "
        "print(len(p.__all__))"
    )
    assert cheap.returncode == 0, cheap.stderr
    assert int(cheap.stdout) == 10  # the zcall_* fixtures
    no_pytest = _python(
        "import sys; sys.modules['pytest'] = None; import zcall.pytest_plugin as p; print(p.__all__)"
    )
    assert no_pytest.returncode == 0, no_pytest.stderr
    assert no_pytest.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("entry_point_name", "ok"), [("zcall.pytest_plugin", True), ("zcall", False)], ids=["right", "wrong"]
)
def test_entry_point_and_pytest_plugins_together(
    entry_point_name: str, ok: bool, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the pytest11 entry point named like the module, a ``pytest_plugins`` line for it is a no-op;
    under any other name pytest refuses the second registration (why the name in pyproject matters)."""
    site = pytester.mkdir("site")
    dist = site / "zcall_plugin_probe-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: zcall-plugin-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(f"[pytest11]\n{entry_point_name} = zcall.pytest_plugin\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    pytester.makeconftest('pytest_plugins = ["zcall.pytest_plugin"]')
    pytester.makepyfile(
        test_user=textwrap.dedent(
            """
            def test_uses_a_fixture(zcall_tcp_endpoint):
                assert zcall_tcp_endpoint.startswith("tcp://")
            """
        )
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    if ok:
        result.assert_outcomes(passed=1)
    else:
        assert result.ret != 0
        assert "already registered" in str(result.stderr) + str(result.stdout)
