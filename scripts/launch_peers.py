"""Launch the mesh of ``scripts/mesh.toml`` from Python with the ``zcall.launch`` API, use it, stop it.

    python scripts/launch_peers.py            # start 3 peers, make a few calls, stop them
    python scripts/launch_peers.py --stay     # ... then keep them up (restarts on crash) until Ctrl-C

``Launcher`` starts one process per peer (``python -m zcall serve ...``), returns once each answers
``zcall.ping``, and stops them all when the ``with`` block ends, even on an exception. Start and
supervise from the main thread: on Linux each child is tied to the thread that started it
(``PR_SET_PDEATHSIG``), so it cannot outlive the launcher.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

import zcall
from zcall.tools.launch import Launcher, PeerSpec, Topology

HERE = Path(__file__).resolve().parent


def topology() -> Topology:
    """The same mesh as mesh.toml, as Python objects."""
    return Topology(
        peers=[
            PeerSpec("rates", "mesh_peers:rates", restart="always"),
            PeerSpec("ledger", "mesh_peers:ledger", sync_bind="tcp://127.0.0.1:*", restart="on-failure"),
            PeerSpec("api", "mesh_peers:api", peers=["rates", "ledger"], restart="on-failure"),
        ],
        cwd=str(HERE),  # where mesh_peers.py lives: the children import their targets from here
        startup_timeout=20,
        stop_timeout=5,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stay", action="store_true", help="keep the mesh up until Ctrl-C")
    ns = parser.parse_args(argv)

    with Launcher(topology(), show_output=False) as mesh:
        print(mesh.table())
        me = zcall.Peer("script", peers=mesh.endpoints)
        try:
            changed = threading.Event()
            events: list[Any] = []
            me.on(
                "ledger.changed",
                lambda topic, payload: (events.append(payload), changed.set()),
                peer="ledger",
            )
            me.client("ledger").call_async("balance", "alice").result(5)  # subscribed once this returns
            print("deposit:", me.call("api", "deposit", "alice", 100, "USD"))
            print("deposit:", me.call("api", "deposit", "alice", 50, currency="GBP"))
            print("balance:", me.call("ledger", "balance", "alice"))
            if changed.wait(5):
                print("event:  ", events[0])
            try:
                me.call("api", "deposit", "bob", 10, "XYZ")
            except zcall.RemoteError as exc:
                print("refused:", exc)
        finally:
            me.stop()
        if ns.stay:
            with mesh.stop_signal:  # SIGINT/SIGTERM now end supervise(): installed before we say so
                print("mesh is up; Ctrl-C stops it", flush=True)
                mesh.supervise()  # restarts crashed peers until then
    print("all peers stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
