"""Benchmark servers: zcall's and the raw pyzmq floors, each run as its own process by scripts/bench.py.

Usage: ``python scripts/bench_servers.py NAME [--bind ENDPOINT] [--cpu N]``. The server binds (a free port by
default), prints ``READY <endpoint> <pid>`` on stdout and serves until SIGTERM or until its stdin closes
(so a benchmark that dies never leaves a server behind). Every server answers the same methods with the
same functions (``HANDLERS``), so zcall and the floor differ only in what sits between socket and handler.

The raw floors are what a careful user would write by hand with pyzmq + msgpack and nothing else:
REQ/REP with a ``[method, args]`` request and a bare result reply; ROUTER with ``[id, method, args]`` and
``[id, result]`` for pipelined calls; and a ROUTER that answers ``slow`` calls from a timer heap (a
deferred reply, so a 10 ms handler does not block the socket).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

SLOW_SECONDS = 0.010
"""How long the ``slow`` handler takes (the "10 ms handler" workload)."""


def double(x: int) -> int:
    """Return twice x (the sequential and pipelined call workloads)."""
    return x * 2


def echo(data: bytes) -> bytes:
    """Return data unchanged (the 64 KiB payload workload)."""
    return data


def slow() -> None:
    """Block for 10 ms, like a handler doing blocking I/O."""
    time.sleep(SLOW_SECONDS)


async def aslow() -> None:
    """Wait 10 ms without blocking the event loop (the async servers' version of ``slow``)."""
    import asyncio

    await asyncio.sleep(SLOW_SECONDS)


HANDLERS: dict[str, Callable[..., Any]] = {"double": double, "echo": echo, "slow": slow}
"""The methods the raw floors dispatch by name: a dict lookup is the floor's whole "framework"."""


# -- the raw floors ---------------------------------------------------------------------------------


def raw_rep(sock_ready: Callable[[zmq.Socket], None]) -> None:
    """REP: unpack ``[method, args]``, run the handler, pack the result."""
    ctx = zmq.Context.instance()
    rep = ctx.socket(zmq.REP)
    rep.linger = 0
    sock_ready(rep)
    packb, unpackb, handlers = msgpack.packb, msgpack.unpackb, HANDLERS
    while True:
        method, args = unpackb(rep.recv())
        rep.send(packb(handlers[method](*args)))


def raw_router(sock_ready: Callable[[zmq.Socket], None]) -> None:
    """ROUTER: ``[identity, [id, method, args]]`` in, ``[identity, [id, result]]`` out, in order."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.sndhwm = router.rcvhwm = 0  # a ROUTER drops replies past its high-water mark: 1,024 in flight
    sock_ready(router)
    packb, unpackb, handlers = msgpack.packb, msgpack.unpackb, HANDLERS
    while True:
        ident, body = router.recv_multipart()
        cid, method, args = unpackb(body)
        router.send_multipart([ident, packb([cid, handlers[method](*args)])])


def raw_router_deferred(sock_ready: Callable[[zmq.Socket], None]) -> None:
    """ROUTER whose ``slow`` calls are answered by a timer ``SLOW_SECONDS`` later (no blocking)."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.sndhwm = router.rcvhwm = 0  # as raw_router: no reply dropped at the high-water mark
    sock_ready(router)
    packb, unpackb = msgpack.packb, msgpack.unpackb
    due: list[tuple[float, int, bytes, int]] = []  # (when, tie-breaker, identity, call id)
    seq = 0
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    while True:
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, ident, cid = heapq.heappop(due)
            router.send_multipart([ident, packb([cid, None])])
        timeout = None if not due else max(0.0, (due[0][0] - now) * 1000)
        if not poller.poll(timeout):
            continue
        while True:  # drain everything ready before looking at the timers again
            try:
                ident, body = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            cid, method, args = unpackb(body)
            if method == "slow":
                seq += 1
                heapq.heappush(due, (time.monotonic() + SLOW_SECONDS, seq, ident, cid))
            else:
                router.send_multipart([ident, packb([cid, HANDLERS[method](*args)])])


# -- zcall ------------------------------------------------------------------------------------------


def zcall_service() -> Any:
    """The zcall ``Service`` with the floors' handlers, registered twice: the plain way (``double``,
    ``echo``: ``@service.method``, which an async server runs in its thread pool) and declared
    ``inline=True`` (``double_inline``, ``echo_inline``: run on the loop, as the floor runs them);
    ``slow`` blocks (the pool), ``aslow`` is a coroutine (a task)."""
    import zcall

    service = zcall.Service("bench")
    for fn in (double, echo, slow, aslow):
        service.add(fn)
    service.add(double, name="double_inline", inline=True)
    service.add(echo, name="echo_inline", inline=True)
    return service


def serve_zcall_sync(bind: str) -> tuple[str, Callable[[], None]]:
    """``zcall.SyncServer`` on a background thread (it runs every handler in its own thread, one at a
    time: plain and inline are the same there); returns its endpoint and a stop function."""
    import zcall

    server = zcall.SyncServer(zcall_service(), bind).start()
    return server.endpoint, server.stop


def serve_zcall_async(bind: str) -> tuple[str, Callable[[], None]]:
    """``zcall.AsyncServer`` (ROUTER) on zcall's engine thread, serving ``zcall_service()``."""
    import zcall

    server = zcall.AsyncServer(zcall_service(), bind).start()
    return server.endpoint, server.stop


# -- process plumbing -------------------------------------------------------------------------------

RawLoop = Callable[[Callable[[zmq.Socket], None]], None]
RAW: dict[str, RawLoop] = {
    "raw_rep": raw_rep,
    "raw_router": raw_router,
    "raw_router_deferred": raw_router_deferred,
}
"""Raw servers: a loop that binds through ``sock_ready`` and then serves forever."""

ZCALL: dict[str, Callable[[str], tuple[str, Callable[[], None]]]] = {
    "zcall_sync": serve_zcall_sync,
    "zcall_async": serve_zcall_async,
}
"""zcall servers: start serving in the background, return ``(endpoint, stop)``. Add async ones here."""

SERVERS = sorted([*RAW, *ZCALL])


def _start_raw(loop: RawLoop, bind: str) -> str:
    """Run a raw loop on a daemon thread; returns the endpoint once it is bound."""
    bound = threading.Event()
    endpoint: list[str] = []

    def sock_ready(sock: zmq.Socket) -> None:
        sock.bind(bind)
        endpoint.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
        bound.set()

    def run() -> None:
        try:
            loop(sock_ready)
        except BaseException:
            bound.set()  # never leave the main thread waiting on a loop that died before binding
            raise

    threading.Thread(target=run, name="bench-server", daemon=True).start()
    bound.wait()
    if not endpoint:
        raise SystemExit("raw server failed before binding")
    return endpoint[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=SERVERS)
    parser.add_argument("--bind", default="tcp://127.0.0.1:*")
    parser.add_argument("--cpu", type=int, help="pin this process (and the threads it starts) to one CPU")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})  # before any thread exists, so zmq's io thread inherits it
    stop: Callable[[], None] | None = None
    if args.name in RAW:
        endpoint = _start_raw(RAW[args.name], args.bind)
    else:
        endpoint, stop = ZCALL[args.name](args.bind)
    print(f"READY {endpoint} {os.getpid()}", flush=True)
    # Every server serves on a background thread, so all are measured alike; this thread only waits for
    # stdin to close (the parent exited or is done). SIGTERM keeps its default action: exit at once.
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C in the terminal reaches us too
        sys.stdin.buffer.read()
    if stop is not None:
        stop()
    os._exit(0)


if __name__ == "__main__":
    main()
