"""The peer patterns (``patterns/peer_mesh.py``, ``events.py``, ``pipeline.py``) run as a user runs them.

Each runs from the repo root to completion; the test checks its exit code, its key output lines, that
nothing went to stderr as a traceback, and that every process it started (it prints their pids) is gone.
"""

from __future__ import annotations

import os
import re

import pytest

from helpers.cli_support import REPO_ROOT, run_program

PATTERNS = REPO_ROOT / "patterns"


def run(pattern: str, *args: str, timeout: float = 30.0) -> list[str]:
    """Run ``python patterns/<pattern> <args>`` to completion (in its own process group, so a hung run
    takes its children with it); assert a clean exit; return its stdout lines."""
    code, lines, stderr = run_program(str(PATTERNS / pattern), *args, timeout=timeout)
    assert code == 0, (lines, stderr)
    assert "Traceback" not in stderr, stderr
    pids = [int(m.group(1)) for line in lines if (m := re.search(r"\bpid (\d+)", line))]
    assert pids, lines
    for pid in pids:  # the pattern stopped and reaped every process it started
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    return lines


def test_peer_mesh_calls_both_ways_and_nested() -> None:
    lines = run("peer_mesh.py")
    call = re.compile(
        r"^\s*(\w) -> (\w)\s+(sync|async)\s+\(peer\.(call|call_async)\):\s+(\w) says hello to (\w)$"
    )
    seen = set()
    for line in lines:
        if m := call.match(line):
            caller, callee, face, api, answerer, greeted = m.groups()
            assert (answerer, greeted) == (callee, caller), line  # the answer came from whom was called
            assert api == ("call" if face == "sync" else "call_async"), line
            seen.add((caller, callee, face))
    expected = {(x, y, f) for x in "abc" for y in "abc" if x != y for f in ("sync", "async")}
    assert seen == expected, lines  # every peer called every other one, both ways, both faces
    nested = [line for line in lines if line.rstrip().endswith("driver -> a -> b -> c")]
    ring = [line for line in lines if line.rstrip().endswith("driver -> a -> b -> c -> a")]
    assert len(nested) == 2 and len(ring) == 2, lines
    for group in (nested, ring):
        assert any("peer.call " in line for line in group) and any("acall" in line for line in group)
    assert lines[-1] == "peer mesh: every call answered"


def test_events_prefix_exact_and_at_most_once() -> None:
    lines = run("events.py")
    text = "\n".join(lines)
    assert "[warehouse] got orders.new: {'item': 'teapot'}" in text
    assert "[warehouse] got orders.cancelled: {'item': 'teapot'}" in text  # prefix orders.*
    assert "[accounting] got billing.charge: {'item': 'kettle', 'price': 20}" in text  # exact topic
    assert "warehouse received       : ['teapot', 'mug']" in text  # not 'early bird', not 'kettle'
    assert "accounting received      : ['teapot', 'kettle', 'mug']" in text
    assert "stock.low received by    : []" in text
    assert not any("early bird'" in line and "got" in line for line in lines)
    assert lines[-1] == "events: each subscriber got each event it was subscribed and connected for, once"


def test_pipeline_processes_every_item_exactly_once() -> None:
    lines = run("pipeline.py", "-n", "4", "--items", "40")
    text = "\n".join(lines)
    assert "sent 40 work items as notifications" in text
    assert "40 result notifications came back" in text
    for k in range(4):
        assert f"   worker-{k}: 10 items" in lines, lines
    assert "items processed exactly once: 40/40" in text
    assert "missing: none; more than once: none" in text
    assert lines[-1] == "pipeline: every item processed exactly once"
