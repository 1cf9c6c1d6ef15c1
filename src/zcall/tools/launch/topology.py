"""A topology: the peers to launch (``PeerSpec``), the launch settings, and the TOML file that holds them.

Validation happens when a ``Topology`` is built, so a mistake is reported with the file, the peer and the
key before any process starts. The format is described in ``zcall.tools.launch``.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...engine.sockets import DEFAULT_BIND, check_endpoint
from ..targets import TargetError, split_target

__all__ = ["RESTART_POLICIES", "PeerSpec", "Topology", "TopologyError", "load_topology"]


RESTART_POLICIES = ("no", "on-failure", "always")
"""``no``: a peer that exits stays down; ``on-failure``: restart it when it exits non-zero or is killed by
a signal; ``always``: restart it whenever it exits (while the launcher runs)."""


class TopologyError(ValueError):
    """A topology that cannot be launched as written: the message names the file, peer and key."""


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
    max_restarts: int | None = None
    """How many times the launcher restarts this peer at most (None: no limit); then it stays down."""


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
            try:
                split_target(p.target)
            except TargetError:
                raise TopologyError(
                    f"{where}: peer {p.name!r}: target must be 'module:attr', got {p.target!r}"
                ) from None
            mr = p.max_restarts
            if mr is not None and (not isinstance(mr, int) or isinstance(mr, bool) or mr < 0):
                raise TopologyError(
                    f"{where}: peer {p.name!r}: max_restarts must be a whole number >= 0, got {mr!r}"
                )
            if p.restart not in RESTART_POLICIES:
                raise TopologyError(
                    f"{where}: peer {p.name!r}: restart must be one of {', '.join(RESTART_POLICIES)}, "
                    f"got {p.restart!r}"
                )
            for key, ep in (("bind", p.bind), ("sync_bind", p.sync_bind)):
                if ep is not None:
                    try:
                        check_endpoint(ep, bind=True)
                    except ValueError as exc:
                        raise TopologyError(f"{where}: peer {p.name!r}: {key}: {exc}") from None
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
        fields = {"name", "target", "bind", "peers", "env", "restart", "sync_bind", "max_restarts"}
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
                    max_restarts=raw.get("max_restarts"),
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
