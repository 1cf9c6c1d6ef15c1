"""Helpers for socket-level integration tests of zcall services: endpoints, servers, processes, faults.

Everything here uses real sockets and real processes, and waits on signals (a ``READY`` line, a bound
event), never on sleeps. ``FaultProxy`` sits between a client and a server and drops, delays, duplicates
or reorders messages, or cuts the link, on command. Also runnable: ``python -m zcall.testing serve
MODULE:ATTR --bind ENDPOINT [--async]`` serves a ``Service`` (``SyncServer``, or ``AsyncServer`` with
``--async``), prints ``READY <endpoint>`` and runs until SIGTERM/SIGINT. ``zcall.pytest_plugin`` wraps
these in pytest fixtures (``docs/testing.md``).

The process helpers (``spawn``, ``ProcessHandle``, ``SpawnError``, ``stop_all``) are
``zcall.tools.process``'s, shared with ``zcall launch``; the READY line is ``zcall.tools.ready``'s; the
``MODULE:ATTR`` loader is ``zcall.tools.targets``'s.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import itertools
import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from ..engine.liveness import Heartbeat
from ..protocol.codec import Codec
from ..server.asynchronous import AsyncServer
from ..server.lifecycle import DEFAULT_GRACE
from ..server.sync import SyncServer
from ..service.registry import Service
from ..tools.health import NotServing, wait_serving
from ..tools.process import ProcessHandle, SpawnError, spawn, stop_all
from ..tools.ready import announce
from ..tools.serving import serve_until_stopped
from ..tools.targets import TargetError, load_service
from .doubles import CallRecorder, FakeServer, NotScripted, RecordedCall
from .faultproxy import REPLIES, REQUESTS, FaultProxy, FaultRule, is_call, is_reply, kind_of

__all__ = [
    "CallRecorder",
    "FakeServer",
    "NotScripted",
    "RecordedCall",
    "REPLIES",
    "REQUESTS",
    "FaultProxy",
    "FaultRule",
    "NotServing",
    "ProcessHandle",
    "SpawnError",
    "free_tcp_endpoint",
    "ipc_endpoint",
    "is_call",
    "is_reply",
    "kind_of",
    "main",
    "running_server",
    "serve_command",
    "spawn",
    "spawn_server",
    "stop_all",
    "wait_serving",
]

ServerKind = Literal["sync", "async"]

_IPC_PATH_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS: keep a margin
_ipc_counter = itertools.count()
_short_dir: str | None = None
_short_dir_lock = threading.Lock()


# -- endpoints -------------------------------------------------------------------------------------


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """A ``tcp://host:PORT`` endpoint on a port the OS just reported free (bind to 0, read, close).

    Prefer binding servers to ``tcp://127.0.0.1:*``; use this only when the port must be known first.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    return f"tcp://{host}:{port}"


def _short_tmp_dir() -> str:
    global _short_dir
    with _short_dir_lock:
        if _short_dir is None:
            _short_dir = tempfile.mkdtemp(prefix="zc-", dir="/tmp" if os.path.isdir("/tmp") else None)
            atexit.register(shutil.rmtree, _short_dir, True)
        return _short_dir


def ipc_endpoint(directory: str | os.PathLike[str] | None = None) -> str:
    """A unique, unused ``ipc://`` endpoint in ``directory`` (or a short temp dir if the path would be
    too long for a unix socket, ~100 bytes)."""
    name = f"zc-{os.getpid()}-{next(_ipc_counter)}-{os.urandom(3).hex()}.sock"
    if directory is not None:
        path = os.path.join(os.fspath(directory), name)
        if len(path.encode()) < _IPC_PATH_MAX:
            return f"ipc://{path}"
    return f"ipc://{os.path.join(_short_tmp_dir(), name)}"


# -- processes -------------------------------------------------------------------------------------
# ProcessHandle, SpawnError, spawn and stop_all are zcall.tools.process's (the launcher's too).


def serve_command(
    target: str,
    endpoint: str = "tcp://127.0.0.1:*",
    *,
    forever: bool = False,
    kind: ServerKind = "sync",
    heartbeat: Heartbeat | None = None,
) -> list[str]:
    """The arguments (after the interpreter) that run ``target`` ("module:attr") as a server."""
    if kind not in ("sync", "async"):
        raise ValueError(f"kind must be 'sync' or 'async', got {kind!r}")
    cmd = ["-m", "zcall.testing", "serve", target, "--bind", endpoint]
    if forever:
        cmd.append("--forever")
    if kind == "async":
        cmd.append("--async")
    if heartbeat is not None:
        if kind != "async":
            raise ValueError("heartbeat= applies to kind='async' servers only (REP servers have none)")
        cmd += ["--heartbeat", f"{heartbeat.interval},{heartbeat.timeout}"]
    return cmd


def spawn_server(
    target: str,
    endpoint: str = "tcp://127.0.0.1:*",
    *,
    kind: ServerKind = "sync",
    heartbeat: Heartbeat | None = None,
    forever: bool = False,
    timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    pythonpath: Sequence[str | os.PathLike[str]] = (),
) -> ProcessHandle:
    """Serve the ``Service`` at ``target`` ("module:attr") in a child process; returns once it is bound.

    ``kind="sync"`` serves it with ``SyncServer`` (REP), ``kind="async"`` with ``AsyncServer`` (ROUTER;
    ``heartbeat`` sets its ZMTP heartbeats). ``pythonpath`` lists directories the child needs to import
    ``module``. The caller stops the process (``with`` block or ``.stop()``).
    """
    return spawn(
        serve_command(target, endpoint, forever=forever, kind=kind, heartbeat=heartbeat),
        timeout=timeout,
        env=env,
        cwd=cwd,
        pythonpath=pythonpath,
    )


# -- in-process servers ----------------------------------------------------------------------------


@contextlib.contextmanager
def running_server(
    service: Service,
    endpoint: str | None = None,
    *,
    kind: ServerKind = "sync",
    grace: float = 1.0,
    **server_kwargs: Any,
) -> Iterator[Any]:
    """A server for ``service`` on a thread for the ``with`` block (bound on entry, stopped on exit).

    ``kind="sync"`` yields a ``SyncServer``, ``kind="async"`` an ``AsyncServer`` on zcall's engine
    thread (stopped with ``grace`` seconds for calls in flight). ``endpoint`` defaults to a free
    loopback tcp port; ``server_kwargs`` go to the server's constructor.
    """
    ep = endpoint or "tcp://127.0.0.1:*"
    if kind == "sync":
        sync_server = SyncServer(service, ep, **server_kwargs)
        sync_server.start()
        try:
            yield sync_server
        finally:
            sync_server.stop()
    elif kind == "async":
        async_server = AsyncServer(service, ep, **server_kwargs).start()
        try:
            yield async_server
        finally:
            async_server.stop(grace)
    else:
        raise ValueError(f"kind must be 'sync' or 'async', got {kind!r}")


# -- the runner ------------------------------------------------------------------------------------


def _serve(
    target: str,
    endpoint: str,
    forever: bool,
    max_message_size: int | None,
    kind: ServerKind = "sync",
    heartbeat: Heartbeat | None = None,
    grace: float | None = None,
) -> int:
    service = load_service(target)
    kwargs: dict[str, Any] = {}
    if max_message_size is not None:
        kwargs["codec"] = Codec(max_message_size=max_message_size)
    if kind == "async":
        if heartbeat is not None:
            kwargs["heartbeat"] = heartbeat
        AsyncServer(service, endpoint, **kwargs).serve_forever(1.0 if grace is None else grace, announce)
        return 0
    server = SyncServer(service, endpoint, **kwargs)
    sync_grace = DEFAULT_GRACE if grace is None else grace
    # Either way the signal handlers are in place before the bind, so a SIGTERM sent the moment the
    # READY line is read still stops the server cleanly (exit 0).
    if forever:
        server.serve_forever(sync_grace, announce)
    else:
        serve_until_stopped(server, grace=sync_grace)  # start(), then stop(grace) on the signal
    return 0


def _heartbeat_arg(text: str) -> Heartbeat:
    try:
        interval, timeout = (float(x) for x in text.split(","))
        return Heartbeat(interval, timeout)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected INTERVAL,TIMEOUT seconds (e.g. 0.1,0.3): {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m zcall.testing serve MODULE:ATTR [--bind EP] [--async]``: serve until a signal."""
    parser = argparse.ArgumentParser(prog="python -m zcall.testing", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve a Service and print 'READY <endpoint>' once bound")
    p.add_argument("target", metavar="MODULE:ATTR", help="where the zcall.Service lives")
    p.add_argument("--bind", default="tcp://127.0.0.1:*", metavar="ENDPOINT")
    kinds = p.add_mutually_exclusive_group()
    kinds.add_argument("--sync", action="store_true", help="a REP server (SyncServer, the default)")
    kinds.add_argument("--async", dest="use_async", action="store_true", help="a ROUTER server (AsyncServer)")
    p.add_argument(
        "--forever", action="store_true", help="sync: serve_forever(), not start() and stop() on a signal"
    )
    p.add_argument("--max-message-size", type=int, default=None, metavar="BYTES")
    p.add_argument(
        "--heartbeat", type=_heartbeat_arg, default=None, metavar="IVL,TIMEOUT", help="async: ZMTP heartbeats"
    )
    p.add_argument(
        "--grace",
        type=float,
        default=None,
        help="seconds for calls in flight at shutdown (default: 1 async, 5 sync)",
    )
    ns = parser.parse_args(argv)
    if ns.heartbeat is not None and not ns.use_async:
        parser.error("--heartbeat needs --async")
    kind: ServerKind = "async" if ns.use_async else "sync"
    try:
        return _serve(ns.target, ns.bind, ns.forever, ns.max_message_size, kind, ns.heartbeat, ns.grace)
    except (TargetError, TypeError) as exc:  # TypeError: not a Service (load_service says which)
        parser.exit(2, f"python -m zcall.testing serve: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
