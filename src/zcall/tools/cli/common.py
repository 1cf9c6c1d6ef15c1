"""What every ``zcall`` command shares: exit codes, the usage error, output helpers, error reporting."""

from __future__ import annotations

import base64
import datetime as _dt
import json
import pprint
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from ...engine.sockets import EndpointError, normalize_endpoints
from ...errors import CallTimeout, RemoteError, ZcallError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input from the user (exit 2); the message says what to do instead."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return repr(value)


def to_json(value: Any, *, indent: int | None = 2) -> str:
    """JSON for a result; bytes become ``{"$bytes": base64}``, datetimes ISO strings, the rest repr."""
    return json.dumps(value, indent=indent, default=_jsonable, ensure_ascii=False)


def readable(value: Any) -> str:
    if isinstance(value, str):
        return value
    return pprint.pformat(value, sort_dicts=False, width=100)


def endpoints(text: str, mesh: str | None = None) -> list[str]:
    """The endpoints in a command-line argument: comma-separated, each checked, ``@NAME`` read from a
    launched mesh's state file (``--mesh FILE``, ``$ZCALL_MESH``, or the running launchers')."""
    items = [e.strip() for e in text.split(",") if e.strip()]
    if not items:
        raise UsageError(
            f"{text!r} is not an endpoint: write it like tcp://127.0.0.1:5555 or ipc:///tmp/x.sock "
            "(several, comma-separated, for failover), or @NAME for a peer of a running zcall launch"
        )
    eps = []
    for item in items:
        if item.startswith("@"):
            eps.append(_mesh_endpoint(item[1:], mesh))
            continue
        if "://" not in item:
            raise UsageError(
                f"{item!r} is not an endpoint: write it like tcp://127.0.0.1:5555 or ipc:///tmp/x.sock "
                "(several, comma-separated, for failover), or @NAME for a peer of a running zcall launch"
            )
        eps.append(item)
    try:
        return normalize_endpoints(eps)
    except EndpointError as exc:
        raise UsageError(str(exc)) from None


def _mesh_endpoint(name: str, mesh: str | None) -> str:
    from ..launch.state import MeshLookupError, find_peer

    if not name:
        raise UsageError("'@' needs a peer name: @NAME, as in the table zcall launch prints")
    try:
        peer = find_peer(name, mesh)
    except MeshLookupError as exc:
        raise UsageError(str(exc)) from None
    if peer.state != "up":
        err(f"note: peer {name!r} is {peer.state} (restarted {peer.restarts} times), says {peer.source}")
    return peer.endpoint


def add_mesh_option(p: Any) -> None:
    """``--mesh FILE``: where ``@NAME`` endpoints are looked up."""
    p.add_argument(
        "--mesh",
        metavar="FILE",
        default=None,
        help="state file of a zcall launch (its --ready-file) for @NAME endpoints (default: $ZCALL_MESH, "
        "else the running launchers')",
    )


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def error_record(exc: BaseException, exit_code: int, where: Sequence[str] = ()) -> dict[str, Any]:
    """What ``--json`` prints on stderr for a failed command: ``{"error": {...}}`` with the zcall class
    (``type``), ``message``, the wire status ``code`` and its name (null for a local error), the remote
    side's ``remote_type``, ``traceback`` and ``data`` when it answered, ``endpoint`` and ``exit_code``."""
    # a rebuilt registered exception (a KeyError that is also a RemoteError) reports zcall's class
    shown = exc.remote if isinstance(exc, RemoteError) else exc
    record: dict[str, Any] = {
        "type": type(shown).__name__,
        "message": str(exc),
        "code": None,
        "code_name": None,
        "endpoint": ",".join(where) or None,
        "exit_code": exit_code,
    }
    if isinstance(exc, RemoteError):
        r = exc.remote
        record.update(
            message=r.message,
            code=int(r.code),
            code_name=r.code.name,
            remote_type=r.type,
            method=r.method,
            traceback=r.traceback,
            data=r.data,
        )
    elif isinstance(exc, CallTimeout):
        record.update(method=exc.method, attempts=exc.attempts, elapsed=round(exc.elapsed, 6))
    if isinstance(exc, EndpointError) and isinstance(exc.endpoint, str):
        record["endpoint"] = exc.endpoint
    return {"error": record}


def report_json(exc: BaseException, exit_code: int, where: Sequence[str] = (), **extra: Any) -> None:
    """One line of JSON on stderr: stdout only ever carries results, so ``$(zcall call ... --json)`` never
    mistakes an error for one."""
    data = error_record(exc, exit_code, where)
    data["error"].update(extra)
    err(to_json(data, indent=None))


def report_remote(exc: RemoteError) -> None:
    r = exc.remote
    err(f"error: {r}")
    if r.traceback:
        err("remote traceback:\n" + r.traceback.rstrip())


def probe(eps: Sequence[str], timeout: float, security: Any = None) -> dict[str, dict[str, Any] | None]:
    """``zcall.ping`` each endpoint once: its pong (with ``rtt_ms``), or None when nothing answered."""
    from ...client.sync import SyncClient

    found: dict[str, dict[str, Any] | None] = {}
    for ep in eps:
        try:
            with SyncClient(ep, timeout=timeout, security=security) as client:
                t0 = time.perf_counter()
                pong = client.call("zcall.ping")
                rtt = (time.perf_counter() - t0) * 1000
            found[ep] = {**pong, "rtt_ms": round(rtt, 3)} if isinstance(pong, dict) else {"rtt_ms": rtt}
        except ZcallError:
            found[ep] = None
    return found


def timeout_hint(
    exc: CallTimeout, eps: Sequence[str], call_timeout: float, security: Any = None
) -> tuple[str, bool]:
    """Tell a slow server from a missing one by pinging it: (the hint, whether any endpoint answered)."""
    ping_timeout = min(max(call_timeout, 0.5), 2.0)
    pongs = probe(eps or exc.endpoints, ping_timeout, security)
    alive = {ep: p for ep, p in pongs.items() if p is not None}
    method = exc.method or "the call"
    if alive:
        ep, pong = next(iter(alive.items()))
        who = f"service {pong.get('service', '?')}, pid {pong.get('pid', '?')}"
        return (
            f"hint: the server at {ep} is alive ({who} answered zcall.ping in {pong['rtt_ms']:.1f} ms) but "
            f"{method!r} did not answer within {call_timeout:g}s: it is slow, not missing; raise --timeout",
            True,
        )
    where = ",".join(pongs) or ",".join(exc.endpoints)
    return (
        f"hint: nothing answered zcall.ping at {where} within {ping_timeout:g}s either: is a zcall server "
        "running there? check the endpoint; a server using CURVE does not answer a client without "
        "--curve-secret/--server-key, or with a key it does not allow (--async says which); a one-call-at-"
        "a-time server (SyncServer, zcall serve --sync) busy with a long call does not answer pings either",
        False,
    )


def report_timeout(exc: CallTimeout, hint: str) -> None:
    err(f"timeout: {exc}")
    err(hint)


def one_shot(
    fn: Callable[[], int],
    *,
    json_errors: bool = False,
    where: Sequence[str] = (),
    call_timeout: float | None = None,
    security: Any = None,
) -> int:
    """Run a command that makes calls: map zcall's errors to exit codes and messages (one JSON object on
    stderr with ``json_errors``); a timeout pings the server to say whether it is slow or missing."""
    code = EXIT_ERROR
    try:
        return fn()
    except CallTimeout as exc:
        code = EXIT_TIMEOUT
        hint, alive = timeout_hint(exc, where, call_timeout or 1.0, security)
        if json_errors:
            report_json(exc, code, where, hint=hint, alive=alive)
        else:
            report_timeout(exc, hint)
    except RemoteError as exc:
        if json_errors:
            report_json(exc, code, where)
        else:
            report_remote(exc)
    except ZcallError as exc:
        if json_errors:
            report_json(exc, code, where)
        else:
            err(f"error: {type(exc).__name__}: {exc}")
    except KeyboardInterrupt as exc:
        code = EXIT_INTERRUPTED
        if json_errors:
            report_json(exc, code, where, message="interrupted")
        else:
            err("interrupted")
    return code
