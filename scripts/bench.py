"""zcall beside the raw pyzmq floor, in one run: calls/s, p50/p99 latency, CPU per call, ratios to the floor.

Each server runs in its own process (scripts/bench_servers.py, tcp on 127.0.0.1); the clients run here.
A workload is a few rows that make the same calls to the same handler: one raw pyzmq + msgpack floor and
the zcall faces beside it, with handlers written the plain way (``@service.method``: a plain function
runs in the server's thread pool) and declared ``inline=True`` (it runs on the server's loop). Every row
is warmed up, then the rows of a workload take turns for ``--repeat`` runs (so drift hits them alike).

For each run the bench measures wall time and the CPU time of each process, all threads included
(client: ``time.process_time``; server: ``/proc/<pid>/stat``), so it reports CPU microseconds per call
for client and server beside calls/s: on a shared machine a sequential round trip is mostly scheduling
noise, CPU per call is not. Ratios are taken per repeat (each row against the floor's run beside it in
time), then their median and range are reported.

    .venv/bin/python scripts/bench.py                 # everything, under a minute on 2 cores
    .venv/bin/python scripts/bench.py --quick         # smoke test, a few seconds
    .venv/bin/python scripts/bench.py --only seq_double --json

Adding a row: write a driver factory ``(endpoint) -> Driver`` (see ``SeqDriver`` and ``PipelinedRaw``),
name its server in bench_servers.py, and append ``Row(...)`` to the workload in ``WORKLOADS``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgpack
import zmq
from benchlib import process_cpu_s  # scripts/ is on the path: this file's own directory

import zcall

HERE = Path(__file__).resolve().parent
SERVERS_SCRIPT = HERE / "bench_servers.py"
READY_TIMEOUT = 30.0
"""Seconds to wait for a server's READY line (a loaded CI box can be slow to import)."""
RECV_TIMEOUT_MS = 10_000
"""A raw client waiting longer than this for a reply fails the run instead of hanging."""
PAYLOAD = bytes(range(256)) * 256
"""64 KiB for the echo workload (not all zeros, not random: the same bytes every run)."""


# -- measurement ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """How long one run lasts: a number of seconds or a number of calls."""

    seconds: float | None = None
    calls: int | None = None


@dataclass
class Sample:
    """One run of one row: calls made, wall time, every call's latency, and CPU seconds per process."""

    calls: int
    elapsed_s: float
    latencies_ns: list[int]
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0

    @property
    def client_us(self) -> float:
        """Client CPU microseconds per call (all of this process's threads)."""
        return self.client_cpu_s / self.calls * 1e6 if self.calls else float("nan")

    @property
    def server_us(self) -> float:
        """Server CPU microseconds per call (all of its process's threads)."""
        return self.server_cpu_s / self.calls * 1e6 if self.calls else float("nan")

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_us(self, q: float) -> float:
        lat = sorted(self.latencies_ns)
        if not lat:
            return float("nan")
        return lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0


def measured(driver: Any, budget: Any, server_pid: int) -> Sample:
    """``driver.run(budget)`` with both processes' CPU time around it."""
    s0, c0 = process_cpu_s(server_pid), time.process_time()
    sample: Sample = driver.run(budget)
    sample.client_cpu_s = time.process_time() - c0
    sample.server_cpu_s = process_cpu_s(server_pid) - s0
    return sample


class Driver(Protocol):
    """A connected client for one row: ``run`` makes calls for a budget, ``close`` lets go."""

    def run(self, budget: Budget) -> Sample: ...

    def close(self) -> None: ...


def timed_loop(one: Callable[[], None], budget: Budget) -> Sample:
    """Call ``one()`` back to back for the budget, timing each call (sequential workloads)."""
    pc = time.perf_counter_ns
    lat: list[int] = []
    append = lat.append
    start = pc()
    end = start
    if budget.calls is not None:
        for _ in range(budget.calls):
            t = end
            one()
            end = pc()
            append(end - t)
    else:
        stop = start + int((budget.seconds or 0.0) * 1e9)
        while end < stop:
            t = end
            one()
            end = pc()
            append(end - t)
    return Sample(len(lat), (end - start) / 1e9, lat)


class SeqDriver:
    """A sequential client made of a one-call function (which checks the result) and a closer."""

    def __init__(self, one: Callable[[], None], close: Callable[[], None]) -> None:
        self._one = one
        self._close = close
        one()  # connect and check the answer before any timing

    def run(self, budget: Budget) -> Sample:
        return timed_loop(self._one, budget)

    def close(self) -> None:
        self._close()


class BenchError(RuntimeError):
    """A run went wrong (wrong answer, no answer): the benchmark stops rather than report nonsense."""


def _raw_req(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.linger = 0
    sock.rcvtimeo = RECV_TIMEOUT_MS
    sock.connect(endpoint)
    return sock


def raw_seq_double(endpoint: str) -> Driver:
    """Raw REQ: pack ``["double", [21]]``, send, receive, unpack, check."""
    sock = _raw_req(endpoint)
    send, recv, packb, unpackb = sock.send, sock.recv, msgpack.packb, msgpack.unpackb

    def one() -> None:
        send(packb(["double", [21]]))
        if unpackb(recv()) != 42:
            raise BenchError("raw double(21) != 42")

    return SeqDriver(one, sock.close)


def raw_seq_echo(endpoint: str) -> Driver:
    """Raw REQ: echo 64 KiB of bytes, check the length of what comes back."""
    sock = _raw_req(endpoint)
    send, recv, packb, unpackb = sock.send, sock.recv, msgpack.packb, msgpack.unpackb
    data, n = PAYLOAD, len(PAYLOAD)

    def one() -> None:
        send(packb(["echo", [data]]))
        if len(unpackb(recv())) != n:
            raise BenchError("raw echo returned a different length")

    return SeqDriver(one, sock.close)


def zcall_seq(endpoint: str, method: str, args: list[Any], expect: Any) -> Driver:
    """``zcall.SyncClient.call(method, *args)`` one at a time (the sync face of the slow workload)."""
    client = zcall.SyncClient(endpoint, timeout=RECV_TIMEOUT_MS / 1000)
    call = client.call

    def one() -> None:
        if call(method, *args) != expect:
            raise BenchError(f"zcall {method} returned a wrong result")

    return SeqDriver(one, client.close)


def zcall_seq_echo(endpoint: str) -> Driver:
    """``zcall.SyncClient.call("echo", data)`` with 64 KiB, length checked."""
    client = zcall.SyncClient(endpoint, timeout=RECV_TIMEOUT_MS / 1000)
    call = client.call
    data, n = PAYLOAD, len(PAYLOAD)

    def one() -> None:
        if len(call("echo", data)) != n:
            raise BenchError("zcall echo returned a different length")

    return SeqDriver(one, client.close)


class PipelinedRaw:
    """Raw DEALER keeping ``inflight`` calls outstanding: ``[id, method, args]`` out, ``[id, result]`` in.

    A reply frees a slot, which is refilled at once until the budget is spent; then the run drains.
    Latency is per call (send to its reply), so it includes the queueing that pipelining implies.
    """

    def __init__(self, endpoint: str, method: str, args: list[Any], expect: Any, inflight: int) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.sndhwm = self.sock.rcvhwm = 0  # the floor never drops a message at 1,024 in flight
        self.sock.rcvtimeo = RECV_TIMEOUT_MS
        self.sock.connect(endpoint)
        self.method, self.args, self.expect, self.inflight = method, args, expect, inflight
        self._next_id = 0
        self.run(Budget(calls=1))  # connect and check the answer before any timing

    def run(self, budget: Budget) -> Sample:
        pc = time.perf_counter_ns
        send, recv, packb, unpackb = self.sock.send, self.sock.recv, msgpack.packb, msgpack.unpackb
        method, args, expect = self.method, self.args, self.expect
        limit = budget.calls if budget.calls is not None else sys.maxsize
        sent: dict[int, int] = {}
        lat: list[int] = []
        cid = self._next_id
        nsent = 0
        start = pc()
        stop = start + int(budget.seconds * 1e9) if budget.calls is None and budget.seconds else None
        while nsent < self.inflight and nsent < limit:
            cid += 1
            sent[cid] = pc()
            send(packb([cid, method, args]))
            nsent += 1
        while sent:
            try:
                body = recv()
            except zmq.Again:
                raise BenchError(f"no reply within {RECV_TIMEOUT_MS} ms ({len(sent)} in flight)") from None
            now = pc()
            rid, result = unpackb(body)
            lat.append(now - sent.pop(rid))
            if result != expect:
                raise BenchError(f"raw {method} returned {result!r}, expected {expect!r}")
            if nsent < limit and (stop is None or now < stop):
                cid += 1
                sent[cid] = pc()
                send(packb([cid, method, args]))
                nsent += 1
        end = pc()
        self._next_id = cid
        return Sample(len(lat), (end - start) / 1e9, lat)

    def close(self) -> None:
        self.sock.close()


class PipelinedAsyncio:
    """``await client.call(method, *args)`` from ``inflight`` coroutines on one asyncio loop.

    Each coroutine makes calls back to back until the budget is spent, so ``inflight`` calls are always
    outstanding, as in the raw pipelined loop; latency is each await, send to result.
    """

    def __init__(
        self,
        endpoint: str,
        method: str,
        args: list[Any],
        expect: Any,
        inflight: int,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.method, self.args, self.expect, self.inflight = method, args, expect, inflight
        options = dict(client_options or {})

        async def make() -> zcall.AsyncClient:
            return zcall.AsyncClient(endpoint, timeout=RECV_TIMEOUT_MS / 1000, **options)

        self.client = self.loop.run_until_complete(make())
        self.run(Budget(calls=1))

    def run(self, budget: Budget) -> Sample:
        import asyncio

        return self.loop.run_until_complete(self._run(budget, asyncio))

    async def _run(self, budget: Budget, asyncio: Any) -> Sample:
        pc = time.perf_counter_ns
        call, method, args, expect = self.client.call, self.method, self.args, self.expect
        lat: list[int] = []
        left = [budget.calls if budget.calls is not None else sys.maxsize]
        start = pc()
        stop = start + int(budget.seconds * 1e9) if budget.calls is None and budget.seconds else None

        async def worker() -> None:
            while left[0] > 0 and (stop is None or pc() < stop):
                left[0] -= 1
                t = pc()
                if await call(method, *args) != expect:
                    raise BenchError(f"zcall {method} returned a wrong result")
                lat.append(pc() - t)

        await asyncio.gather(*(worker() for _ in range(min(self.inflight, left[0]))))
        return Sample(len(lat), (pc() - start) / 1e9, lat)

    def close(self) -> None:
        self.client.close()
        self.loop.close()


class PipelinedCallbacks:
    """``client.call_async(method, *args, callback=...)`` from this (plain) thread, ``inflight`` at a time.

    A semaphore bounds the calls outstanding; each callback (on zcall's engine thread) records the
    latency and frees a slot, so the caller refills at once, as in the raw pipelined loop.
    """

    def __init__(
        self,
        endpoint: str,
        method: str,
        args: list[Any],
        expect: Any,
        inflight: int,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.client = zcall.AsyncClient(endpoint, timeout=RECV_TIMEOUT_MS / 1000, **(client_options or {}))
        self.method, self.args, self.expect, self.inflight = method, args, expect, inflight
        self.run(Budget(calls=1))

    def run(self, budget: Budget) -> Sample:
        import threading

        pc = time.perf_counter_ns
        call_async, method, args, expect = self.client.call_async, self.method, self.args, self.expect
        slots = threading.Semaphore(self.inflight)
        lat: list[int] = []
        errors: list[BaseException] = []
        limit = budget.calls if budget.calls is not None else sys.maxsize
        start = pc()
        stop = start + int(budget.seconds * 1e9) if budget.calls is None and budget.seconds else None

        def done_at(t: int) -> Callable[[Any], None]:
            def callback(result: Any) -> None:
                lat.append(pc() - t)
                if result != expect:
                    errors.append(BenchError(f"zcall {method} returned {result!r}"))
                slots.release()

            return callback

        def errback(exc: BaseException) -> None:
            errors.append(exc)
            slots.release()

        n = 0
        while n < limit and (stop is None or pc() < stop):
            slots.acquire()
            call_async(method, *args, callback=done_at(pc()), errback=errback)
            n += 1
        for _ in range(self.inflight):  # wait for the last ones
            if not slots.acquire(timeout=RECV_TIMEOUT_MS / 1000):
                raise BenchError("callback face: replies missing at the end of the run")
        if errors:
            raise BenchError(f"callback face: {errors[0]!r}")
        return Sample(len(lat), (pc() - start) / 1e9, lat)

    def close(self) -> None:
        self.client.close()


# -- the registry -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One implementation of a workload: a server (bench_servers.py name) and a driver factory."""

    impl: str
    server: str
    driver: Callable[[str], Driver]
    floor: bool = False


@dataclass(frozen=True)
class Workload:
    """Rows that make the same calls; ``ratio`` compares each to the row marked ``floor``."""

    name: str
    doc: str
    rows: tuple[Row, ...]
    payload_bytes: int = 0
    fixed_calls: int | None = None  # every run makes exactly this many calls (ignores --duration)
    quick_calls: int | None = None  # ... and this many under --quick


def _pipelined_rows(method: str, args: list[Any], expect: Any, inflight: int) -> tuple[Row, ...]:
    """The async faces of a pipelined workload: asyncio and callbacks, plain and inline handlers."""
    return (
        Row("zcall-asyncio", "zcall_async", lambda ep: PipelinedAsyncio(ep, method, args, expect, inflight)),
        Row(
            "zcall-asyncio-inline",
            "zcall_async",
            lambda ep: PipelinedAsyncio(ep, f"{method}_inline", args, expect, inflight),
        ),
        Row(
            "zcall-callback",
            "zcall_async",
            lambda ep: PipelinedCallbacks(ep, method, args, expect, inflight),
        ),
        Row(
            "zcall-callback-inline",
            "zcall_async",
            lambda ep: PipelinedCallbacks(ep, f"{method}_inline", args, expect, inflight),
        ),
    )


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload(
            "seq_double",
            "sequential double(21), one call at a time (zcall-sync: @service.method as written)",
            (
                Row("raw-req-rep", "raw_rep", raw_seq_double, floor=True),
                Row("zcall-sync", "zcall_sync", lambda ep: zcall_seq(ep, "double", [21], 42)),
            ),
        ),
        Workload(
            "echo_64k",
            "sequential echo of 64 KiB bytes (MB/s counts the payload one way)",
            (
                Row("raw-req-rep", "raw_rep", raw_seq_echo, floor=True),
                Row("zcall-sync", "zcall_sync", zcall_seq_echo),
            ),
            payload_bytes=len(PAYLOAD),
        ),
        Workload(
            "pipelined_double",
            "double(21) with 64 calls in flight: plain (the thread pool) and inline handlers",
            (
                Row(
                    "raw-dealer-router",
                    "raw_router",
                    lambda ep: PipelinedRaw(ep, "double", [21], 42, inflight=64),
                    floor=True,
                ),
                *_pipelined_rows("double", [21], 42, 64),
            ),
        ),
        Workload(
            "slow_handler",
            "200 calls to a 10 ms handler (a coroutine on the async faces), all in flight where the face can",
            (
                Row(
                    "raw-router-timer",
                    "raw_router_deferred",
                    lambda ep: PipelinedRaw(ep, "slow", [], None, inflight=200),
                    floor=True,
                ),
                Row(
                    "zcall-asyncio",
                    "zcall_async",
                    lambda ep: PipelinedAsyncio(ep, "aslow", [], None, inflight=200),
                ),
                Row(
                    "zcall-callback",
                    "zcall_async",
                    lambda ep: PipelinedCallbacks(ep, "aslow", [], None, inflight=200),
                ),
                Row("zcall-sync", "zcall_sync", lambda ep: zcall_seq(ep, "slow", [], None)),
            ),
            fixed_calls=200,
            quick_calls=20,
        ),
    ]
}


# -- servers as processes ---------------------------------------------------------------------------


class ServerProcess:
    """A bench_servers.py process: started, waited for (READY line, never a sleep), stopped by pid."""

    def __init__(self, name: str, cpu: int | None = None) -> None:
        self.name = name
        pin = [] if cpu is None else ["--cpu", str(cpu)]
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVERS_SCRIPT), name, *pin],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            self.endpoint = self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> str:
        out = self.proc.stdout
        assert out is not None
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise BenchError(f"server {self.name} sent no READY line within {READY_TIMEOUT:.0f} s")
                line = out.readline().decode(errors="replace")
                if not line:
                    raise BenchError(f"server {self.name} exited with {self.proc.wait()} before READY")
                if line.startswith("READY "):
                    return line.split()[1]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """Close its stdin (it exits), then SIGTERM, then SIGKILL: always reaped."""
        p = self.proc
        try:
            if p.stdin is not None:
                p.stdin.close()
            p.wait(timeout=2)
        except (subprocess.TimeoutExpired, OSError):
            p.terminate()
            try:
                p.wait(timeout=2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        finally:
            if p.stdout is not None:
                p.stdout.close()


# -- running ----------------------------------------------------------------------------------------


@dataclass
class Settings:
    """What every run gets: its budget, the warmup, how many repeats, which CPUs."""

    budget: Budget
    warmup: Budget
    repeat: int
    quick: bool
    pin: str = "none"
    client_cpu: int | None = None
    server_cpu: int | None = None


@dataclass
class RowResult:
    """The median run of a row, with every run's calls/s for the spread."""

    workload: Workload
    row: Row
    median: Sample
    runs: list[float]
    server_pid: int
    samples: list[Sample] = field(default_factory=list)
    ratio: float | None = None
    floor_impl: str | None = None
    ratios: list[float] = field(default_factory=list)
    """Per repeat: this row's calls/s over the floor's in the same repeat."""
    cpu_ratios: list[float] = field(default_factory=list)
    """Per repeat: the floor's total CPU per call over this row's (above 1: cheaper than the floor)."""

    @property
    def cpu_ratio(self) -> float | None:
        return statistics.median(self.cpu_ratios) if self.cpu_ratios else None

    @property
    def client_us(self) -> float:
        return statistics.median(s.client_us for s in self.samples)

    @property
    def server_us(self) -> float:
        return statistics.median(s.server_us for s in self.samples)

    @property
    def mb_per_s(self) -> float | None:
        if not self.workload.payload_bytes:
            return None
        return self.median.calls_per_s * self.workload.payload_bytes / 1e6

    @property
    def spread(self) -> float:
        """(max - min) / median of the runs' calls/s: how far to trust the row."""
        med = self.median.calls_per_s
        return (max(self.runs) - min(self.runs)) / med if med else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload.name,
            "impl": self.row.impl,
            "server": self.row.server,
            "floor": self.row.floor,
            "calls": self.median.calls,
            "elapsed_s": round(self.median.elapsed_s, 6),
            "calls_per_s": round(self.median.calls_per_s, 1),
            "p50_us": round(self.median.percentile_us(0.50), 1),
            "p99_us": round(self.median.percentile_us(0.99), 1),
            "mb_per_s": None if self.mb_per_s is None else round(self.mb_per_s, 1),
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "ratio_range": [round(min(self.ratios), 3), round(max(self.ratios), 3)] if self.ratios else None,
            "cpu_ratio": None if self.cpu_ratio is None else round(self.cpu_ratio, 3),
            "client_cpu_us": round(self.client_us, 2),
            "server_cpu_us": round(self.server_us, 2),
            "floor_impl": self.floor_impl,
            "runs_calls_per_s": [round(r, 1) for r in self.runs],
            "spread": round(self.spread, 3),
        }


def _budgets(w: Workload, s: Settings) -> tuple[Budget, Budget]:
    if w.fixed_calls is not None:
        n = (w.quick_calls or w.fixed_calls) if s.quick else w.fixed_calls
        return Budget(calls=n), Budget(calls=max(1, n // 4))
    return s.budget, s.warmup


def run_workload(
    w: Workload, rows: Sequence[Row], s: Settings, log: Callable[[str], None]
) -> list[RowResult]:
    """Start each row's server, warm every row, then alternate the rows for ``repeat`` runs."""
    budget, warmup = _budgets(w, s)
    with ExitStack() as stack:
        servers: dict[str, ServerProcess] = {}
        drivers: list[Driver] = []
        for row in rows:
            if row.server not in servers:
                servers[row.server] = srv = ServerProcess(row.server, s.server_cpu)
                stack.callback(srv.stop)
            d = row.driver(servers[row.server].endpoint)
            stack.callback(d.close)
            drivers.append(d)
        for d in drivers:
            d.run(warmup)
        samples: list[list[Sample]] = [[] for _ in rows]
        for rep in range(s.repeat):
            order = list(range(len(rows)))
            if rep % 2:
                order.reverse()  # alternate who goes first, so neither always runs on a warmer box
            for i in order:
                samples[i].append(measured(drivers[i], budget, servers[rows[i].server].pid))
            log(f"  {w.name} run {rep + 1}/{s.repeat}")
        results = []
        for row, runs in zip(rows, samples, strict=True):
            ranked = sorted(runs, key=lambda x: x.calls_per_s)
            median = ranked[(len(ranked) - 1) // 2]
            results.append(
                RowResult(w, row, median, [r.calls_per_s for r in runs], servers[row.server].pid, list(runs))
            )
    floor = next((r for r in results if r.row.floor), None)
    if floor is not None:
        for r in results:
            r.floor_impl = floor.row.impl
            pairs = list(zip(r.samples, floor.samples, strict=True))
            r.ratios = [a.calls_per_s / b.calls_per_s for a, b in pairs if b.calls_per_s]
            r.cpu_ratios = [
                (b.client_us + b.server_us) / (a.client_us + a.server_us)
                for a, b in pairs
                if a.client_us + a.server_us > 0
            ]
            r.ratio = statistics.median(r.ratios) if r.ratios else None
    return results


def select(only: Sequence[str]) -> list[tuple[Workload, list[Row]]]:
    """``--only`` names (``workload`` or ``workload/impl``) to the rows to run, in registry order."""
    if not only:
        return [(w, list(w.rows)) for w in WORKLOADS.values()]
    wanted = {name.strip() for item in only for name in item.split(",") if name.strip()}
    known = {w.name for w in WORKLOADS.values()}
    known |= {f"{w.name}/{r.impl}" for w in WORKLOADS.values() for r in w.rows}
    unknown = sorted(wanted - known)
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(unknown)}; choose from: {', '.join(sorted(known))}")
    picked = []
    for w in WORKLOADS.values():
        rows = [r for r in w.rows if w.name in wanted or f"{w.name}/{r.impl}" in wanted]
        if rows:
            picked.append((w, rows))
    return picked


# -- reporting --------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """The machine and the versions that produced the numbers."""
    try:
        from msgpack import _cmsgpack  # noqa: F401

        msgpack_impl = "C extension"
    except ImportError:
        msgpack_impl = "pure Python fallback"
    return {
        "machine": {
            "cores": os.cpu_count(),
            "cpu": _cpu_model(),
            "platform": platform.platform(),
        },
        "versions": {
            "python": platform.python_version(),
            "pyzmq": zmq.__version__,
            "libzmq": zmq.zmq_version(),
            "msgpack": ".".join(map(str, msgpack.version)) + f" ({msgpack_impl})",
            "zcall": zcall.__version__,
        },
    }


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def render(results: list[RowResult], env: dict[str, Any], s: Settings) -> str:
    m, v = env["machine"], env["versions"]
    budget = f"{s.budget.calls} calls" if s.budget.calls is not None else f"{s.budget.seconds:g} s"
    lines = [
        f"machine: {m['cores']} cores, {m['cpu']}, {m['platform']}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"runs: median of {s.repeat}, {budget} each (fixed-count workloads excepted), "
        f"warmup {s.warmup.seconds if s.warmup.calls is None else s.warmup.calls}"
        f"{' s' if s.warmup.calls is None else ' calls'}",
        f"placement: client and servers in separate processes over tcp 127.0.0.1; pin={s.pin}"
        + ("" if s.client_cpu is None else f" (client cpu {s.client_cpu}, servers cpu {s.server_cpu})"),
        "",
    ]
    head = (
        "workload",
        "impl",
        "calls/s",
        "p50 us",
        "p99 us",
        "MB/s",
        "cli us",
        "srv us",
        "calls/s vs floor [range]",
        "cpu vs floor",
    )
    table = [head]
    for r in results:
        if r.row.floor:
            vs, cpu = "floor", "floor"
        else:
            rng = f" [{min(r.ratios):.2f}-{max(r.ratios):.2f}]" if r.ratios else ""
            vs = _num(r.ratio, ".2f") + ("x" if r.ratio is not None else "") + rng
            cpu = _num(r.cpu_ratio, ".2f") + ("x" if r.cpu_ratio is not None else "")
        table.append(
            (
                r.workload.name,
                r.row.impl,
                f"{r.median.calls_per_s:,.0f}",
                f"{r.median.percentile_us(0.5):.1f}",
                f"{r.median.percentile_us(0.99):.1f}",
                _num(r.mb_per_s, ".1f"),
                f"{r.client_us:.1f}",
                f"{r.server_us:.1f}",
                vs,
                cpu,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for i, row in enumerate(table):
        cells = [c.ljust(widths[j]) if j < 2 else c.rjust(widths[j]) for j, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    ratios = [r for r in results if not r.row.floor and r.ratio is not None]
    if ratios:
        lines.append("")
    for r in ratios:
        lines.append(
            f"ratio {r.workload.name}: {r.row.impl} / {r.floor_impl} = {r.ratio:.2f}x calls/s "
            f"(p50 {r.median.percentile_us(0.5):.1f} us), {_num(r.cpu_ratio, '.2f')}x by CPU per call"
        )
    lines.append("")
    lines.append(
        "cli/srv us: CPU microseconds per call of the client and the server process (all threads); "
        "cpu vs floor: the floor's total CPU per call over the row's (above 1 = cheaper than the floor)"
    )
    return "\n".join(lines)


PIN_MODES = ("split", "same", "none")


def pin_cpus(mode: str) -> tuple[str, int | None, int | None]:
    """``(mode actually used, client CPU, server CPU)``; split needs two CPUs, else it becomes none."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if mode == "split" and len(cpus) >= 2:
        return mode, cpus[0], cpus[1]
    if mode == "same" and cpus:
        return mode, cpus[0], cpus[0]
    return "none", None, None


# -- main -------------------------------------------------------------------------------------------


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises SystemExit here, so the finally blocks stop every server process."""

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short runs: a smoke test, not a measurement")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--duration", type=float, help="seconds per run (default 1.5; 0.2 with --quick)")
    g.add_argument("--calls", type=int, help="calls per run instead of a duration")
    p.add_argument("--repeat", type=int, default=3, help="runs per row; the median is reported (default 3)")
    p.add_argument("--warmup", type=float, help="warmup seconds per row (default 0.5; 0.05 with --quick)")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"workload or workload/impl to run (repeatable, comma-separated): {', '.join(WORKLOADS)}",
    )
    p.add_argument(
        "--pin",
        choices=PIN_MODES,
        default="split",
        help="CPU placement: split = client on one CPU, servers on another (default; steadiest); "
        "same = all on one CPU (exposes per-call CPU cost); none = let the OS schedule",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    p.add_argument("--list", action="store_true", help="list workloads and rows, then exit")
    a = p.parse_args(argv)
    if a.repeat < 1:
        p.error("--repeat must be at least 1")
    if a.duration is not None and a.duration <= 0:
        p.error("--duration must be positive")
    if a.calls is not None and a.calls < 1:
        p.error("--calls must be at least 1")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    if a.list:
        for w in WORKLOADS.values():
            print(f"{w.name}: {w.doc}")
            for r in w.rows:
                print(f"  {w.name}/{r.impl}  (server {r.server}{', floor' if r.floor else ''})")
        return 0
    budget = (
        Budget(calls=a.calls)
        if a.calls is not None
        else Budget(seconds=a.duration if a.duration is not None else (0.2 if a.quick else 1.5))
    )
    warmup = Budget(seconds=a.warmup if a.warmup is not None else (0.05 if a.quick else 0.5))
    s = Settings(budget, warmup, a.repeat, a.quick, *pin_cpus(a.pin))
    if s.client_cpu is not None:
        os.sched_setaffinity(0, {s.client_cpu})  # before the first socket starts zmq's io thread
    plan = select(a.only)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    env = environment()
    results: list[RowResult] = []
    t0 = time.monotonic()
    with _sigterm_unwinds():
        try:
            for w, rows in plan:
                log(f"{w.name}: {', '.join(r.impl for r in rows)}")
                results.extend(run_workload(w, rows, s, log))
        except KeyboardInterrupt:
            log("interrupted: servers stopped")
            return 130
    log(f"done in {time.monotonic() - t0:.1f} s")
    if a.json:
        doc = {
            **env,
            "settings": {
                "seconds": s.budget.seconds,
                "calls": s.budget.calls,
                "warmup_seconds": s.warmup.seconds,
                "repeat": s.repeat,
                "quick": s.quick,
                "pin": s.pin,
                "client_cpu": s.client_cpu,
                "server_cpu": s.server_cpu,
            },
            "results": [r.to_json() for r in results],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(render(results, env, s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
