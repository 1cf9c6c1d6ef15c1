"""Streams across processes: a server or a client that dies or freezes mid-stream ends the other side
promptly (liveness applies to streams), and an infinite stream read slowly holds bounded memory in both
processes. Servers and clients are real processes, found by READY lines and stopped by pid."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

import zcall
from helpers.cli_support import REPO_ROOT, TESTS_DIR
from helpers.stream_services import rss_of
from zcall.engine.liveness import Heartbeat
from zcall.testing import ProcessHandle, spawn, spawn_server

pytestmark = pytest.mark.timeout(60)

TARGET = "helpers.stream_services:service"
FAST = Heartbeat(0.2, 0.6)  # liveness within about 0.6 s


@pytest.fixture
def stream_server(bind_endpoint: str) -> Iterator[ProcessHandle]:
    """The streaming service in a child process (an AsyncServer with fast heartbeats), tcp and ipc."""
    with spawn_server(TARGET, bind_endpoint, kind="async", heartbeat=FAST, pythonpath=[TESTS_DIR]) as h:
        yield h


def _face_stream(face: str, client: Any, loop: asyncio.AbstractEventLoop | None, *args: Any) -> Iterator[Any]:
    """``forever`` through ``face``, consumed by blocking."""
    if face == "sync":
        yield from client.options(window=4).stream("forever", *args)
    elif face == "blocking":
        yield from client.options(window=4).stream_blocking("forever", *args)
    else:
        assert loop is not None
        it = client.options(window=4).stream("forever", *args)
        while True:
            try:
                yield asyncio.run_coroutine_threadsafe(it.__anext__(), loop).result(30)
            except StopAsyncIteration:
                return


@pytest.mark.parametrize("face", ["sync", "blocking", "asyncio"])
def test_a_killed_server_ends_the_stream_with_connection_lost_promptly(
    face: str, stream_server: ProcessHandle
) -> None:
    loop = None
    if face == "sync":
        client: Any = zcall.SyncClient(stream_server.endpoint, timeout=30)
    else:
        client = zcall.AsyncClient(stream_server.endpoint, timeout=30, heartbeat=FAST)
        if face == "asyncio":
            loop = client._loop  # the engine's loop: its asyncio face, driven from here
    try:
        it = _face_stream(face, client, loop)
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        os.kill(stream_server.pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(zcall.ConnectionLost):
            for _ in it:  # what was already here comes first (at most a window), then the error
                pass
        assert time.monotonic() - t0 < 3.0
    finally:
        client.close()


def test_a_frozen_server_is_seen_within_the_liveness_window(stream_server: ProcessHandle) -> None:
    with zcall.AsyncClient(stream_server.endpoint, timeout=30, heartbeat=FAST) as client:
        it = iter(client.options(window=2).stream_blocking("forever"))
        assert next(it) == 0
        os.kill(stream_server.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(zcall.ConnectionLost):
                for _ in it:
                    pass
            assert time.monotonic() - t0 < 3.0  # ZMTP heartbeats: 0.6 s of silence, not the 30 s budget
        finally:
            os.kill(stream_server.pid, signal.SIGCONT)


@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_a_client_that_dies_mid_stream_stops_the_servers_producer(
    how: str, stream_server: ProcessHandle
) -> None:
    argv = [str(TESTS_DIR / "helpers" / "stream_services.py"), stream_server.endpoint, "forever"]
    with spawn(argv, cwd=REPO_ROOT, pythonpath=[TESTS_DIR], ready_prefix=None) as consumer:
        consumer.expect("GOT 3", timeout=15)
        stream_server.expect("FOREVER START", timeout=5)
        os.kill(consumer.pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            stream_server.expect("FOREVER CLOSED", timeout=10)  # the generator's finally: ran
            assert time.monotonic() - t0 < 5.0
        finally:
            if how == "freeze":
                os.kill(consumer.pid, signal.SIGCONT)
    with zcall.SyncClient(stream_server.endpoint, timeout=5) as c:
        assert c.call("zcall.stats")["counters"]["streams_lost"] >= 1


def _bounded(face: str, endpoint: str, server_pid: int, items: int, every: float, size: int) -> None:
    """Read an infinite stream of ``size``-byte items, one each ``every`` seconds, and check that both
    processes' RSS stays within a few windows of items once warm."""
    window = 4
    slack = 32 * 1024 * 1024  # allocator noise plus a few windows of items in buffers
    client: Any
    if face == "sync":
        client = zcall.SyncClient(endpoint, timeout=items * every + 30)
        it = iter(client.options(window=window).stream("forever", size))
    else:
        client = zcall.AsyncClient(endpoint, timeout=items * every + 30)
        it = iter(client.options(window=window).stream_blocking("forever", size))
    samples: list[tuple[int, int]] = []
    try:
        for i in range(items):
            assert len(next(it)) == size
            if i == 3:
                base = (rss_of(server_pid), rss_of(os.getpid()))
            if i > 3:
                samples.append((rss_of(server_pid), rss_of(os.getpid())))
            time.sleep(every)  # the slow consumer this test is about
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
        client.close()
    worst_server = max(s for s, _ in samples) - base[0]
    worst_client = max(c for _, c in samples) - base[1]
    assert worst_server < slack, f"server RSS grew {worst_server / 2**20:.1f} MiB"
    assert worst_client < slack, f"client RSS grew {worst_client / 2**20:.1f} MiB"


@pytest.mark.parametrize("face", ["sync", "blocking"])
def test_an_infinite_stream_read_slowly_holds_bounded_memory_on_both_ends(
    face: str, stream_server: ProcessHandle
) -> None:
    # 1 MiB items, 20 a second for 2 s: unbounded, the producer would queue gigabytes meanwhile
    _bounded(face, stream_server.endpoint, stream_server.pid, items=40, every=0.05, size=1024 * 1024)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("face", ["sync", "blocking"])
def test_a_minute_of_one_item_a_second_holds_bounded_memory(face: str, stream_server: ProcessHandle) -> None:
    _bounded(face, stream_server.endpoint, stream_server.pid, items=60, every=1.0, size=1024 * 1024)
