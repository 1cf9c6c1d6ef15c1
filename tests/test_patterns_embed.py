"""The embedding patterns, run as a user runs them (``python patterns/X.py`` from the repo root)."""

from __future__ import annotations

import re

import pytest

from helpers.cli_support import REPO_ROOT, run_program

PATTERNS = REPO_ROOT / "patterns"
pytestmark = pytest.mark.timeout(60)


def run_pattern(name: str) -> list[str]:
    code, lines, stderr = run_program(str(PATTERNS / name), timeout=45)
    assert code == 0, f"{name} exited {code}\nstdout:\n{lines}\nstderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    return lines


def test_embed_asyncio_serves_and_calls_on_the_applications_loop() -> None:
    lines = run_pattern("embed_asyncio.py")
    serving = r"app: serving inventory at tcp://127\.0\.0\.1:\d+ on the application's own loop"
    assert re.fullmatch(serving, lines[0]), lines
    assert "zcall threads while serving: none; engine started: False" in lines  # no zcall thread at all
    assert "outside caller got: 7.5 (exit 0)" in lines  # another process -> server -> nested call to pricing
    assert "outside caller got: 10 (exit 0)" in lines
    assert "app: shutting down with 1 call in flight (grace 2.0s)" in lines
    stopped = next(line for line in lines if line.startswith("app: server stopped after"))
    assert 0.4 <= float(re.search(r"after ([\d.]+)s", stopped)[1]) < 2.0, stopped  # type: ignore[index]
    assert "outside caller got: audited 2 skus (exit 0)" in lines  # the call in flight finished
    ticks = re.fullmatch(
        r"app: its own task ticked (\d+) times meanwhile \(longest gap between ticks (\d+) ms\)", lines[-1]
    )
    assert ticks, lines[-1]
    # the audit sleeps 500 ms: had any handler blocked the loop, one gap would be that long
    assert int(ticks[1]) >= 10 and int(ticks[2]) < 450, lines[-1]


def test_embed_threads_starts_and_stops_a_server_in_a_threaded_program() -> None:
    lines = run_pattern("embed_threads.py")
    serving_at = r"program: serving jobs at tcp://127\.0\.0\.1:\d+ from zcall's engine thread"
    assert re.fullmatch(serving_at, lines[0]), lines
    assert "outside caller submitted jobs [1, 2]" in lines
    serving = next(line for line in lines if line.startswith("zcall threads while serving:"))
    assert "zcall-engine" in serving
    assert "program: stopping with 1 call in flight (grace 2.0s)" in lines
    assert "outside caller got: 8.0 (exit 0)" in lines  # answered within the grace period
    assert "results: {1: 7.5, 2: 2.5, 3: 8.0}, priced by worker threads through one SyncClient" in lines
    assert lines[-1] == "zcall threads after stop: none"
