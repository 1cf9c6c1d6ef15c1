"""Embed a zcall server in a threaded program: ``start()``, worker threads, ``stop(grace)``.

The program here is a job processor written with plain threads: a ``queue.Queue`` of jobs and worker
threads that price each job. It adds:

- an ``AsyncServer`` started with ``server.start()``: it returns once bound and serves on zcall's
  engine thread (plain-function handlers run in the server's own small pool), so other processes can
  submit jobs, or run one and wait for its result (a ``zcall call`` from a shell, here a subprocess);
- one ``SyncClient`` shared by every worker thread (it is thread-safe: a pool of REQ sockets) to call a
  pricing service in another process;
- a graceful shutdown: ``server.stop(grace)`` refuses new calls, lets the call in flight finish within
  the grace period, answers it, and frees the port; then the workers stop and the client closes.

After ``stop()`` zcall's threads (the engine, the handler pool) are gone: the program checks.

Run it:  python patterns/embed_threads.py
"""

from __future__ import annotations

import argparse
import itertools
import queue
import subprocess
import sys
import threading
import time
from typing import Any

import zcall
from zcall.testing import spawn
from zcall.tools.ready import announce

GRACE = 2.0
WORKERS = 3
JOBS = [("widget", 3), ("widget", 1)]
"""What the outside caller submits (and then runs one more: 2 gadgets)."""

# -- the pricing service, in a process of its own -----------------------------------------------------

pricing = zcall.Service("pricing")


@pricing.method
def price(sku: str, qty: int) -> float:
    """What ``qty`` of ``sku`` cost (slow, as a real lookup can be)."""
    time.sleep(0.2)
    return {"widget": 2.5, "gadget": 4.0}[sku] * qty


def serve_pricing(endpoint: str) -> None:
    zcall.AsyncServer(pricing, endpoint).serve_forever(on_ready=announce)


# -- the program --------------------------------------------------------------------------------------


class Jobs:
    """The existing program: a queue, results, worker threads."""

    def __init__(self, prices: zcall.SyncClient) -> None:
        self.prices = prices
        self.queue: queue.Queue[tuple[int, str, int] | None] = queue.Queue()
        self.results: dict[int, Any] = {}
        self.done = threading.Condition()
        self.ids = itertools.count(1)
        self.workers = [threading.Thread(target=self.work, name=f"worker-{i}") for i in range(WORKERS)]
        self.priced_by: dict[int, str] = {}
        self.running = threading.Event()  # a jobs.run call is in its handler

    def work(self) -> None:
        """A worker thread: take a job, price it through the shared SyncClient, record the result."""
        while (job := self.queue.get()) is not None:
            job_id, sku, qty = job
            try:
                result: Any = self.prices.call("price", sku, qty)
            except zcall.ZcallError as exc:
                result = f"failed: {exc}"
            with self.done:
                self.results[job_id] = result
                self.priced_by[job_id] = threading.current_thread().name
                self.done.notify_all()

    def service(self) -> zcall.Service:
        service = zcall.Service("jobs")

        @service.method(name="jobs.submit")
        def submit(sku: str, qty: int = 1) -> int:
            """Queue a job; returns its id."""
            job_id = next(self.ids)
            self.queue.put((job_id, sku, qty))
            return job_id

        @service.method(name="jobs.run")
        def run_job(sku: str, qty: int = 1, timeout: float = 10.0) -> Any:
            """Queue a job and block (in the server's handler pool) until a worker has priced it."""
            job_id = submit(sku, qty)
            self.running.set()
            with self.done:
                self.done.wait_for(lambda: job_id in self.results, timeout)
                return self.results.get(job_id)

        return service


def zcall_cli(*args: str) -> tuple[int, str]:
    """Run ``zcall ARGS`` in a child process: a caller from outside this program."""
    r = subprocess.run([sys.executable, "-m", "zcall", *args], capture_output=True, text=True, timeout=30)
    if r.returncode:
        sys.stderr.write(r.stderr)
    return r.returncode, r.stdout.strip()


def zcall_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("zcall"))


def run(bind: str) -> int:
    with spawn([__file__, "--pricing", "tcp://127.0.0.1:*"]) as pricing_proc:  # stopped by pid on exit
        prices = zcall.SyncClient(pricing_proc.endpoint, timeout=5)
        jobs = Jobs(prices)
        for w in jobs.workers:
            w.start()
        server = zcall.AsyncServer(jobs.service(), bind, workers=4).start()  # returns once bound
        say(f"program: serving jobs at {server.endpoint} from zcall's engine thread")

        ids = [int(zcall_cli("call", server.endpoint, "jobs.submit", sku, str(q))[1]) for sku, q in JOBS]
        say(f"outside caller submitted jobs {ids}")
        ran: dict[str, tuple[int, str]] = {}
        caller = threading.Thread(
            target=lambda: ran.update(out=zcall_cli("call", server.endpoint, "jobs.run", "gadget", "2"))
        )
        caller.start()
        if not jobs.running.wait(20):  # jobs.run is in its handler, waiting for a worker to price it
            say("jobs.run never arrived")
        say(f"zcall threads while serving: {', '.join(zcall_threads())}")
        say(f"program: stopping with {server.in_flight} call in flight (grace {GRACE:.1f}s)")
        t0 = time.monotonic()
        server.stop(grace=GRACE)  # refuses new calls; jobs.run is answered once its job is priced
        say(f"program: server stopped after {time.monotonic() - t0:.1f}s, within the grace period")
        caller.join(30)
        code, out = ran.get("out", (1, ""))
        say(f"outside caller got: {out} (exit {code})")
        for _ in jobs.workers:
            jobs.queue.put(None)
        for w in jobs.workers:
            w.join(10)
        prices.close()
        say(f"results: {dict(sorted(jobs.results.items()))}, priced by worker threads through one SyncClient")
        for t in threading.enumerate():  # the handler pool's threads end right after stop()
            if t.name.startswith("zcall"):
                t.join(5)
        say(f"zcall threads after stop: {', '.join(zcall_threads()) or 'none'}")
    return 0 if code == 0 and out == "8.0" and sorted(jobs.results.values()) == [2.5, 7.5, 8.0] else 1


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="tcp://127.0.0.1:*", help="where the jobs service is served")
    parser.add_argument("--pricing", metavar="ENDPOINT", help="(child) only serve pricing, on ENDPOINT")
    args = parser.parse_args()
    if args.pricing:
        serve_pricing(args.pricing)
        return 0
    return run(args.bind)


if __name__ == "__main__":
    sys.exit(main())
