"""Scatter-gather: one caller fans a call out to N servers at once and gathers their answers.

The job (the sum of i*i over [0, TOTAL)) is cut into N ranges; server k computes range k. Each server is
its own process on its own endpoint; the caller sends all N calls without waiting (``asyncio.gather``),
so the gather takes as long as the slowest server, not the sum of all of them. One server is slow on
purpose (``--slow-ms``) to show the fast answers arrive on their own time; ``--fail-one`` makes the last
server raise, and the gather reports that error next to the other servers' results.

One ``AsyncClient`` per server, not one client over the endpoint list: a client with several endpoints
spreads calls round-robin over whichever servers are connected (load balancing, failover), so it
cannot promise that call k reaches server k. Scatter needs a fixed target per call.

Run alone (starts N server processes, cleans them up):  python patterns/scatter_gather.py [--fail-one]
Or by hand:  python patterns/scatter_gather.py --serve tcp://127.0.0.1:5601 --name server-0  (one per
             terminal), then  python patterns/scatter_gather.py --call tcp://127.0.0.1:5601 tcp://...
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
from typing import Any

import zcall
from zcall.testing import ProcessHandle, SpawnError, spawn, stop_all
from zcall.tools.ready import announce

TOTAL = 300_000
"""The job: sum of i*i for i in [0, TOTAL), split evenly over the servers."""

service = zcall.Service("partial-sums")
_settings: dict[str, Any] = {"name": "server", "work_ms": 0, "fail": False}


@service.method
async def partial(lo: int, hi: int) -> dict[str, Any]:
    """Sum i*i over [lo, hi) after ``work_ms`` of simulated I/O; says which server and process did it."""
    if _settings["work_ms"]:
        await asyncio.sleep(_settings["work_ms"] / 1000)
    if _settings["fail"]:
        raise RuntimeError(f"{_settings['name']} cannot compute [{lo}, {hi}) (simulated failure)")
    return {"server": _settings["name"], "pid": os.getpid(), "lo": lo, "hi": hi, "sum": square_sum(lo, hi)}


def square_sum(lo: int, hi: int) -> int:
    """The reference computation, also used by the caller to check the combined result."""
    return sum(i * i for i in range(lo, hi))


def serve(endpoint: str) -> None:
    """Serve ``partial`` on an AsyncServer until Ctrl-C or SIGTERM."""
    # READY (the line the parent waits for, never a sleep) goes out once bound; Ctrl-C and SIGTERM stop
    # the server gracefully (calls in flight get their grace period).
    server = zcall.AsyncServer(service, endpoint)
    server.serve_forever(on_ready=announce)


def ranges(total: int, n: int) -> list[tuple[int, int]]:
    """Cut [0, total) into n contiguous ranges of (almost) equal size."""
    bounds = [total * k // n for k in range(n + 1)]
    return list(itertools.pairwise(bounds))


async def timed_call(client: zcall.AsyncClient, lo: int, hi: int, t0: float) -> tuple[float, Any]:
    """One leg of the scatter: (seconds from the scatter's start to this answer, result or exception)."""
    try:
        result: Any = await client.call("partial", lo, hi)
    except zcall.ZcallError as exc:  # a remote error, a timeout, a lost connection: report, don't abort
        result = exc
    return time.perf_counter() - t0, result


async def scatter_gather(endpoints: list[str], total: int, timeout: float) -> int:
    """Call every server at once, print each answer and the combined result; returns an exit code."""
    parts = ranges(total, len(endpoints))
    clients = [zcall.AsyncClient(ep, timeout=timeout) for ep in endpoints]
    try:
        t0 = time.perf_counter()
        legs = await asyncio.gather(
            *(timed_call(c, lo, hi, t0) for c, (lo, hi) in zip(clients, parts, strict=True))
        )
        wall = time.perf_counter() - t0
    finally:
        for c in clients:
            await c.aclose()
    combined, ok, failed = 0, 0, []
    for k, ((lo, hi), (seconds, result)) in enumerate(zip(parts, legs, strict=True)):
        ms = seconds * 1000
        if isinstance(result, BaseException):
            failed.append((lo, hi))
            print(f"answer {k}: FAILED from {endpoints[k]} for [{lo}, {hi}) at +{ms:.0f} ms: {result}")
            continue
        ok += 1
        combined += result["sum"]
        print(
            f"answer {k}: {result['server']} (pid {result['pid']}) sum over [{lo}, {hi}) = {result['sum']} "
            f"at +{ms:.0f} ms"
        )
    slowest = max(range(len(legs)), key=lambda k: legs[k][0])
    sequential_ms = sum(seconds for seconds, _ in legs) * 1000  # all legs start at t0: each is a duration
    print(
        f"gathered {len(legs)} answers in {wall * 1000:.0f} ms: as long as the slowest "
        f"(answer {slowest}, +{legs[slowest][0] * 1000:.0f} ms), not the sum of all ({sequential_ms:.0f} ms)"
    )
    expected = sum(square_sum(lo, hi) for lo, hi in parts if (lo, hi) not in failed)
    check = "matches" if combined == expected else f"DOES NOT match {expected}"
    if failed:
        missing = ", ".join(f"[{lo}, {hi})" for lo, hi in failed)
        print(
            f"combined result: PARTIAL {combined} from {ok}/{len(parts)} servers (missing {missing}; "
            f"{check} the local check)"
        )
    else:
        print(f"combined result: {combined} from {ok}/{len(parts)} servers ({check} the local check)")
    return 0 if combined == expected else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="ENDPOINT", help="only serve, on ENDPOINT")
    parser.add_argument("--name", default="server", help="(--serve) the name this server reports")
    parser.add_argument("--fail", action="store_true", help="(--serve) every call raises")
    parser.add_argument("--call", metavar="ENDPOINT", nargs="+", help="only scatter-gather over ENDPOINTs")
    parser.add_argument("-n", "--servers", type=int, default=3, help="servers to start (default 3)")
    parser.add_argument("--work-ms", type=int, default=100, help="time each server takes (default 100)")
    parser.add_argument("--slow-ms", type=int, default=400, help="time server 1 takes (default 400)")
    parser.add_argument("--fail-one", action="store_true", help="the last server fails its call")
    parser.add_argument("--total", type=int, default=TOTAL, help=f"sum i*i over [0, TOTAL) ({TOTAL})")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-call timeout, seconds")
    args = parser.parse_args()
    if args.serve:
        _settings.update(name=args.name, work_ms=args.work_ms, fail=args.fail)
        serve(args.serve)
        return 0
    if args.call:
        return asyncio.run(scatter_gather(args.call, args.total, args.timeout))
    if args.servers < 1:
        parser.error("--servers must be at least 1")
    servers: list[ProcessHandle] = []
    try:
        for k in range(args.servers):  # start them all, then wait for each: they boot in parallel
            work = args.slow_ms if k == 1 else args.work_ms
            fail = ["--fail"] if args.fail_one and k == args.servers - 1 else []
            cmd = [__file__, "--serve", "tcp://127.0.0.1:*", "--name", f"server-{k}", "--work-ms", str(work)]
            servers.append(spawn(cmd + fail, ready_prefix=None))
        endpoints = [s.wait_ready().endpoint for s in servers]
        return asyncio.run(scatter_gather(endpoints, args.total, args.timeout))
    except SpawnError as exc:  # its stderr is written out below, before this message
        raise SystemExit(f"server failed to start: no READY line from pid {exc.pid}") from None
    finally:
        stop_all(servers, timeout=5.0)  # SIGTERM to all, then SIGKILL; each reaped by pid
        for s in servers:
            sys.stderr.write(s.stderr)  # anything it logged (its stderr was captured, not our terminal)


if __name__ == "__main__":
    sys.exit(main())
