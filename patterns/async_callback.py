"""Asynchronous call with a callback (DEALER/ROUTER): the caller keeps working while double(10) runs.

This is the essay's asynchronous example made right. As written there, ``async_call`` is a plain ``def``
that calls ``asyncio.sleep(1)`` without ``await`` (so nothing sleeps, and Python warns about a coroutine
that was never awaited), and ``main`` then does ``await async_call(...)`` on the plain int it returns
(TypeError: object int can't be used in 'await' expression). It also never does anything while the call
is in flight, which is the whole point. Here the essay's four steps are done for real, across processes:

1. the caller builds a request object holding the parameter and the callback;
2. it sends it (``client.call_async`` returns at once with a future);
3. the callee (an ``AsyncServer``) processes it, taking 0.2 s, and replies; on arrival zcall invokes
   the callback (on its engine thread);
4. the callback handles the result, while the caller's main thread has been doing other work.

Run alone (starts its own server process, cleans it up):  python patterns/async_callback.py
Or in two terminals:  python patterns/async_callback.py --serve tcp://127.0.0.1:5555
                      python patterns/async_callback.py --call tcp://127.0.0.1:5555
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zcall
from zcall.testing import SpawnError, spawn
from zcall.tools.ready import announce

WORK_SECONDS = 0.2
"""How long ``double`` takes on the server: long enough for the caller's other work to show."""

service = zcall.Service("doubler")


@service.method
async def double(x: int) -> int:
    """Return twice x, after a short non-blocking pause that stands for real work."""
    await asyncio.sleep(WORK_SECONDS)
    return x * 2


_print_lock = threading.Lock()


def say(line: str) -> None:
    """Print one whole line: the callback (on zcall's engine thread) and the caller print at once, and
    ``print`` writes the text and its newline separately, so lines could interleave."""
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def serve(endpoint: str) -> None:
    """Serve ``double`` on an AsyncServer until Ctrl-C or SIGTERM, then stop gracefully."""
    # READY (the line the parent waits for, never a sleep) goes out once bound; Ctrl-C and SIGTERM stop
    # the server gracefully (calls in flight get their grace period).
    server = zcall.AsyncServer(service, endpoint)
    server.serve_forever(on_ready=announce)


@dataclass
class Request:
    """Step 1: the essay's request object: the parameter, and what to do with the outcome."""

    param: int
    callback: Callable[[Any], None]
    errback: Callable[[BaseException], None]
    done: threading.Event = field(default_factory=threading.Event)
    outcome: dict[str, Any] = field(default_factory=dict)


def other_work(step: int) -> int:
    """A slice of the caller's own work (a small computation) that runs while the call is in flight."""
    return sum(i * i for i in range(step * 10_000, (step + 1) * 10_000)) % 9973


def call(endpoint: str, timeout: float = 5.0) -> int:
    """Make the asynchronous call, work meanwhile, and wait for the callback; returns an exit code."""

    def on_result(result: Any) -> None:  # step 4: runs on zcall's engine thread when the reply arrives
        say(f"async call result: {result}")
        request.outcome["result"] = result
        request.outcome["at"] = time.perf_counter()
        request.done.set()

    def on_error(exc: BaseException) -> None:
        say(f"async call failed: {type(exc).__name__}: {exc}")
        request.outcome["error"] = exc
        request.outcome["at"] = time.perf_counter()
        request.done.set()

    request = Request(param=10, callback=on_result, errback=on_error)  # step 1
    with zcall.AsyncClient(endpoint, timeout=timeout) as client:
        sent_at = time.perf_counter()
        client.call_async(  # step 2: returns at once; steps 3 and 4 happen without this thread
            "double", request.param, callback=request.callback, errback=request.errback
        )
        step, checksum = 0, 0
        deadline = time.monotonic() + timeout + 1.0
        while not request.done.is_set() and time.monotonic() < deadline:
            step += 1
            say(f"caller: doing other work while double({request.param}) is in flight (step {step})")
            checksum ^= other_work(step)
            request.done.wait(0.05)  # the rest of this work slice; returns at once if the callback fires
        if not request.done.wait(timeout=1.0):  # deterministic: the Event, with a bound
            say(f"no callback within {timeout:.1f}s")
            return 1
    elapsed_ms = (request.outcome["at"] - sent_at) * 1000
    which = "callback" if "result" in request.outcome else "errback"
    say(
        f"caller: {which} arrived after {elapsed_ms:.0f} ms; meanwhile the main thread did {step} "
        f"slice(s) of other work (checksum {checksum}) and never blocked on the call"
    )
    return 0 if request.outcome.get("result") == request.param * 2 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="ENDPOINT", help="only serve, on ENDPOINT")
    parser.add_argument("--call", metavar="ENDPOINT", help="only call the server at ENDPOINT")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    if args.call:
        return call(args.call)
    try:  # start the server in a child process; returns once it has printed READY <endpoint>
        server = spawn([__file__, "--serve", "tcp://127.0.0.1:*"])
    except SpawnError as exc:
        raise SystemExit(f"server failed to start: {exc}") from None
    try:
        return call(server.endpoint)
    finally:
        server.stop()  # SIGTERM, then SIGKILL; reaped by pid
        sys.stderr.write(server.stderr)  # anything it logged (its stderr was captured, not our terminal)


if __name__ == "__main__":
    sys.exit(main())
