"""The ``zcall`` command line: serve a service or peer, call it, inspect it, launch a mesh, run the demo.

Exit codes (every command): 0 success; 1 the call failed (remote error, refused, lost) or a launch
failed; 2 bad usage (argparse's code; also a bad endpoint or target); 3 no reply in time (nothing
answered at that endpoint); 130 interrupted by Ctrl-C during a one-shot command.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as _dt
import importlib
import inspect
import json
import logging
import os
import pprint
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zmq

from ..engine.sockets import DEFAULT_BIND
from ..errors import CallTimeout, RemoteError, ZcallError

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TIMEOUT", "EXIT_USAGE", "load_target", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130

log = logging.getLogger("zcall.cli")


class UsageError(Exception):
    """Bad input from the user (exit 2); the message says what to do instead."""


# -- helpers ----------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (``10``, ``true``, ``[1,2]``, ``'"10"'``), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


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


def _readable(value: Any) -> str:
    if isinstance(value, str):
        return value
    return pprint.pformat(value, sort_dicts=False, width=100)


def _endpoints(text: str) -> list[str]:
    eps = [e.strip() for e in text.split(",") if e.strip()]
    if not eps or not all("://" in e for e in eps):
        raise UsageError(
            f"{text!r} is not an endpoint: write it like tcp://127.0.0.1:5555 or ipc:///tmp/x.sock "
            "(several, comma-separated, for failover)"
        )
    return eps


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _report_remote(exc: RemoteError) -> None:
    _err(f"error: {exc}")
    if exc.traceback:
        _err("remote traceback:\n" + exc.traceback.rstrip())


def _report_timeout(exc: CallTimeout) -> None:
    _err(f"timeout: {exc}")
    _err(
        "hint: is a zcall server running there? check the endpoint, raise --timeout, "
        f"or try: zcall ping {','.join(exc.endpoints)}; a server using CURVE does not answer a client "
        "without --curve-secret/--server-key, or with a key it does not allow (--async says which)"
    )


def _one_shot(fn: Callable[[], int]) -> int:
    """Run a command that makes calls: map zcall's errors to exit codes and messages."""
    try:
        return fn()
    except CallTimeout as exc:
        _report_timeout(exc)
        return EXIT_TIMEOUT
    except RemoteError as exc:
        _report_remote(exc)
        return EXIT_ERROR
    except ZcallError as exc:
        _err(f"error: {type(exc).__name__}: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED


# -- serve ------------------------------------------------------------------------------------------


def load_target(target: str, *, cwd_on_path: bool = True) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted) with the current directory importable, like uvicorn."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"expected MODULE:ATTR (like 'myapp.services:pricing'), got {target!r}")
    if cwd_on_path and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise UsageError(
                f"cannot import module {module_name!r} (from {os.getcwd()}): {exc}; "
                "run from the directory that holds it or add that directory to PYTHONPATH"
            ) from None
        raise
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def _build_service(obj: Any, name: str) -> Any:
    """A ``Service`` for anything ``zcall serve`` accepts that is not a ``Peer``."""
    from ..service.registry import Service

    if isinstance(obj, Service):
        return obj
    service = Service(name)
    if inspect.isclass(obj):
        obj = obj()  # a handler class: serve a fresh instance's public methods
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        service.add(obj)
    else:
        service.register(obj)
    return service


class _StopFlag:
    """SIGINT/SIGTERM (and optionally EOF on stdin) wake the serving thread, through a self-pipe.

    The signal handler only writes a byte to a pipe: it must not take a lock (``Event.set`` does), because
    a handler runs *inside* whatever the main thread was doing, and a second signal arriving while the
    first handler holds the lock deadlocks the process. (A launcher that dies sends several SIGTERMs:
    Linux repeats PR_SET_PDEATHSIG each time the child is reparented between the dying threads.)
    """

    def __init__(self, stop_on_stdin_eof: bool) -> None:
        self.reason = ""
        self.count = 0
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        if stop_on_stdin_eof:
            threading.Thread(target=self._watch_stdin, daemon=True, name="zcall-stdin-eof").start()

    def _poke(self) -> None:
        try:
            os.write(self._w, b"!")
        except OSError:  # full (many signals) or closed: the reader wakes anyway
            pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop waiting for the grace period
        self.reason = self.reason or signal.Signals(signum).name
        self._poke()

    def _watch_stdin(self) -> None:
        # os.read on the raw fd, not sys.stdin: a daemon thread blocked inside a buffered reader holds its
        # lock, and the interpreter aborts at exit ("could not acquire lock for <stdin>", SIGABRT).
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        self.reason = self.reason or "stdin closed (launcher gone)"
        self._poke()

    def wait(self) -> None:
        """Block until a signal or stdin EOF (``os.read`` resumes after a handler ran: PEP 475)."""
        os.read(self._r, 1)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self.count = max(self.count, 1)  # later SIGINTs (if any handler remains) count as "second"


def cmd_serve(ns: argparse.Namespace) -> int:
    from ..peer import Peer
    from ..server.rep import SyncServer
    from ..service.registry import Service

    peers: dict[str, str] = {}
    for item in ns.peer:
        pname, sep, ep = item.partition("=")
        if not sep or not pname or "://" not in ep:
            raise UsageError(f"--peer takes NAME=ENDPOINT (like pricing=tcp://127.0.0.1:5556), got {item!r}")
        peers[pname] = ep
    security = _server_security(ns)
    obj = load_target(ns.target)
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

    flag = _StopFlag(ns.stop_on_stdin_eof)
    try:
        if ns.sync:
            server = SyncServer(
                peer.service, peer.bind, security=peer.security, send_tracebacks=peer.send_tracebacks
            ).start()
            endpoint, kind = server.endpoint, "sync (REP)"
            stop: Callable[[], None] = server.stop
        else:
            peer.start()
            endpoint, kind = peer.endpoint, "async (ROUTER)"
            stop = lambda: peer.stop(ns.grace)  # noqa: E731
            if peer.sync_endpoint:
                log.info("peer %s also serves sync (REP) callers at %s", peer.name, peer.sync_endpoint)
        methods = sorted(m.name for m in peer.service if not m.name.startswith("zcall."))
        log.info(
            "peer %s serving %s at %s: %s", peer.name, kind, endpoint, ", ".join(methods) or "no methods"
        )
        if peers:
            log.info("peer %s knows %s", peer.name, ", ".join(f"{n}={e}" for n, e in peers.items()))
        print(f"READY {peer.name} {endpoint}", flush=True)
        try:
            flag.wait()
            log.info("peer %s stopping (%s)", peer.name, flag.reason)
            stop()
        except KeyboardInterrupt:
            log.info("peer %s: second Ctrl-C, closing now", peer.name)
            if ns.sync:
                server.stop(0.5)
            else:
                peer.stop(0.0)
    finally:
        flag.restore()
    return EXIT_OK


# -- call -------------------------------------------------------------------------------------------


def _parse_kw(items: Sequence[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--kw takes NAME=VALUE (like --kw scale=3), got {item!r}")
        kwargs[key] = parse_value(value)
    return kwargs


def _server_security(ns: argparse.Namespace) -> Any:
    """``ServerSecurity`` from ``--curve-secret/--allow-keys/--allow-ip``, or None without CURVE."""
    if ns.curve_secret is None:
        if ns.allow_keys or ns.allow_ip or ns.peer_keys:
            raise UsageError("--allow-keys, --allow-ip and --peer-keys need --curve-secret FILE (CURVE)")
        return None
    from ..security import ServerSecurity

    try:
        return ServerSecurity(ns.curve_secret, allow_keys_dir=ns.allow_keys, allow_ips=ns.allow_ip or None)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None


def _client_security(ns: argparse.Namespace) -> Any:
    """``ClientSecurity`` from ``--curve-secret/--server-key``, or None without CURVE."""
    if ns.curve_secret is None and ns.server_key is None:
        return None
    if ns.curve_secret is None or ns.server_key is None:
        raise UsageError("CURVE needs both --curve-secret (this client's NAME.key_secret) and --server-key")
    from ..security import ClientSecurity

    try:
        return ClientSecurity(ns.curve_secret, ns.server_key)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None


def _add_client_security(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--curve-secret", metavar="FILE", default=None, help="CURVE: this client's NAME.key_secret file"
    )
    p.add_argument(
        "--server-key", metavar="FILE", default=None, help="CURVE: the server's public NAME.key file"
    )


def _call(
    endpoints: list[str],
    method: str,
    args: list[Any],
    kwargs: dict[str, Any],
    timeout: float,
    use_async: bool,
    security: Any = None,
) -> Any:
    if use_async:
        from ..client.asynchronous import AsyncClient

        async def go() -> Any:
            client = AsyncClient(endpoints, timeout=timeout, security=security)
            try:
                return await client.call(method, *args, **kwargs)
            finally:
                client.close()

        return asyncio.run(go())
    from ..client.sync import SyncClient

    with SyncClient(endpoints, timeout=timeout, security=security) as client:
        return client.call(method, *args, **kwargs)


def cmd_call(ns: argparse.Namespace) -> int:
    eps = _endpoints(ns.endpoint)
    security = _client_security(ns)
    args = [parse_value(a) for a in ns.args]
    kwargs = _parse_kw(ns.kw)

    def go() -> int:
        result = _call(eps, ns.method, args, kwargs, ns.timeout, ns.use_async, security)
        print(to_json(result) if ns.json else _readable(result), flush=True)
        return EXIT_OK

    return _one_shot(go)


# -- ls / ping / stats ----------------------------------------------------------------------------


_QUOTED_ANNOTATION = re.compile(r"(: |-> )'([^'\n]*)'")


def _unquote_annotations(signature: str) -> str:
    """``(x: 'int') -> 'int'`` (postponed annotations in ``str(Signature)``) → ``(x: int) -> int``."""
    return _QUOTED_ANNOTATION.sub(r"\1\2", signature)


def cmd_ls(ns: argparse.Namespace) -> int:
    eps = _endpoints(ns.endpoint)

    def go() -> int:
        methods = _call(eps, "zcall.methods", [], {}, ns.timeout, False, _client_security(ns))
        if ns.json:
            print(to_json(methods), flush=True)
            return EXIT_OK
        user = [m for m in methods if not str(m.get("name", "")).startswith("zcall.")]
        builtin = [m for m in methods if str(m.get("name", "")).startswith("zcall.")]
        rows = []
        for m in [*user, *builtin]:
            flags = []
            if m.get("coroutine"):
                flags.append("async")
            if m.get("idempotent"):
                flags.append("idempotent")
            sig = f"{m.get('name')}{_unquote_annotations(str(m.get('signature', '(...)')))}"
            rows.append((sig, m.get("doc", "") + (f"  [{', '.join(flags)}]" if flags else "")))
        width = min(max((len(s) for s, _ in rows), default=0), 70)
        for sig, doc in rows:
            print(
                f"{sig.ljust(width)}  {doc}".rstrip() if len(sig) <= width else f"{sig}\n{'':{width}}  {doc}"
            )
        print(f"({len(user)} methods, {len(builtin)} built-in)", flush=True)
        return EXIT_OK

    return _one_shot(go)


def cmd_ping(ns: argparse.Namespace) -> int:
    from ..client.sync import SyncClient

    eps = _endpoints(ns.endpoint)
    if ns.count < 1:
        raise UsageError("--count must be at least 1")
    times: list[float] = []
    lost = 0

    def go() -> int:
        nonlocal lost
        with SyncClient(eps, timeout=ns.timeout, security=_client_security(ns)) as client:
            for i in range(ns.count):
                if i and ns.interval > 0:
                    time.sleep(ns.interval)  # the pacing between pings is what the user asked for
                t0 = time.perf_counter()
                try:
                    pong = client.call("zcall.ping")
                except CallTimeout:
                    lost += 1
                    print(f"no pong from {','.join(eps)} within {ns.timeout:g}s (seq={i + 1})", flush=True)
                    continue
                rtt = (time.perf_counter() - t0) * 1000
                times.append(rtt)
                print(
                    f"pong from {pong.get('service')} (pid {pong.get('pid')}, "
                    f"up {pong.get('uptime', 0):.1f}s) "
                    f"at {','.join(eps)}: seq={i + 1} time={rtt:.3f} ms",
                    flush=True,
                )
        summary = f"{ns.count} pings, {len(times)} answered, {lost} lost"
        if times:
            summary += (
                f"; rtt min/avg/max = {min(times):.3f}/{sum(times) / len(times):.3f}/{max(times):.3f} ms"
            )
        print(summary, flush=True)
        return EXIT_OK if not lost else EXIT_TIMEOUT

    return _one_shot(go)


def _rows_of(result: dict[str, Any]) -> dict[str, Any] | None:
    """The ``{method: row}`` mapping in a ``zcall.stats`` answer (flat, or nested as a snapshot)."""
    methods = result.get("methods")
    if not isinstance(methods, dict):
        return None
    if all(isinstance(r, dict) and "calls" in r for r in methods.values()):
        return methods
    inner = methods.get("methods")
    return inner if isinstance(inner, dict) else None


def render_stats(result: Any, endpoint: str) -> str:
    """Text for a ``zcall.stats`` answer: a header, the per-method table, and the server counters."""
    if not isinstance(result, dict):
        return to_json(result)
    try:
        from ..service.metrics import format_table
    except ImportError:  # a zcall without metrics: show the data as it came
        format_table = None  # type: ignore[assignment]
    header = f"service {result.get('service', '?')} at {endpoint}"
    if result.get("pid") is not None:
        header += f" (pid {result['pid']}"
        header += (
            f", up {result['uptime_s']:.1f}s)" if isinstance(result.get("uptime_s"), int | float) else ")"
        )
    lines = [header]
    rows = _rows_of(result)
    if format_table is not None and rows is not None:
        try:
            lines.append(format_table({"methods": rows}))
        except (KeyError, TypeError, ValueError) as exc:
            lines.append(f"(cannot format the metrics table: {exc}; raw data follows)")
            lines.append(to_json(rows))
    else:
        lines.append(to_json(result.get("methods")))
    counters = result.get("counters")
    if isinstance(counters, dict) and counters:
        lines.append("counters: " + "  ".join(f"{k}={v}" for k, v in counters.items()))
    return "\n".join(lines)


def fetch_stats(endpoints: list[str], timeout: float, security: Any = None) -> Any:
    """The ``zcall.stats`` result of the server at ``endpoints`` (``MethodNotFound`` if it has none)."""
    return _call(endpoints, "zcall.stats", [], {}, timeout, False, security)


def cmd_stats(ns: argparse.Namespace) -> int:
    from ..errors import MethodNotFound

    eps = _endpoints(ns.endpoint)
    security = _client_security(ns)
    if ns.watch is not None and ns.watch <= 0:
        raise UsageError("--watch takes a positive number of seconds")

    def once() -> None:
        result = fetch_stats(eps, ns.timeout, security)
        text = to_json(result) if ns.json else render_stats(result, ",".join(eps))
        if ns.watch is not None and sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")  # clear the screen between refreshes
        if ns.watch is not None:
            text = f"-- {time.strftime('%H:%M:%S')} (every {ns.watch:g}s, Ctrl-C to stop)\n{text}"
        print(text, flush=True)

    def go() -> int:
        try:
            once()
            while ns.watch is not None:
                time.sleep(ns.watch)  # the refresh period is the behaviour asked for
                once()
        except MethodNotFound:
            _err(
                f"error: the server at {','.join(eps)} has no zcall.stats method "
                "(it runs a zcall without call metrics); 'zcall ping' and 'zcall ls' still work"
            )
            return EXIT_ERROR
        except KeyboardInterrupt:
            return EXIT_OK if ns.watch is not None else EXIT_INTERRUPTED
        return EXIT_OK

    return _one_shot(go)


# -- keygen -----------------------------------------------------------------------------------------


def cmd_keygen(ns: argparse.Namespace) -> int:
    import zmq.auth

    directory = Path(ns.dir)
    public, secret = directory / f"{ns.name}.key", directory / f"{ns.name}.key_secret"
    if not ns.force and (public.exists() or secret.exists()):
        _err(f"error: {public} or {secret} exists already; pick another NAME or pass --force to overwrite")
        return EXIT_ERROR
    if not zmq.has("curve"):
        _err("error: this libzmq was built without CURVE support; install a pyzmq wheel (they include it)")
        return EXIT_ERROR
    directory.mkdir(parents=True, exist_ok=True)
    pub_file, secret_file = zmq.auth.create_certificates(str(directory), ns.name)
    os.chmod(secret_file, 0o600)
    print(f"public key:  {pub_file}")
    print(f"secret key:  {secret_file}  (keep it private: mode 600)", flush=True)
    return EXIT_OK


# -- launch / demo ------------------------------------------------------------------------------------


def cmd_launch(ns: argparse.Namespace) -> int:
    from .launch import Launcher, TopologyError, load_topology

    try:
        topology = load_topology(ns.topology)
    except TopologyError as exc:
        raise UsageError(str(exc)) from None
    launcher = Launcher(topology, show_output=not ns.quiet)
    if ns.dry_run:
        for pp in topology.peers:
            print(f"{pp.name}: {pp.target} bind={pp.bind} peers={pp.peers} restart={pp.restart}")
        print(f"cwd={topology.cwd} pythonpath={topology.pythonpath}")
        return EXIT_OK
    return launcher.run(ready_file=ns.ready_file)


def cmd_demo(ns: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(calls=ns.calls, in_flight=ns.in_flight, show_output=ns.verbose)


# -- the parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``zcall`` argument parser (one subcommand per job)."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="zcall",
        description="Brokerless ZeroMQ calls: serve, call, inspect and launch zcall peers.",
        epilog=(
            "examples:\n"
            "  zcall demo                                    # a 3-peer mesh, sync vs async, metrics\n"
            "  zcall serve myapp:service --bind tcp://127.0.0.1:5555\n"
            "  zcall call tcp://127.0.0.1:5555 double 10\n"
            "  zcall ls tcp://127.0.0.1:5555\n"
            "  zcall launch mesh.toml\n"
            "exit codes: 0 ok, 1 call failed, 2 bad usage, 3 no reply in time, 130 interrupted"
        ),
        formatter_class=fmt,
    )
    parser.add_argument("--log-level", default="INFO", help="logging level on stderr (default: INFO)")
    from .. import __version__

    parser.add_argument(
        "--version", action="version", version=f"zcall {__version__} (pyzmq {zmq.__version__})"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "serve",
        help="serve a Peer, Service or object's methods until Ctrl-C/SIGTERM",
        description=(
            "Import MODULE:ATTR (the current directory is importable) and serve it. ATTR may be a\n"
            "zcall.Peer (--name/--bind/--peer are applied to it), a zcall.Service (wrapped in a Peer),\n"
            "a class (instantiated with no arguments) or any object whose public methods are served.\n"
            "Prints 'READY <name> <endpoint>' on stdout once bound; logs go to stderr."
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

    p = sub.add_parser(
        "call",
        help="call a method and print the result",
        description=(
            "Call METHOD at ENDPOINT (several comma-separated endpoints: failover). Arguments are JSON when\n"
            "they parse, else strings: 10 is a number, '\"10\"' a string, '[1,2]' a list, true a bool.\n"
            "A remote error prints its type, message and traceback on stderr and exits 1; no reply within\n"
            "--timeout exits 3."
        ),
        formatter_class=fmt,
    )
    p.add_argument("endpoint", metavar="ENDPOINT")
    p.add_argument("method", metavar="METHOD")
    p.add_argument("args", nargs="*", metavar="ARG", help="positional arguments (JSON or text)")
    p.add_argument(
        "--kw", action="append", default=[], metavar="NAME=VALUE", help="a keyword argument (repeat)"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="seconds to wait for the reply (default 5)"
    )
    p.add_argument(
        "--async", dest="use_async", action="store_true", help="call over DEALER (AsyncClient) instead of REQ"
    )
    _add_client_security(p)
    p.set_defaults(func=cmd_call)

    p = sub.add_parser("ls", help="list a server's methods with signatures and docs")
    p.add_argument("endpoint", metavar="ENDPOINT")
    p.add_argument("--json", action="store_true", help="print zcall.methods' raw answer as JSON")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S")
    _add_client_security(p)
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("ping", help="round-trip time, service name and pid (zcall.ping)")
    p.add_argument("endpoint", metavar="ENDPOINT")
    p.add_argument("--count", "-c", type=int, default=1, metavar="N", help="how many pings (default 1)")
    p.add_argument(
        "--interval", "-i", type=float, default=0.5, metavar="S", help="pause between pings (default 0.5)"
    )
    p.add_argument(
        "--timeout", type=float, default=2.0, metavar="S", help="seconds to wait per ping (default 2)"
    )
    _add_client_security(p)
    p.set_defaults(func=cmd_ping)

    p = sub.add_parser("stats", help="a server's per-method call metrics (zcall.stats)")
    p.add_argument("endpoint", metavar="ENDPOINT")
    p.add_argument(
        "--watch", type=float, default=None, metavar="S", help="refresh every S seconds until Ctrl-C"
    )
    p.add_argument("--json", action="store_true", help="print zcall.stats' raw answer as JSON")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S")
    _add_client_security(p)
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("keygen", help="write a CURVE key pair: NAME.key and NAME.key_secret")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--dir", default=".", metavar="D", help="where to write the files (default: .)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser(
        "launch",
        help="start the peers a topology TOML describes and keep them up",
        description=(
            "Start each [[peer]] of TOPOLOGY as its own process ('python -m zcall serve ...'), wait until\n"
            "all answer zcall.ping, print a table and 'LAUNCHED', then supervise: restart crashed peers\n"
            "per their 'restart' policy; Ctrl-C or SIGTERM stops them all. See zcall.launch for the format."
        ),
        formatter_class=fmt,
    )
    p.add_argument("topology", metavar="TOPOLOGY.toml")
    p.add_argument(
        "--ready-file", default=None, metavar="PATH", help="write names, endpoints and pids as JSON once up"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="do not relay the peers' own output")
    p.add_argument("--dry-run", action="store_true", help="check the topology and print what would start")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser(
        "demo", help="launch a 3-peer demo mesh and show sync, async, events, nesting, metrics"
    )
    p.add_argument(
        "--calls", type=int, default=200, metavar="N", help="calls per side of the comparison (default 200)"
    )
    p.add_argument(
        "--in-flight", type=int, default=100, metavar="N", help="async calls in flight (default 100)"
    )
    p.add_argument("--verbose", "-v", action="store_true", help="relay the peers' logs")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``zcall`` command; returns the exit code."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    level = getattr(logging, str(ns.log_level).upper(), None)
    if not isinstance(level, int):
        parser.error(f"--log-level {ns.log_level!r}: use DEBUG, INFO, WARNING or ERROR")
    if ns.command not in ("serve", "launch"):
        level = max(level, logging.WARNING)  # one-shot commands print results, not chatter
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        return int(ns.func(ns))
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"zcall {ns.command}: error: {exc}\n")
    except OSError as exc:  # e.g. cannot bind: address in use
        _err(f"zcall {ns.command}: error: {exc}")
        return EXIT_ERROR
    return EXIT_OK  # pragma: no cover - parser.exit raises


if __name__ == "__main__":
    sys.exit(main())
