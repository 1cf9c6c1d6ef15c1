"""The streaming service the process tests serve (``helpers.stream_services:service``), and what they
read from a process: its RSS.

Handlers print marker lines (``FOREVER START``, ``FOREVER CLOSED``, ``SINK CLOSED``) so a test waits
for "the stream runs" or "its finally: ran" on the child's stdout instead of sleeping.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import zcall
from zcall.engine.liveness import Heartbeat

service = zcall.Service("streams")


@service.method
def forever(size: int = 0) -> Iterator[object]:
    """An infinite stream of ``size``-byte items (their number when size is 0)."""
    print("FOREVER START", flush=True)
    payload = os.urandom(size) if size else b""
    i = 0
    try:
        while True:
            yield payload if size else i
            i += 1
    finally:
        print("FOREVER CLOSED", flush=True)


@service.method
def count(n: int, every: float = 0.0) -> Iterator[int]:
    for i in range(n):
        if every:
            time.sleep(every)
        yield i


@service.method
def sink(chunks: Iterator[bytes]) -> int:
    """A client stream: the bytes it took."""
    total = 0
    try:
        for chunk in chunks:
            total += len(chunk)
    finally:
        print("SINK CLOSED", flush=True)
    return total


@service.method
def rss() -> int:
    return rss_of(os.getpid())


def rss_of(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (Linux ``/proc``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def consume(endpoint: str, method: str, *args: object) -> None:
    """A client process: stream ``method`` and print ``GOT n`` as items come (a test kills it)."""
    with zcall.AsyncClient(endpoint, timeout=60, heartbeat=Heartbeat(0.2, 0.6)) as c:
        for i, _ in enumerate(c.options(window=2).stream_blocking(method, *args)):
            print(f"GOT {i}", flush=True)


if __name__ == "__main__":
    consume(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))
