"""A tiny server for the hostile-input and socket-hygiene tests, in a thread or in a child process.

``make_service()`` builds a fresh ``Service`` whose ``probe()`` method reports the serving process's
resident memory and its server's counters (bad messages, reply-cache size, subscribers, in flight), so a
test can check over the wire that a server under attack stays bounded. Run as a program it serves one
with ``AsyncServer`` (ROUTER) or ``SyncServer`` (REP) and prints ``READY <endpoint>``::

    python -m helpers.hostile_server --kind async --bind tcp://127.0.0.1:* --max-message-size 4096
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from typing import Any

import zcall
from zcall.tools.ready import announce


def rss_kib() -> int:
    """This process's resident set size in KiB (VmRSS from /proc/self/status; 0 where there is none)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Holder:
    """Where ``probe()`` finds the server serving the service (set once the server exists)."""

    server: Any = None
    started: threading.Event
    naps: int  # how many times ``nap`` ran

    def __init__(self) -> None:
        self.started = threading.Event()
        self.naps = 0
        self.lock = threading.Lock()


def make_service() -> tuple[zcall.Service, Holder]:
    """A fresh service (echo, blob, nap, probe) and the holder its ``probe`` reads the server from."""
    svc = zcall.Service("hostile")
    holder = Holder()

    @svc.method(inline=True)
    def echo(value: Any = None) -> Any:
        """Return value unchanged (on the loop: its reply is sent before the next message is read)."""
        return value

    @svc.method(inline=True)
    def blob(size: int) -> bytes:
        """``size`` zero bytes: a small request with a big reply (fills a slow reader's queue)."""
        return bytes(size)

    @svc.method
    def nap(seconds: float) -> float:
        """Sleep ``seconds`` in a worker thread (sets ``holder.started`` first) and return them."""
        with holder.lock:
            holder.naps += 1
        holder.started.set()
        time.sleep(seconds)
        return seconds

    @svc.method(inline=True)
    def bump(tag: str = "") -> str:
        """A non-idempotent call (a retry-marked one is kept in the reply cache)."""
        return tag

    @svc.method(inline=True)
    def probe() -> dict[str, Any]:
        """RSS in KiB and the server's counters: what a hostile-input test checks stays bounded."""
        srv = holder.server
        out: dict[str, Any] = {"rss_kib": rss_kib(), "pid": os.getpid()}
        if srv is not None:
            d = srv._dispatch
            out["counters"] = dict(d.counters)
            out["replies"] = len(d.replies)
            out["reply_bytes"] = d.replies.nbytes
            if isinstance(srv, zcall.AsyncServer):
                out["stats"] = srv.statistics()
        return out

    return svc, holder


def main() -> None:
    """Serve ``make_service()`` until SIGTERM/SIGINT; print ``READY <endpoint>`` once bound."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--kind", choices=["async", "sync"], default="async")
    p.add_argument("--bind", default="tcp://127.0.0.1:*")
    p.add_argument("--max-message-size", type=int, default=None)
    ns = p.parse_args()
    # one line per bad message is the contract; the fuzz sends thousands, so keep them off the pipe
    logging.getLogger("zcall").setLevel(logging.ERROR)
    svc, holder = make_service()
    kwargs: dict[str, Any] = {}
    if ns.max_message_size is not None:
        kwargs["codec"] = zcall.Codec(max_message_size=ns.max_message_size)
    kind = zcall.AsyncServer if ns.kind == "async" else zcall.SyncServer
    server: Any = kind(svc, ns.bind, **kwargs)
    holder.server = server
    server.serve_forever(grace=0.5, on_ready=announce)


if __name__ == "__main__":
    main()
