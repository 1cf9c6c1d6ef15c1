"""The async patterns, run as a user runs them: ``python patterns/X.py`` from the repo root, output checked.

Each pattern starts its own server process(es); a run that hangs is killed with its whole process group
(the pattern and the servers it started), by the pid of the process this test started.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from helpers.cli_support import REPO_ROOT, run_program
from zcall.testing import spawn

PATTERNS = REPO_ROOT / "patterns"
RESULT_LINE = "async call result: 20"
OTHER_WORK = "caller: doing other work while double(10) is in flight (step "


def run_pattern(name: str, *args: str) -> list[str]:
    """Run ``patterns/<name>`` to completion; assert a clean exit; return its stdout lines."""
    code, lines, stderr = run_program(str(PATTERNS / name), *args)
    assert code == 0, f"{name} exited {code}\nstdout:\n{lines}\nstderr:\n{stderr}"
    assert "Traceback" not in stderr and "never awaited" not in stderr, stderr
    return lines


def check_async_callback_output(lines: list[str]) -> None:
    """The result arrives once, through the callback, after the caller has done some other work."""
    assert lines.count(RESULT_LINE) == 1, lines
    result_at = lines.index(RESULT_LINE)
    work_at = [i for i, line in enumerate(lines) if line.startswith(OTHER_WORK)]
    assert work_at and work_at[0] < result_at, lines
    m = re.search(r"callback arrived after (\d+) ms", lines[-1])
    assert m, lines
    assert int(m.group(1)) >= 190, lines  # the handler takes 200 ms: the call really went out and back


def test_async_callback_alone() -> None:
    check_async_callback_output(run_pattern("async_callback.py"))


@pytest.fixture
def short_tmp() -> Iterator[str]:
    """A short directory for ipc socket paths (unix socket paths are limited to ~100 bytes)."""
    path = tempfile.mkdtemp(prefix="zcpat", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_async_callback_two_terminals(transport: str, short_tmp: str) -> None:
    """``--serve`` in one process, ``--call`` in another; the server then stops cleanly on SIGTERM."""
    bind = "tcp://127.0.0.1:*" if transport == "tcp" else f"ipc://{short_tmp}/s"
    with spawn([str(PATTERNS / "async_callback.py"), "--serve", bind], cwd=REPO_ROOT) as server:
        endpoint = server.endpoint
        assert endpoint.startswith(f"{transport}://") and not endpoint.endswith(":*"), endpoint
        check_async_callback_output(run_pattern("async_callback.py", "--call", endpoint))
        server.terminate()
        assert server.wait(timeout=5) == 0, server.stderr  # SIGTERM is a graceful stop, not a crash
    assert "Traceback" not in server.stderr, server.stderr


ANSWER = re.compile(
    r"answer (\d+): server-(\d+) \(pid (\d+)\) sum over \[(\d+), (\d+)\) = (\d+) at \+(\d+) ms$"
)
FAILED = re.compile(r"answer (\d+): FAILED from \S+ for \[(\d+), (\d+)\) at \+(\d+) ms: (.*)$")


def square_sum(lo: int, hi: int) -> int:
    return sum(i * i for i in range(lo, hi))


def test_scatter_gather_three_servers_one_slow() -> None:
    lines = run_pattern("scatter_gather.py")
    answers = [m for m in map(ANSWER.match, lines) if m]
    assert [int(m[1]) for m in answers] == [0, 1, 2], lines
    assert [int(m[2]) for m in answers] == [0, 1, 2], lines  # answer k came from server k
    assert len({m[3] for m in answers}) == 3, lines  # three processes
    assert int(answers[0][4]) == 0 and int(answers[2][5]) == 300_000, lines  # the ranges cover the job
    for m in answers:
        assert int(m[6]) == square_sum(int(m[4]), int(m[5])), m[0]
    # server 1 is slow (400 ms against 100 ms): the others' answers must not wait for it
    at = [int(m[7]) for m in answers]
    assert at[0] < at[1] and at[2] < at[1], lines
    gathered = next(line for line in lines if line.startswith("gathered 3 answers"))
    wall = int(re.search(r"in (\d+) ms", gathered)[1])  # type: ignore[index]
    assert at[1] <= wall + 1 and wall < sum(at), gathered
    total = square_sum(0, 300_000)
    assert f"combined result: {total} from 3/3 servers (matches the local check)" in lines, lines


def test_scatter_gather_one_failing_server() -> None:
    lines = run_pattern("scatter_gather.py", "--fail-one")
    answers = [m for m in map(ANSWER.match, lines) if m]
    failed = [m for m in map(FAILED.match, lines) if m]
    assert [int(m[1]) for m in answers] == [0, 1], lines
    assert len(failed) == 1 and failed[0][1] == "2", lines
    assert "simulated failure" in failed[0][5] and "RuntimeError" in failed[0][5], failed[0][0]
    partial = sum(int(m[6]) for m in answers)
    assert partial == square_sum(0, 200_000), lines
    combined = next(line for line in lines if line.startswith("combined result:"))
    assert combined.startswith(f"combined result: PARTIAL {partial} from 2/3 servers"), combined
    assert "missing [200000, 300000)" in combined and "matches the local check" in combined, combined


ROW = re.compile(r"(sync|async) .*?\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$")


def test_sync_vs_async_async_path_overlaps_calls() -> None:
    """A behavioural check of the async path (not a benchmark): 100 calls of 10 ms overlap."""
    lines = run_pattern("sync_vs_async.py", "--calls", "100")
    rows = {m[1]: [float(x) for x in m.groups()[1:]] for m in map(ROW.match, lines) if m}
    assert set(rows) == {"sync", "async"}, lines
    sync_wall, sync_rate, sync_mean, _ = rows["sync"]
    async_wall, _, async_mean, async_p99 = rows["async"]
    assert sync_wall >= 0.99, lines  # 100 calls one at a time, each at least 10 ms
    assert sync_mean >= 9.9 and async_mean >= 9.9 and async_p99 >= async_mean, lines
    assert sync_rate == pytest.approx(100 / sync_wall, rel=0.01), lines
    speedup = float(re.search(r"speedup \(async over sync\): ([\d.]+)x", lines[-1])[1])  # type: ignore[index]
    assert speedup == pytest.approx(sync_wall / async_wall, rel=0.1), lines
    assert speedup > 1.5, lines
