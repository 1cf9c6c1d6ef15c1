"""SyncServer lifecycle over real sockets: start/stop, context manager, bind errors, signals, Context.term."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import pytest
import zmq

import zcall
from zcall.testing import ProcessHandle, free_tcp_endpoint, running_server


def make_service() -> zcall.Service:
    svc = zcall.Service("lifecycle")

    @svc.method
    def double(x: int) -> int:
        return x * 2

    return svc


def test_start_returns_once_bound_with_the_real_port() -> None:
    server = zcall.SyncServer(make_service(), "tcp://127.0.0.1:*")
    with pytest.raises(RuntimeError, match="not bound"):
        _ = server.endpoint
    assert server.start() is server
    try:
        host, port = server.endpoint.removeprefix("tcp://").rsplit(":", 1)
        assert host == "127.0.0.1"
        assert 0 < int(port) < 65536
        # bound means callable at once: no wait, no retry
        with zcall.SyncClient(server.endpoint, timeout=2.0) as client:
            assert client.call("double", 4) == 8
            assert client.counters["attempts"] == 1
    finally:
        server.stop()


def test_stop_is_idempotent_and_frees_the_endpoint() -> None:
    server = zcall.SyncServer(make_service()).start()
    endpoint = server.endpoint
    server.stop()
    server.stop()
    assert not server._thread.is_alive()  # type: ignore[union-attr]
    with zcall.SyncClient(endpoint, timeout=0.05) as client, pytest.raises(zcall.CallTimeout):
        client.call("double", 1)
    # the port is free again: another server can bind exactly there
    with running_server(make_service(), endpoint) as again, zcall.SyncClient(endpoint) as client:
        assert again.endpoint == endpoint
        assert client.call("double", 5) == 10


def test_stop_before_start_is_harmless() -> None:
    zcall.SyncServer(make_service()).stop()


def test_context_manager_serves_inside_and_stops_after() -> None:
    with zcall.SyncServer(make_service()) as server:
        endpoint = server.endpoint
        with zcall.SyncClient(endpoint) as client:
            assert client.call("double", 3) == 6
    assert not server._thread.is_alive()  # type: ignore[union-attr]
    with running_server(make_service(), endpoint):
        pass  # rebinding works, so the socket was closed


def test_many_start_stop_cycles_never_collide_or_hang() -> None:
    """Servers created and dropped in a loop reuse object ids; their control sockets must not clash."""
    svc = make_service()
    for i in range(300):
        server = zcall.SyncServer(svc).start()
        with zcall.SyncClient(server.endpoint, timeout=2.0) as client:
            assert client.call("double", i) == 2 * i
        server.stop()
        assert not server._thread.is_alive()  # type: ignore[union-attr]
        del server


def test_bind_to_an_endpoint_in_use_raises_oserror_from_start() -> None:
    with running_server(make_service()) as first:
        second = zcall.SyncServer(make_service(), first.endpoint)
        with pytest.raises(OSError, match="cannot bind") as info:
            second.start()
        assert first.endpoint in str(info.value)
        second.stop()  # harmless after a failed start
        with zcall.SyncClient(first.endpoint) as client:
            assert client.call("double", 2) == 4  # the first server is unaffected


def test_stop_lets_the_call_in_progress_finish() -> None:
    svc = zcall.Service("graceful")
    started = threading.Event()

    @svc.method
    def wait_a_bit(seconds: float) -> str:
        started.set()
        time.sleep(seconds)  # the sleep is the behaviour under test: a call still running at stop()
        return "finished"

    server = zcall.SyncServer(svc).start()
    result: list[object] = []
    with zcall.SyncClient(server.endpoint, timeout=5.0) as client:
        caller = threading.Thread(target=lambda: result.append(client.call("wait_a_bit", 0.2)))
        caller.start()
        assert started.wait(5)
        server.stop()
        caller.join(5)
    assert result == ["finished"]


@pytest.mark.parametrize("forever", [False, True], ids=["start-wait", "serve_forever"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_server_process_exits_cleanly_on_signal(
    spawn_test_server: Callable[..., ProcessHandle], forever: bool, sig: signal.Signals
) -> None:
    proc = spawn_test_server(forever=forever)
    with zcall.SyncClient(proc.endpoint, timeout=5.0) as client:
        assert client.call("zcall.ping")["pid"] == proc.pid
    proc.send_signal(sig)
    assert proc.wait(timeout=5) == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_context_term_returns_after_clients_and_servers_close() -> None:
    """With an explicit context: calls that succeeded, timed out and ran on several threads leave
    nothing behind once the client is closed and the server stopped, so ``term()`` returns."""
    ctx = zmq.Context()
    dead = free_tcp_endpoint()
    server = zcall.SyncServer(make_service(), context=ctx).start()
    client = zcall.SyncClient(server.endpoint, timeout=2.0, context=ctx)
    lost = zcall.SyncClient(dead, timeout=0.02, retries=1, context=ctx)
    try:
        threads = [threading.Thread(target=client.call, args=("double", i)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert client.call("double", 21) == 42
        with pytest.raises(zcall.CallTimeout):
            lost.call("double", 1)
    finally:
        client.close()
        lost.close()
        server.stop()
    terminator = threading.Thread(target=ctx.term, daemon=True)
    terminator.start()
    terminator.join(5)
    assert not terminator.is_alive(), "Context.term() hung: a socket was left open"
    assert ctx.closed
