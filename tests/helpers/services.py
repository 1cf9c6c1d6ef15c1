"""The service the integration tests serve, in a thread or in a child process (``helpers.services:service``).

Handlers that the tests synchronise on print a marker line (``SLOW START <tag>``) so a test can wait for
"the call is running in the server" on the child's stdout instead of sleeping.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import zcall

service = zcall.Service("testsvc")

_counter = 0


@service.method
def double(x: int) -> int:
    """Return twice x."""
    return x * 2


@service.method
def echo(value: Any) -> Any:
    """Return value unchanged."""
    return value


@service.method
def describe(a: int, b: int = 0, *, scale: int = 1, **extra: Any) -> dict[str, Any]:
    """Show how the arguments arrived (positional, default, keyword-only, extra keywords)."""
    return {"a": a, "b": b, "scale": scale, "extra": extra, "total": (a + b) * scale}


@service.method
def slow(seconds: float, tag: str = "") -> str:
    """Announce the start on stdout, sleep ``seconds``, return ``tag``."""
    print(f"SLOW START {tag}", flush=True)
    time.sleep(seconds)
    return tag


@service.method
def boom(message: str) -> None:
    """Always raise ValueError(message)."""
    raise ValueError(message)


@service.method
def incr(n: int = 1) -> int:
    """Add n to a process-wide counter and return it (a side effect the tests can count)."""
    global _counter
    _counter += n
    return _counter


@service.method
async def adouble(x: int) -> int:
    """Coroutine handler: await something, then return twice x."""
    await asyncio.sleep(0)
    return x * 2


@service.method
def count(n: int, every: float = 0.0) -> Iterator[int]:
    """Stream 0 ... n-1, one item each ``every`` seconds."""
    for i in range(n):
        if every:
            time.sleep(every)
        yield i


@service.method
def pid() -> int:
    """The server's process id (tells which server answered)."""
    return os.getpid()
