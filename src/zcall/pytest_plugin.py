"""pytest fixtures for socket-level tests of zcall services: endpoints, servers, processes, a fault proxy.

Load it with ``pytest_plugins = ["zcall.pytest_plugin"]`` in your top-level ``conftest.py`` or ``-p
zcall.pytest_plugin`` (once zcall registers it as a ``pytest11`` entry point under that same name, it is
loaded automatically and these stay harmless no-ops). Every fixture name starts with ``zcall_`` so none
can clash with a project's own. Factories clean up what they made at teardown: servers stopped, clients
and proxies closed, processes stopped by pid (SIGTERM, then SIGKILL) and reaped. See ``docs/testing.md``.

Importing this module is cheap (``zcall.testing`` is imported only when a fixture runs) and does not
need pytest to be running, nor installed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import pytest
except ImportError:  # imported outside a test run without pytest installed: nothing to define
    pytest = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .engine.liveness import Heartbeat
    from .service.registry import Service
    from .testing import ProcessHandle
    from .testing.faultproxy import FaultProxy

__all__: list[str] = []  # the fixtures below, when pytest is importable


def _unlink_ipc(endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        with contextlib.suppress(OSError):
            os.unlink(endpoint.removeprefix("ipc://"))


if pytest is not None:

    @pytest.fixture
    def zcall_tcp_endpoint() -> str:
        """A ``tcp://127.0.0.1:PORT`` endpoint that was free a moment ago (to know a port in advance,
        e.g. to restart a server on it; otherwise bind to ``tcp://127.0.0.1:*``)."""
        from .testing import free_tcp_endpoint

        return free_tcp_endpoint()

    @pytest.fixture
    def zcall_ipc_endpoint(tmp_path: Path) -> Iterator[str]:
        """A fresh ``ipc://`` endpoint (a short path when ``tmp_path`` is too long); unlinked after."""
        from .testing import ipc_endpoint

        ep = ipc_endpoint(tmp_path)
        yield ep
        _unlink_ipc(ep)

    @pytest.fixture(params=["tcp", "ipc"])
    def zcall_bind_endpoint(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
        """Where to bind a server, once per transport: ``tcp://127.0.0.1:*``, then a fresh ipc path."""
        if request.param == "tcp":
            yield "tcp://127.0.0.1:*"
            return
        from .testing import ipc_endpoint

        ep = ipc_endpoint(tmp_path)
        yield ep
        _unlink_ipc(ep)

    @pytest.fixture
    def zcall_server() -> Iterator[Callable[..., Any]]:
        """Factory: ``zcall_server(service, endpoint=None, kind="sync"|"async", **server_kwargs)`` serves
        ``service`` on a thread and returns the bound server (``.endpoint``); all stopped at teardown."""
        from .testing import running_server

        with contextlib.ExitStack() as stack:

            def start(service: Service, endpoint: str | None = None, *, kind: str = "sync", **kw: Any) -> Any:
                return stack.enter_context(running_server(service, endpoint, kind=kind, **kw))  # type: ignore[arg-type]

            yield start

    @pytest.fixture
    def zcall_spawn() -> Iterator[Callable[..., ProcessHandle]]:
        """Factory: ``zcall_spawn(args, ready_prefix="READY", timeout=10, **kw)`` runs ``python *args``
        and returns once it printed its ready line (``handle.endpoint`` is the endpoint on that line,
        ``READY <endpoint> [name=...]``; ``handle.ready`` the whole line parsed);
        raises ``SpawnError`` with its stderr if it dies first. Every process is stopped by pid at
        teardown (SIGTERM, then SIGKILL) and reaped."""
        from .testing import spawn, stop_all

        started: list[ProcessHandle] = []

        def start(args: Sequence[str], **kw: Any) -> ProcessHandle:
            handle = spawn(args, **kw)
            started.append(handle)
            return handle

        try:
            yield start
        finally:
            stop_all(started, timeout=3.0)

    @pytest.fixture
    def zcall_server_process() -> Iterator[Callable[..., ProcessHandle]]:
        """Factory: ``zcall_server_process("pkg.mod:service", endpoint="tcp://127.0.0.1:*",
        kind="sync"|"async", heartbeat=None, pythonpath=(), cwd=None)`` serves a ``Service`` in a child
        process and returns its ``ProcessHandle`` once bound; all stopped by pid at teardown."""
        from .testing import spawn_server, stop_all

        started: list[ProcessHandle] = []

        def start(
            target: str,
            endpoint: str = "tcp://127.0.0.1:*",
            *,
            kind: str = "sync",
            heartbeat: Heartbeat | None = None,
            **kw: Any,
        ) -> ProcessHandle:
            handle = spawn_server(target, endpoint, kind=kind, heartbeat=heartbeat, **kw)  # type: ignore[arg-type]
            started.append(handle)
            return handle

        try:
            yield start
        finally:
            stop_all(started, timeout=3.0)

    @pytest.fixture
    def zcall_fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
        """Factory: ``zcall_fault_proxy(backend_endpoint, seed=0, ...)`` starts a ``FaultProxy`` in front
        of a server (clients connect to ``proxy.endpoint``); all closed at teardown."""
        from .testing.faultproxy import FaultProxy

        proxies: list[FaultProxy] = []

        def start(backend: str, **kw: Any) -> FaultProxy:
            proxy = FaultProxy(backend, **kw).start()
            proxies.append(proxy)
            return proxy

        try:
            yield start
        finally:
            for proxy in reversed(proxies):
                proxy.close()

    @pytest.fixture
    def zcall_client() -> Iterator[Callable[..., Any]]:
        """Factory: ``zcall_client(endpoints, kind="sync"|"async", **client_kwargs)`` returns a
        ``SyncClient`` or ``AsyncClient``; all closed at teardown (before servers and processes made
        by fixtures requested earlier)."""
        clients: list[Any] = []

        def make(endpoints: str | Sequence[str], *, kind: str = "sync", **kw: Any) -> Any:
            from .client.asynchronous import AsyncClient
            from .client.sync import SyncClient

            if kind == "sync":
                client: Any = SyncClient(endpoints, **kw)
            elif kind == "async":
                client = AsyncClient(endpoints, **kw)
            else:
                raise ValueError(f"kind must be 'sync' or 'async', got {kind!r}")
            clients.append(client)
            return client

        try:
            yield make
        finally:
            for client in reversed(clients):
                client.close()

    @pytest.fixture
    def zcall_fake_server() -> Iterator[Callable[..., Any]]:
        """Factory: ``zcall_fake_server(name="fake", kind="async"|"sync", spec=None, **server_kwargs)``
        starts a ``zcall.testing.FakeServer`` (a real server whose methods the test scripts with
        ``fake.on(method).returns(...)`` and inspects with ``fake.calls`` / ``fake.wait_for``); all
        stopped at teardown."""
        from .testing.doubles import FakeServer

        fakes: list[FakeServer] = []

        def start(name: str = "fake", **kw: Any) -> FakeServer:
            fake = FakeServer(name, **kw).start()
            fakes.append(fake)
            return fake

        try:
            yield start
        finally:
            for fake in reversed(fakes):
                fake.stop()

    @pytest.fixture
    def zcall_call_recorder() -> Iterator[Callable[..., Any]]:
        """Factory: ``zcall_call_recorder(service)`` attaches a ``zcall.testing.CallRecorder`` to a real
        service (before its server is made) and returns it: ``recorder.wait_for("charge", 2)`` blocks
        until charge was called twice, ``with recorder.waiter("charge"):`` waits around a block. Taken
        off the service at teardown."""
        from .testing.doubles import CallRecorder

        attached: list[tuple[CallRecorder, Service]] = []

        def attach(service: Service) -> CallRecorder:
            recorder = CallRecorder.on(service)
            attached.append((recorder, service))
            return recorder

        try:
            yield attach
        finally:
            for recorder, service in attached:
                recorder.detach(service)

    __all__ = [
        "zcall_bind_endpoint",
        "zcall_call_recorder",
        "zcall_client",
        "zcall_fake_server",
        "zcall_fault_proxy",
        "zcall_ipc_endpoint",
        "zcall_server",
        "zcall_server_process",
        "zcall_spawn",
        "zcall_tcp_endpoint",
    ]
