"""Progress: a long job streams its progress to the caller, who draws a progress bar; one deadline covers
the whole job.

The job server runs in a process of its own. Its ``render(job, steps, seconds)`` handler is a plain
generator: it does ``steps`` pieces of work (``seconds`` in all) and yields a progress update after each
(``{"done": i, "of": steps, ...}``), then returns the job's result. The caller consumes it with
``for update in client.stream("render", ...)`` and redraws its bar on each update, so a 30-second job is
never a 30-second silence that a call timeout would cut short (the old complaint about long calls): the
call's timeout is the budget of the whole job, stated once, and the updates show it is alive.

A second run asks for a deadline shorter than the job: the stream ends with ``CallTimeout`` at the
deadline, and the server stops the job there (the generator is closed at its next yield, so its
``finally:`` runs and records where it stopped), which the caller then checks with ``status(job)``.

Run alone:  python patterns/progress.py [--seconds 30] [--steps 30]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator

import zcall
from zcall.testing import SpawnError, spawn
from zcall.tools.ready import announce
from zcall.tools.serving import serve_until_stopped

# -- the job server (its own process) ---------------------------------------------------------------

jobs = zcall.Service("jobs")
_status: dict[str, str] = {}
_lock = threading.Lock()


@jobs.method
def render(job: str, steps: int, seconds: float) -> Iterator[dict[str, object]]:
    """Do ``steps`` pieces of work in ``seconds``, yielding progress after each; returns the result."""
    t0 = time.monotonic()
    done = 0
    with _lock:
        _status[job] = "running"
    try:
        for done in range(1, steps + 1):
            time.sleep(seconds / steps)  # one piece of the work
            yield {"done": done, "of": steps, "elapsed": round(time.monotonic() - t0, 2)}
        with _lock:
            _status[job] = "done"
        return {"job": job, "frames": steps, "took": round(time.monotonic() - t0, 2)}  # type: ignore[return-value]
    finally:
        with _lock:
            if _status[job] != "done":
                _status[job] = f"stopped after {done} of {steps} steps"


@jobs.method(inline=True)
def status(job: str) -> str:
    """What happened to ``job``: running, done, or where it was stopped."""
    with _lock:
        return _status.get(job, "unknown")


def serve() -> None:
    """The job server: until SIGTERM/SIGINT; ``READY <endpoint>`` once bound."""
    serve_until_stopped(zcall.AsyncServer(jobs), on_ready=announce)


# -- the caller (this process) ------------------------------------------------------------------------


def bar(done: int, of: int, width: int = 30) -> str:
    filled = width * done // of
    return f"[{'#' * filled}{'.' * (width - filled)}] {100 * done // of:3d}%  step {done}/{of}"


def follow(client: zcall.SyncClient, job: str, steps: int, seconds: float, deadline: float) -> object:
    """Run ``job`` with ``deadline`` seconds for all of it, drawing the bar; returns its result."""
    tty = sys.stdout.isatty()
    updates = client.options(timeout=deadline).stream("render", job, steps, seconds)
    for update in updates:
        line = bar(update["done"], update["of"])  # type: ignore[index]
        if tty:
            print(f"\r{line}", end="", flush=True)  # one bar, redrawn
        else:
            print(line, flush=True)  # a log: one line per update
    if tty:
        print()
    return updates.result


def run(seconds: float, steps: int) -> int:
    try:
        server = spawn([__file__, "--serve"])
    except SpawnError as exc:
        raise SystemExit(f"the job server failed to start: {exc}") from None
    ok = True
    try:
        with zcall.SyncClient(server.endpoint) as client:
            budget = seconds * 1.5 + 1.0
            print(f"job A: {steps} steps in {seconds:g} s, deadline {budget:g} s for the whole job")
            t0 = time.monotonic()
            result = follow(client, "A", steps, seconds, budget)
            took = time.monotonic() - t0
            print(f"job A done in {took:.2f} s (within its deadline of {budget:g} s): {result}")
            ok &= client.call("status", "A") == "done"

            short = seconds / 2
            print(f"\njob B: the same job with a deadline of {short:g} s, half of what it needs")
            t0 = time.monotonic()
            try:
                follow(client, "B", steps, seconds, short)
                print("job B finished?! (its deadline should have ended it)")
                ok = False
            except zcall.CallTimeout:
                took = time.monotonic() - t0
                print(f"job B: deadline passed after {took:.2f} s: CallTimeout, the stream ended")
            deadline = time.monotonic() + 5
            while (where := client.call("status", "B")) == "running" and time.monotonic() < deadline:
                time.sleep(0.05)  # the server stops the job at its next yield: ask until it has
            print(f"job B on the server: {where} (its generator was closed: finally ran)")
            ok &= where.startswith("stopped after")
    finally:
        server.stop(timeout=5.0)  # SIGTERM, then SIGKILL; reaped by pid
        sys.stderr.write(server.stderr)
    print("progress: both jobs behaved as shown" if ok else "progress: UNEXPECTED (see above)")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the job takes (default 30)")
    parser.add_argument("--steps", type=int, default=30, help="progress updates it sends (default 30)")
    parser.add_argument("--serve", action="store_true", help="only run the job server")
    args = parser.parse_args()
    if args.serve:
        serve()
        return 0
    return run(args.seconds, args.steps)


if __name__ == "__main__":
    sys.exit(main())
