"""A service for the async integration tests, with a ``Probe`` that records what its handlers did.

``make_service()`` builds a fresh ``Service`` and ``Probe`` per test (no state shared between tests).
Run as a program it serves one with ``AsyncServer`` in a child process and prints ``READY <endpoint>``;
with ``--announce`` the slow handlers print ``START <tag>`` when they begin, so a test can wait for "the
call is running in the server" on the child's stdout instead of sleeping.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from typing import Any

import zcall
from zcall.tools.ready import announce


class Probe:
    """What the handlers of one service saw: side effects, threads, starts, cancellations, concurrency."""

    def __init__(self, announce: bool = False) -> None:
        self.announce = announce
        self.marks: list[Any] = []
        self.cancelled: list[str] = []
        self.finished: list[str] = []
        self.concurrent = 0
        self.max_concurrent = 0
        self._cond = threading.Condition()
        self._started: list[str] = []

    def start(self, tag: str) -> None:
        with self._cond:
            self._started.append(tag)
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
            self._cond.notify_all()
        if self.announce:
            print(f"START {tag}", flush=True)

    def end(self, tag: str, cancelled: bool = False) -> None:
        with self._cond:
            self.concurrent -= 1
            (self.cancelled if cancelled else self.finished).append(tag)
            self._cond.notify_all()

    def wait_started(self, tag: str, timeout: float = 5.0) -> None:
        """Block until a handler called with ``tag`` has started (AssertionError after ``timeout``)."""
        with self._cond:
            if not self._cond.wait_for(lambda: tag in self._started, timeout):
                raise AssertionError(f"handler {tag!r} did not start within {timeout}s")

    def wait_cancelled(self, tag: str, timeout: float = 5.0) -> None:
        """Block until the handler called with ``tag`` has seen ``asyncio.CancelledError``."""
        with self._cond:
            if not self._cond.wait_for(lambda: tag in self.cancelled, timeout):
                raise AssertionError(f"handler {tag!r} was not cancelled within {timeout}s")


def make_service(announce: bool = False) -> tuple[zcall.Service, Probe]:
    """A fresh service and the probe its handlers report to."""
    svc = zcall.Service("asyncsvc")
    probe = Probe(announce)

    @svc.method
    async def nap(seconds: float, tag: str = "") -> str:
        """Coroutine: sleep ``seconds`` on the loop, return ``tag`` (records cancellation)."""
        probe.start(tag)
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            probe.end(tag, cancelled=True)
            raise
        probe.end(tag)
        return tag

    @svc.method
    def block(seconds: float, tag: str = "") -> str:
        """Plain blocking function: sleep ``seconds`` in a worker thread, return ``tag``."""
        probe.start(tag)
        time.sleep(seconds)
        probe.end(tag)
        return tag

    @svc.method(inline=True)
    def where() -> str:
        """Inline: the name of the thread that ran it (the loop's)."""
        return threading.current_thread().name

    @svc.method
    def where_pool() -> str:
        """Plain: the name of the thread that ran it (a pool worker)."""
        return threading.current_thread().name

    @svc.method
    async def where_coro() -> str:
        """Coroutine: the name of the thread that ran it (the loop's)."""
        return threading.current_thread().name

    @svc.method(inline=True)
    def triple(x: int) -> int:
        """Inline: 3 * x."""
        return 3 * x

    @svc.method(inline=True)
    def mark(value: Any) -> int:
        """Inline: record ``value`` (an observable side effect) and return how many marks there are."""
        probe.marks.append(value)
        return len(probe.marks)

    @svc.method
    def mark_pool(value: Any) -> int:
        """Plain (pool): record ``value``; used to show queued work that must never start."""
        probe.marks.append(value)
        return len(probe.marks)

    @svc.method(inline=True)
    def marks() -> list[Any]:
        """Inline: every value recorded by ``mark`` so far."""
        return list(probe.marks)

    @svc.method
    def boom(message: str) -> None:
        """Always raise ValueError(message)."""
        raise ValueError(message)

    @svc.method
    async def aboom(message: str) -> None:
        """Coroutine: always raise KeyError(message)."""
        await asyncio.sleep(0)
        raise KeyError(message)

    @svc.method(inline=True)
    def kw(a: int, b: int = 0, *, c: int) -> list[int]:
        """Inline, with a required keyword-only argument."""
        return [a, b, c]

    @svc.method(inline=True)
    def pid() -> int:
        """Which process answered."""
        return os.getpid()

    return svc, probe


def main() -> None:
    """Serve ``make_service(announce=True)`` with AsyncServer until SIGTERM; print READY <endpoint>."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", default="tcp://127.0.0.1:*")
    ns = parser.parse_args()
    svc, _probe = make_service(announce=True)
    zcall.AsyncServer(svc, ns.bind).serve_forever(grace=0.5, on_ready=announce)


if __name__ == "__main__":
    main()
