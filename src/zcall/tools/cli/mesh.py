"""``zcall launch`` (a topology, supervised), ``zcall ps`` (what a running launch has up) and ``zcall demo``
(a 3-peer mesh and a tour)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .common import EXIT_OK, UsageError, add_mesh_option, to_json


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
            limit = "" if pp.max_restarts is None else f" max_restarts={pp.max_restarts}"
            print(f"{pp.name}: {pp.target} bind={pp.bind} peers={pp.peers} restart={pp.restart}{limit}")
        print(f"cwd={topology.cwd} pythonpath={topology.pythonpath}")
        return EXIT_OK
    return launcher.run(ready_file=ns.ready_file)


def cmd_ps(ns: argparse.Namespace) -> int:
    """Print the peer table of a running ``zcall launch`` (or of every one) from its state file."""
    from ..launch.state import (
        MESH_ENV,
        MeshLookupError,
        default_state_dir,
        format_table,
        live_states,
        read_state,
    )

    chosen = ns.mesh or os.environ.get(MESH_ENV) or None
    try:
        states = [(chosen, read_state(chosen))] if chosen else live_states()
    except MeshLookupError as exc:
        raise UsageError(str(exc)) from None
    if ns.json:
        print(to_json({str(path): data for path, data in states}), flush=True)
        return EXIT_OK
    if not states:
        print(f"no running zcall launch (state files are kept in {default_state_dir()})", flush=True)
        return EXIT_OK
    for path, data in states:
        print(
            f"mesh {data.get('topology', '?')} (launcher pid {data.get('launcher_pid')}, "
            f"{data.get('state', '?')}; {path})"
        )
        print(format_table(data["peers"]), flush=True)
    return EXIT_OK


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
            "per their 'restart' policy, at most 'max_restarts' times; Ctrl-C stops them all (exit 130),\n"
            "SIGTERM too (exit 0). A state file kept current on every change lets 'zcall call @NAME ...'\n"
            "and 'zcall ps' find the peers: zcall.tools.launch.state. The format: zcall.tools.launch."
        ),
        formatter_class=fmt,
    )
    p.add_argument("topology", metavar="TOPOLOGY.toml")
    p.add_argument(
        "--ready-file",
        default=None,
        metavar="PATH",
        help="also keep the state (names, endpoints, pids, states, restart counts) as JSON here, rewritten "
        "on every change",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="do not relay the peers' own output")
    p.add_argument("--dry-run", action="store_true", help="check the topology and print what would start")
    from ..launch.kubernetes import add_export_arguments

    add_export_arguments(p)
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser(
        "ps",
        help="the peers of a running zcall launch: endpoints, pids, states, restarts",
        description=(
            "Print each running launcher's peer table from its state file (the one given with --mesh or\n"
            "$ZCALL_MESH, else every live one in the state directory). The same names work as @NAME\n"
            "endpoints: zcall call @NAME METHOD ..."
        ),
        formatter_class=fmt,
    )
    p.add_argument("--json", action="store_true", help="print the state files as JSON")
    add_mesh_option(p)
    p.set_defaults(func=cmd_ps)

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
