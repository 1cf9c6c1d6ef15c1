"""Start a mesh of peers, one process each, from a topology (a TOML file or Python objects), and keep it up.

A topology lists peers: a ``name``, a ``target`` (``"module:attr"``, what ``zcall serve`` runs), a
``bind`` endpoint, the ``peers`` it knows by name, extra ``env``, a ``restart`` policy ("no",
"on-failure", "always"), an optional ``max_restarts`` (how many restarts at most; then the peer stays
down) and an optional ``sync_bind`` (a REP endpoint beside the ROUTER)::

    [launch]
    startup_timeout = 15.0      # seconds for every peer to print READY and answer zcall.ping
    stop_timeout = 5.0          # grace on shutdown before SIGKILL
    cwd = "."                   # where children run, relative to this file (default: this file's dir)
    pythonpath = ["."]          # extra import dirs for the children, relative to this file

    [[peer]]
    name = "pricing"
    target = "mesh_services:pricing"
    bind = "tcp://127.0.0.1:*"
    restart = "on-failure"
    max_restarts = 5            # the sixth crash leaves it down (default: no limit)

    [[peer]]
    name = "frontend"
    target = "mesh_services:frontend"
    peers = ["pricing"]

**CURVE.** A peer with ``curve_secret = "keys/NAME.key_secret"`` serves encrypted; ``allow_keys = "keys"``
(a directory of public ``*.key`` files) says who may call it, ``allow_ips`` from where; it calls the peers
it knows with its own key pair and finds their public keys as ``NAME.key`` in ``peer_keys`` (default
``allow_keys``). The launcher pings a secured peer with that peer's own key pair, so put every peer's
public key in the shared directory (see docs/security.md).

**Ports.** A ``*`` port is replaced by a concrete free port *before* any child starts, so every child
gets the real endpoints of the peers it knows as ``--peer NAME=ENDPOINT`` flags at launch, and a
restarted peer comes back on the same endpoint (the others keep reaching it; zmq reconnects). The port is
free when chosen; another process could take it before the child binds (rare), and that child then fails
its start with a clear error.

**No orphans.** Each child runs ``python -m zcall serve ... --stop-on-stdin-eof`` in its own process
group (so a terminal's Ctrl-C reaches only the launcher, which forwards it in order). If the launcher
dies without cleaning up (SIGKILL, OOM), two things end its children: on Linux the child asks the kernel
for ``SIGTERM`` when its parent dies (``prctl(PR_SET_PDEATHSIG)``, set between fork and exec); and on
every platform the child stops when its stdin (a pipe from the launcher) reaches end of file. Note that
PDEATHSIG fires when the *thread* that started the child ends: start and supervise from one long-lived
thread (the main thread, as ``zcall launch`` does). A normal exit, an exception and ``atexit`` all stop
the children too (SIGTERM, then SIGKILL after ``stop_timeout``).

**State.** ``zcall launch`` keeps a state file current (every peer's endpoint, pid, state and restart
count, rewritten atomically on every change; ``--ready-file PATH`` writes a copy), which is how
``zcall call @name ...`` finds a peer by name and what ``zcall ps`` prints: ``zcall.tools.launch.state``.
"""

from __future__ import annotations

from .state import MeshLookupError, find_peer
from .supervisor import Launcher, LaunchError, PeerProcess
from .topology import RESTART_POLICIES, PeerSpec, Topology, TopologyError, load_topology

__all__ = [
    "RESTART_POLICIES",
    "LaunchError",
    "Launcher",
    "MeshLookupError",
    "PeerProcess",
    "PeerSpec",
    "Topology",
    "TopologyError",
    "find_peer",
    "load_topology",
]
