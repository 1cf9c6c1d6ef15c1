"""The ``zcall`` command line: serve a service or peer, call it, inspect it, launch a mesh, run the demo.

One module per command group: ``serve`` (zcall serve), ``calls`` (call, ls, ping, stats), ``stubs``,
``keygen``, ``mesh`` (launch, ps, demo); ``common`` holds the exit codes, the usage error and the error
reporting.

Exit codes (every command): 0 success; 1 the call failed (remote error, refused, lost) or a launch
failed; 2 bad usage (argparse's code; also a bad endpoint, target or @NAME); 3 no reply in time;
130 interrupted by Ctrl-C (a one-shot command, or ``zcall launch``: SIGTERM stops it with 0). ``zcall
serve`` treats Ctrl-C and SIGTERM alike as its normal stop: 0.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import zmq

from ...engine.sockets import EndpointError
from ..targets import load_target
from . import calls, conform, keygen, mesh, serve, stubs
from .calls import fetch_stats, render_stats
from .common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    UsageError,
    err,
    report_json,
)

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "build_parser",
    "fetch_stats",
    "load_target",
    "main",
    "render_stats",
]


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
            "  zcall stubs tcp://127.0.0.1:5555 -o myapp_api.py   # typed Protocols for mypy and IDEs\n"
            "  zcall launch mesh.toml\n"
            "  zcall call @api deposit alice 100             # a launched peer, by name (zcall ps)\n"
            "exit codes: 0 ok, 1 call failed, 2 bad usage, 3 no reply in time, 130 interrupted"
        ),
        formatter_class=fmt,
    )
    parser.add_argument("--log-level", default="INFO", help="logging level on stderr (default: INFO)")
    from ... import __version__

    parser.add_argument(
        "--version", action="version", version=f"zcall {__version__} (pyzmq {zmq.__version__})"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command_group in (serve, calls, stubs, keygen, mesh, conform):  # one module per job; --help's order
        command_group.add_parsers(sub, fmt)
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
    json_errors = bool(getattr(ns, "json", False))
    try:
        return int(ns.func(ns))
    except (UsageError, EndpointError) as exc:  # EndpointError: a bad --bind/--peer, found on binding
        if json_errors:
            report_json(exc, EXIT_USAGE)
            return EXIT_USAGE
        parser.exit(EXIT_USAGE, f"zcall {ns.command}: error: {exc}\n")
    except OSError as exc:  # e.g. cannot bind: address in use
        if json_errors:
            report_json(exc, EXIT_ERROR)
        else:
            err(f"zcall {ns.command}: error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt as exc:  # outside a command's own handling (e.g. while importing a target)
        if json_errors:
            report_json(exc, EXIT_INTERRUPTED, message="interrupted")
        else:
            err("interrupted")
        return EXIT_INTERRUPTED
    return EXIT_OK  # pragma: no cover - parser.exit raises


if __name__ == "__main__":
    sys.exit(main())
