"""The state file of a running ``zcall launch``: where it lives, how it is written, how a peer is found.

``zcall launch`` keeps one JSON file per launcher current for as long as it runs, rewritten atomically
(a temporary file, then ``os.replace``) whenever a peer starts, exits, restarts or gives up::

    {"launcher_pid": 4242, "topology": "/abs/mesh.toml", "state": "running", "updated": 1700000000.0,
     "peers": {"calc": {"endpoint": "tcp://127.0.0.1:40123", "sync_endpoint": null, "pid": 4250,
                        "state": "up", "restarts": 1, "max_restarts": 3, "restart": "on-failure",
                        "last_exit": -9}}}

A peer's ``state`` is ``starting``, ``up``, ``restarting`` (exited; coming back), ``down`` (exited; stays
down: its policy, or its restart limit) or ``stopped`` (the launcher stopped it); ``pid`` is null while
it has no process. The launcher's own ``state`` is ``starting``, ``running``, ``stopping`` or
``stopped``.

**Where.** In ``$XDG_RUNTIME_DIR/zcall/`` (else ``<tmp>/zcall-<uid>/``), named ``mesh-<launcher pid>.json``,
private to the user (mode 0700) and removed when the launcher exits; ``--ready-file PATH`` writes the
same content to PATH as well (left there, marked ``stopped``, on exit).

**Finding a peer** (``zcall call @calc ...``): the file given with ``--mesh FILE``, else the one in
``$ZCALL_MESH``, else every live launcher's file in the directory above (a file whose launcher pid is
gone is skipped). A name that no mesh knows, or that several running meshes know, is an error saying
which files were read and how to choose.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MESH_ENV",
    "MeshLookupError",
    "PeerRecord",
    "default_state_dir",
    "default_state_path",
    "find_peer",
    "format_table",
    "live_states",
    "read_state",
    "write_state",
]

MESH_ENV = "ZCALL_MESH"
"""The environment variable naming the state file that ``@name`` endpoints are read from."""


class MeshLookupError(LookupError):
    """``@name`` cannot be resolved: no mesh found, no such peer, or several meshes have it."""


@dataclass(frozen=True)
class PeerRecord:
    """One peer as the state file has it."""

    name: str
    endpoint: str
    sync_endpoint: str | None
    pid: int | None
    state: str
    restarts: int
    source: str
    """The state file it was read from."""


def default_state_dir() -> Path:
    """``$XDG_RUNTIME_DIR/zcall`` when that runtime directory exists, else ``<tmp>/zcall-<uid>``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "zcall"
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"zcall-{uid}"


def default_state_path(launcher_pid: int | None = None) -> Path:
    """Where a launcher with ``launcher_pid`` (default: this process) keeps its state file."""
    return default_state_dir() / f"mesh-{launcher_pid or os.getpid()}.json"


def write_state(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` atomically: a reader sees the old file or the new, never half."""
    target = Path(path)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({**data, "updated": time.time()}, f, indent=2)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed state file at ``path`` (``MeshLookupError`` if missing or not a zcall state file)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MeshLookupError(f"no mesh state file {os.fspath(path)!r}") from None
    except (OSError, ValueError) as exc:
        raise MeshLookupError(f"cannot read mesh state file {os.fspath(path)!r}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("peers"), dict):
        raise MeshLookupError(f"{os.fspath(path)!r} is not a zcall launch state file (no 'peers')")
    return data


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_states(directory: str | os.PathLike[str] | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """Every readable state file in ``directory`` (default: ``default_state_dir()``) whose launcher is
    alive, oldest launcher first."""
    d = Path(directory) if directory is not None else default_state_dir()
    found = []
    for path in sorted(d.glob("mesh-*.json")):
        try:
            data = read_state(path)
        except MeshLookupError:
            continue
        if _pid_alive(data.get("launcher_pid")) and data.get("state") != "stopped":
            found.append((path, data))
    return found


def _record(name: str, entry: Any, source: str) -> PeerRecord:
    if not isinstance(entry, dict) or not isinstance(entry.get("endpoint"), str):
        raise MeshLookupError(f"peer {name!r} in {source!r} has no endpoint")
    return PeerRecord(
        name=name,
        endpoint=entry["endpoint"],
        sync_endpoint=entry.get("sync_endpoint"),
        pid=entry.get("pid"),
        state=str(entry.get("state", "up")),
        restarts=int(entry.get("restarts", 0) or 0),
        source=source,
    )


def find_peer(name: str, mesh: str | os.PathLike[str] | None = None) -> PeerRecord:
    """The peer called ``name``: in ``mesh`` (a state file), else ``$ZCALL_MESH``, else the running
    launchers' files in ``default_state_dir()``."""
    explicit = mesh if mesh is not None else os.environ.get(MESH_ENV) or None
    if explicit is not None:
        data = read_state(explicit)
        peers = data["peers"]
        if name not in peers:
            known = ", ".join(sorted(peers)) or "none"
            raise MeshLookupError(f"no peer {name!r} in mesh {os.fspath(explicit)!r} (peers: {known})")
        return _record(name, peers[name], os.fspath(explicit))
    states = live_states()
    where = default_state_dir()
    if not states:
        raise MeshLookupError(
            f"@{name}: no running 'zcall launch' found in {where}; pass --mesh FILE (a launcher's "
            f"--ready-file) or set {MESH_ENV}=FILE"
        )
    having = [(p, d) for p, d in states if name in d["peers"]]
    if not having:
        names = sorted({n for _, d in states for n in d["peers"]})
        raise MeshLookupError(
            f"@{name}: no peer {name!r} in the running meshes ({', '.join(str(p) for p, _ in states)}); "
            f"peers: {', '.join(names)}"
        )
    if len(having) > 1:
        which = "; ".join(f"{p} (topology {d.get('topology', '?')})" for p, d in having)
        raise MeshLookupError(
            f"@{name}: {len(having)} running meshes have a peer {name!r}: {which}; choose one with "
            f"--mesh FILE or {MESH_ENV}=FILE"
        )
    path, data = having[0]
    return _record(name, data["peers"][name], str(path))


def format_table(peers: Mapping[str, Mapping[str, Any]]) -> str:
    """Names, endpoints, pids, states and restart counts (``N`` or ``N/LIMIT``), aligned: what ``zcall
    launch`` prints once up and ``zcall ps`` prints from a state file."""
    rows = [("NAME", "ENDPOINT", "PID", "STATE", "RESTARTS", "SYNC ENDPOINT")]
    for name, p in peers.items():
        limit = p.get("max_restarts")
        restarts = f"{p.get('restarts', 0)}" + (f"/{limit}" if limit is not None else "")
        rows.append(
            (
                name,
                str(p.get("endpoint", "")),
                str(p.get("pid") or "-"),
                str(p.get("state", "?")),
                restarts,
                str(p.get("sync_endpoint") or ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
