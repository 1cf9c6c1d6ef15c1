"""``zcall serve``: import MODULE:ATTR and serve it (a Peer, a Service, a class, an object) until a signal."""

from __future__ import annotations

import argparse
import inspect
import logging
from pathlib import Path
from typing import Any

from ...engine.sockets import DEFAULT_BIND
from ..ready import announce, check_name
from ..serving import serve_until_stopped, stop_on_stdin_eof
from ..targets import TargetError, check_own_code, load_target
from .common import EXIT_OK, UsageError

log = logging.getLogger("zcall.cli")


def _build_service(obj: Any, name: str) -> Any:
    """A ``Service`` for anything ``zcall serve`` accepts that is not a ``Peer``."""
    from ...service.registry import Service

    if isinstance(obj, Service):
        return obj
    service = Service(name)
    plain_object = hasattr(obj, "__dict__")
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj) or plain_object):
        raise UsageError(
            f"cannot serve a {type(obj).__name__}: give a Peer, a Service, a class, a function, a module or "
            "an object with public methods"
        )
    if inspect.isclass(obj):
        obj = obj()  # a handler class: serve a fresh instance's public methods
    try:
        if inspect.isfunction(obj) or inspect.isbuiltin(obj):
            service.add(obj)
        else:
            service.register(obj)
    except (ValueError, TypeError) as exc:  # nothing to serve, or not something a method can be
        raise UsageError(f"cannot serve {name!r}: {exc}") from None
    return service


def cmd_serve(ns: argparse.Namespace) -> int:
    from ...peer import Peer
    from ...server.sync import SyncServer
    from ...service.registry import Service

    peers: dict[str, str] = {}
    for item in ns.peer:
        pname, sep, ep = item.partition("=")
        if not sep or not pname or "://" not in ep:
            raise UsageError(f"--peer takes NAME=ENDPOINT (like pricing=tcp://127.0.0.1:5556), got {item!r}")
        peers[pname] = ep
    security = _server_security(ns)
    try:
        obj = load_target(ns.target)
        if not isinstance(obj, Peer | Service):
            check_own_code(ns.target, obj)
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    if isinstance(obj, Peer):
        peer = obj
        if security is not None:
            peer.security = security
        if ns.peer_keys:
            peer.peer_keys = Path(ns.peer_keys)
        if ns.name:
            peer.name = ns.name
        if ns.bind:
            peer.bind = ns.bind
        if ns.sync_bind:
            peer.sync_bind = ns.sync_bind
        if ns.no_tracebacks:
            peer.send_tracebacks = False
    else:
        default_name = obj.name if isinstance(obj, Service) else ns.target.partition(":")[2].split(".")[-1]
        name = ns.name or default_name
        peer = Peer(
            name,
            _build_service(obj, name),
            bind=ns.bind or DEFAULT_BIND,
            sync_bind=ns.sync_bind,
            security=security,
            peer_keys=ns.peer_keys,
            send_tracebacks=not ns.no_tracebacks,
        )
    for pname, ep in peers.items():
        try:
            peer.connect(pname, ep)
        except (OSError, ValueError) as exc:  # a peer's public key missing or unreadable
            raise UsageError(f"--peer {pname}: {exc}; see --peer-keys") from None

    try:
        check_name(peer.name)
    except ValueError as exc:
        raise UsageError(f"the peer's name: {exc} (choose one with --name)") from None

    if not ns.sync:
        serve_until_stopped(
            peer,
            grace=ns.grace,
            on_ready=lambda endpoint: _ready(peer, endpoint, "async (ROUTER)", peers),
            stdin_eof=ns.stop_on_stdin_eof,
        )
        return EXIT_OK
    server = SyncServer(peer.service, peer.bind, security=peer.security, send_tracebacks=peer.send_tracebacks)
    if ns.stop_on_stdin_eof:
        stop_on_stdin_eof(lambda: server.stop(ns.grace))
    try:  # handles SIGINT/SIGTERM itself; a second one cuts the grace period short
        server.serve_forever(
            grace=ns.grace, on_ready=lambda endpoint: _ready(peer, endpoint, "sync (REP)", peers)
        )
    finally:
        peer.stop(0.0)  # not started: this closes the connections to its --peer peers
    return EXIT_OK


def _ready(peer: Any, endpoint: str, kind: str, peers: dict[str, str]) -> None:
    """Once bound: say what is served where (stderr), then the READY line (stdout)."""
    if peer.sync_endpoint:
        log.info("peer %s also serves sync (REP) callers at %s", peer.name, peer.sync_endpoint)
    methods = sorted(m.name for m in peer.service if not m.name.startswith("zcall."))
    log.info("peer %s serving %s at %s: %s", peer.name, kind, endpoint, ", ".join(methods) or "no methods")
    if peers:
        log.info("peer %s knows %s", peer.name, ", ".join(f"{n}={e}" for n, e in peers.items()))
    announce(endpoint, name=peer.name)


def _server_security(ns: argparse.Namespace) -> Any:
    """``ServerSecurity`` from ``--curve-secret/--allow-keys/--allow-ip``, or None without CURVE."""
    if ns.curve_secret is None:
        if ns.allow_keys or ns.allow_ip or ns.peer_keys:
            raise UsageError("--allow-keys, --allow-ip and --peer-keys need --curve-secret FILE (CURVE)")
        return None
    from ...security import ServerSecurity

    try:
        return ServerSecurity(ns.curve_secret, allow_keys_dir=ns.allow_keys, allow_ips=ns.allow_ip or None)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None


def add_parsers(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a Peer, Service or object's methods until Ctrl-C/SIGTERM",
        description=(
            "Import MODULE:ATTR (the current directory is importable) and serve it. ATTR may be a\n"
            "zcall.Peer (--name/--bind/--peer are applied to it), a zcall.Service (wrapped in a Peer),\n"
            "a class (instantiated with no arguments) or any object whose public methods are served.\n"
            "Prints 'READY <endpoint> name=<name>' on stdout once bound; logs go to stderr."
        ),
        formatter_class=fmt,
    )
    p.add_argument("target", metavar="MODULE:ATTR", help="what to serve, e.g. myapp.services:pricing")
    p.add_argument(
        "--bind",
        metavar="ENDPOINT",
        default=None,
        help=f"where to listen (default {DEFAULT_BIND}: a free port)",
    )
    p.add_argument(
        "--sync", action="store_true", help="serve over REP (one call at a time) instead of ROUTER"
    )
    p.add_argument(
        "--sync-bind", metavar="ENDPOINT", default=None, help="also serve REP callers here (beside ROUTER)"
    )
    p.add_argument("--name", default=None, help="the peer's name (default: the Peer's/Service's own name)")
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="NAME=ENDPOINT",
        help="a peer this one can call by name (repeat)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds in-flight calls get on stop (default 5)",
    )
    p.add_argument(
        "--no-tracebacks",
        action="store_true",
        help="error replies carry type and message but not the handler's traceback",
    )
    p.add_argument(
        "--stop-on-stdin-eof",
        action="store_true",
        help="also stop when stdin closes (used by 'zcall launch')",
    )
    p.add_argument(
        "--curve-secret",
        metavar="FILE",
        default=None,
        help="CURVE: serve encrypted with this NAME.key_secret (from 'zcall keygen')",
    )
    p.add_argument(
        "--allow-keys",
        metavar="DIR",
        default=None,
        help="CURVE: only clients whose public *.key is in DIR may connect (default: any key)",
    )
    p.add_argument(
        "--allow-ip",
        action="append",
        default=[],
        metavar="IP",
        help="CURVE: only connections from this address (repeat)",
    )
    p.add_argument(
        "--peer-keys",
        metavar="DIR",
        default=None,
        help="CURVE: where the --peer peers' public NAME.key files are (default: --allow-keys)",
    )
    p.set_defaults(func=cmd_serve)
