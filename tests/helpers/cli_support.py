"""Run the ``zcall`` command and the patterns as a user would (a subprocess), and check processes by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from zcall.testing import spawn

TESTS_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = TESTS_DIR.parent


def child_env() -> dict[str, str]:
    """The environment for a ``python -m zcall`` child: ``helpers`` importable, output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def zcall_cli(
    *args: str, timeout: float = 30.0, cwd: str | os.PathLike[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m zcall ARGS`` to completion and return its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "zcall", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        cwd=cwd or REPO_ROOT,
        stdin=subprocess.DEVNULL,
    )


def run_program(*args: str, timeout: float = 20.0) -> tuple[int, list[str], str]:
    """Run ``python ARGS`` from the repo root to completion: (exit code, stdout lines, stderr).

    In its own process group, so what it starts is stopped with it if it hangs (``SpawnError`` after
    ``timeout``, with its stderr)."""
    with spawn(list(args), ready_prefix=None, cwd=REPO_ROOT, own_group=True) as handle:
        lines = handle.output(timeout)
        code = handle.wait()
    return code, lines, handle.stderr


def pid_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for a reaper that is not us counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until every pid has exited; return those still alive after ``timeout`` (checked by pid)."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if not pid_gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)  # polling the process table: there is no exit event for a non-child
        alive = [p for p in alive if not pid_gone(p)]
    return alive


def kill_pids(pids: list[int]) -> None:
    """SIGKILL every pid still alive (test cleanup of processes that are not our children)."""
    for pid in pids:
        if not pid_gone(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
