"""``zcall launch`` (a topology, supervised) and ``zcall demo`` (a 3-peer mesh and a tour)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import EXIT_OK, UsageError


def cmd_launch(ns: argparse.Namespace) -> int:
    from ..launch import Launcher, TopologyError, load_topology

    try:
        topology = load_topology(ns.topology)
    except TopologyError as exc:
        raise UsageError(str(exc)) from None
    if getattr(ns, "export", None) is not None:  # write manifests instead of launching
        from ..launch.kubernetes import export_command

        return export_command(topology, ns)
    launcher = Launcher(topology, show_output=not ns.quiet)
    if ns.dry_run:
        for pp in topology.peers:
            print(f"{pp.name}: {pp.target} bind={pp.bind} peers={pp.peers} restart={pp.restart}")
        print(f"cwd={topology.cwd} pythonpath={topology.pythonpath}")
        return EXIT_OK
    return launcher.run(ready_file=ns.ready_file)


def cmd_demo(ns: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(calls=ns.calls, in_flight=ns.in_flight, show_output=ns.verbose)


def add_parsers(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "launch",
        help="start the peers a topology TOML describes and keep them up",
        description=(
            "Start each [[peer]] of TOPOLOGY as its own process ('python -m zcall serve ...'), wait until\n"
            "all answer zcall.ping, print a table and 'LAUNCHED', then supervise: restart crashed peers\n"
            "per their 'restart' policy; Ctrl-C or SIGTERM stops them all. The format: zcall.tools.launch."
        ),
        formatter_class=fmt,
    )
    p.add_argument("topology", metavar="TOPOLOGY.toml")
    p.add_argument(
        "--ready-file", default=None, metavar="PATH", help="write names, endpoints and pids as JSON once up"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="do not relay the peers' own output")
    p.add_argument("--dry-run", action="store_true", help="check the topology and print what would start")
    from ..launch.kubernetes import add_export_arguments

    add_export_arguments(p)
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
