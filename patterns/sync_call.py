"""Synchronous call (REQ/REP): the caller blocks on double(10) until the reply arrives.

Run alone (starts its own server process, cleans it up):  python patterns/sync_call.py
Or in two terminals:  python patterns/sync_call.py --serve tcp://127.0.0.1:5555
                      python patterns/sync_call.py --call tcp://127.0.0.1:5555
"""

from __future__ import annotations

import argparse
import sys

import zcall
from zcall.testing import SpawnError, spawn
from zcall.tools.ready import announce

service = zcall.Service("doubler")


@service.method
def double(x: int) -> int:
    """Return twice x."""
    return x * 2


def serve(endpoint: str) -> None:
    # READY goes out once bound, from inside serve_forever, which already handles Ctrl-C and SIGTERM
    # (so a SIGTERM sent the moment READY is read still stops the server cleanly).
    server = zcall.SyncServer(service, endpoint)
    server.serve_forever(on_ready=announce)


def call(endpoint: str) -> None:
    with zcall.SyncClient(endpoint, timeout=5.0) as client:
        result = client.call("double", 10)  # blocks until the reply comes back
        print(f"sync call result: {result}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="ENDPOINT", help="only serve, on ENDPOINT")
    parser.add_argument("--call", metavar="ENDPOINT", help="only call the server at ENDPOINT")
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve)
    if args.call:
        return call(args.call)
    try:  # start the server in a child process; returns once it has printed READY <endpoint>
        server = spawn([__file__, "--serve", "tcp://127.0.0.1:*"])
    except SpawnError as exc:
        raise SystemExit(f"server failed to start: {exc}") from None
    try:
        call(server.endpoint)
    finally:
        server.stop()  # SIGTERM, then SIGKILL; reaped by pid
        sys.stderr.write(server.stderr)  # anything it logged (its stderr was captured, not our terminal)


if __name__ == "__main__":
    main()
