"""The one-shot client commands: ``zcall call``, ``ls``, ``ping`` and ``stats``."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from ...errors import CallTimeout
from .common import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_TIMEOUT,
    UsageError,
    add_mesh_option,
    endpoints,
    err,
    one_shot,
    readable,
    to_json,
)


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (``10``, ``true``, ``[1,2]``, ``'"10"'``), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_kw(items: Sequence[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--kw takes NAME=VALUE (like --kw scale=3), got {item!r}")
        kwargs[key] = parse_value(value)
    return kwargs


def _client_security(ns: argparse.Namespace) -> Any:
    """``ClientSecurity`` from ``--curve-secret/--server-key``, or None without CURVE."""
    if ns.curve_secret is None and ns.server_key is None:
        return None
    if ns.curve_secret is None or ns.server_key is None:
        raise UsageError("CURVE needs both --curve-secret (this client's NAME.key_secret) and --server-key")
    from ...security import ClientSecurity

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
        from ...client.asynchronous import AsyncClient

        async def go() -> Any:
            client = AsyncClient(endpoints, timeout=timeout, security=security)
            try:
                return await client.call(method, *args, **kwargs)
            finally:
                client.close()

        return asyncio.run(go())
    from ...client.sync import SyncClient

    with SyncClient(endpoints, timeout=timeout, security=security) as client:
        return client.call(method, *args, **kwargs)


def cmd_call(ns: argparse.Namespace) -> int:
    eps = endpoints(ns.endpoint, ns.mesh)
    security = _client_security(ns)
    args = [parse_value(a) for a in ns.args]
    kwargs = _parse_kw(ns.kw)

    def go() -> int:
        result = _call(eps, ns.method, args, kwargs, ns.timeout, ns.use_async, security)
        print(to_json(result) if ns.json else readable(result), flush=True)
        return EXIT_OK

    return one_shot(go, json_errors=ns.json, where=eps, call_timeout=ns.timeout, security=security)


# -- ls / ping / stats ----------------------------------------------------------------------------


_QUOTED_ANNOTATION = re.compile(r"(: |-> )'([^'\n]*)'")


def _unquote_annotations(signature: str) -> str:
    """``(x: 'int') -> 'int'`` (postponed annotations in ``str(Signature)``) → ``(x: int) -> int``."""
    return _QUOTED_ANNOTATION.sub(r"\1\2", signature)


def cmd_ls(ns: argparse.Namespace) -> int:
    eps = endpoints(ns.endpoint, ns.mesh)
    security = _client_security(ns)

    def go() -> int:
        methods = _call(eps, "zcall.methods", [], {}, ns.timeout, False, security)
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

    return one_shot(go, json_errors=ns.json, where=eps, call_timeout=ns.timeout, security=security)


def cmd_ping(ns: argparse.Namespace) -> int:
    from ...client.sync import SyncClient

    if getattr(ns, "wait", None) is not None:  # readiness: until SERVING (zcall.tools.cli.probe)
        from .probe import cmd_ping_wait

        return cmd_ping_wait(ns, _client_security(ns))
    eps = endpoints(ns.endpoint, ns.mesh)
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

    return one_shot(go, where=eps)


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
        from ...service.metrics import format_table
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
    from ...errors import MethodNotFound

    eps = endpoints(ns.endpoint, ns.mesh)
    security = _client_security(ns)
    if getattr(ns, "prometheus", False):  # text exposition format (zcall.tools.cli.exposition)
        from .exposition import cmd_stats_prometheus

        return cmd_stats_prometheus(ns, security)
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
        except MethodNotFound as exc:
            if ns.json:
                raise
            err(
                f"error: the server at {','.join(eps)} has no zcall.stats method "
                f"(it runs a zcall without call metrics); 'zcall ping' and 'zcall ls' still work ({exc})"
            )
            return EXIT_ERROR
        except KeyboardInterrupt:
            if ns.watch is None:
                raise
            return EXIT_OK  # Ctrl-C is how --watch is meant to end
        return EXIT_OK

    return one_shot(go, json_errors=ns.json, where=eps, call_timeout=ns.timeout, security=security)


def add_parsers(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "call",
        help="call a method and print the result",
        description=(
            "Call METHOD at ENDPOINT (several comma-separated endpoints: failover; @NAME: a peer of a\n"
            "running zcall launch). Arguments are JSON when they parse, else strings: 10 is a number,\n"
            "'\"10\"' a string, '[1,2]' a list, true a bool. A remote error prints its type, message and\n"
            "traceback on stderr and exits 1; no reply within --timeout exits 3 (after a ping that says\n"
            "whether the server is slow or missing); a bad endpoint or argument exits 2; Ctrl-C exits 130.\n"
            "With --json the result is JSON on stdout, and an error one JSON object on stderr:\n"
            '  {"error": {"type", "message", "code", "code_name", "endpoint", "exit_code", ...}}'
        ),
        formatter_class=fmt,
    )
    p.add_argument("endpoint", metavar="ENDPOINT")
    p.add_argument("method", metavar="METHOD")
    p.add_argument("args", nargs="*", metavar="ARG", help="positional arguments (JSON or text)")
    p.add_argument(
        "--kw", action="append", default=[], metavar="NAME=VALUE", help="a keyword argument (repeat)"
    )
    p.add_argument(
        "--json", action="store_true", help="print the result as JSON (an error: one JSON object on stderr)"
    )
    p.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="seconds to wait for the reply (default 5)"
    )
    p.add_argument(
        "--async", dest="use_async", action="store_true", help="call over DEALER (AsyncClient) instead of REQ"
    )
    _add_client_security(p)
    add_mesh_option(p)
    p.set_defaults(func=cmd_call)

    p = sub.add_parser("ls", help="list a server's methods with signatures and docs")
    p.add_argument("endpoint", metavar="ENDPOINT")
    p.add_argument("--json", action="store_true", help="print zcall.methods' raw answer as JSON")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S")
    _add_client_security(p)
    add_mesh_option(p)
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
    p.add_argument(
        "--wait",
        type=float,
        default=None,
        metavar="S",
        help="readiness: wait up to S s for zcall.health to say SERVING (exit 0; 3 no answer, 1 not serving)",
    )
    p.add_argument("--service", default=None, metavar="NAME", help="with --wait: this service's health")
    _add_client_security(p)
    add_mesh_option(p)
    p.set_defaults(func=cmd_ping)

    p = sub.add_parser("stats", help="a server's per-method call metrics (zcall.stats)")
    p.add_argument("endpoint", metavar="ENDPOINT")
    p.add_argument(
        "--watch", type=float, default=None, metavar="S", help="refresh every S seconds until Ctrl-C"
    )
    p.add_argument("--json", action="store_true", help="print zcall.stats' raw answer as JSON")
    p.add_argument(
        "--prometheus", action="store_true", help="print it in Prometheus text format (zcall[prometheus])"
    )
    p.add_argument("--timeout", type=float, default=5.0, metavar="S")
    _add_client_security(p)
    add_mesh_option(p)
    p.set_defaults(func=cmd_stats)
