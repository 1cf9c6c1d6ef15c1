"""Shared plumbing for the async integration tests: in-thread servers, child server processes, raw sockets.

Everything waits on a signal (a READY line, a handler's start, a reply), never on a sleep; the only
polling helper, ``wait_until``, re-checks a condition with a deadline and is used for state that zcall
reports only through counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zmq

import zcall
from zcall.protocol.wire import Message, decode
from zcall.testing import ProcessHandle, spawn

from .async_services import Probe, make_service

TESTS_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = TESTS_DIR.parent


@contextlib.contextmanager
def served(
    endpoint: str = "tcp://127.0.0.1:*", *, grace: float = 0.5, **server_kwargs: Any
) -> Iterator[tuple[zcall.AsyncServer, Probe]]:
    """An ``AsyncServer`` for a fresh ``make_service()`` on zcall's engine thread, stopped on exit."""
    svc, probe = make_service()
    server = zcall.AsyncServer(svc, endpoint, **server_kwargs).start()
    try:
        yield server, probe
    finally:
        server.stop(grace)


def spawn_async_server(endpoint: str = "tcp://127.0.0.1:*") -> ProcessHandle:
    """``helpers.async_services`` served by ``AsyncServer`` in a child process; returns once bound.

    The caller stops it (``with`` block or ``.stop()``); it prints ``START <tag>`` as slow calls begin.
    """
    return spawn(
        ["-m", "helpers.async_services", "--bind", endpoint],
        cwd=REPO_ROOT,
        pythonpath=[TESTS_DIR],
        timeout=15.0,
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Re-check ``predicate`` until it holds; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.005)


@contextlib.contextmanager
def raw_socket(kind: int, endpoint: str, timeout_ms: int = 5000) -> Iterator[zmq.Socket]:
    """A raw zmq socket (DEALER, REQ ...) connected to ``endpoint``, LINGER 0, receive timeout set."""
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)


def recv_message(sock: zmq.Socket) -> Message:
    """Receive one message (the last frame of a multipart) and decode it."""
    return decode(sock.recv_multipart()[-1])


@contextlib.contextmanager
def served_on_own_loop(
    endpoint: str = "tcp://127.0.0.1:*", **server_kwargs: Any
) -> Iterator[tuple[zcall.AsyncServer, Probe, asyncio.AbstractEventLoop]]:
    """An ``AsyncServer`` on a private asyncio loop thread (not zcall's engine), so a client on the
    engine can stall its own loop without stalling the server."""
    svc, probe = make_service()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-server-loop", daemon=True)
    thread.start()
    server = zcall.AsyncServer(svc, endpoint, **server_kwargs)
    try:
        asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result(10)
        yield server, probe, loop
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(server.aclose(0.2), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def flush_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Return once every callback already scheduled on ``loop`` (e.g. ``publish``) has run."""

    async def nothing() -> None:
        return None

    asyncio.run_coroutine_threadsafe(nothing(), loop).result(10)
