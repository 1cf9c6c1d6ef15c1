"""The stream patterns (``patterns/file_transfer.py``, ``progress.py``) run as a user runs them."""

from __future__ import annotations

import re

import pytest

from helpers.cli_support import REPO_ROOT, run_program

PATTERNS = REPO_ROOT / "patterns"


def _transfer(size_mib: int, timeout: float) -> list[str]:
    code, lines, stderr = run_program(
        str(PATTERNS / "file_transfer.py"), "--size-mib", str(size_mib), timeout=timeout
    )
    assert code == 0, (lines, stderr)
    assert "Traceback" not in stderr, stderr
    assert any(line.startswith("sha256 match: ") for line in lines), lines  # three copies, one hash
    (rss,) = [line for line in lines if line.startswith("peak RSS: ")]
    sender, store = (int(x) for x in re.findall(r"(\d+) MiB", rss)[:2])
    assert sender < 100 and store < 100, rss  # whatever the file's size: credit bounds what is held
    (raw,) = [line for line in lines if line.startswith("raw pyzmq, same chunks and window: ")]
    assert re.search(r"zcall/raw: up [\d.]+, down [\d.]+", raw), raw  # both measured, in the same run
    return lines


@pytest.mark.timeout(120)
def test_file_transfer_moves_a_file_both_ways_in_bounded_memory() -> None:
    _transfer(64, timeout=90)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_file_transfer_of_a_gibibyte() -> None:
    lines = _transfer(1024, timeout=540)
    print("\n".join(lines))


@pytest.mark.timeout(60)
def test_progress_shows_the_bar_and_one_deadline_covers_the_job() -> None:
    code, lines, stderr = run_program(str(PATTERNS / "progress.py"), "--seconds", "1.2", "--steps", "6")
    assert code == 0, (lines, stderr)
    bars = [line for line in lines if line.startswith("[")]
    assert bars[:6] == [
        f"[{'#' * (30 * i // 6)}{'.' * (30 - 30 * i // 6)}] {100 * i // 6:3d}%  step {i}/6"
        for i in range(1, 7)
    ]  # one update per step, in order, as they came (not a tty: one line each)
    assert any(line.startswith("job A done in ") for line in lines), lines
    assert any(line.startswith("job B: deadline passed after ") for line in lines), lines
    assert any(re.match(r"job B on the server: stopped after [0-5] of 6 steps", line) for line in lines), (
        lines
    )
    assert lines[-1] == "progress: both jobs behaved as shown"
