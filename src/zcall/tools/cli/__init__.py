"""The ``zcall`` command line: serve a service or peer, call it, inspect it, launch a mesh, run the demo.

One module per command group: ``serve`` (zcall serve), ``calls`` (call, ls, ping, stats), ``keygen``,
``mesh`` (launch, demo); ``common`` holds the exit codes, the usage error and the error reporting.

Exit codes (every command): 0 success; 1 the call failed (remote error, refused, lost) or a launch
failed; 2 bad usage (argparse's code; also a bad endpoint or target); 3 no reply in time (nothing
answered at that endpoint); 130 interrupted by Ctrl-C during a one-shot command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import zmq

from ..targets import load_target
from . import calls, conform, keygen, mesh, serve
from .calls import fetch_stats, render_stats
from .common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    UsageError,
    err,
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
            "  zcall launch mesh.toml\n"
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
    for command_group in (serve, calls, keygen, mesh, conform):  # one module per job; their order is --help's
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
    try:
        return int(ns.func(ns))
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"zcall {ns.command}: error: {exc}\n")
    except OSError as exc:  # e.g. cannot bind: address in use
        err(f"zcall {ns.command}: error: {exc}")
        return EXIT_ERROR
    return EXIT_OK  # pragma: no cover - parser.exit raises


if __name__ == "__main__":
    sys.exit(main())
