"""Helpers for socket-level integration tests of zcall services: endpoints, servers, processes, faults.

Everything here uses real sockets and real processes, and waits on signals (a ``READY`` line, a bound
event), never on sleeps. ``FaultProxy`` sits between a client and a server and drops, delays, duplicates
or reorders messages, or cuts the link, on command. Also runnable: ``python -m zcall.testing serve
MODULE:ATTR --bind ENDPOINT [--async]`` serves a ``Service`` (``SyncServer``, or ``AsyncServer`` with
``--async``), prints ``READY <endpoint>`` and runs until SIGTERM/SIGINT. ``zcall.pytest_plugin`` wraps
these in pytest fixtures (``docs/testing.md``).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import itertools
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import IO, Any, Literal

from ..engine.liveness import Heartbeat
from ..protocol.codec import Codec
from ..server.rep import SyncServer
from ..server.router import AsyncServer
from ..service.registry import Service
from .faultproxy import REPLIES, REQUESTS, FaultProxy, FaultRule, is_call, is_reply, kind_of

__all__ = [
    "REPLIES",
    "REQUESTS",
    "FaultProxy",
    "FaultRule",
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


class SpawnError(RuntimeError):
    """A spawned process died or stayed silent before printing its ready line; carries its stderr."""

    def __init__(self, message: str, returncode: int | None, stderr: str, pid: int | None = None) -> None:
        self.returncode = returncode
        self.stderr = stderr
        self.pid = pid
        super().__init__(f"{message}\n--- stderr ---\n{stderr.rstrip() or '<empty>'}")


_EOF = object()
_live: dict[int, ProcessHandle] = {}  # pid -> handle, until reaped: killed at interpreter exit
_live_lock = threading.Lock()


@atexit.register
def _kill_survivors() -> None:
    """A test run that ends (or crashes) before stopping its children must not leave them running."""
    with _live_lock:
        survivors = list(_live.values())
    for handle in survivors:
        with contextlib.suppress(Exception):
            handle.kill()
            handle.proc.wait(2.0)


class ProcessHandle:
    """A child process started by ``spawn``: its pid, the endpoint from its ready line, and ways to end it.

    Its stdout and stderr are drained by threads (so the child never blocks on a full pipe); ``expect``
    waits for a later stdout line. Leaving the ``with`` block stops the process and reaps it by pid.
    """

    def __init__(self, proc: subprocess.Popen[str], args: Sequence[str], *, own_group: bool = False) -> None:
        self.proc = proc
        self.own_group = own_group
        self.args = list(args)
        self.pid: int = proc.pid
        self.endpoint: str = ""
        self.ready_line: str = ""
        self._lines: queue.Queue[Any] = queue.Queue()
        self._stdout_seen: list[str] = []
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._pump_stdout, args=(proc.stdout,), daemon=True),
            threading.Thread(target=self._pump_stderr, args=(proc.stderr,), daemon=True),
        ]
        for t in self._readers:
            t.start()
        with _live_lock:
            _live[self.pid] = self

    def _pump_stdout(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._lines.put(line.rstrip("\n"))
        except (OSError, ValueError):
            pass
        finally:
            self._lines.put(_EOF)

    def _pump_stderr(self, stream: IO[str]) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                self._stderr.append(line)

    # -- output --------------------------------------------------------------------------------------

    @property
    def stderr(self) -> str:
        """Everything the child wrote to stderr so far (all of it once the process is reaped)."""
        return "".join(self._stderr)

    @property
    def stdout_lines(self) -> list[str]:
        """The stdout lines consumed so far by ``expect`` (and the ready line)."""
        return list(self._stdout_seen)

    def expect(self, prefix: str, timeout: float = 10.0) -> str:
        """Wait for the next stdout line starting with ``prefix`` (skipping others); return it.

        Raises ``SpawnError`` (with stderr) if the process exits or ``timeout`` passes first.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure(f"no line starting with {prefix!r} within {timeout}s")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is _EOF:
                self._lines.put(_EOF)  # keep EOF visible to later calls
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
                raise self._failure(f"process exited (code {self.proc.returncode}) before a {prefix!r} line")
            self._stdout_seen.append(line)
            if line.startswith(prefix):
                return line

    def output(self, timeout: float = 10.0) -> list[str]:
        """Wait for the process to exit and return every stdout line it printed (ready line included).

        If it is still running after ``timeout`` it is stopped and ``SpawnError`` (with stderr) raised.
        """
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(timeout=2.0)
            raise self._failure(f"still running after {timeout}s") from None
        while True:
            try:
                line = self._lines.get(timeout=2.0)
            except queue.Empty:
                break  # something it started still holds stdout open: return what we have
            if line is _EOF:
                self._lines.put(_EOF)
                break
            self._stdout_seen.append(line)
        return list(self._stdout_seen)

    def _failure(self, what: str) -> SpawnError:
        if self.proc.poll() is not None:
            self._join_readers(1.0)  # the whole of stderr, now that the writer is gone
        return SpawnError(
            f"{' '.join(self.args)} (pid {self.pid}): {what}", self.proc.poll(), self.stderr, self.pid
        )

    # -- lifetime --------------------------------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        """The exit code once the process has ended (negative: killed by that signal), else None."""
        return self.proc.poll()

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.proc.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM (see ``send_signal``)."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL (see ``send_signal``)."""
        self.send_signal(signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process, or with ``own_group`` to its whole process group (as Ctrl-C in
        a terminal does); a no-op once it has been reaped."""
        if self.proc.poll() is not None:
            return
        if self.own_group:  # until we reap it, the pid (and so the group id) cannot be reused
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
        else:
            self.proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit and return its code (raises ``subprocess.TimeoutExpired``)."""
        code = self.proc.wait(timeout)
        with _live_lock:
            _live.pop(self.pid, None)
        self._join_readers(2.0)
        return code

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; reap the process and return its exit code."""
        try:
            self.terminate()
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return self.wait(timeout)
        finally:
            if self.own_group:
                # whatever it started and left behind; a group id stays reserved while members live
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
            self._close_pipes()

    def _join_readers(self, timeout: float) -> None:
        for t in self._readers:
            t.join(timeout)

    def _close_pipes(self) -> None:
        self._join_readers(2.0)
        for stream in (self.proc.stdout, self.proc.stderr, self.proc.stdin):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> ProcessHandle:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"exited {self.returncode}"
        return f"<ProcessHandle pid={self.pid} {state} endpoint={self.endpoint!r}>"


def stop_all(handles: Sequence[ProcessHandle], timeout: float = 3.0) -> None:
    """Stop several processes at once: SIGTERM to all, one shared ``timeout``, SIGKILL to the rest; reap
    each by pid. (Stopping them one by one would cost ``timeout`` per process that ignores SIGTERM.)"""
    for h in handles:
        with contextlib.suppress(Exception):
            h.terminate()
    deadline = time.monotonic() + timeout
    for h in handles:
        with contextlib.suppress(subprocess.TimeoutExpired):
            h.wait(max(0.0, deadline - time.monotonic()))
    for h in handles:
        if h.alive():
            h.kill()
        h.stop(timeout)  # reap, close the pipes (and kill what is left of its group, with own_group)


def _child_env(env: Mapping[str, str] | None, pythonpath: Sequence[str | os.PathLike[str]]) -> dict[str, str]:
    out = dict(os.environ if env is None else env)
    out["PYTHONUNBUFFERED"] = "1"  # lines reach us as printed, not at exit
    if pythonpath:
        parts = [os.fspath(p) for p in pythonpath]
        if out.get("PYTHONPATH"):
            parts.append(out["PYTHONPATH"])
        out["PYTHONPATH"] = os.pathsep.join(parts)
    return out


def spawn(
    args: Sequence[str],
    *,
    ready_prefix: str | None = "READY",
    timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    pythonpath: Sequence[str | os.PathLike[str]] = (),
    own_group: bool = False,
) -> ProcessHandle:
    """Run ``sys.executable *args``; wait for a stdout line starting with ``ready_prefix`` and take the
    rest of it as ``.endpoint``. Raises ``SpawnError`` (with the child's stderr) if it dies or times out.

    ``ready_prefix=None`` returns at once (for programs that print no ready line). ``own_group=True``
    starts it in a new session so ``kill()``/``stop()`` also reach the processes it starts itself.
    """
    argv = [sys.executable, *args]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        cwd=cwd,
        env=_child_env(env, pythonpath),
        start_new_session=own_group,
    )
    handle = ProcessHandle(proc, argv, own_group=own_group)
    if ready_prefix is None:
        return handle
    try:
        line = handle.expect(ready_prefix, timeout)
    except BaseException:
        handle.stop(timeout=2.0)
        raise
    handle.ready_line = line
    handle.endpoint = line[len(ready_prefix) :].strip()
    return handle


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


def load_service(target: str) -> Service:
    """Import ``module:attr`` and return the ``Service`` there (calling ``attr`` if it is a factory)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected MODULE:ATTR, got {target!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Service) and callable(obj):
        obj = obj()
    if not isinstance(obj, Service):
        raise TypeError(f"{target} is a {type(obj).__name__}, not a zcall.Service")
    return obj


def _serve(
    target: str,
    endpoint: str,
    forever: bool,
    max_message_size: int | None,
    kind: ServerKind = "sync",
    heartbeat: Heartbeat | None = None,
    grace: float = 1.0,
) -> int:
    # Ctrl-C must work even if we were started with SIGINT ignored (a background job of a shell).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # A SIGTERM sent as soon as READY is read could land before the server installs its own handling
    # and kill us with the default action (exit -15). Until then, treat it as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    service = load_service(target)
    kwargs: dict[str, Any] = {}
    if max_message_size is not None:
        kwargs["codec"] = Codec(max_message_size=max_message_size)

    def announce(ep: str) -> None:
        print(f"READY {ep}", flush=True)

    if kind == "async":
        if heartbeat is not None:
            kwargs["heartbeat"] = heartbeat
        # serve_forever handles SIGTERM/SIGINT itself (and a KeyboardInterrupt before it does)
        AsyncServer(service, endpoint, **kwargs).serve_forever(grace, on_ready=announce)
        return 0
    server = SyncServer(service, endpoint, **kwargs)
    if forever:
        server.serve_forever(on_ready=announce)
        return 0
    server.start()
    try:
        announce(server.endpoint)
        server.wait()  # until SIGTERM / SIGINT
    except KeyboardInterrupt:
        server.stop()
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
    p.add_argument("--forever", action="store_true", help="sync: serve_forever(), not start()+wait()")
    p.add_argument("--max-message-size", type=int, default=None, metavar="BYTES")
    p.add_argument(
        "--heartbeat", type=_heartbeat_arg, default=None, metavar="IVL,TIMEOUT", help="async: ZMTP heartbeats"
    )
    p.add_argument("--grace", type=float, default=1.0, help="async: seconds for calls in flight at shutdown")
    ns = parser.parse_args(argv)
    if ns.heartbeat is not None and not ns.use_async:
        parser.error("--heartbeat needs --async")
    kind: ServerKind = "async" if ns.use_async else "sync"
    return _serve(ns.target, ns.bind, ns.forever, ns.max_message_size, kind, ns.heartbeat, ns.grace)


if __name__ == "__main__":
    sys.exit(main())
