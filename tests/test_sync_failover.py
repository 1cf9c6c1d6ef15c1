"""Freelance failover and server crashes over real sockets and real processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

import zcall
from zcall.testing import ProcessHandle, free_tcp_endpoint, ipc_endpoint


def test_dead_endpoint_is_skipped_and_then_avoided(
    server: zcall.SyncServer, unused_tcp_endpoint: str
) -> None:
    dead = unused_tcp_endpoint
    with zcall.SyncClient([dead, server.endpoint], timeout=0.1) as client:
        assert client.call("double", 2) == 4
        assert client.counters["attempts"] == 2  # the dead one, then the live one
        assert client.counters["timeouts"] == 1
        t0 = time.monotonic()
        for i in range(20):
            assert client.call("double", i) == 2 * i
        took = time.monotonic() - t0
        # the live endpoint went first from then on: one attempt per call, no timeout paid again
        assert client.counters["attempts"] == 22
        assert client.counters["timeouts"] == 1
        assert took < 5.0  # 20 calls paying the timeout again would take 10 s


def test_all_endpoints_dead_names_every_endpoint(tmp_path) -> None:
    dead = [free_tcp_endpoint(), free_tcp_endpoint(), ipc_endpoint(tmp_path)]
    with zcall.SyncClient(dead, timeout=0.03) as client:
        with pytest.raises(zcall.CallTimeout) as info:
            client.call("double", 1)
        assert client.counters["attempts"] == 3  # each endpoint once
    err = info.value
    assert sorted(err.endpoints) == sorted(dead)
    for ep in dead:
        assert ep in str(err)
    assert err.attempts == 3


def test_retries_cycle_through_the_endpoints(unused_tcp_endpoint: str, tmp_path) -> None:
    dead = [unused_tcp_endpoint, ipc_endpoint(tmp_path)]
    with zcall.SyncClient(dead, timeout=0.02, retries=4) as client, pytest.raises(zcall.CallTimeout) as info:
        client.call("double", 1)
    assert info.value.attempts == 5
    assert sorted(info.value.endpoints) == sorted(dead)


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_server_killed_mid_call_times_out_and_client_recovers(
    spawn_test_server: Callable[..., ProcessHandle], transport: str, tmp_path
) -> None:
    endpoint = free_tcp_endpoint() if transport == "tcp" else ipc_endpoint(tmp_path)
    first = spawn_test_server(endpoint)
    assert first.endpoint == endpoint
    with zcall.SyncClient(endpoint, timeout=0.5) as client, ThreadPoolExecutor(1) as pool:
        assert client.call("pid") == first.pid
        in_flight = pool.submit(client.call, "slow", 30, "doomed")
        first.expect("SLOW START doomed", timeout=5)  # the call is running in the server now
        t0 = time.monotonic()
        first.kill()
        assert first.wait(timeout=5) < 0  # killed by a signal, not exited
        with pytest.raises(zcall.CallTimeout) as info:
            in_flight.result(timeout=5)
        assert time.monotonic() - t0 < 4.0  # the client's own timeout (0.5 s), not the 30 s call or a hang
        assert info.value.endpoints == [endpoint]
        second = spawn_test_server(endpoint)  # a new server on the very same endpoint
        assert client.call("pid") == second.pid
        assert client.call("double", 8) == 16
