"""Fork safety: a multiprocessing pool (fork start method) whose workers call a zcall server.

The parent uses zcall first (it serves, and makes an async call of its own), then forks a pool. Each
worker makes its own ``AsyncClient`` and ``SyncClient``: zcall resets its engine in a forked child
(``zcall.engine.fork``), so the child's clients get a fresh engine thread and zmq context instead of
waiting on the parent's, which did not survive the fork. An object the parent made and the child uses
fails at once (``ClientClosed``, saying it was made before the fork) instead of hanging (the last task).

Run alone:   python patterns/fork_pool.py [--workers 2] [--tasks 8]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

import zcall

service = zcall.Service("squares")


@service.method(inline=True)
def square(x: int) -> dict[str, int]:
    """x squared, with the server's pid (the parent's)."""
    return {"x": x, "square": x * x, "server_pid": os.getpid()}


_endpoint = ""
_parent_client: zcall.AsyncClient | None = None


def work(x: int) -> dict[str, object]:
    """In a forked worker: one call on each face, with clients made here, in the child."""
    t0 = time.monotonic()
    with zcall.AsyncClient(_endpoint, timeout=5.0) as client:
        answer = client.call_async("square", x).result(10)
    with zcall.SyncClient(_endpoint, timeout=5.0) as sync:
        again = sync.call("square", x)
    assert answer == again
    return {**answer, "worker_pid": os.getpid(), "seconds": time.monotonic() - t0}


def use_inherited(_: int) -> str:
    """In a forked worker: the parent's client, used here, fails at once (never hangs)."""
    assert _parent_client is not None
    try:
        _parent_client.call_async("square", 1).result(10)
    except zcall.ClientClosed as exc:
        return f"ClientClosed: {exc}"
    return "no error (unexpected)"


def main() -> int:
    global _endpoint, _parent_client
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=8)
    args = parser.parse_args()
    with zcall.AsyncServer(service) as server:
        _endpoint = server.endpoint
        _parent_client = zcall.AsyncClient(_endpoint, timeout=5.0)
        print(f"parent {os.getpid()} calls first: {_parent_client.call_async('square', 0).result(10)}")
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(args.workers) as pool:
            results = pool.map(work, range(1, args.tasks + 1), chunksize=1)
            inherited = pool.map(use_inherited, [0])[0]
        for r in results:
            ms = r["seconds"] * 1000  # type: ignore[operator]
            print(f"worker {r['worker_pid']}: square({r['x']}) = {r['square']} in {ms:.1f} ms")
        ok = all(r["square"] == r["x"] ** 2 and r["server_pid"] == os.getpid() for r in results)
        workers = {r["worker_pid"] for r in results}
        print(f"{len(results)} calls from {len(workers)} forked workers: {'all answered' if ok else 'WRONG'}")
        print(f"the parent's client in a worker: {inherited}")
        after = _parent_client.call_async("square", 3).result(10)["square"]
        print(f"parent still calls after the pool: {after}")
        _parent_client.close()
    return 0 if ok and "before os.fork()" in inherited else 1


if __name__ == "__main__":
    sys.exit(main())
