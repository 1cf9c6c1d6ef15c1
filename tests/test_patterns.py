"""Patterns run as a user runs them (``python patterns/X.py`` from the repo root), output checked.

To add a pattern, add a line to ``STANDALONE`` (runs alone and exits) and, if it has the two-terminal
mode (``--serve ENDPOINT`` printing ``READY <endpoint>``, then ``--call ENDPOINT``), to ``TWO_TERMINAL``.
"""

from __future__ import annotations

import signal

import pytest

from helpers.cli_support import REPO_ROOT, run_program
from zcall.testing import ProcessHandle, ipc_endpoint, spawn

PATTERNS = REPO_ROOT / "patterns"

# (file in patterns/, extra args, lines that must appear in its stdout)
STANDALONE = [
    pytest.param("sync_call.py", [], ["sync call result: 20"], id="sync_call"),
    pytest.param("fork_pool.py", [], ["8 calls from 2 forked workers: all answered"], id="fork_pool"),
]

# (file in patterns/, lines the --call side must print)
TWO_TERMINAL = [
    pytest.param("sync_call.py", ["sync call result: 20"], id="sync_call"),
]


@pytest.mark.parametrize(("pattern", "extra", "expected"), STANDALONE)
def test_pattern_runs_alone(pattern: str, extra: list[str], expected: list[str]) -> None:
    code, lines, stderr = run_program(str(PATTERNS / pattern), *extra)
    assert code == 0, stderr
    for line in expected:
        assert line in lines, (lines, stderr)
    assert "Traceback" not in stderr, stderr


@pytest.fixture(params=["tcp", "ipc"])
def serve_at(request: pytest.FixtureRequest, tmp_path) -> str:
    return "tcp://127.0.0.1:*" if request.param == "tcp" else ipc_endpoint(tmp_path)


@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize(("pattern", "expected"), TWO_TERMINAL)
def test_pattern_two_terminals(
    pattern: str, expected: list[str], serve_at: str, stop_with: signal.Signals
) -> None:
    """``--serve`` in one process, ``--call`` in another; the server then exits 0 on a signal."""
    server: ProcessHandle
    with spawn([str(PATTERNS / pattern), "--serve", serve_at], cwd=REPO_ROOT, own_group=True) as server:
        assert server.endpoint and not server.endpoint.endswith("*")
        code, lines, stderr = run_program(str(PATTERNS / pattern), "--call", server.endpoint)
        assert code == 0, stderr
        for line in expected:
            assert line in lines, (lines, stderr)
        server.send_signal(stop_with)
        assert server.wait(timeout=15) == 0, server.stderr
    assert "Traceback" not in server.stderr, server.stderr
