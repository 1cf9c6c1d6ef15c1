"""Shared fixtures: endpoints, in-thread servers and spawned server processes for ``helpers.services``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import zcall
from zcall.testing import ProcessHandle, free_tcp_endpoint, ipc_endpoint, running_server, spawn_server

# zcall's own pytest fixtures (zcall_*). Harmless once the package registers the plugin as a pytest11
# entry point named "zcall.pytest_plugin": pytest then sees it is loaded and skips this.
pytest_plugins = ["zcall.pytest_plugin"]

TESTS_DIR = Path(__file__).resolve().parent
RUN_SLOW = os.environ.get("ZCALL_SLOW") == "1"
"""``ZCALL_SLOW=1`` (or ``-m slow``) runs the long soak tests too; by default they are skipped."""
REPO_ROOT = TESTS_DIR.parent
SERVICE_TARGET = "helpers.services:service"
"""What spawned servers serve; the child finds ``helpers`` through PYTHONPATH=tests/."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.slow`` tests unless asked for (``ZCALL_SLOW=1``, or ``-m`` naming slow):
    the suite stays a few minutes; the minute-long soaks run when someone wants them."""
    if RUN_SLOW or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="a long soak: run with ZCALL_SLOW=1 or -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def unused_tcp_endpoint() -> str:
    """A tcp endpoint on 127.0.0.1 that was free a moment ago (for "no server here" and rebinds)."""
    return free_tcp_endpoint()


@pytest.fixture
def unused_ipc_endpoint(tmp_path: Path) -> Iterator[str]:
    """A fresh ipc endpoint (short path under /tmp when tmp_path is too long for a unix socket)."""
    ep = ipc_endpoint(tmp_path)
    yield ep
    path = ep.removeprefix("ipc://")
    if os.path.exists(path):
        os.unlink(path)


@pytest.fixture(params=["tcp", "ipc"])
def bind_endpoint(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where to bind a server: ``tcp://127.0.0.1:*`` or a fresh ipc path (tests run over both)."""
    return "tcp://127.0.0.1:*" if request.param == "tcp" else ipc_endpoint(tmp_path)


@pytest.fixture
def test_service() -> zcall.Service:
    """The service in tests/helpers/services.py, for in-thread servers."""
    from helpers.services import service

    return service


@pytest.fixture
def server(test_service: zcall.Service, bind_endpoint: str) -> Iterator[zcall.SyncServer]:
    """An in-thread SyncServer for the test service, over tcp and over ipc."""
    with running_server(test_service, bind_endpoint) as srv:
        yield srv


@pytest.fixture
def spawn_test_server() -> Iterator[Callable[..., ProcessHandle]]:
    """Factory: ``spawn_test_server(endpoint=..., forever=...)`` starts the test service in a child
    process; every process it started is stopped (SIGTERM, then SIGKILL) and reaped at teardown."""
    started: list[ProcessHandle] = []

    def start(endpoint: str = "tcp://127.0.0.1:*", *, forever: bool = False) -> ProcessHandle:
        handle = spawn_server(
            SERVICE_TARGET, endpoint, forever=forever, cwd=REPO_ROOT, pythonpath=[TESTS_DIR]
        )
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop(timeout=3.0)


@pytest.fixture
def server_process(spawn_test_server: Callable[..., ProcessHandle]) -> ProcessHandle:
    """The test service served by a child process on a free tcp port."""
    return spawn_test_server()
