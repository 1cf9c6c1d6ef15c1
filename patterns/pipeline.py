"""Pipeline: one-way notifications fan work out to N worker peers; results flow back the same way.

This process is the "collector" peer. It starts N worker peers (one process each), then sends every work
item as a *notification* (``peer.notify``: no reply, no waiting), dealing items round-robin over the
workers. Each worker computes its item and notifies the result back to the collector (a peer it knows by
name). Nobody ever waits on a reply: the only synchronisation is the collector counting what came back.

The final tally proves every item was processed exactly once: each item id came back once, from the
worker it was sent to, with the right value.

Notifications are fire-and-forget: a notification that cannot be delivered within its timeout is dropped
(counted in the sender's ``statistics()``), and a failing handler is only logged on the receiving side.
Both sides here are connected before the first item goes out, so nothing is dropped.

Run alone (starts the workers, cleans them up):  python patterns/pipeline.py [-n 3] [--items 60]
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import sys
import threading
import time

import zcall
from zcall.testing import ProcessHandle, SpawnError, spawn, stop_all
from zcall.tools.ready import announce
from zcall.tools.serving import serve_until_stopped

# -- a worker peer ---------------------------------------------------------------------------------------

worker_service = zcall.Service("worker")
worker: zcall.Peer


def compute(item: int) -> str:
    """The work: a few rounds of sha256 over the item id (the same everywhere, so results can be checked)."""
    digest = str(item).encode()
    for _ in range(2000):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:12]


@worker_service.method
def work(item: int) -> None:
    """Compute ``item`` and notify the result to the collector (a notification handler: no reply)."""
    worker.notify("collector", "result", worker.name, item, compute(item))


def serve_worker(name: str, collector: str) -> None:
    """Run one worker peer until SIGTERM/SIGINT; print ``READY <endpoint>`` once bound."""
    global worker
    worker = zcall.Peer(name, worker_service, peers={"collector": collector})

    def ready(endpoint: str) -> None:
        worker.call("collector", "zcall.ping")  # results will have somewhere to go: the collector is up
        announce(endpoint)  # the parent waits for this line, not a sleep

    serve_until_stopped(worker, on_ready=ready)


# -- the collector (this process) --------------------------------------------------------------------------


class Tally:
    """Every result that came back: item -> [(worker, value), ...]; ``wait`` until ``expected`` came."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.results: dict[int, list[tuple[str, str]]] = collections.defaultdict(list)
        self.received = 0
        self._cond = threading.Condition()

    def add(self, worker_name: str, item: int, value: str) -> None:
        with self._cond:
            self.results[item].append((worker_name, value))
            self.received += 1
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.received >= self.expected, timeout)


def run(n_workers: int, n_items: int, timeout: float) -> int:
    """Fan the items out, collect the results, print the tally; returns an exit code."""
    tally = Tally(n_items)
    service = zcall.Service("collector")

    @service.method(inline=True)  # tiny and non-blocking: runs on the peer's loop, no thread hop
    def result(worker_name: str, item: int, value: str) -> None:
        """A worker's notification: ``item`` gave ``value``."""
        tally.add(worker_name, item, value)

    with zcall.Peer("collector", service, timeout=timeout) as me:
        workers: dict[str, ProcessHandle] = {}
        try:
            for k in range(n_workers):  # start them all, then wait for each: they boot in parallel
                cmd = [__file__, "--worker", f"worker-{k}", "--collector", me.endpoint]
                workers[f"worker-{k}"] = spawn(cmd, ready_prefix=None)
            endpoints = {name: w.wait_ready().endpoint for name, w in workers.items()}
            for name, w in workers.items():
                print(f"{name}: pid {w.pid}, serving on {endpoints[name]}")
                me.connect(name, endpoints[name])
            names = sorted(workers)
            for name in names:
                me.call(name, "zcall.ping")  # connected both ways before the first notification
            sent_to: dict[int, str] = {}
            t0 = time.perf_counter()
            for item in range(n_items):
                name = names[item % len(names)]
                me.notify(name, "work", item)  # returns at once: no reply is coming
                sent_to[item] = name
            sent_ms = (time.perf_counter() - t0) * 1000
            print(
                f"\nsent {n_items} work items as notifications in {sent_ms:.1f} ms (round-robin, no waiting)"
            )
            complete = tally.wait(timeout)
            took_ms = (time.perf_counter() - t0) * 1000
            print(f"{tally.received} result notifications came back; the last after {took_ms:.0f} ms")
        except SpawnError as exc:  # its stderr is written out below, before this message
            raise SystemExit(f"a worker failed to start: no READY line from pid {exc.pid}") from None
        finally:
            stop_all(list(workers.values()), timeout=5.0)  # SIGTERM to all, then SIGKILL; reaped by pid
            for w in workers.values():
                sys.stderr.write(w.stderr)  # anything it logged (its stderr was captured, not our terminal)
        dropped = sum(c["notifies_dropped"] for c in me.statistics()["clients"].values())

    per_worker = collections.Counter(w for rs in tally.results.values() for w, _ in rs)
    once = [i for i in range(n_items) if len(tally.results.get(i, ())) == 1]
    missing = [i for i in range(n_items) if i not in tally.results]
    twice = [i for i, rs in tally.results.items() if len(rs) > 1]
    misrouted = [i for i, rs in tally.results.items() if any(w != sent_to.get(i) for w, _ in rs)]
    wrong = [i for i, rs in tally.results.items() if any(v != compute(i) for _, v in rs)]
    print("\ntally:")
    for name in names:
        print(f"   {name}: {per_worker[name]} items")
    print(f"   items processed exactly once: {len(once)}/{n_items}")
    print(f"   missing: {missing or 'none'}; more than once: {twice or 'none'}")
    print(
        f"   answered by another worker than sent to: {misrouted or 'none'}; wrong values: {wrong or 'none'}"
    )
    print(f"   work notifications dropped on the way out: {dropped}")
    ok = complete and len(once) == n_items and not (missing or twice or misrouted or wrong)
    print("pipeline: every item processed exactly once" if ok else "pipeline: INCOMPLETE (see the tally)")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--workers", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument("--items", type=int, default=60, help="work items (default 60)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for every result")
    parser.add_argument("--worker", metavar="NAME", help="only run a worker peer called NAME")
    parser.add_argument("--collector", metavar="ENDPOINT", help="(--worker) where the collector is")
    args = parser.parse_args()
    if args.worker:
        if not args.collector:
            parser.error("--worker needs --collector ENDPOINT")
        serve_worker(args.worker, args.collector)
        return 0
    return run(args.workers, args.items, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
