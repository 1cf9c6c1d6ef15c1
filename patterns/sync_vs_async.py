"""Sync vs async, measured: the same 10 ms handler called one at a time, then with many calls in flight.

The essay claims asynchronous calls raise throughput because the caller does not block on each reply.
Here is the number. One ``AsyncServer`` (a separate process) serves ``work(i, delay_ms)``, a coroutine
that awaits ``asyncio.sleep`` (I/O-like waiting, not CPU), so the server overlaps as many calls as it
is given. ``SyncClient`` gives it one at a time (about ``calls * delay`` seconds); ``AsyncClient`` gives it
up to ``--in-flight`` at once (about ``calls / in_flight * delay``). Latency is per call, from send to
reply, excluding time spent waiting for a free in-flight slot. A warm-up call on each client first
keeps connection setup out of the numbers.

Run alone (starts its own server process, cleans it up):  python patterns/sync_vs_async.py
Or in two terminals:  python patterns/sync_vs_async.py --serve tcp://127.0.0.1:5555
                      python patterns/sync_vs_async.py --call tcp://127.0.0.1:5555 [--calls 200 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time

import zcall
from zcall.testing import SpawnError, spawn
from zcall.tools.ready import announce

service = zcall.Service("sleeper")


@service.method
async def work(i: int, delay_ms: float) -> int:
    """Wait ``delay_ms`` without blocking the server's loop, then return ``i``."""
    await asyncio.sleep(delay_ms / 1000)
    return i


def serve(endpoint: str) -> None:
    """Serve ``work`` on an AsyncServer until Ctrl-C or SIGTERM."""
    # READY (the line the parent waits for, never a sleep) goes out once bound; Ctrl-C and SIGTERM stop
    # the server gracefully (calls in flight get their grace period).
    server = zcall.AsyncServer(service, endpoint)
    server.serve_forever(on_ready=announce)


class Run:
    """The outcome of one run: wall time and per-call latencies (seconds)."""

    def __init__(self, label: str, wall: float, latencies: list[float]) -> None:
        self.label = label
        self.wall = wall
        self.latencies = latencies

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall

    @property
    def mean_ms(self) -> float:
        return 1000 * sum(self.latencies) / len(self.latencies)

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]  # nearest-rank percentile


def run_sync(endpoint: str, calls: int, delay_ms: float) -> Run:
    """``calls`` blocking calls, each waiting for its reply before the next one goes out."""
    latencies = []
    with zcall.SyncClient(endpoint, timeout=10.0) as client:
        client.call("work", -1, 0)  # warm-up: connect outside the measurement
        t0 = time.perf_counter()
        for i in range(calls):
            t = time.perf_counter()
            if client.call("work", i, delay_ms) != i:
                raise SystemExit(f"sync call {i} returned a wrong result")
            latencies.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
    return Run("sync  (SyncClient, 1 at a time)", wall, latencies)


async def run_async(endpoint: str, calls: int, in_flight: int, delay_ms: float) -> Run:
    """``calls`` calls through the asyncio face with at most ``in_flight`` awaiting replies at once."""
    latencies: list[float] = []
    slots = asyncio.Semaphore(in_flight)

    async def one(client: zcall.AsyncClient, i: int) -> None:
        async with slots:
            t = time.perf_counter()
            if await client.call("work", i, delay_ms) != i:
                raise SystemExit(f"async call {i} returned a wrong result")
            latencies.append(time.perf_counter() - t)

    async with zcall.AsyncClient(endpoint, timeout=10.0, max_in_flight=in_flight) as client:
        await client.call("work", -1, 0)  # warm-up: connect outside the measurement
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(calls)))
        wall = time.perf_counter() - t0
    return Run(f"async (AsyncClient, up to {in_flight} in flight)", wall, latencies)


def compare(endpoint: str, calls: int, in_flight: int, delay_ms: float) -> None:
    """Run both, print the table and the speedup."""
    sync = run_sync(endpoint, calls, delay_ms)
    aio = asyncio.run(run_async(endpoint, calls, in_flight, delay_ms))
    width = max(len(sync.label), len(aio.label))
    print(f"{calls} calls to a {delay_ms:g} ms handler (AsyncServer in another process)")
    print(f"{'mode':<{width}}  {'wall s':>8}  {'calls/s':>9}  {'mean ms':>8}  {'p99 ms':>8}")
    for r in (sync, aio):
        print(f"{r.label:<{width}}  {r.wall:>8.3f}  {r.rate:>9.1f}  {r.mean_ms:>8.2f}  {r.p99_ms:>8.2f}")
    print(f"speedup (async over sync): {sync.wall / aio.wall:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="ENDPOINT", help="only serve, on ENDPOINT")
    parser.add_argument("--call", metavar="ENDPOINT", help="only measure against the server at ENDPOINT")
    parser.add_argument("--calls", type=int, default=200, help="calls per mode (default 200)")
    parser.add_argument("--in-flight", type=int, default=100, help="async calls in flight (default 100)")
    parser.add_argument("--delay-ms", type=float, default=10.0, help="handler time, ms (default 10)")
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    if args.calls < 1 or args.in_flight < 1 or args.delay_ms < 0:
        parser.error("--calls and --in-flight must be >= 1, --delay-ms >= 0")
    if args.call:
        return compare(args.call, args.calls, args.in_flight, args.delay_ms)
    try:  # start the server in a child process; returns once it has printed READY <endpoint>
        server = spawn([__file__, "--serve", "tcp://127.0.0.1:*"])
    except SpawnError as exc:
        raise SystemExit(f"server failed to start: {exc}") from None
    try:
        compare(server.endpoint, args.calls, args.in_flight, args.delay_ms)
    finally:
        server.stop()  # SIGTERM, then SIGKILL; reaped by pid
        sys.stderr.write(server.stderr)  # anything it logged (its stderr was captured, not our terminal)


if __name__ == "__main__":
    main()
