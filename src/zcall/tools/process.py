"""The one process helper: start a child, drain its output, wait for its READY line, stop it by pid.

Used by ``zcall.testing`` (``spawn``, ``ProcessHandle``, ``stop_all``, re-exported there) and by the
launcher (``zcall launch``), so both start, watch and end children the same way:

- ``start(argv, ...)`` runs a child with stdout and stderr on pipes that threads drain at once (a child
  never blocks on a full pipe). Its stdout lines are queued for ``expect``, or handed to ``on_stdout``
  instead (a long-lived child's output then costs no memory); the first line that starts with
  ``ready_prefix`` is parsed with ``zcall.tools.ready.parse_ready`` into ``handle.ready``. stderr is kept
  (all of it, or the last ``stderr_lines`` lines) and also handed to ``on_stderr``.
- ``handle.wait_ready(timeout)`` returns that parsed line, or raises ``SpawnError`` carrying the child's
  stderr if it exits first or stays silent; given ``stop=`` (a ``StopSignal``) it also gives up as soon
  as a stop is requested, so a supervisor can wait for a child and for Ctrl-C at once.
- ``handle.stop(timeout)`` and ``stop_all(handles, timeout)``: a signal (SIGTERM), then SIGKILL after
  ``timeout``, then the child is reaped by pid and its pipes closed.
- ``own_group=True`` starts it in its own session, so a signal reaches the processes it starts too (and a
  terminal's Ctrl-C does not reach it). ``die_with_parent=True`` asks Linux for a SIGTERM when this
  process dies (``prctl(PR_SET_PDEATHSIG)``, set between fork and exec). The kernel sends it when the
  *thread* that started the child ends, so start such children from a long-lived thread (the main one).
  ``keep_stdin=True`` gives the child a stdin pipe from us: when we die, it reads end of file (the
  cross-platform way for it to notice; ``zcall serve --stop-on-stdin-eof`` does).

A child still running when the interpreter exits is killed and reaped (``atexit``).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import IO

from ..server.signals import StopSignal
from .ready import READY, ReadyLine, parse_ready

__all__ = ["ProcessHandle", "SpawnError", "child_env", "spawn", "start", "stop_all"]

_PR_SET_PDEATHSIG = 1
_KILL_WAIT_S = 10.0  # after SIGKILL: a process is gone in milliseconds unless stuck in the kernel
_READER_JOIN_S = 2.0  # for the drain threads once the child is gone (a grandchild may hold the pipe)

Hook = Callable[[], None]


class SpawnError(RuntimeError):
    """A spawned process died or stayed silent before printing its ready line; carries its stderr."""

    def __init__(self, message: str, returncode: int | None, stderr: str, pid: int | None = None) -> None:
        self.returncode = returncode
        self.stderr = stderr
        self.pid = pid
        super().__init__(f"{message}\n--- stderr ---\n{stderr.rstrip() or '<empty>'}")


_live: dict[int, ProcessHandle] = {}  # pid -> handle, until reaped: killed at interpreter exit
_live_lock = threading.Lock()


@atexit.register
def _kill_survivors() -> None:
    """A program (or test run) that ends before stopping its children must not leave them running."""
    with _live_lock:
        survivors = list(_live.values())
    for handle in survivors:
        with contextlib.suppress(Exception):
            handle.kill()
            handle.proc.wait(2.0)


def child_env(
    env: Mapping[str, str] | None = None,
    pythonpath: Sequence[str | os.PathLike[str]] = (),
) -> dict[str, str]:
    """``env`` (default: ours) with unbuffered output and ``pythonpath`` in front of ``PYTHONPATH``."""
    out = dict(os.environ if env is None else env)
    out["PYTHONUNBUFFERED"] = "1"  # lines reach us as printed, not at exit
    if pythonpath:
        parts = [os.fspath(p) for p in pythonpath]
        if out.get("PYTHONPATH"):
            parts.append(out["PYTHONPATH"])
        out["PYTHONPATH"] = os.pathsep.join(parts)
    return out


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_prctl = _libc_prctl()


def _die_with(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn``: SIGTERM to the child when ``parent_pid`` dies (Linux)."""

    def setup() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)

    return setup


class ProcessHandle:
    """A child process: its pid, its ready line, its output, and ways to end it (by pid).

    Its stdout and stderr are drained by threads (so the child never blocks on a full pipe); ``expect``
    waits for a later stdout line. Leaving the ``with`` block stops the process and reaps it.
    """

    def __init__(
        self,
        proc: subprocess.Popen[str],
        args: Sequence[str],
        *,
        own_group: bool = False,
        ready_prefix: str = READY,
        on_stdout: Callable[[str], object] | None = None,
        on_stderr: Callable[[str], object] | None = None,
        stderr_lines: int | None = None,
        wake: Hook | None = None,
    ) -> None:
        self.proc = proc
        self.own_group = own_group
        self.args = list(args)
        self.pid: int = proc.pid
        self.ready: ReadyLine | None = None
        """The parsed ready line, once the child printed it (see ``zcall.tools.ready``)."""
        self.ready_line: str = ""
        self.endpoint: str = ""
        """The endpoint of the ready line (``READY <endpoint> [name=...]``), once printed."""
        self.killed = False
        """True once ``stop``/``stop_all`` had to SIGKILL it (it outlived the stop signal's timeout)."""
        self._ready_prefix = ready_prefix
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._wake = wake
        self._waiters: list[Hook] = []
        self._cond = threading.Condition()
        self._lines: collections.deque[tuple[int, str]] = collections.deque()
        self._seq = 0
        self._ready_seq = 0
        self._eof = False
        self._stdout_seen: list[str] = []
        self._stderr: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self._readers = [
            threading.Thread(target=self._pump_stdout, args=(proc.stdout,), daemon=True),
            threading.Thread(target=self._pump_stderr, args=(proc.stderr,), daemon=True),
        ]
        with _live_lock:
            _live[self.pid] = self
        for t in self._readers:
            t.start()

    # -- the drain threads -------------------------------------------------------------------------

    def _pump_stdout(self, stream: IO[str]) -> None:
        try:
            for raw in stream:
                self._on_line(raw.rstrip("\n"))
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()
            self._poke()

    def _on_line(self, line: str) -> None:
        parsed = None
        with self._cond:
            if self.ready is None:
                parsed = parse_ready(line, self._ready_prefix)
            if self._on_stdout is None:
                self._seq += 1
                self._lines.append((self._seq, line))
            if parsed is not None:
                self.ready, self.ready_line, self.endpoint = parsed, line, parsed.endpoint
                self._ready_seq = self._seq
            self._cond.notify_all()
        if parsed is None and self._on_stdout is not None:
            self._on_stdout(line)
        self._poke()

    def _pump_stderr(self, stream: IO[str]) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                self._stderr.append(line)
                if self._on_stderr is not None:
                    self._on_stderr(line.rstrip("\n"))

    def _poke(self) -> None:
        for hook in (self._wake, *tuple(self._waiters)):
            if hook is not None:
                hook()

    # -- output --------------------------------------------------------------------------------------

    @property
    def stderr(self) -> str:
        """What the child wrote to stderr so far (all of it once reaped, or its last ``stderr_lines``)."""
        return "".join(self._stderr)

    @property
    def stdout_lines(self) -> list[str]:
        """The stdout lines consumed so far by ``expect`` and ``wait_ready`` (the ready line included)."""
        return list(self._stdout_seen)

    @property
    def stdout_closed(self) -> bool:
        """True once the child's stdout reached end of file (it exited, or closed it)."""
        return self._eof

    def wait_ready(self, timeout: float = 10.0, *, stop: StopSignal | None = None) -> ReadyLine:
        """Wait for the ready line and return it parsed (at once if it came already).

        Raises ``SpawnError`` (with stderr) if the process exits or ``timeout`` passes first, or, with
        ``stop``, as soon as ``stop.requested`` (a signal, or ``stop.request()`` from another thread).
        """
        deadline = time.monotonic() + timeout
        if stop is not None:
            self._waiters.append(stop.poke)  # lines and EOF wake ``stop.wait`` below
        try:
            while True:
                with self._cond:
                    remaining = deadline - time.monotonic()
                    if self.ready is not None or self._eof or remaining <= 0:
                        break
                    if stop is None:
                        self._cond.wait(remaining)
                        continue
                if stop.requested:
                    break
                stop.wait(remaining)
        finally:
            if stop is not None:
                self._waiters.remove(stop.poke)
        if self.ready is None:
            if self._eof:
                raise self._exited_before(repr(self._ready_prefix))
            if stop is not None and stop.requested:
                raise self._failure(f"stopped waiting for a {self._ready_prefix!r} line ({stop.reason})")
            raise self._failure(f"no line starting with {self._ready_prefix!r} within {timeout}s")
        with self._cond:  # the lines up to the ready line count as read (``stdout_lines``)
            while self._lines and self._lines[0][0] <= self._ready_seq:
                self._stdout_seen.append(self._lines.popleft()[1])
        return self.ready

    def expect(self, prefix: str, timeout: float = 10.0) -> str:
        """Wait for the next stdout line starting with ``prefix`` (skipping others); return it.

        Raises ``SpawnError`` (with stderr) if the process exits or ``timeout`` passes first.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._lines:
                    line = self._lines.popleft()[1]
                    self._stdout_seen.append(line)
                    if line.startswith(prefix):
                        return line
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._cond.wait(remaining)
        if self._eof:  # raised outside the lock: building the error joins the drain threads
            raise self._exited_before(repr(prefix))
        raise self._failure(f"no line starting with {prefix!r} within {timeout}s")

    def output(self, timeout: float = 10.0) -> list[str]:
        """Wait for the process to exit and return every stdout line it printed (ready line included).

        If it is still running after ``timeout`` it is stopped and ``SpawnError`` (with stderr) raised.
        """
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(timeout=2.0)
            raise self._failure(f"still running after {timeout}s") from None
        with self._cond:
            # something it started may still hold stdout open: then return what came
            self._cond.wait_for(lambda: self._eof, _READER_JOIN_S)
            self._stdout_seen.extend(line for _, line in self._lines)
            self._lines.clear()
        return list(self._stdout_seen)

    def _exited_before(self, what: str) -> SpawnError:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        return self._failure(f"process exited (code {self.proc.returncode}) before a {what} line")

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
        self._join_readers(_READER_JOIN_S)
        return code

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; reap the process and return its exit code."""
        self.terminate()
        return self._reap(timeout)

    def _reap(self, timeout: float) -> int:
        """Wait up to ``timeout`` for the exit a signal asked for, SIGKILL if it did not come; reap;
        close the pipes. Idempotent."""
        try:
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.kill()
                return self.wait(_KILL_WAIT_S)
        finally:
            if self.own_group:
                # whatever it started and left behind; a group id stays reserved while members live
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
            self._close_pipes()

    def _join_readers(self, timeout: float) -> None:
        for t in self._readers:
            if t is not threading.current_thread():
                t.join(timeout)

    def _close_pipes(self) -> None:
        self._join_readers(_READER_JOIN_S)
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


def stop_all(handles: Sequence[ProcessHandle], timeout: float = 3.0, *, sig: int = signal.SIGTERM) -> None:
    """Stop several processes at once: ``sig`` to all, one shared ``timeout``, SIGKILL to the rest; reap
    each by pid. (Stopping them one by one would cost ``timeout`` per process that ignores ``sig``.)"""
    for h in handles:
        with contextlib.suppress(Exception):
            h.send_signal(sig)
    deadline = time.monotonic() + timeout
    for h in handles:
        h._reap(max(0.0, deadline - time.monotonic()))


def start(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    pythonpath: Sequence[str | os.PathLike[str]] = (),
    own_group: bool = False,
    die_with_parent: bool = False,
    keep_stdin: bool = False,
    ready_prefix: str = READY,
    on_stdout: Callable[[str], object] | None = None,
    on_stderr: Callable[[str], object] | None = None,
    stderr_lines: int | None = None,
    wake: Hook | None = None,
) -> ProcessHandle:
    """Run ``argv`` (an explicit program and its arguments) and return its handle at once.

    ``env`` defaults to ours (see ``child_env``). ``on_stdout`` gets every stdout line but the ready line,
    instead of their being queued for ``expect``; ``on_stderr`` gets every stderr line (both from a drain
    thread). ``wake`` is called after every stdout line and at its end of file: it must not block, nor
    take a lock a signal handler might hold (``StopSignal.poke`` is made for it).
    """
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if keep_stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        cwd=cwd,
        env=child_env(env, pythonpath),
        start_new_session=own_group,
        preexec_fn=_die_with(os.getpid()) if die_with_parent and _prctl is not None else None,
    )
    return ProcessHandle(
        proc,
        argv,
        own_group=own_group,
        ready_prefix=ready_prefix,
        on_stdout=on_stdout,
        on_stderr=on_stderr,
        stderr_lines=stderr_lines,
        wake=wake,
    )


def spawn(
    args: Sequence[str],
    *,
    ready_prefix: str | None = READY,
    timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    pythonpath: Sequence[str | os.PathLike[str]] = (),
    own_group: bool = False,
) -> ProcessHandle:
    """Run ``sys.executable *args``; wait for a stdout line starting with ``ready_prefix`` and take its
    endpoint as ``.endpoint`` (``READY <endpoint> [name=...]``: the rest of the line, without the
    fields). Raises ``SpawnError`` (with the child's stderr) if it dies or times out.

    ``ready_prefix=None`` returns at once (for programs that print no ready line, or to start several
    and then ``wait_ready()`` for each). ``own_group=True`` starts it in a new session so
    ``kill()``/``stop()`` also reach the processes it starts itself.
    """
    handle = start(
        [sys.executable, *args],
        env=env,
        cwd=cwd,
        pythonpath=pythonpath,
        own_group=own_group,
        ready_prefix=READY if ready_prefix is None else ready_prefix,
    )
    if ready_prefix is None:
        return handle
    try:
        handle.wait_ready(timeout)
    except BaseException:
        handle.stop(timeout=2.0)
        raise
    return handle
