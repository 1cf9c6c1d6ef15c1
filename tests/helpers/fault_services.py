"""What the fault and reliability tests serve: side-effect counters, blocking and loop-hogging handlers.

``make_service()`` returns a fresh service (fresh counters) for in-thread servers and for
``spawn_server("helpers.fault_services:make_service", kind="async")``. Run as a module it serves one with
``AsyncServer`` and also counts every message the server receives by kind (``received()``), which is how
the liveness test sees whether heartbeats piled up while the server was frozen.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import time
from typing import Any

import zcall
from zcall.engine.liveness import Heartbeat
from zcall.protocol.wire import decode
from zcall.tools.ready import announce


def _announce(line: str) -> None:
    """One stdout line in one write: print() from several pool threads can interleave two lines."""
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), f"{line}\n".encode())


def make_service() -> zcall.Service:
    """A fresh service; its counters start at zero."""
    svc = zcall.Service("faults")
    runs: collections.Counter[str] = collections.Counter()

    @svc.method
    def double(x: int) -> int:
        """Twice x."""
        return x * 2

    @svc.method
    def incr() -> int:
        """Not idempotent: a side effect per run; returns how many times it ran."""
        runs["incr"] += 1
        return runs["incr"]

    @svc.method(idempotent=True)
    def incr_idem() -> int:
        """Declared idempotent (wrongly, on purpose): retries may run it again; returns its run count."""
        runs["incr_idem"] += 1
        return runs["incr_idem"]

    @svc.method
    def runs_of(name: str) -> int:
        """How many times the handler ``name`` ran in this process."""
        return runs[name]

    @svc.method
    def block(seconds: float, tag: str = "") -> str:
        """A plain function (server thread pool) that blocks; prints ``BLOCK <tag>`` as it starts."""
        _announce(f"BLOCK {tag}")
        time.sleep(seconds)
        return tag

    @svc.method
    async def hog(seconds: float, tag: str = "") -> str:
        """A coroutine that wrongly blocks the server's event loop with time.sleep; prints ``HOG <tag>``."""
        _announce(f"HOG {tag}")
        time.sleep(seconds)
        await asyncio.sleep(0)
        return tag

    @svc.method(inline=True)
    def pid() -> int:
        """Which process answered."""
        return os.getpid()

    return svc


def main() -> None:
    """Serve ``make_service()`` with AsyncServer, counting received messages by kind; READY <endpoint>."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", default="tcp://127.0.0.1:*")
    parser.add_argument("--heartbeat", default="1,3", metavar="IVL,TIMEOUT")
    ns = parser.parse_args()
    ivl, timeout = (float(x) for x in ns.heartbeat.split(","))
    svc = make_service()
    received: collections.Counter[str] = collections.Counter()

    @svc.method(inline=True)
    def kinds_received() -> dict[str, Any]:
        """Messages this server received so far, by kind (PING, CALL ...), with a timestamp."""
        return {"counts": dict(received), "at": time.monotonic()}

    server = zcall.AsyncServer(svc, ns.bind, heartbeat=Heartbeat(ivl, timeout))
    # Test instrumentation: count each incoming message by kind before the server handles it. The
    # server's reader takes the bound method when it starts, so wrap it on the instance first.
    handle = server._on_message

    def counting(frames: list[bytes]) -> None:
        try:
            received[type(decode(frames[-1])).__name__.upper()] += 1  # PING, CALL, CANCEL ...
        except Exception:
            received["BAD"] += 1
        handle(frames)

    server._on_message = counting  # type: ignore[method-assign]
    server.serve_forever(grace=0.5, on_ready=announce)


if __name__ == "__main__":
    main()
