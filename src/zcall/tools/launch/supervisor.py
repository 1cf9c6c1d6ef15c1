"""The supervisor: start every peer of a ``Topology`` as its own process, keep them up, stop them all.

Children are started, drained, waited for and stopped with ``zcall.tools.process`` (the same helper
``zcall.testing`` uses): each is ``python -m zcall serve ... --stop-on-stdin-eof`` in its own process
group, with PR_SET_PDEATHSIG and a stdin pipe from us, and announces itself with the READY line of
``zcall.tools.ready``. Signals reach the supervisor through ``StopSignal`` (a flag and a self-pipe):
the one thing the supervising thread waits on, woken by a signal, a child's output or its exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ...client.sync import SyncClient
from ...errors import ZcallError
from ...server.signals import StopSignal
from ..health import wait_serving
from ..process import ProcessHandle, SpawnError, start, stop_all
from .state import default_state_path, format_table, live_states, write_state
from .topology import PeerSpec, Topology

__all__ = ["LaunchError", "Launcher", "PeerProcess"]

log = logging.getLogger("zcall.launch")

_QUICK_EXIT_S = 10.0  # a peer that dies sooner than this after starting backs off before its next start
_MAX_BACKOFF_S = 10.0
_STDERR_TAIL = 15  # lines of a peer's stderr kept for the error when it fails to start
_EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (SIGINT), as README documents


class LaunchError(RuntimeError):
    """A peer failed to start (died, or gave no READY line / ping in time); the others were stopped."""


# -- endpoints --------------------------------------------------------------------------------------


class _PortPool:
    """Free ports chosen up front; the probe sockets stay open until all are chosen (no duplicates)."""

    def __init__(self) -> None:
        self._held: list[socket.socket] = []

    def concrete(self, endpoint: str) -> tuple[str, str]:
        """(what the child binds, what others connect to) for ``endpoint``; ``*`` ports become real ones."""
        scheme, _, rest = endpoint.partition("://")
        if scheme == "tcp":
            host, _, port = rest.rpartition(":")
            if port == "*":
                probe_host = "" if host in ("*", "0.0.0.0") else host.strip("[]")
                family = socket.AF_INET6 if ":" in probe_host else socket.AF_INET
                s = socket.socket(family, socket.SOCK_STREAM)
                s.bind((probe_host, 0))
                self._held.append(s)
                port = str(s.getsockname()[1])
            bind_ep = f"tcp://{host}:{port}"
            connect_host = "127.0.0.1" if host in ("*", "0.0.0.0") else host
            return bind_ep, f"tcp://{connect_host}:{port}"
        if scheme == "ipc" and rest == "*":
            path = os.path.join(tempfile.gettempdir(), f"zcall-{os.getpid()}-{os.urandom(4).hex()}.sock")
            return f"ipc://{path}", f"ipc://{path}"
        return endpoint, endpoint

    def release(self) -> None:
        for s in self._held:
            s.close()
        self._held.clear()


# -- children ---------------------------------------------------------------------------------------


@dataclass
class PeerProcess:
    """A running (or restarting) peer: its spec, concrete endpoints, current process and history."""

    spec: PeerSpec
    bind: str
    endpoint: str
    sync_bind: str | None
    sync_endpoint: str | None
    handle: ProcessHandle | None = None
    """The current process (``zcall.tools.process``), None before the first start."""
    started_at: float = 0.0
    restarts: int = 0
    quick_failures: int = 0
    restart_at: float | None = None
    exit_handled: bool = True
    state: str = "starting"
    """``starting``, ``up``, ``restarting``, ``down`` (stays down) or ``stopped`` (see launch.state)."""
    last_exit: int | None = None
    """The exit code of its last process (negative: the signal that killed it)."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.handle.pid if self.handle is not None else None

    @property
    def returncode(self) -> int | None:
        """The current process's exit code once it ended (negative: killed by that signal), else None."""
        return self.handle.returncode if self.handle is not None else None

    def alive(self) -> bool:
        return self.handle is not None and self.handle.alive()


class Launcher:
    """Start every peer of a ``Topology`` as its own process, wait until all answer ``zcall.ping``,
    restart crashed ones per their policy, and stop them all (SIGTERM, then SIGKILL) on the way out.

    ``with Launcher(topology) as mesh: mesh.endpoints["pricing"]`` starts and stops around a block;
    ``run()`` is the whole ``zcall launch`` command (start, table, supervise until a signal, stop).
    """

    def __init__(
        self,
        topology: Topology,
        *,
        out: IO[str] | None = None,
        err: IO[str] | None = None,
        show_output: bool = True,
    ) -> None:
        self.topology = topology
        self._out = out if out is not None else sys.stdout
        self._err = err if err is not None else sys.stderr
        self._show_output = show_output
        self._write_lock = threading.Lock()
        # What the supervising thread waits on: a stop request (a signal once run() installed the
        # handlers, or request_stop()), or a poke (a child printed a line or exited). Lock-free.
        self._stop = StopSignal(on_repeat=_stop_already_under_way)
        self._stopping = False
        self._started = False
        self.processes: dict[str, PeerProcess] = {}
        self.state = "starting"
        """The launcher's own state: ``starting``, ``running``, ``stopping``, ``stopped``."""
        self._state_files: list[Path] = []
        self._state_lock = threading.Lock()

    # -- public -------------------------------------------------------------------------------------

    @property
    def endpoints(self) -> dict[str, str]:
        """name → the endpoint to call each peer at (ROUTER: async and sync callers)."""
        return {n: pp.endpoint for n, pp in self.processes.items()}

    @property
    def pids(self) -> dict[str, int | None]:
        """name → the current pid of each peer's process (``None`` while it is down)."""
        return {n: pp.pid for n, pp in self.processes.items()}

    def start(self) -> Launcher:
        """Choose ports, start every peer, and return once all answered ``zcall.ping``.

        Raises ``LaunchError`` (after stopping the peers already started) if one dies or stays silent.
        """
        if self._started:
            raise RuntimeError("launcher already started")
        self._started = True
        pool = _PortPool()
        try:
            for spec in self.topology.peers:
                bind, endpoint = pool.concrete(spec.bind)
                sync_bind, sync_endpoint = pool.concrete(spec.sync_bind) if spec.sync_bind else (None, None)
                self.processes[spec.name] = PeerProcess(spec, bind, endpoint, sync_bind, sync_endpoint)
        finally:
            pool.release()
        atexit.register(self.stop)
        try:
            for pp in self.processes.values():
                self._spawn(pp)
            deadline = time.monotonic() + self.topology.startup_timeout
            for pp in self.processes.values():
                self._wait_ready(pp, deadline)
        except BaseException:
            self.stop()
            raise
        self.state = "running"
        self._save()
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to every child, wait ``stop_timeout``, SIGKILL the rest, reap all. Idempotent."""
        self._stopping = True
        self._stop.request("stop() called")
        if self.state != "stopped":
            self.state = "stopping"
            self._save()
        current = [pp for pp in self.processes.values() if pp.handle is not None]
        running = [pp for pp in current if pp.alive()]
        stop_all([pp.handle for pp in current if pp.handle is not None], self.topology.stop_timeout, sig=sig)
        for pp in running:
            h = pp.handle
            assert h is not None
            if h.killed:
                log.warning(
                    "peer %s (pid %d) did not stop within %.1fs: SIGKILL",
                    pp.name,
                    h.pid,
                    self.topology.stop_timeout,
                )
            elif h.returncode != 0:
                log.warning("peer %s (pid %d) exited with code %s on stop", pp.name, h.pid, h.returncode)
        for pp in self.processes.values():
            if pp.state in ("starting", "up", "restarting"):
                pp.state = "stopped"
            if pp.handle is not None and not pp.handle.alive():
                pp.last_exit = pp.handle.returncode
        if self.state != "stopped":
            self.state = "stopped"
            self._save()
        atexit.unregister(self.stop)

    def request_stop(self) -> None:
        """Make ``start()``/``supervise()`` return early (safe from signal handlers and other threads)."""
        self._stop.request()

    @property
    def stop_signal(self) -> StopSignal:
        """What ends ``start()``'s wait and ``supervise()``: ``with launcher.stop_signal:`` (main thread)
        makes SIGINT/SIGTERM do it, as ``run()`` does; enter it *before* telling anyone you are up, so a
        signal sent at once cannot find the default handlers."""
        return self._stop

    def supervise(self) -> int:
        """Restart peers as their policy says until ``request_stop()`` or until every peer is down for good
        (or SIGINT/SIGTERM, inside ``with launcher.stop_signal``).

        Returns 0 when stopped on request (or every peer exited 0), 1 when peers failed and stay down.
        """
        while not self._stop.requested:
            now = time.monotonic()
            next_due: float | None = None
            for pp in self.processes.values():
                if not pp.exit_handled and pp.handle is not None and not pp.handle.alive():
                    self._on_exit(pp)
                if pp.restart_at is not None:
                    if pp.restart_at <= now:
                        pp.restart_at = None
                        self._restart(pp)
                    else:
                        next_due = pp.restart_at if next_due is None else min(next_due, pp.restart_at)
            if self._stop.requested:
                break
            if all(
                not pp.alive() and pp.restart_at is None and pp.exit_handled for pp in self.processes.values()
            ):
                failed = [pp.name for pp in self.processes.values() if pp.returncode != 0]
                self._print(
                    f"every peer is down ({'failed: ' + ', '.join(failed) if failed else 'all exited 0'})"
                )
                return 1 if failed else 0
            # a child's exit closes its stdout, which pokes us; the timeout only bounds a missed poke
            timeout = 1.0 if next_due is None else max(0.0, min(1.0, next_due - time.monotonic()))
            self._stop.wait(timeout)
        return 0

    def table(self) -> str:
        """Names, endpoints, pids, states and restart counts, aligned (``zcall ps`` prints the same)."""
        return format_table(self.snapshot()["peers"])

    def snapshot(self) -> dict[str, Any]:
        """What the state file holds (``zcall.tools.launch.state``): the launcher, then every peer."""
        peers = {
            n: {
                "endpoint": pp.endpoint,
                "sync_endpoint": pp.sync_endpoint,
                "pid": pp.pid if pp.state in ("starting", "up") else None,
                "state": pp.state,
                "restarts": pp.restarts,
                "max_restarts": pp.spec.max_restarts,
                "restart": pp.spec.restart,
                "last_exit": pp.last_exit,
            }
            for n, pp in self.processes.items()
        }
        return {
            "launcher_pid": os.getpid(),
            "topology": self.topology.source,
            "state": self.state,
            "peers": peers,
        }

    def write_ready_file(self, path: str | os.PathLike[str]) -> None:
        """Write ``snapshot()`` as JSON to ``path`` now, atomically (``keep_state`` keeps it current)."""
        write_state(path, self.snapshot())

    def keep_state(self, path: str | os.PathLike[str]) -> None:
        """Rewrite ``snapshot()`` to ``path`` (atomically) on every change from now on: a peer starting,
        exiting, restarting or giving up, and the launcher stopping."""
        p = Path(path)
        if p not in self._state_files:
            self._state_files.append(p)
        if self._started:
            self._save()

    def run(
        self,
        ready_file: str | os.PathLike[str] | None = None,
        *,
        state_file: str | os.PathLike[str] | None = None,
    ) -> int:
        """``zcall launch``: start, print the table and ``LAUNCHED``, supervise until SIGINT/SIGTERM, stop.

        Keeps the state file current (``state_file``, default ``state.default_state_path()``, removed on
        exit) and ``ready_file`` too (left behind, marked stopped). Returns 0 when stopped by SIGTERM or
        every peer exited 0, 130 when stopped by Ctrl-C (SIGINT), 1 when the launch failed or every peer
        is down for good after a failure.
        """
        received = self._stop.signals_received
        own = Path(state_file) if state_file is not None else default_state_path()
        if state_file is None:
            _forget_dead_launchers(own.parent)
        self.keep_state(own)
        if ready_file is not None:
            self.keep_state(ready_file)
        with self._stop:  # SIGINT/SIGTERM only set a flag and poke the self-pipe
            try:
                try:
                    self.start()
                except LaunchError as exc:
                    if received:
                        return self._signal_code(received)
                    self._print(f"launch failed: {exc}", err=True)
                    return 1
                if received:
                    return self._signal_code(received)
                self._print(self.table())
                self._print(f"state file: {own} (zcall call @NAME ..., zcall ps)")
                self._print(f"LAUNCHED {len(self.processes)} peers (Ctrl-C to stop)")
                code = self.supervise()
                if received:
                    self._print(f"stopping {len(self.processes)} peers ({signal.Signals(received[0]).name})")
                    return self._signal_code(received)
                return code
            finally:  # a Ctrl-C is forwarded as one (the peers log it as such), anything else as SIGTERM
                self.stop(signal.SIGINT if received and received[0] == signal.SIGINT else signal.SIGTERM)
                self._state_files.remove(own)  # gone with us; a --ready-file stays, marked stopped
                _unlink(own)

    @staticmethod
    def _signal_code(received: list[int]) -> int:
        return _EXIT_INTERRUPTED if received[0] == signal.SIGINT else 0

    def __enter__(self) -> Launcher:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------------

    def _save(self) -> None:
        """Rewrite every kept state file (a failure is logged: the mesh matters more than its file)."""
        if not self._state_files:
            return
        with self._state_lock:
            data = self.snapshot()
            for path in self._state_files:
                try:
                    write_state(path, data)
                except OSError as exc:
                    log.warning("cannot write the state file %s: %s", path, exc)

    def _print(self, line: str, *, err: bool = False) -> None:
        stream = self._err if err else self._out
        with self._write_lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass

    def _relay(self, name: str, *, err: bool = False) -> Callable[[str], None]:
        """A peer's output line, relayed as ``name | line`` (from its drain thread)."""
        return lambda line: self._print(f"{name} | {line}", err=err)

    def _argv(self, pp: PeerProcess) -> list[str]:
        spec = pp.spec
        argv = [
            self.topology.python,
            "-m",
            "zcall",
            "serve",
            spec.target,
            "--bind",
            pp.bind,
            "--name",
            spec.name,
        ]
        for other in spec.peers:
            argv += ["--peer", f"{other}={self.processes[other].endpoint}"]
        if pp.sync_bind is not None:
            argv += ["--sync-bind", pp.sync_bind]
        if spec.curve_secret is not None:
            argv += ["--curve-secret", spec.curve_secret]
            if spec.allow_keys is not None:
                argv += ["--allow-keys", spec.allow_keys]
            for ip in spec.allow_ips:
                argv += ["--allow-ip", ip]
            if spec.peer_keys is not None:
                argv += ["--peer-keys", spec.peer_keys]
        argv.append("--stop-on-stdin-eof")
        return argv

    def _spawn(self, pp: PeerProcess) -> None:
        if pp.handle is not None:
            pp.handle.stop(0.0)  # the previous process has exited: reap it, close its pipes
        show = self._show_output
        pp.handle = start(
            self._argv(pp),
            env={**os.environ, **pp.spec.env},
            cwd=self.topology.cwd,
            pythonpath=self.topology.pythonpath,
            own_group=True,  # a terminal's Ctrl-C reaches only us; we forward it, in order
            die_with_parent=True,  # Linux: SIGTERM to it if we die without cleaning up
            keep_stdin=True,  # ... and everywhere: its stdin (our pipe) reads EOF when we are gone
            on_stdout=self._relay(pp.name) if show else _drop,  # every line but READY
            on_stderr=self._relay(pp.name, err=True) if show else None,
            stderr_lines=_STDERR_TAIL,
            wake=self._stop.poke,  # a READY line or an exit wakes the supervising thread
        )
        pp.started_at = time.monotonic()
        pp.exit_handled = False

    def _wait_ready(self, pp: PeerProcess, deadline: float) -> None:
        h = pp.handle
        assert h is not None
        try:
            h.wait_ready(max(0.0, deadline - time.monotonic()), stop=self._stop)
        except SpawnError as exc:
            if self._stop.requested:
                raise LaunchError("stopped on request while peers were starting") from None
            if exc.returncode is None:
                raise LaunchError(
                    f"peer {pp.name!r} (pid {pp.pid}) printed no READY line within "
                    f"{self.topology.startup_timeout}s; raise [launch] startup_timeout "
                    "or check its output above"
                ) from None
            tail = "\n".join(f"  {line}" for line in exc.stderr.splitlines()) or "  <no output>"
            raise LaunchError(
                f"peer {pp.name!r} exited with code {exc.returncode} before it was ready (target "
                f"{pp.spec.target!r}, cwd {self.topology.cwd}); the end of its stderr:\n{tail}"
            ) from None
        remaining = deadline - time.monotonic()
        # A secured peer is pinged with its own key pair: its public key must be in its allow_keys.
        security = None
        if pp.spec.curve_secret is not None:
            from ...security import ClientSecurity

            security = ClientSecurity(pp.spec.curve_secret, pp.spec.curve_secret)
        try:  # up means SERVING (zcall.health), as a container probe would see it: zcall.tools.health
            wait_serving(pp.endpoint, max(0.2, remaining), security=security)
            with SyncClient(pp.endpoint, timeout=max(0.2, min(2.0, remaining)), security=security) as c:
                pong = c.call("zcall.ping")  # whose pid answers
        except ZcallError as exc:
            raise LaunchError(f"peer {pp.name!r} at {pp.endpoint} is not serving: {exc}") from None
        if isinstance(pong, dict) and pong.get("pid") not in (None, pp.pid):
            raise LaunchError(
                f"{pp.endpoint} is answered by pid {pong.get('pid')}, not peer {pp.name!r} (pid {pp.pid}): "
                "another process holds that port"
            )
        pp.state = "up"
        self._save()
        if pp.restarts:
            limit = pp.spec.max_restarts
            which = f"restart {pp.restarts}" + (f" of {limit}" if limit is not None else "")
            self._print(f"peer {pp.name} up at {pp.endpoint} (pid {pp.pid}, {which})")
        else:
            self._print(f"peer {pp.name} up at {pp.endpoint} (pid {pp.pid})")

    def _on_exit(self, pp: PeerProcess) -> None:
        h = pp.handle
        assert h is not None
        pp.exit_handled = True
        code = h.wait(0.0)  # it has exited: reap it, and drain the rest of its output
        pp.last_exit = code
        if self._stopping:
            return
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        policy = pp.spec.restart
        again = policy == "always" or (policy == "on-failure" and code != 0)
        limit = pp.spec.max_restarts
        if again and limit is not None and pp.restarts >= limit:
            log.warning(
                "peer %s (pid %d) %s; it was restarted %d time(s), max_restarts=%d: it stays down",
                pp.name,
                h.pid,
                how,
                pp.restarts,
                limit,
            )
            pp.state = "down"
            self._save()
            self._print(f"peer {pp.name} down (pid {h.pid} {how}; restart limit {limit} reached)")
            return
        if not again:
            log.warning("peer %s (pid %d) %s; restart=%r: it stays down", pp.name, h.pid, how, policy)
            pp.state = "down"
            self._save()
            self._print(f"peer {pp.name} down (pid {h.pid} {how})")
            return
        pp.state = "restarting"
        self._save()
        uptime = time.monotonic() - pp.started_at
        pp.quick_failures = pp.quick_failures + 1 if uptime < _QUICK_EXIT_S else 0
        delay = 0.0 if pp.quick_failures <= 1 else min(_MAX_BACKOFF_S, 0.5 * 2 ** (pp.quick_failures - 2))
        log.warning(
            "peer %s (pid %d) %s after %.1fs; restart=%r: restarting in %.1fs",
            pp.name,
            h.pid,
            how,
            uptime,
            policy,
            delay,
        )
        pp.restart_at = time.monotonic() + delay

    def _restart(self, pp: PeerProcess) -> None:
        pp.restarts += 1
        self._spawn(pp)
        try:
            self._wait_ready(pp, time.monotonic() + self.topology.startup_timeout)
        except LaunchError as exc:
            log.error("restart of peer %s failed: %s", pp.name, exc)
            h = pp.handle
            if h is not None and h.alive():
                h.kill()
                h.wait()
            self._stop.poke()  # _on_exit applies the policy (with backoff)


def _stop_already_under_way() -> None:
    """A second SIGINT/SIGTERM: the stop it asks for has begun, bounded by ``stop_timeout``."""


def _drop(line: str) -> None:
    """A quiet launcher's stdout relay: the line is read (the pipe never fills) and forgotten."""


def _unlink(path: Path) -> None:
    """Remove ``path`` if it is there."""
    try:
        path.unlink()
    except OSError:
        pass


def _forget_dead_launchers(directory: Path) -> None:
    """Remove the state files of launchers that died without cleaning up (SIGKILL): nobody keeps them."""
    alive = {p for p, _ in live_states(directory)}
    for path in directory.glob("mesh-*.json"):
        if path not in alive:
            _unlink(path)
