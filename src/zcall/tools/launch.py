"""Start a mesh of peers, one process each, from a topology (a TOML file or Python objects), and keep it up.

A topology lists peers: a ``name``, a ``target`` (``"module:attr"``, what ``zcall serve`` runs), a
``bind`` endpoint, the ``peers`` it knows by name, extra ``env``, a ``restart`` policy ("no",
"on-failure", "always") and an optional ``sync_bind`` (a REP endpoint beside the ROUTER)::

    [launch]
    startup_timeout = 15.0      # seconds for every peer to print READY and answer zcall.ping
    stop_timeout = 5.0          # grace on shutdown before SIGKILL
    cwd = "."                   # where children run, relative to this file (default: this file's dir)
    pythonpath = ["."]          # extra import dirs for the children, relative to this file

    [[peer]]
    name = "pricing"
    target = "mesh_services:pricing"
    bind = "tcp://127.0.0.1:*"
    restart = "on-failure"

    [[peer]]
    name = "frontend"
    target = "mesh_services:frontend"
    peers = ["pricing"]

**CURVE.** A peer with ``curve_secret = "keys/NAME.key_secret"`` serves encrypted; ``allow_keys = "keys"``
(a directory of public ``*.key`` files) says who may call it, ``allow_ips`` from where; it calls the peers
it knows with its own key pair and finds their public keys as ``NAME.key`` in ``peer_keys`` (default
``allow_keys``). The launcher pings a secured peer with that peer's own key pair, so put every peer's
public key in the shared directory (see docs/security.md).

**Ports.** A ``*`` port is replaced by a concrete free port *before* any child starts, so every child
gets the real endpoints of the peers it knows as ``--peer NAME=ENDPOINT`` flags at launch, and a
restarted peer comes back on the same endpoint (the others keep reaching it; zmq reconnects). The port is
free when chosen; another process could take it before the child binds (rare), and that child then fails
its start with a clear error.

**No orphans.** Each child runs ``python -m zcall serve ... --stop-on-stdin-eof`` in its own process
group (so a terminal's Ctrl-C reaches only the launcher, which forwards it in order). If the launcher
dies without cleaning up (SIGKILL, OOM), two things end its children: on Linux the child asks the kernel
for ``SIGTERM`` when its parent dies (``prctl(PR_SET_PDEATHSIG)``, set between fork and exec); and on
every platform the child stops when its stdin (a pipe from the launcher) reaches end of file. Note that
PDEATHSIG fires when the *thread* that started the child ends: start and supervise from one long-lived
thread (the main thread, as ``zcall launch`` does). A normal exit, an exception and ``atexit`` all stop
the children too (SIGTERM, then SIGKILL after ``stop_timeout``).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ..client.sync import SyncClient
from ..engine.sockets import DEFAULT_BIND
from ..errors import ZcallError

__all__ = [
    "RESTART_POLICIES",
    "LaunchError",
    "Launcher",
    "PeerProcess",
    "PeerSpec",
    "Topology",
    "TopologyError",
    "load_topology",
]

log = logging.getLogger("zcall.launch")

RESTART_POLICIES = ("no", "on-failure", "always")
"""``no``: a peer that exits stays down; ``on-failure``: restart it when it exits non-zero or is killed by
a signal; ``always``: restart it whenever it exits (while the launcher runs)."""

_PR_SET_PDEATHSIG = 1
_QUICK_EXIT_S = 10.0  # a peer that dies sooner than this after starting backs off before its next start
_MAX_BACKOFF_S = 10.0


class TopologyError(ValueError):
    """A topology that cannot be launched as written: the message names the file, peer and key."""


class LaunchError(RuntimeError):
    """A peer failed to start (died, or gave no READY line / ping in time); the others were stopped."""


# -- the topology -----------------------------------------------------------------------------------


@dataclass
class PeerSpec:
    """One peer of a topology: what to run, where it listens, whom it knows, how to keep it up."""

    name: str
    target: str
    bind: str = DEFAULT_BIND
    peers: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    restart: str = "no"
    sync_bind: str | None = None
    curve_secret: str | None = None
    """CURVE: this peer's NAME.key_secret; it serves with it and calls the peers it knows with it."""
    allow_keys: str | None = None
    """CURVE: directory of the public keys allowed to call this peer (None: any key)."""
    allow_ips: list[str] = field(default_factory=list)
    peer_keys: str | None = None
    """CURVE: where the peers it knows have their public NAME.key (default: ``allow_keys``)."""


@dataclass
class Topology:
    """Peers plus launch settings; build it in Python or with ``load_topology(path)``."""

    peers: list[PeerSpec]
    startup_timeout: float = 15.0
    stop_timeout: float = 5.0
    cwd: str | None = None
    pythonpath: list[str] = field(default_factory=list)
    python: str = sys.executable
    source: str = "<topology>"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``TopologyError`` for duplicate names, unknown peer references, bad policies or targets."""
        where = self.source
        if not self.peers:
            raise TopologyError(f"{where}: no peers: add at least one [[peer]] table")
        names: set[str] = set()
        for p in self.peers:
            if not p.name or not isinstance(p.name, str) or any(c.isspace() or c == "=" for c in p.name):
                raise TopologyError(f"{where}: bad peer name {p.name!r} (no spaces or '=')")
            if p.name in names:
                raise TopologyError(f"{where}: two peers are named {p.name!r}")
            names.add(p.name)
            module, sep, attr = p.target.partition(":")
            if not sep or not module or not attr:
                raise TopologyError(
                    f"{where}: peer {p.name!r}: target must be 'module:attr', got {p.target!r}"
                )
            if p.restart not in RESTART_POLICIES:
                raise TopologyError(
                    f"{where}: peer {p.name!r}: restart must be one of {', '.join(RESTART_POLICIES)}, "
                    f"got {p.restart!r}"
                )
            for ep in (p.bind, p.sync_bind):
                if ep is not None and "://" not in ep:
                    raise TopologyError(
                        f"{where}: peer {p.name!r}: {ep!r} is not an endpoint like 'tcp://127.0.0.1:*'"
                    )
        _validate_curve(self.peers, where)
        for p in self.peers:
            for other in p.peers:
                if other not in names:
                    raise TopologyError(
                        f"{where}: peer {p.name!r} knows {other!r}, which is not a peer of this topology "
                        f"(peers: {', '.join(sorted(names))})"
                    )
                if other == p.name:
                    raise TopologyError(f"{where}: peer {p.name!r} lists itself in peers")
        if self.startup_timeout <= 0 or self.stop_timeout < 0:
            raise TopologyError(f"{where}: startup_timeout must be > 0 and stop_timeout >= 0")

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, base_dir: str | os.PathLike[str] = ".", source: str = "<dict>"
    ) -> Topology:
        """Build from parsed TOML ``{"launch": {...}, "peer": [...]}``; paths are relative to ``base_dir``."""
        _check_keys(data, {"launch", "peer"}, source)
        settings = data.get("launch", {})
        if not isinstance(settings, Mapping):
            raise TopologyError(f"{source}: [launch] must be a table")
        _check_keys(
            settings, {"startup_timeout", "stop_timeout", "cwd", "pythonpath", "python"}, f"{source} [launch]"
        )
        raw_peers = data.get("peer", [])
        if not isinstance(raw_peers, list):
            raise TopologyError(f"{source}: peers are an array of tables: write [[peer]] (double brackets)")
        base = Path(base_dir)
        peers = []
        fields = {"name", "target", "bind", "peers", "env", "restart", "sync_bind"}
        fields |= {"curve_secret", "allow_keys", "allow_ips", "peer_keys"}
        for i, raw in enumerate(raw_peers):
            label = f"{source} peer #{i + 1}" + (
                f" ({raw.get('name')!r})" if isinstance(raw, Mapping) else ""
            )
            if not isinstance(raw, Mapping):
                raise TopologyError(f"{label}: must be a table")
            _check_keys(raw, fields, label)
            for key in ("name", "target"):
                if not isinstance(raw.get(key), str):
                    raise TopologyError(f"{label}: {key!r} is required (a string)")
            known = raw.get("peers", [])
            if not isinstance(known, list) or not all(isinstance(n, str) for n in known):
                raise TopologyError(f"{label}: 'peers' must be a list of peer names")
            env = raw.get("env", {})
            if not isinstance(env, Mapping):
                raise TopologyError(f"{label}: 'env' must be a table of NAME = \"value\"")
            peers.append(
                PeerSpec(
                    name=raw["name"],
                    target=raw["target"],
                    bind=str(raw.get("bind", DEFAULT_BIND)),
                    peers=list(known),
                    env={str(k): str(v) for k, v in env.items()},
                    restart=str(raw.get("restart", "no")),
                    sync_bind=None if raw.get("sync_bind") is None else str(raw["sync_bind"]),
                    **_curve_fields(raw, base, label),
                )
            )
        cwd = settings.get("cwd", ".")
        pythonpath = settings.get("pythonpath", [])
        if isinstance(pythonpath, str):
            pythonpath = [pythonpath]
        try:
            return cls(
                peers=peers,
                startup_timeout=float(settings.get("startup_timeout", 15.0)),
                stop_timeout=float(settings.get("stop_timeout", 5.0)),
                cwd=str((base / cwd).resolve()),
                pythonpath=[str((base / p).resolve()) for p in pythonpath],
                python=str(settings.get("python") or sys.executable),
                source=source,
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, TopologyError):
                raise
            raise TopologyError(f"{source}: {exc}") from None


def _curve_fields(raw: Mapping[str, Any], base: Path, label: str) -> dict[str, Any]:
    """The CURVE keys of one [[peer]] table, paths made absolute from the topology file's directory."""
    out: dict[str, Any] = {}
    for key in ("curve_secret", "allow_keys", "peer_keys"):
        if raw.get(key) is not None:
            if not isinstance(raw[key], str):
                raise TopologyError(f"{label}: {key!r} must be a path (a string)")
            out[key] = str((base / raw[key]).resolve())
    ips = raw.get("allow_ips", [])
    if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
        raise TopologyError(f"{label}: 'allow_ips' must be a list of addresses like [\"127.0.0.1\"]")
    out["allow_ips"] = list(ips)
    return out


def _validate_curve(peers: list[PeerSpec], where: str) -> None:
    """CURVE settings that cannot work: keys missing, or a secured peer and a plain one calling each other."""
    by_name = {p.name: p for p in peers}
    for p in peers:
        if p.curve_secret is None:
            if p.allow_keys or p.allow_ips or p.peer_keys:
                raise TopologyError(
                    f"{where}: peer {p.name!r}: allow_keys/allow_ips/peer_keys need curve_secret"
                )
            secured = [o for o in p.peers if o in by_name and by_name[o].curve_secret]
            if secured:
                raise TopologyError(
                    f"{where}: peer {p.name!r} calls {secured[0]!r}, which uses CURVE: give {p.name!r} a "
                    "curve_secret too (and its public key to the allow_keys of the peers it calls)"
                )
            continue
        if not Path(p.curve_secret).is_file():
            raise TopologyError(
                f"{where}: peer {p.name!r}: no curve_secret file {p.curve_secret!r} (zcall keygen)"
            )
        keys_dir = p.peer_keys or p.allow_keys
        for other in p.peers:
            if other not in by_name:
                continue
            if by_name[other].curve_secret is None:
                raise TopologyError(
                    f"{where}: peer {p.name!r} uses CURVE and calls {other!r}, which does not: secure both"
                )
            if keys_dir is None or not (Path(keys_dir) / f"{other}.key").is_file():
                raise TopologyError(
                    f"{where}: peer {p.name!r} calls {other!r} and needs its public key {other}.key in "
                    f"peer_keys (or allow_keys): {keys_dir!r}"
                )


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise TopologyError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (allowed: {', '.join(sorted(allowed))})"
        )


def load_topology(path: str | os.PathLike[str]) -> Topology:
    """Read a topology TOML file; relative ``cwd``/``pythonpath`` are taken from the file's directory."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TopologyError(f"{p}: no such topology file") from None
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{p}: not valid TOML: {exc}") from None
    return Topology.from_dict(data, base_dir=p.resolve().parent, source=str(p))


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


class _Waker:
    """A self-pipe: ``poke()`` from any thread or signal handler (lock-free), ``wait(timeout)`` in one."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def poke(self) -> None:
        try:
            os.write(self._w, b"!")
        except OSError:  # full: the waiter wakes anyway; closed: nobody waits any more
            pass

    def wait(self, timeout: float | None) -> None:
        """Return after a poke (even one made before the call) or after ``timeout`` seconds."""
        try:
            select.select([self._r], [], [], None if timeout is None else max(0.0, timeout))
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            pass


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_prctl = _libc_prctl()


def _child_setup(parent_pid: int) -> Callable[[], None]:
    """The child's preexec_fn: own process group; on Linux, SIGTERM when the launcher dies."""

    def setup() -> None:
        os.setpgid(0, 0)
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent_pid:  # the launcher died before prctl took effect
                os._exit(1)

    return setup


@dataclass
class PeerProcess:
    """A running (or restarting) peer: its spec, concrete endpoints, current process and history."""

    spec: PeerSpec
    bind: str
    endpoint: str
    sync_bind: str | None
    sync_endpoint: str | None
    proc: subprocess.Popen[str] | None = None
    started_at: float = 0.0
    restarts: int = 0
    quick_failures: int = 0
    restart_at: float | None = None
    exit_handled: bool = True
    ready: threading.Event = field(default_factory=threading.Event)
    ready_line: str = ""
    threads: list[threading.Thread] = field(default_factory=list)
    stderr_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=15))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


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
        self._wake = _Waker()
        self._stop_requested = False  # a plain flag: signal handlers set it (no locks in a handler)
        self._stopping = False
        self._started = False
        self.processes: dict[str, PeerProcess] = {}

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
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to every child, wait ``stop_timeout``, SIGKILL the rest, reap all. Idempotent."""
        self._stopping = True
        self._stop_requested = True
        self._wake.poke()
        running = [pp for pp in self.processes.values() if pp.proc is not None and pp.proc.poll() is None]
        for pp in running:
            with contextlib.suppress(ProcessLookupError):
                pp.proc.send_signal(sig)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.topology.stop_timeout
        for pp in running:
            p = pp.proc
            assert p is not None
            try:
                code = p.wait(max(0.0, deadline - time.monotonic()))
                if code != 0:
                    log.warning("peer %s (pid %d) exited with code %d on stop", pp.name, p.pid, code)
            except subprocess.TimeoutExpired:
                log.warning(
                    "peer pid %d did not stop within %.1fs: SIGKILL", p.pid, self.topology.stop_timeout
                )
                p.kill()
                p.wait()
        for pp in self.processes.values():
            for t in pp.threads:
                t.join(2.0)
            pp.threads.clear()
            if pp.proc is not None:
                for stream in (pp.proc.stdin, pp.proc.stdout, pp.proc.stderr):
                    if stream is not None:
                        with contextlib.suppress(OSError):
                            stream.close()
        atexit.unregister(self.stop)

    def request_stop(self) -> None:
        """Make ``start()``/``supervise()`` return early (safe from signal handlers and other threads)."""
        self._stop_requested = True
        self._wake.poke()  # lock-free: a handler must not take a lock its own thread may hold

    def supervise(self) -> int:
        """Restart peers as their policy says until ``request_stop()`` or until every peer is down for good.

        Returns 0 when stopped on request (or every peer exited 0), 1 when peers failed and stay down.
        """
        while not self._stop_requested:
            now = time.monotonic()
            next_due: float | None = None
            for pp in self.processes.values():
                if not pp.exit_handled and pp.proc is not None and pp.proc.poll() is not None:
                    self._on_exit(pp)
                if pp.restart_at is not None:
                    if pp.restart_at <= now:
                        pp.restart_at = None
                        self._restart(pp)
                    else:
                        next_due = pp.restart_at if next_due is None else min(next_due, pp.restart_at)
            if self._stop_requested:
                break
            if all(
                not pp.alive() and pp.restart_at is None and pp.exit_handled for pp in self.processes.values()
            ):
                failed = [
                    pp.name for pp in self.processes.values() if pp.proc is None or pp.proc.returncode != 0
                ]
                self._print(
                    f"every peer is down ({'failed: ' + ', '.join(failed) if failed else 'all exited 0'})"
                )
                return 1 if failed else 0
            timeout = 1.0 if next_due is None else max(0.0, min(1.0, next_due - time.monotonic()))
            self._wake.wait(timeout)
        return 0

    def table(self) -> str:
        """Names, endpoints and pids, aligned."""
        rows = [("NAME", "ENDPOINT", "PID", "SYNC ENDPOINT")]
        for pp in self.processes.values():
            rows.append((pp.name, pp.endpoint, str(pp.pid or "-"), pp.sync_endpoint or ""))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)

    def write_ready_file(self, path: str | os.PathLike[str]) -> None:
        """Write ``{name: {"endpoint", "sync_endpoint", "pid"}}`` as JSON, atomically (scripts, tests)."""
        data = {
            n: {"endpoint": pp.endpoint, "sync_endpoint": pp.sync_endpoint, "pid": pp.pid}
            for n, pp in self.processes.items()
        }
        tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"launcher_pid": os.getpid(), "peers": data}, f, indent=2)
        os.replace(tmp, path)

    def run(self, ready_file: str | os.PathLike[str] | None = None) -> int:
        """``zcall launch``: start, print the table and ``LAUNCHED``, supervise until SIGINT/SIGTERM, stop."""
        received: list[int] = []

        def on_signal(signum: int, frame: Any) -> None:
            received.append(signum)
            self.request_stop()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            try:
                self.start()
            except LaunchError as exc:
                if received:
                    return 0
                self._print(f"launch failed: {exc}", err=True)
                return 1
            if received:
                return 0
            self._print(self.table())
            if ready_file is not None:
                self.write_ready_file(ready_file)
            self._print(f"LAUNCHED {len(self.processes)} peers (Ctrl-C to stop)")
            code = self.supervise()
            if received:
                self._print(f"stopping {len(self.processes)} peers ({signal.Signals(received[0]).name})")
            return code
        finally:
            self.stop(signal.SIGINT if received and received[0] == signal.SIGINT else signal.SIGTERM)
            for s, h in previous.items():
                signal.signal(s, h)

    def __enter__(self) -> Launcher:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------------

    def _print(self, line: str, *, err: bool = False) -> None:
        stream = self._err if err else self._out
        with self._write_lock:
            try:
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass

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

    def _env(self, pp: PeerProcess) -> dict[str, str]:
        env = dict(os.environ)
        env.update(pp.spec.env)
        env["PYTHONUNBUFFERED"] = "1"
        if self.topology.pythonpath:
            parts = list(self.topology.pythonpath)
            if env.get("PYTHONPATH"):
                parts.append(env["PYTHONPATH"])
            env["PYTHONPATH"] = os.pathsep.join(parts)
        return env

    def _spawn(self, pp: PeerProcess) -> None:
        pp.ready = threading.Event()
        pp.ready_line = ""
        pp.stderr_tail.clear()
        proc = subprocess.Popen(
            self._argv(pp),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=self.topology.cwd,
            env=self._env(pp),
            preexec_fn=_child_setup(os.getpid()),
        )
        pp.proc = proc
        pp.started_at = time.monotonic()
        pp.exit_handled = False
        pp.threads = [
            threading.Thread(
                target=self._pump_stdout, args=(pp, proc), daemon=True, name=f"launch-{pp.name}-out"
            ),
            threading.Thread(
                target=self._pump_stderr, args=(pp, proc), daemon=True, name=f"launch-{pp.name}-err"
            ),
        ]
        for t in pp.threads:
            t.start()

    def _pump_stdout(self, pp: PeerProcess, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        with contextlib.suppress(OSError, ValueError):
            for line in proc.stdout:
                line = line.rstrip("\n")
                if not pp.ready.is_set() and line.startswith("READY "):
                    pp.ready_line = line
                    pp.ready.set()
                    self._wake.poke()
                elif self._show_output:
                    self._print(f"{pp.name} | {line}")
        pp.ready.set()  # EOF: wake whoever waits for READY (they check whether the process died)
        self._wake.poke()

    def _pump_stderr(self, pp: PeerProcess, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        with contextlib.suppress(OSError, ValueError):
            for line in proc.stderr:
                pp.stderr_tail.append(line.rstrip())
                if self._show_output:
                    self._print(f"{pp.name} | {line.rstrip()}", err=True)

    def _wait_ready(self, pp: PeerProcess, deadline: float) -> None:
        assert pp.proc is not None
        while not pp.ready.is_set() and not self._stop_requested and time.monotonic() < deadline:
            self._wake.wait(deadline - time.monotonic())
        if self._stop_requested and not pp.ready_line:
            raise LaunchError("stopped on request while peers were starting")
        if not pp.ready.is_set():
            raise LaunchError(
                f"peer {pp.name!r} (pid {pp.pid}) printed no READY line within "
                f"{self.topology.startup_timeout}s; raise [launch] startup_timeout or check its output above"
            )
        if not pp.ready_line:
            code = pp.proc.wait(5)
            for t in pp.threads:
                t.join(1.0)  # all of its stderr
            tail = "\n".join(f"  {line}" for line in pp.stderr_tail) or "  <no output>"
            raise LaunchError(
                f"peer {pp.name!r} exited with code {code} before it was ready (target {pp.spec.target!r}, "
                f"cwd {self.topology.cwd}); the end of its stderr:\n{tail}"
            )
        remaining = deadline - time.monotonic()
        # A secured peer is pinged with its own key pair: its public key must be in its allow_keys.
        security = None
        if pp.spec.curve_secret is not None:
            from ..security import ClientSecurity

            security = ClientSecurity(pp.spec.curve_secret, pp.spec.curve_secret)
        client = SyncClient(pp.endpoint, timeout=max(0.2, min(2.0, remaining)), security=security)
        try:
            while True:
                try:
                    pong = client.call("zcall.ping")
                    break
                except ZcallError as exc:
                    if time.monotonic() >= deadline or not pp.alive():
                        raise LaunchError(
                            f"peer {pp.name!r} at {pp.endpoint} does not answer zcall.ping: {exc}"
                        ) from None
        finally:
            client.close()
        if isinstance(pong, dict) and pong.get("pid") not in (None, pp.pid):
            raise LaunchError(
                f"{pp.endpoint} is answered by pid {pong.get('pid')}, not peer {pp.name!r} (pid {pp.pid}): "
                "another process holds that port"
            )
        self._print(f"peer {pp.name} up at {pp.endpoint} (pid {pp.pid})")

    def _on_exit(self, pp: PeerProcess) -> None:
        assert pp.proc is not None
        pp.exit_handled = True
        code = pp.proc.returncode
        for t in pp.threads:
            t.join(1.0)
        if self._stopping:
            return
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        policy = pp.spec.restart
        again = policy == "always" or (policy == "on-failure" and code != 0)
        if not again:
            log.warning("peer %s (pid %d) %s; restart=%r: it stays down", pp.name, pp.proc.pid, how, policy)
            self._print(f"peer {pp.name} down (pid {pp.proc.pid} {how})")
            return
        uptime = time.monotonic() - pp.started_at
        pp.quick_failures = pp.quick_failures + 1 if uptime < _QUICK_EXIT_S else 0
        delay = 0.0 if pp.quick_failures <= 1 else min(_MAX_BACKOFF_S, 0.5 * 2 ** (pp.quick_failures - 2))
        log.warning(
            "peer %s (pid %d) %s after %.1fs; restart=%r: restarting in %.1fs",
            pp.name,
            pp.proc.pid,
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
            if pp.alive():
                assert pp.proc is not None
                pp.proc.kill()
                pp.proc.wait()
            self._wake.poke()  # _on_exit applies the policy (with backoff)
