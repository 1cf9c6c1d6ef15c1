"""scripts/bench.py still runs end to end: servers start as processes, rows run, the ratio is printed.

A smoke test, not a measurement: no timing is asserted (benchmarks are not tests).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--repeat", "1", *args],
        capture_output=True,
        text=True,
        timeout=45,
    )


def test_quick_sync_workload_prints_table_and_ratio() -> None:
    proc = _run("--only", "seq_double")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"^seq_double\s+raw-req-rep\s+[\d,]+\s.*floor$", out, re.M), out
    m = re.search(r"^ratio seq_double: zcall-sync / raw-req-rep = (\d+\.\d+)x", out, re.M)
    assert m is not None, out
    assert float(m.group(1)) > 0
    assert "echo_64k" not in out  # --only really selects


def test_quick_json_has_both_rows_of_the_workload() -> None:
    proc = _run("--only", "echo_64k", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = {r["impl"]: r for r in doc["results"]}
    assert set(rows) == {"raw-req-rep", "zcall-sync"}
    assert rows["raw-req-rep"]["floor"] is True
    assert rows["zcall-sync"]["ratio"] > 0
    assert rows["zcall-sync"]["mb_per_s"] > 0
    assert doc["versions"]["libzmq"]


def test_unknown_workload_is_refused_with_the_choices() -> None:
    proc = _run("--only", "no_such_workload")
    assert proc.returncode != 0
    assert "seq_double" in proc.stderr
