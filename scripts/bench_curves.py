"""Cost curves: how zcall's throughput, latency, CPU per call and memory grow with the work, beside the floor.

Four curves, each printed as a table and drawn as a PNG (matplotlib, the ``bench`` extra):

- ``clients``: 1, 4, 16, 64 client *processes* calling one server at once, each pipelining its share of a
  fixed number of calls (``--total-calls``, ``--client-inflight`` calls in flight per process) and
  reporting its calls, latencies and CPU time back as a JSON line;
- ``inflight``: 1 to 1,024 calls in flight from one client (this process);
- ``payload``: bytes echo of 16 B, 1 KiB, 64 KiB, 1 MiB and 16 MiB, one call at a time;
- ``idle``: the server's memory (RSS) per connection with 0, 100 and 1,000 idle clients (each made one
  call, so the connection is up on both sides), held by a few child processes, and its CPU while idle.

Each curve runs beside the raw pyzmq + msgpack floor of scripts/bench.py (raw REQ/REP, raw DEALER/ROUTER,
the same handlers from scripts/bench_servers.py), and the zcall rows serve handlers the plain way
(``@service.method``: a plain function runs in the server's thread pool) and, where that is the
question, declared ``inline=True``. Every server, and every client of the ``clients`` and ``idle``
curves, is its own process (``zcall.tools.process``, READY lines, stopped by pid); tcp on 127.0.0.1.

CPU per call is measured for each process, all threads included: the client with ``time.process_time``
(summed over the client processes of the ``clients`` curve), the server from ``/proc/<pid>/stat``.
Each point's rows take turns for ``--repeat`` runs (the order alternates) and each row's ratio to the
floor is taken per repeat, then the median is reported.

Settings the defaults would not allow, used on every zcall side of every curve (and printed):
``Codec(max_message_size=32 MiB)``, since a 16 MiB echo is 16 MiB plus its envelope, above zcall's
default limit of exactly 16 MiB; and ``max_in_flight=4096`` on clients and servers, above the default
1,000 (1,024 calls in flight; 64 clients x 16).

    .venv/bin/pip install -e '.[bench]'                 # matplotlib, for the PNGs (tables without it)
    .venv/bin/python scripts/bench_curves.py             # all four curves, a few minutes on 2 cores
    .venv/bin/python scripts/bench_curves.py --quick     # smoke run: fewer points, tiny budgets
    .venv/bin/python scripts/bench_curves.py --only inflight,payload --out /tmp/curves --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import zmq
from bench import (
    RECV_TIMEOUT_MS,
    BenchError,
    Budget,
    Driver,
    PipelinedAsyncio,
    PipelinedCallbacks,
    PipelinedRaw,
    SeqDriver,
    _raw_req,
    _sigterm_unwinds,
    environment,
    pin_cpus,
)
from bench_servers import RAW, _start_raw, zcall_service
from benchlib import process_cpu_s, process_rss_bytes

import zcall
from zcall.server.signals import StopSignal
from zcall.tools import process
from zcall.tools.ready import announce

THIS = Path(__file__).resolve()
READY_TIMEOUT = 30.0
"""Seconds to wait for a child's READY line (64 interpreters starting on 2 cores take a while)."""
RESULT_TIMEOUT = 300.0
"""Seconds to wait for a client process's result before the run fails."""

BIG_MESSAGE = 32 * 1024 * 1024
BIG_CODEC = zcall.Codec(max_message_size=BIG_MESSAGE)
"""A 16 MiB echo is 16 MiB plus its envelope: above zcall's default limit, which is exactly 16 MiB."""
MAX_IN_FLIGHT = 4096
"""zcall clients and servers refuse more than 1,000 calls in flight by default; the curves go past it."""
CLIENT_OPTIONS: dict[str, Any] = {"codec": BIG_CODEC, "max_in_flight": MAX_IN_FLIGHT}
IDLE_PER_HOLDER = 250
"""Idle clients one child process holds at most (a zmq context allows 1,023 sockets)."""

KIB = 1024
MIB = 1024 * 1024


def _pattern(n: int) -> bytes:
    """``n`` bytes that are not all zeros nor random: the same bytes every run (as bench.py's PAYLOAD)."""
    return (bytes(range(256)) * (n // 256 + 1))[:n]


# -- what one run measured ----------------------------------------------------------------------------


@dataclass
class Run:
    """One run of one row at one point: calls, wall time, every latency, CPU seconds of each side."""

    calls: int
    elapsed_s: float
    latencies_ns: list[int]
    client_cpu_s: float
    server_cpu_s: float

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def client_us(self) -> float:
        return self.client_cpu_s / self.calls * 1e6 if self.calls else math.nan

    @property
    def server_us(self) -> float:
        return self.server_cpu_s / self.calls * 1e6 if self.calls else math.nan

    def percentile_us(self, q: float) -> float:
        lat = sorted(self.latencies_ns)
        return lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0 if lat else math.nan


@dataclass
class Cell:
    """A row at a point: every repeat's run, and per repeat its ratios to the floor's run beside it."""

    impl: str
    label: str
    x: int
    floor: bool
    runs: list[Run] = field(default_factory=list)
    payload_bytes: int = 0
    ratios: list[float] = field(default_factory=list)
    cpu_ratios: list[float] = field(default_factory=list)

    @property
    def median(self) -> Run:
        ranked = sorted(self.runs, key=lambda r: r.calls_per_s)
        return ranked[(len(ranked) - 1) // 2]

    @property
    def client_us(self) -> float:
        return statistics.median(r.client_us for r in self.runs)

    @property
    def server_us(self) -> float:
        return statistics.median(r.server_us for r in self.runs)

    @property
    def mb_per_s(self) -> float | None:
        return self.median.calls_per_s * self.payload_bytes / 1e6 if self.payload_bytes else None

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def cpu_ratio(self) -> float | None:
        return statistics.median(self.cpu_ratios) if self.cpu_ratios else None

    def to_json(self) -> dict[str, Any]:
        m = self.median
        return {
            "impl": self.impl,
            "point": self.label,
            "x": self.x,
            "floor": self.floor,
            "calls": m.calls,
            "calls_per_s": round(m.calls_per_s, 1),
            "p50_us": round(m.percentile_us(0.5), 1),
            "p99_us": round(m.percentile_us(0.99), 1),
            "mb_per_s": None if self.mb_per_s is None else round(self.mb_per_s, 1),
            "client_cpu_us": round(self.client_us, 2),
            "server_cpu_us": round(self.server_us, 2),
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "ratio_range": [round(min(self.ratios), 3), round(max(self.ratios), 3)] if self.ratios else None,
            "cpu_ratio": None if self.cpu_ratio is None else round(self.cpu_ratio, 3),
            "runs_calls_per_s": [round(r.calls_per_s, 1) for r in self.runs],
        }


def compare_to_floor(cells: list[Cell]) -> None:
    """Per repeat, each cell against the floor's cell of the same point (runs beside each other in time)."""
    floor = next((c for c in cells if c.floor), None)
    if floor is None:
        return
    for c in cells:
        pairs = list(zip(c.runs, floor.runs, strict=True))
        c.ratios = [a.calls_per_s / b.calls_per_s for a, b in pairs if b.calls_per_s]
        c.cpu_ratios = [
            (b.client_us + b.server_us) / (a.client_us + a.server_us)
            for a, b in pairs
            if a.client_us + a.server_us > 0
        ]


@dataclass
class MemCell:
    """Memory with ``x`` idle clients connected to one server (median over repeats)."""

    impl: str
    label: str
    x: int
    floor: bool
    server_rss: list[int] = field(default_factory=list)
    server_base: list[int] = field(default_factory=list)
    client_bytes_each: list[float] = field(default_factory=list)
    idle_cpu_ms_per_s: list[float] = field(default_factory=list)

    @property
    def rss(self) -> float:
        return statistics.median(self.server_rss)

    @property
    def per_conn(self) -> float | None:
        if not self.x:
            return None
        return statistics.median(
            (r - b) / self.x for r, b in zip(self.server_rss, self.server_base, strict=True)
        )

    @property
    def client_each(self) -> float | None:
        return statistics.median(self.client_bytes_each) if self.x and self.client_bytes_each else None

    @property
    def idle_cpu(self) -> float:
        return statistics.median(self.idle_cpu_ms_per_s)

    def to_json(self) -> dict[str, Any]:
        pc, ce = self.per_conn, self.client_each
        return {
            "impl": self.impl,
            "point": self.label,
            "x": self.x,
            "floor": self.floor,
            "server_rss_bytes": round(self.rss),
            "server_bytes_per_connection": None if pc is None else round(pc),
            "client_bytes_per_client": None if ce is None else round(ce),
            "server_idle_cpu_ms_per_s": round(self.idle_cpu, 2),
        }


@dataclass
class Curve:
    """One curve's result: its points and a cell per (row, point)."""

    name: str
    title: str
    x_name: str
    points: list[str]
    cells: list[Cell] | list[MemCell]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "x": self.x_name,
            "points": self.points,
            "notes": self.notes,
            "rows": [c.to_json() for c in self.cells],
        }


# -- settings -------------------------------------------------------------------------------------------


@dataclass
class Settings:
    quick: bool
    repeat: int
    duration: float
    warmup: float
    total_calls: int
    client_inflight: int
    idle_window: float
    pin: str
    client_cpu: int | None
    server_cpu: int | None


# -- child processes --------------------------------------------------------------------------------------


def start_child(args: Sequence[str], *, keep_stdin: bool = False) -> process.ProcessHandle:
    """This script in a child process (``_serve`` or ``_client``), once its READY line came."""
    handle = process.start(
        [sys.executable, str(THIS), *args],
        die_with_parent=True,  # a bench killed hard leaves nothing behind
        keep_stdin=keep_stdin,
        stderr_lines=200,
    )
    try:
        handle.wait_ready(READY_TIMEOUT)
    except BaseException:
        handle.stop(2.0)
        raise
    return handle


class Servers:
    """The servers of one curve, started on first use, stopped (by pid) together."""

    def __init__(self, s: Settings) -> None:
        self._s = s
        self._by_name: dict[str, process.ProcessHandle] = {}

    def get(self, name: str) -> process.ProcessHandle:
        if name not in self._by_name:
            pin = [] if self._s.server_cpu is None else ["--cpu", str(self._s.server_cpu)]
            self._by_name[name] = start_child(["_serve", name, *pin])
        return self._by_name[name]

    def stop(self, name: str) -> None:
        handle = self._by_name.pop(name, None)
        if handle is not None:
            process.stop_all([handle])

    def close(self) -> None:
        process.stop_all(list(self._by_name.values()))
        self._by_name.clear()


class Clients:
    """A pool of client processes (``_client``) that take commands as JSON lines on their stdin."""

    def __init__(self, n: int) -> None:
        self.handles: list[process.ProcessHandle] = []
        try:
            # start them all, then wait for each: they start up in parallel
            for i in range(n):
                self.handles.append(
                    process.start(
                        [sys.executable, str(THIS), "_client", str(i)],
                        die_with_parent=True,
                        keep_stdin=True,
                        stderr_lines=200,
                    )
                )
            for h in self.handles:
                h.wait_ready(READY_TIMEOUT)
        except BaseException:
            self.close()
            raise

    def send(self, handles: Sequence[process.ProcessHandle], command: dict[str, Any]) -> None:
        line = json.dumps(command) + "\n"
        for h in handles:
            stdin = h.proc.stdin
            assert stdin is not None
            stdin.write(line)
            stdin.flush()

    def ask(
        self, handles: Sequence[process.ProcessHandle], command: dict[str, Any], answer: str
    ) -> list[Any]:
        """Send ``command`` to each, then wait for each one's ``answer`` line; return their JSON parts."""
        self.send(handles, command)
        out = []
        for h in handles:
            line = h.expect(answer + " ", RESULT_TIMEOUT)
            out.append(json.loads(line[len(answer) + 1 :]))
        return out

    def close(self) -> None:
        process.stop_all(self.handles)
        self.handles = []


# -- drivers this script adds to bench.py's -------------------------------------------------------------


class SameLength:
    """An expected echo result that only checks the length, as the raw floor does (``!=`` reflects here):
    comparing 16 MiB byte for byte would add client CPU that the floor does not spend."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, bytes | bytearray | memoryview) and len(other) == self.n

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = None  # type: ignore[assignment]


def raw_req_echo(endpoint: str, data: bytes) -> Driver:
    """Raw REQ: pack ``["echo", [data]]``, send, receive, unpack, check the length (any size)."""
    sock = _raw_req(endpoint)
    send, recv, packb, unpackb = sock.send, sock.recv, msgpack.packb, msgpack.unpackb
    n = len(data)

    def one() -> None:
        send(packb(["echo", [data]]))
        if len(unpackb(recv())) != n:
            raise BenchError("raw echo returned a different length")

    return SeqDriver(one, sock.close)


def zcall_sync_echo(endpoint: str, data: bytes) -> Driver:
    """``zcall.SyncClient.call("echo", data)`` (a plain handler), length checked, with ``BIG_CODEC``."""
    client = zcall.SyncClient(endpoint, timeout=RECV_TIMEOUT_MS / 1000, codec=BIG_CODEC)
    call, n = client.call, len(data)

    def one() -> None:
        if len(call("echo", data)) != n:
            raise BenchError("zcall echo returned a different length")

    return SeqDriver(one, client.close)


def measured(driver: Driver, budget: Budget, server_pid: int) -> Run:
    """``driver.run(budget)`` with both processes' CPU time around it."""
    s0, c0 = process_cpu_s(server_pid), time.process_time()
    sample = driver.run(budget)
    c1, s1 = time.process_time(), process_cpu_s(server_pid)
    return Run(sample.calls, sample.elapsed_s, sample.latencies_ns, c1 - c0, s1 - s0)


# -- curves run from this process: in flight, payload -------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One implementation on a curve: its server (``_serve`` name) and ``make(endpoint, x) -> Driver``."""

    impl: str
    server: str
    make: Callable[[str, int], Driver]
    floor: bool = False


def run_local_curve(
    rows: Sequence[Row],
    points: Sequence[tuple[str, int]],
    s: Settings,
    log: Callable[[str], None],
    payload: bool = False,
) -> list[Cell]:
    """For each point: connect every row, warm it, then let the rows take turns for ``repeat`` runs."""
    budget, warmup = Budget(seconds=s.duration), Budget(seconds=s.warmup)
    cells: list[Cell] = []
    servers = Servers(s)
    try:
        for label, x in points:
            point = [Cell(r.impl, label, x, r.floor, payload_bytes=x if payload else 0) for r in rows]
            drivers: list[Driver] = []
            try:
                for r in rows:
                    drivers.append(r.make(servers.get(r.server).endpoint, x))
                for d in drivers:
                    d.run(warmup)
                for rep in range(s.repeat):
                    order = list(range(len(rows)))
                    if rep % 2:
                        order.reverse()
                    for i in order:
                        pid = servers.get(rows[i].server).pid
                        point[i].runs.append(measured(drivers[i], budget, pid))
            finally:
                for d in drivers:
                    d.close()
            compare_to_floor(point)
            cells.extend(point)
            log(f"  {label}: " + ", ".join(f"{c.impl} {c.median.calls_per_s:,.0f}/s" for c in point))
    finally:
        servers.close()
    return cells


def curve_inflight(s: Settings, log: Callable[[str], None]) -> Curve:
    depths = (1, 64, 1024) if s.quick else (1, 4, 16, 64, 256, 1024)
    opts = CLIENT_OPTIONS
    rows = [
        Row("raw-dealer-router", "raw_router", lambda ep, k: PipelinedRaw(ep, "double", [21], 42, k), True),
        Row("zcall-asyncio", "zcall_async", lambda ep, k: PipelinedAsyncio(ep, "double", [21], 42, k, opts)),
        Row(
            "zcall-asyncio-inline",
            "zcall_async",
            lambda ep, k: PipelinedAsyncio(ep, "double_inline", [21], 42, k, opts),
        ),
        Row(
            "zcall-callback",
            "zcall_async",
            lambda ep, k: PipelinedCallbacks(ep, "double", [21], 42, k, opts),
        ),
        Row(
            "zcall-callback-inline",
            "zcall_async",
            lambda ep, k: PipelinedCallbacks(ep, "double_inline", [21], 42, k, opts),
        ),
    ]
    cells = run_local_curve(rows, [(str(k), k) for k in depths], s, log)
    return Curve(
        "inflight",
        "double(21) with k calls in flight from one client process",
        "calls in flight",
        [str(k) for k in depths],
        cells,
        [
            "latency is each call's, send to reply: with k in flight it includes the queueing",
            "zcall-*: @service.method (the server's thread pool); *-inline: inline=True (the loop)",
        ],
    )


PAYLOADS = ((16, "16 B"), (KIB, "1 KiB"), (64 * KIB, "64 KiB"), (MIB, "1 MiB"), (16 * MIB, "16 MiB"))


def curve_payload(s: Settings, log: Callable[[str], None]) -> Curve:
    data_of: dict[int, bytes] = {}

    def data(n: int) -> bytes:
        if n not in data_of:
            data_of.clear()  # one payload alive at a time
            data_of[n] = _pattern(n)
        return data_of[n]

    rows = [
        Row("raw-req-rep", "raw_rep", lambda ep, n: raw_req_echo(ep, data(n)), True),
        Row("zcall-sync", "zcall_sync", lambda ep, n: zcall_sync_echo(ep, data(n))),
        Row(
            "zcall-asyncio",
            "zcall_async",
            lambda ep, n: PipelinedAsyncio(ep, "echo", [data(n)], SameLength(n), 1, CLIENT_OPTIONS),
        ),
    ]
    cells = run_local_curve(rows, [(label, n) for n, label in PAYLOADS], s, log, payload=True)
    return Curve(
        "payload",
        "echo(bytes) one call at a time, by payload size",
        "payload",
        [label for _, label in PAYLOADS],
        cells,
        [
            "MB/s counts the payload one way; every row checks the length of what comes back",
            f"zcall sides use Codec(max_message_size={BIG_MESSAGE // MIB} MiB): 16 MiB + envelope is above "
            "the default limit of exactly 16 MiB",
            "zcall-asyncio: @service.method echo (the thread pool), one call in flight",
            "the largest sizes make few calls per run: their p99 is close to their slowest call",
        ],
    )


# -- the client processes curve -----------------------------------------------------------------------------

CLIENT_ROWS = (
    ("raw-dealer-router", "raw", "raw_router", True),
    ("zcall-asyncio", "zcall-asyncio", "zcall_async", False),
    ("zcall-asyncio-inline", "zcall-asyncio-inline", "zcall_async", False),
)
"""(impl, client kind, server, floor) of the ``clients`` curve."""


def curve_clients(s: Settings, log: Callable[[str], None]) -> Curve:
    counts = (1, 4) if s.quick else (1, 4, 16, 64)
    cells: list[Cell] = []
    servers = Servers(s)
    log(f"  starting {max(counts)} client processes")
    pool = Clients(max(counts))
    try:
        for n in counts:
            workers = pool.handles[:n]
            each = max(1, s.total_calls // n)
            point = [Cell(impl, str(n), n, floor) for impl, _, _, floor in CLIENT_ROWS]
            warm = min(each, 200)
            for impl, kind, server, _ in CLIENT_ROWS:
                command = {
                    "op": "prep",
                    "key": impl,
                    "kind": kind,
                    "endpoint": servers.get(server).endpoint,
                    "inflight": s.client_inflight,
                    "warm": warm,
                }
                pool.ask(workers, command, "PREPARED")
            for rep in range(s.repeat):
                order = list(range(len(CLIENT_ROWS)))
                if rep % 2:
                    order.reverse()
                for i in order:
                    impl, _, server, _ = CLIENT_ROWS[i]
                    pid = servers.get(server).pid
                    s0 = process_cpu_s(pid)
                    results = pool.ask(workers, {"op": "go", "key": impl, "calls": each}, "RESULT")
                    s1 = process_cpu_s(pid)
                    lat: list[int] = []
                    for r in results:
                        lat.extend(r["latencies_ns"])
                    start = min(r["start_ns"] for r in results)
                    end = max(r["end_ns"] for r in results)
                    point[i].runs.append(
                        Run(
                            sum(r["calls"] for r in results),
                            (end - start) / 1e9,
                            lat,
                            sum(r["cpu_s"] for r in results),
                            s1 - s0,
                        )
                    )
            pool.ask(workers, {"op": "close"}, "CLOSED")
            compare_to_floor(point)
            cells.extend(point)
            log(f"  {n} clients: " + ", ".join(f"{c.impl} {c.median.calls_per_s:,.0f}/s" for c in point))
    finally:
        pool.close()
        servers.close()
    return Curve(
        "clients",
        f"double(21) from N client processes at once, {s.client_inflight} in flight each",
        "client processes",
        [str(n) for n in counts],
        cells,
        [
            f"each process makes total/N calls (total {s.total_calls}); calls/s is all of them over the "
            "time from the first start to the last finish",
            "cli us: CPU of all client processes together, per call",
        ],
    )


# -- the idle connections curve -----------------------------------------------------------------------------

IDLE_ROWS = (("raw-router", "raw", "raw_router", True), ("zcall-async", "zcall", "zcall_async", False))


def curve_idle(s: Settings, log: Callable[[str], None]) -> Curve:
    counts = (0, 10, 50) if s.quick else (0, 100, 1000)
    holders = max(2 if s.quick else 4, math.ceil(max(counts) / IDLE_PER_HOLDER))
    cells = {(impl, n): MemCell(impl, str(n), n, floor) for impl, _, _, floor in IDLE_ROWS for n in counts}
    servers = Servers(s)
    log(f"  starting {holders} client processes")
    pool = Clients(holders)
    try:
        for rep in range(s.repeat):
            rows = IDLE_ROWS if rep % 2 == 0 else tuple(reversed(IDLE_ROWS))
            for impl, kind, server, _ in rows:
                handle = servers.get(server)  # a fresh server for each run: nothing left from the last
                base = process_rss_bytes(handle.pid)
                held = 0
                for n in counts:
                    shares = [(n - held) // holders + (i < (n - held) % holders) for i in range(holders)]
                    client_bytes = 0
                    busy = [(h, k) for h, k in zip(pool.handles, shares, strict=True) if k]
                    for h, k in busy:  # every holder connects its share at once
                        pool.send([h], {"op": "hold", "kind": kind, "endpoint": handle.endpoint, "count": k})
                    for h, _ in busy:
                        r = json.loads(h.expect("HELD ", RESULT_TIMEOUT)[len("HELD ") :])
                        client_bytes += r["rss_after"] - r["rss_before"]
                    c = cells[(impl, n)]
                    if n > held:
                        c.client_bytes_each.append(client_bytes / (n - held))
                    held = n
                    cpu0 = process_cpu_s(handle.pid)
                    time.sleep(s.idle_window)  # a measurement window, not a wait for readiness
                    c.idle_cpu_ms_per_s.append((process_cpu_s(handle.pid) - cpu0) * 1000 / s.idle_window)
                    c.server_rss.append(process_rss_bytes(handle.pid))
                    c.server_base.append(base)
                pool.ask(pool.handles, {"op": "release"}, "RELEASED")
                servers.stop(server)
            log(f"  idle run {rep + 1}/{s.repeat}")
    finally:
        pool.close()
        servers.close()
    ordered = [cells[(impl, n)] for impl, _, _, _ in IDLE_ROWS for n in counts]
    return Curve(
        "idle",
        "server memory with N idle clients connected (each made one call)",
        "idle clients",
        [str(n) for n in counts],
        ordered,
        [
            "srv KiB/conn: (server RSS with N clients - RSS with none) / N; cli KiB/client: the same in the "
            "client processes, for the clients added at that point",
            f"raw-router: raw DEALER sockets; zcall-async: zcall.AsyncClient, {holders} client processes",
            f"idle cpu: the server's CPU over {s.idle_window:g} s with the clients connected and silent "
            "(zcall's ZMTP heartbeats: every 1 s per connection); /proc counts CPU in clock ticks "
            f"({1000 // os.sysconf('SC_CLK_TCK')} ms), so the resolution is one tick per window",
        ],
    )


CURVES: dict[str, tuple[str, Callable[[Settings, Callable[[str], None]], Curve]]] = {
    "clients": ("1, 4, 16, 64 client processes calling one server", curve_clients),
    "inflight": ("1 to 1,024 calls in flight from one client", curve_inflight),
    "payload": ("bytes echo of 16 B to 16 MiB", curve_payload),
    "idle": ("server memory per idle connection, 0 / 100 / 1,000 clients", curve_idle),
}


# -- reporting ----------------------------------------------------------------------------------------------


def _f(x: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt) + suffix


def _table(head: Sequence[str], rows: list[Sequence[str]], left: int = 2) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    out = []
    for k, r in enumerate([head, *rows]):
        cells = [c.ljust(widths[j]) if j < left else c.rjust(widths[j]) for j, c in enumerate(r)]
        out.append("  ".join(cells).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def render_curve(c: Curve) -> str:
    lines = [f"== {c.name}: {c.title}"]
    if c.cells and isinstance(c.cells[0], MemCell):
        head = ("idle clients", "impl", "server RSS MiB", "srv KiB/conn", "cli KiB/client", "idle cpu ms/s")
        rows: list[Sequence[str]] = []
        for mem in c.cells:
            assert isinstance(mem, MemCell)
            pc, ce = mem.per_conn, mem.client_each
            rows.append(
                (
                    mem.label,
                    mem.impl,
                    f"{mem.rss / MIB:.1f}",
                    _f(None if pc is None else pc / KIB, ".1f"),
                    _f(None if ce is None else ce / KIB, ".1f"),
                    f"{mem.idle_cpu:.1f}",
                )
            )
    else:
        payload = any(isinstance(x, Cell) and x.payload_bytes for x in c.cells)
        head = (
            c.x_name, "impl", "calls/s", "p50 us", "p99 us", *(("MB/s",) if payload else ()),
            "cli us", "srv us", "calls/s vs floor [range]", "cpu vs floor",
        )  # fmt: skip
        rows = []
        for x in c.cells:
            assert isinstance(x, Cell)
            m = x.median
            if x.floor:
                vs, cpu = "floor", "floor"
            else:
                rng = f" [{min(x.ratios):.2f}-{max(x.ratios):.2f}]" if x.ratios else ""
                vs, cpu = _f(x.ratio, ".2f", "x") + rng, _f(x.cpu_ratio, ".2f", "x")
            rows.append(
                (
                    x.label,
                    x.impl,
                    f"{m.calls_per_s:,.0f}",
                    f"{m.percentile_us(0.5):,.1f}",
                    f"{m.percentile_us(0.99):,.1f}",
                    *((_f(x.mb_per_s, ",.1f"),) if payload else ()),
                    f"{x.client_us:.1f}",
                    f"{x.server_us:.1f}",
                    vs,
                    cpu,
                )
            )
    lines.extend(_table(head, rows))
    lines.extend(f"  - {n}" for n in c.notes)
    return "\n".join(lines)


def render_header(env: dict[str, Any], s: Settings) -> str:
    m, v = env["machine"], env["versions"]
    return "\n".join(
        [
            f"machine: {m['cores']} cores, {m['cpu']}, {m['platform']}",
            "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
            f"runs: median of {s.repeat}, {s.duration:g} s each (clients: {s.total_calls} calls a point), "
            f"warmup {s.warmup:g} s; placement pin={s.pin}"
            + ("" if s.client_cpu is None else f" (clients cpu {s.client_cpu}, servers cpu {s.server_cpu})"),
            f"zcall settings on every side: Codec(max_message_size={BIG_MESSAGE // MIB} MiB), "
            f"max_in_flight={MAX_IN_FLIGHT} (defaults: 16 MiB, 1000)",
            "cli/srv us: CPU microseconds per call of the client and server processes (all threads); "
            "cpu vs floor: the floor's CPU per call over the row's (above 1 = cheaper than the floor)",
        ]
    )


MATPLOTLIB_MISSING = (
    "matplotlib is not installed, so no PNG plots (the tables are complete): "
    "pip install -e '.[bench]'  (or: pip install 'matplotlib>=3.8')"
)


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_curve(c: Curve, out: Path) -> Path:
    """Draw one curve as a PNG in ``out`` (matplotlib must be importable: ``have_matplotlib``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    impls = list(dict.fromkeys(x.impl for x in c.cells))
    xs = list(range(len(c.points)))

    def series(impl: str, value: Callable[[Any], float | None]) -> list[float]:
        by_label = {x.label: x for x in c.cells if x.impl == impl}
        out_ = []
        for p in c.points:
            v = value(by_label[p]) if p in by_label else None
            out_.append(math.nan if v is None else v)
        return out_

    if c.cells and isinstance(c.cells[0], MemCell):
        panels: list[tuple[str, list[tuple[str, Callable[[Any], float | None]]], bool]] = [
            ("server RSS (MiB)", [("", lambda m: m.rss / MIB)], False),
            (
                "KiB per connection (server solid, client dashed)",
                [
                    ("", lambda m: None if m.per_conn is None else m.per_conn / KIB),
                    ("--", lambda m: None if m.client_each is None else m.client_each / KIB),
                ],
                False,
            ),
            ("server CPU while idle (ms/s)", [("", lambda m: m.idle_cpu)], False),
        ]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    else:
        payload = any(isinstance(x, Cell) and x.payload_bytes for x in c.cells)
        panels = [
            (
                "MB/s (payload one way)" if payload else "calls/s",
                [("", (lambda x: x.mb_per_s) if payload else (lambda x: x.median.calls_per_s))],
                True,
            ),
            (
                "latency us (p50 solid, p99 dashed)",
                [("", lambda x: x.median.percentile_us(0.5)), ("--", lambda x: x.median.percentile_us(0.99))],
                True,
            ),
            (
                "CPU us per call (client solid, server dashed)",
                [("", lambda x: x.client_us), ("--", lambda x: x.server_us)],
                True,
            ),
            (
                "vs floor (calls/s solid, CPU dashed; >1 better)",
                [
                    ("", lambda x: 1.0 if x.floor else x.ratio),
                    ("--", lambda x: 1.0 if x.floor else x.cpu_ratio),
                ],
                False,
            ),
        ]
        fig, grid = plt.subplots(2, 2, figsize=(12, 8.5))
        axes = grid.ravel()
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, lines, logy) in zip(axes, panels, strict=True):
        for k, impl in enumerate(impls):
            for style, value in lines:
                ax.plot(
                    xs,
                    series(impl, value),
                    style or "-",
                    marker="o",
                    color=colours[k % len(colours)],
                    label=impl if not style else None,
                )
        ax.set_title(title, fontsize=10)
        ax.set_xticks(xs, c.points)
        ax.set_xlabel(c.x_name)
        if logy:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{c.name}: {c.title}", fontsize=11)
    fig.tight_layout()
    path = out / f"curve_{c.name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the children: servers and clients ----------------------------------------------------------------


def curves_service() -> zcall.Service:
    """bench.py's service: the floors' handlers plain (``double``, ``echo``: a thread pool on an
    AsyncServer) and ``inline=True`` (``double_inline``, ``echo_inline``: on the server's loop)."""
    return zcall_service()


def serve(argv: Sequence[str]) -> None:
    """``_serve NAME [--cpu N]``: one server, READY line, until SIGTERM."""
    p = argparse.ArgumentParser(prog="bench_curves.py _serve")
    p.add_argument("name", choices=[*RAW, "zcall_sync", "zcall_async"])
    p.add_argument("--cpu", type=int)
    a = p.parse_args(argv)
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})  # before any thread exists, so zmq's io thread inherits it
    bind = "tcp://127.0.0.1:*"
    if a.name == "zcall_sync":
        zcall.SyncServer(curves_service(), bind, codec=BIG_CODEC).serve_forever(grace=1.0, on_ready=announce)
    elif a.name == "zcall_async":
        server = zcall.AsyncServer(curves_service(), bind, codec=BIG_CODEC, max_in_flight=MAX_IN_FLIGHT)
        server.serve_forever(grace=1.0, on_ready=announce)
    else:
        with StopSignal() as stop:
            announce(_start_raw(RAW[a.name], bind))
            stop.wait()
    os._exit(0)  # a raw loop is a daemon thread blocked in recv


class _Held:
    """The idle connections a client process holds for the ``idle`` curve."""

    def __init__(self) -> None:
        self.closers: list[Callable[[], None]] = []
        self._warm: set[str] = set()

    def warm_up(self, kind: str) -> None:
        """What the first client of a kind starts once per process (zmq's context and io thread; zcall's
        engine thread), so that it is not counted as the first clients' memory."""
        if kind in self._warm:
            return
        self._warm.add(kind)
        if kind == "raw":
            zmq.Context.instance().socket(zmq.DEALER).close()
        else:
            zcall.AsyncClient("inproc://bench-curves-warm-up").close()  # never bound: nothing is sent

    def add(self, kind: str, endpoint: str, count: int) -> None:
        if kind == "raw":
            ctx: zmq.Context[Any] = zmq.Context.instance()
            socks = []
            for i in range(count):
                sock = ctx.socket(zmq.DEALER)
                sock.linger = 0
                sock.rcvtimeo = RECV_TIMEOUT_MS
                sock.connect(endpoint)
                sock.send(msgpack.packb([i, "double", [21]]))
                socks.append(sock)
                self.closers.append(sock.close)
            for sock in socks:
                if msgpack.unpackb(sock.recv())[1] != 42:
                    raise BenchError("raw double(21) != 42")
        else:
            clients = [zcall.AsyncClient(endpoint, timeout=RECV_TIMEOUT_MS / 1000) for _ in range(count)]
            self.closers.extend(c.close for c in clients)
            futures = [c.call_async("double", 21) for c in clients]
            if any(f.result(RECV_TIMEOUT_MS / 1000) != 42 for f in futures):
                raise BenchError("zcall double(21) != 42")

    def release(self) -> None:
        for close in self.closers:
            close()
        self.closers = []


def client(argv: Sequence[str]) -> None:
    """``_client INDEX``: a client process; commands on stdin (JSON lines), answers on stdout."""

    def say(word: str, doc: dict[str, Any]) -> None:
        sys.stdout.write(f"{word} {json.dumps(doc)}\n")
        sys.stdout.flush()

    drivers: dict[str, Driver] = {}
    held = _Held()
    announce(f"client-{argv[0]}")
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "prep":
            kind, ep, k = cmd["kind"], cmd["endpoint"], cmd["inflight"]
            if kind == "raw":
                d: Driver = PipelinedRaw(ep, "double", [21], 42, k)
            else:
                method = "double_inline" if kind == "zcall-asyncio-inline" else "double"
                d = PipelinedAsyncio(ep, method, [21], 42, k, CLIENT_OPTIONS)
            d.run(Budget(calls=cmd["warm"]))
            drivers[cmd["key"]] = d
            say("PREPARED", {})
        elif op == "go":
            c0, t0 = time.process_time(), time.monotonic_ns()  # CLOCK_MONOTONIC: one clock for every process
            sample = drivers[cmd["key"]].run(Budget(calls=cmd["calls"]))
            t1, c1 = time.monotonic_ns(), time.process_time()
            say(
                "RESULT",
                {
                    "calls": sample.calls,
                    "start_ns": t0,
                    "end_ns": t1,
                    "cpu_s": c1 - c0,
                    "latencies_ns": sample.latencies_ns,
                },
            )
        elif op == "close":
            for d in drivers.values():
                d.close()
            drivers.clear()
            say("CLOSED", {})
        elif op == "hold":
            held.warm_up(cmd["kind"])
            before = process_rss_bytes(os.getpid())
            held.add(cmd["kind"], cmd["endpoint"], cmd["count"])
            say("HELD", {"rss_before": before, "rss_after": process_rss_bytes(os.getpid())})
        elif op == "release":
            held.release()
            say("RELEASED", {})
    held.release()
    for d in drivers.values():
        d.close()


# -- main ---------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run of seconds: fewer points, tiny budgets")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="CURVE",
        help=f"curve(s) to run (repeatable, comma-separated): {', '.join(CURVES)}",
    )
    p.add_argument("--out", type=Path, help="directory for the PNGs (default: a new temporary directory)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the tables")
    p.add_argument("--repeat", type=int, help="runs per row and point; the median is reported (3; 1 quick)")
    p.add_argument("--duration", type=float, help="seconds per run (0.3; 0.05 quick)")
    p.add_argument("--warmup", type=float, help="warmup seconds per row and point (0.2; 0.03 quick)")
    p.add_argument("--total-calls", type=int, help="clients: calls a point, shared out (24000; 400 quick)")
    p.add_argument("--client-inflight", type=int, default=16, help="clients: in flight per process (16)")
    p.add_argument("--idle-window", type=float, help="idle: seconds of idle CPU measured (1; 0.1 quick)")
    p.add_argument(
        "--pin",
        choices=("split", "same", "none"),
        default="split",
        help="split = clients on one CPU, servers on another (default); same = one CPU; none = the OS",
    )
    p.add_argument("--list", action="store_true", help="list the curves, then exit")
    a = p.parse_args(argv)
    wanted = [n.strip() for item in a.only for n in item.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(CURVES))
    if unknown:
        p.error(f"unknown curve(s) {', '.join(unknown)}; choose from: {', '.join(CURVES)}")
    a.curves = [n for n in CURVES if n in wanted] if wanted else list(CURVES)
    for name in ("repeat", "total_calls", "client_inflight"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("duration", "warmup", "idle_window"):
        if getattr(a, name) is not None and getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["_serve"]:
        serve(args[1:])
        return 0
    if args[:1] == ["_client"]:
        client(args[1:])
        return 0
    a = parse_args(args)
    if a.list:
        for name, (what, _) in CURVES.items():
            print(f"{name}: {what}")
        return 0
    q = a.quick

    def pick(value: Any, full: Any, quick: Any) -> Any:
        return value if value is not None else (quick if q else full)

    pin, client_cpu, server_cpu = pin_cpus(a.pin)
    s = Settings(
        quick=q,
        repeat=pick(a.repeat, 3, 1),
        duration=pick(a.duration, 0.3, 0.05),
        warmup=pick(a.warmup, 0.2, 0.03),
        total_calls=pick(a.total_calls, 24000, 400),
        client_inflight=a.client_inflight,
        idle_window=pick(a.idle_window, 1.0, 0.1),
        pin=pin,
        client_cpu=client_cpu,
        server_cpu=server_cpu,
    )
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})  # before any socket: zmq's io thread and children inherit it

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    env = environment()
    curves: list[Curve] = []
    t0 = time.monotonic()
    with _sigterm_unwinds():
        try:
            for name in a.curves:
                log(f"{name}: {CURVES[name][0]}")
                curves.append(CURVES[name][1](s, log))
        except KeyboardInterrupt:
            log("interrupted: every child stopped")
            return 130
    log(f"done in {time.monotonic() - t0:.1f} s")
    plots: dict[str, str] = {}
    if have_matplotlib():
        out = a.out if a.out is not None else Path(tempfile.mkdtemp(prefix="zcall-curves-"))
        out.mkdir(parents=True, exist_ok=True)
        for c in curves:
            plots[c.name] = str(plot_curve(c, out))
        log(f"plots in {out}")
    else:
        log(MATPLOTLIB_MISSING)
    if a.json:
        doc: dict[str, Any] = {
            **env,
            "settings": dict(vars(s)),
            "zcall_settings": {"max_message_size": BIG_MESSAGE, "max_in_flight": MAX_IN_FLIGHT},
            "curves": {c.name: c.to_json() for c in curves},
            "plots": plots,
        }
        print(json.dumps(doc, indent=2))
    else:
        print(render_header(env, s))
        for c in curves:
            print()
            print(render_curve(c))
        print()
        if plots:
            print("plots: " + ", ".join(plots.values()))
        else:
            print("plots: none (" + MATPLOTLIB_MISSING + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
