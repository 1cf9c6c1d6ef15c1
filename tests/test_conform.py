"""``zcall conform``: zcall's REP-style and ROUTER servers pass it, a deliberately broken server fails
it (check by check), and the vectors it ships are the documented ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import zcall
from helpers.cli_support import REPO_ROOT, TESTS_DIR, zcall_cli
from zcall.testing import free_tcp_endpoint, running_server, spawn, spawn_server
from zcall.tools.conform import load_vectors, run

SERVICE = "helpers.services:service"
OPTIONS = ["--retry-method", "incr", "--slow", "slow", "--json"]


def results(stdout: str) -> dict[str, dict[str, str]]:
    return {r["id"]: r for r in json.loads(stdout)}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_zcalls_servers_pass_every_check(kind: str) -> None:
    with spawn_server(SERVICE, kind=kind, pythonpath=[TESTS_DIR]) as server:  # type: ignore[arg-type]
        r = zcall_cli("conform", server.endpoint, *OPTIONS, timeout=90)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    got = results(r.stdout)
    failed = {k: v["detail"] for k, v in got.items() if v["status"] == "fail"}
    assert failed == {}
    skipped = {k for k, v in got.items() if v["status"] == "skip"}
    assert skipped == {"vector:too-large", "stop:graceful"}  # the size is checked by limits:too-large
    assert len([k for k in got if k.startswith("vector:")]) == len(load_vectors())
    assert got["kind"]["detail"].endswith("REP-style server" if kind == "sync" else "ROUTER server")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_the_graceful_stop_check_stops_the_server_and_passes(kind: str) -> None:
    endpoint = free_tcp_endpoint()
    with spawn_server(SERVICE, endpoint, kind=kind, pythonpath=[TESTS_DIR]) as server:  # type: ignore[arg-type]
        r = zcall_cli("conform", endpoint, "--stop", *OPTIONS, timeout=90)
        code = server.wait(10)
    got = results(r.stdout)
    assert got["stop:graceful"]["status"] == "pass", got["stop:graceful"]
    assert r.returncode == 0, [v for v in got.values() if v["status"] == "fail"]
    assert code == 0  # the server exited on its SIGTERM, cleanly
    if kind == "async":
        assert "in-flight call answered" in got["stop:graceful"]["detail"]


@pytest.mark.timeout(120)
def test_a_broken_server_fails_the_checks_it_breaks_and_passes_the_others() -> None:
    with spawn([str(TESTS_DIR / "helpers" / "broken_server.py")], cwd=REPO_ROOT) as broken:
        r = zcall_cli("conform", broken.endpoint, "--json", "--timeout", "0.5", timeout=110)
        human = zcall_cli("conform", broken.endpoint, "--timeout", "0.5", timeout=110)
    assert r.returncode == 1, r.stderr
    got = results(r.stdout)
    failed = {k for k, v in got.items() if v["status"] == "fail"}
    for expected in (
        "kind",  # a NOTIFY answered with a REPLY
        "framing:split-body",  # dropped instead of PROTOCOL_ERROR
        "calls:not-found",  # no data.close
        "calls:bad-args",  # arguments never checked
        "deadline:zero",  # deadlines ignored
        "vector:version-2",  # versions never checked
        "vector:id-negative",
    ):
        assert expected in failed, (expected, got[expected])
    assert got["framing:no-delimiter"]["status"] == "skip"  # its kind is unknown: REP may drop it
    passed = {k for k, v in got.items() if v["status"] == "pass"}
    assert {"reachable", "framing:req", "ids:max", "vector:ping"} <= passed
    assert "FAIL  vector:version-2" in human.stdout and "failed" in human.stdout.splitlines()[-1]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_service_without_introspection_passes_with_those_checks_skipped(kind: str) -> None:
    svc = zcall.Service("quiet", introspection=False)
    with running_server(svc, kind=kind) as server:  # type: ignore[arg-type]
        results_, _ = run(server.endpoint, timeout=2.0)
    assert [r.id for r in results_ if r.status == "fail"] == []
    assert {"calls:methods", "stop:graceful"} <= {r.id for r in results_ if r.status == "skip"}


@pytest.mark.timeout(30)
def test_nothing_at_the_endpoint_exits_3() -> None:
    r = zcall_cli("conform", free_tcp_endpoint(), "--timeout", "0.3")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "FAIL  reachable" in r.stdout


def test_the_packaged_vectors_are_the_documented_ones() -> None:
    """zcall conform reads the copy inside the package (so it works from a wheel); it must not drift."""
    packaged = Path(sys.modules["zcall.tools.conform"].__file__).parent / "protocol-vectors.json"  # type: ignore[arg-type]
    documented = REPO_ROOT / "docs" / "protocol-vectors.json"
    assert packaged.read_bytes() == documented.read_bytes(), (
        "copy docs/protocol-vectors.json to src/zcall/tools/protocol-vectors.json"
    )
