"""The two interceptor patterns, run as a user runs them, and their interceptors checked on their own."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import zcall
from zcall.testing import spawn

REPO_ROOT = Path(__file__).resolve().parent.parent
PATTERNS = REPO_ROOT / "patterns"


def run(name: str, timeout: float = 40.0) -> tuple[int, list[str], str]:
    with spawn([str(PATTERNS / name)], ready_prefix=None, cwd=REPO_ROOT, own_group=True) as handle:
        lines = handle.output(timeout)
        code = handle.wait()
    return code, lines, handle.stderr


@pytest.mark.timeout(60)
def test_trace_propagation_pattern_follows_one_trace_across_three_peers() -> None:
    code, lines, err = run("trace_propagation.py")
    assert code == 0, "\n".join(lines) + err
    assert "one trace id at every hop: yes" in lines
    assert "every hop has a parent span: yes" in lines
    hops = [line.split() for line in lines if re.match(r"^  [abc]  span ", line)]
    assert [h[0] for h in hops] == ["a", "b", "c"]


@pytest.mark.timeout(60)
def test_allow_list_pattern_refuses_by_caller_key() -> None:
    code, lines, err = run("allow_list.py")
    assert code == 0, "\n".join(lines) + err
    text = "\n".join(lines)
    assert re.search(r"alice -> report\s+ok", text)
    assert re.search(r"bob -> report\s+PermissionDenied: report is not allowed for bob", text)
    assert re.search(r"bob -> status\s+ok", text)
    assert re.search(r"bob -> zcall.stats\s+PermissionDenied", text)


@pytest.fixture
def trace_module():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(PATTERNS))
    try:
        import trace_propagation

        yield trace_propagation
    finally:
        sys.path.remove(str(PATTERNS))
        sys.modules.pop("trace_propagation", None)


def test_trace_interceptors_in_process_on_both_server_kinds(trace_module) -> None:  # type: ignore[no-untyped-def]
    seen = []
    svc = zcall.Service("t", interceptors=[trace_module.TraceServer()])

    @svc.method(inline=True)
    def hop() -> dict[str, str]:
        c = zcall.current_call()
        assert c is not None
        seen.append(c.headers["traceparent"])
        return dict(c.state["trace"])

    for kind in (zcall.SyncServer, zcall.AsyncServer):
        tracer = trace_module.TraceClient()
        with kind(svc) as server, zcall.SyncClient(server.endpoint, interceptors=[tracer]) as c:
            span = c.call("hop")
        trace_id, parent = seen[-1].split("-")[1:3]
        assert span["trace_id"] == trace_id and span["parent_id"] == parent and span["span_id"] != parent
