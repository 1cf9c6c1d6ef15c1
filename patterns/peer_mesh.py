"""Peer mesh: three peers in three processes call each other both ways, directly and through each other.

There is no server and no client here, only peers (``zcall.Peer``): each one serves on a ROUTER and calls
the others by name over its own outgoing sockets, so "a calls b" and "b calls a" happen at the same time
on the same nodes. Shown:

1. every peer calls every other peer at once, with a blocking call (``peer.call``, REQ) and an
   asynchronous one (``peer.call_async``, DEALER, a callback-style future): 12 calls, both ways;
2. nested calls: a's handler asks b, whose handler asks c; once with blocking handlers (``peer.call`` in a
   plain function, which runs in the peer's thread pool) and once with coroutine handlers
   (``await peer.acall`` on the peer's event loop); then around the ring, a -> b -> c -> a.

Run alone (starts three peer processes and cleans them up):  python patterns/peer_mesh.py
One peer by hand:  python patterns/peer_mesh.py --peer a --bind tcp://127.0.0.1:5701
                   (then tell it about the others by calling its ``meet`` method)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import zcall
from zcall.testing import ProcessHandle, SpawnError, spawn, stop_all
from zcall.tools.serving import serve_until_stopped

NAMES = ("a", "b", "c")
METHODS = {"blocking handlers, peer.call": "forward", "coroutines, await peer.acall": "aforward"}

service = zcall.Service("mesh")
node: zcall.Peer  # this process's peer, set by serve_peer()


@service.method
def meet(directory: dict[str, str]) -> list[str]:
    """Learn the other peers (name -> endpoint); returns who this peer now knows."""
    for name, endpoint in directory.items():
        if name != node.name:
            node.connect(name, endpoint)
    return sorted(node.peers)


@service.method
def hello(caller: str) -> str:
    """What a peer answers when another one calls it."""
    return f"{node.name} says hello to {caller}"


@service.method
def call_everyone() -> list[str]:
    """Call every known peer, blocking (REQ) and async (DEALER) at once; one line per call."""
    others = sorted(node.peers)
    futures = {p: node.call_async(p, "hello", node.name) for p in others}  # all in flight together
    lines = [
        f"{node.name} -> {p}  sync  (peer.call):       {node.call(p, 'hello', node.name)}" for p in others
    ]
    lines += [f"{node.name} -> {p}  async (peer.call_async): {f.result(10)}" for p, f in futures.items()]
    return lines


@service.method
def forward(route: list[str], path: list[str]) -> list[str]:
    """Blocking handler: add this peer to ``path`` and pass the rest of ``route`` on with ``peer.call``."""
    path = [*path, node.name]
    if not route:
        return path
    return node.call(route[0], "forward", route[1:], path)  # this thread waits; the peer's loop does not


@service.method
async def aforward(route: list[str], path: list[str]) -> list[str]:
    """Coroutine handler: the same, with ``await peer.acall`` (never ``peer.call`` on the loop)."""
    path = [*path, node.name]
    if not route:
        return path
    return await node.acall(route[0], "aforward", route[1:], path)


def serve_peer(name: str, bind: str) -> None:
    """Run one peer until SIGTERM/SIGINT; print ``READY <endpoint>`` once it is bound."""
    global node
    node = zcall.Peer(name, service, bind=bind)
    serve_until_stopped(node)  # the READY line (the parent waits for it, not a sleep), then the signal


# -- the demo: start three peers, make them talk, stop them ------------------------------------------


def demo(directory: dict[str, str]) -> int:
    """Drive the mesh from a fourth peer (this process); returns an exit code."""
    ok = True
    with zcall.Peer("driver", peers=directory, timeout=10.0) as me:
        for name in NAMES:
            me.call(name, "meet", directory)

        print("\n1. every peer calls every other peer, all at the same time (both ways):")
        t0 = time.perf_counter()
        futures = [me.call_async(name, "call_everyone") for name in NAMES]  # the three run concurrently
        lines = [line for f in futures for line in f.result(15)]
        for line in lines:
            print(f"   {line}")
        ok &= len(lines) == 12
        print(f"   {len(lines)} calls answered in {(time.perf_counter() - t0) * 1000:.0f} ms")

        print("\n2. nested calls: a's handler asks b, whose handler asks c:")
        for label, method in METHODS.items():
            path = me.call("a", method, ["b", "c"], ["driver"])
            print(f"   {label:30}: {' -> '.join(path)}")
            ok &= path == ["driver", "a", "b", "c"]
        print("\n3. around the ring and back to a, which is still waiting on b when c calls it")
        print("   (both rings at once, from this process's asyncio face: await peer.acall + gather):")

        async def rings() -> list[list[str]]:
            route = ["b", "c", "a"]
            return await asyncio.gather(*(me.acall("a", m, route, ["driver"]) for m in METHODS.values()))

        for label, path in zip(METHODS, asyncio.run(rings()), strict=True):
            print(f"   {label:30}: {' -> '.join(path)}")
            ok &= path == ["driver", "a", "b", "c", "a"]
    print("\npeer mesh: every call answered" if ok else "\npeer mesh: UNEXPECTED ANSWERS")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", metavar="NAME", help="only run the peer NAME")
    parser.add_argument("--bind", default="tcp://127.0.0.1:*", metavar="ENDPOINT", help="(--peer) where")
    args = parser.parse_args()
    if args.peer:
        serve_peer(args.peer, args.bind)
        return 0
    peers: dict[str, ProcessHandle] = {}
    try:
        for name in NAMES:  # start them all, then wait for each: they boot in parallel
            peers[name] = spawn([__file__, "--peer", name, "--bind", "tcp://127.0.0.1:*"], ready_prefix=None)
        directory = {name: p.wait_ready().endpoint for name, p in peers.items()}
        for name, p in peers.items():
            print(f"peer {name}: pid {p.pid}, serving on {directory[name]}")
        print("this process is a fourth peer, 'driver', that sets the others going")
        return demo(directory)
    except SpawnError as exc:  # its stderr is written out below, before this message
        raise SystemExit(f"peer failed to start: no READY line from pid {exc.pid}") from None
    finally:
        stop_all(list(peers.values()), timeout=5.0)  # SIGTERM to all, then SIGKILL; each reaped by pid
        for p in peers.values():
            sys.stderr.write(p.stderr)  # anything it logged (its stderr was captured, not our terminal)


if __name__ == "__main__":
    sys.exit(main())
