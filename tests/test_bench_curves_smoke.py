"""scripts/bench_curves.py still runs end to end: servers and clients start as processes, a curve's table
is printed, and its PNG is written when matplotlib is there (CI installs ``.[test]`` only: without it
the tables must still come, with a word on what to install).

A smoke test, not a measurement: no timing is asserted (benchmarks are not tests).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CURVES = Path(__file__).resolve().parent.parent / "scripts" / "bench_curves.py"
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CURVES), "--quick", "--repeat", "1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_quick_payload_curve_prints_its_table_and_draws_it(tmp_path: Path) -> None:
    proc = _run("--only", "payload", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "== payload:" in out
    for size in ("16 B", "1 KiB", "64 KiB", "1 MiB", "16 MiB"):
        assert re.search(rf"^{size}\s+raw-req-rep\s+[\d,]+\s.*floor$", out, re.M), out
        assert re.search(rf"^{size}\s+zcall-sync\s+[\d,]+\s.*\d+\.\d\dx", out, re.M), out
        assert re.search(rf"^{size}\s+zcall-asyncio\s+[\d,]+\s", out, re.M), out
    assert "== inflight" not in out  # --only really selects
    png = tmp_path / "curve_payload.png"
    if HAVE_MATPLOTLIB:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(png) in out
    else:
        assert not png.exists()
        assert "pip install" in out and "matplotlib" in proc.stderr


def test_without_matplotlib_the_json_still_comes_and_says_what_to_install(tmp_path: Path) -> None:
    blocker = tmp_path / "block"
    (blocker / "matplotlib").mkdir(parents=True)
    (blocker / "matplotlib" / "__init__.py").write_text("raise ImportError('blocked for this test')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    proc = _run("--only", "inflight", "--json", "--out", str(tmp_path / "png"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "pip install -e '.[bench]'" in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["plots"] == {}
    rows = doc["curves"]["inflight"]["rows"]
    assert {r["impl"] for r in rows} >= {"raw-dealer-router", "zcall-asyncio", "zcall-asyncio-inline"}
    assert {r["x"] for r in rows} == {1, 64, 1024}
    assert all(r["calls_per_s"] > 0 for r in rows)
    assert not (tmp_path / "png").exists()


def test_unknown_curve_is_refused_with_the_choices() -> None:
    proc = _run("--only", "no_such_curve")
    assert proc.returncode == 2
    assert "clients" in proc.stderr and "payload" in proc.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="the bench reads /proc")
def test_children_are_gone_after_a_run(tmp_path: Path) -> None:
    proc = _run("--only", "idle", "--out", str(tmp_path))  # its PNG goes where pytest cleans up
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^50\s+zcall-async\s+[\d.]+\s+[\d.]+", proc.stdout, re.M), proc.stdout
    assert _running(str(CURVES)) == []


def _running(needle: str) -> list[int]:
    """Pids whose command line mentions ``needle`` (from /proc: no tool needed)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if needle in cmdline:
                pids.append(int(d.name))
    return pids
