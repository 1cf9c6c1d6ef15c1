"""A deliberately broken zcall server (raw pyzmq + msgpack): it answers zcall.ping and PING, but ignores
framing, versions, deadlines and arguments, answers NOTIFY, and leaves out METHOD_NOT_FOUND's close
matches, so ``zcall conform`` has something to fail. ``python tests/helpers/broken_server.py`` prints
``READY <endpoint>`` and serves until SIGTERM."""

from __future__ import annotations

import os
import signal
import time

import msgpack
import zmq


def error(rid: int, code: int, message: str) -> bytes:
    return msgpack.packb([1, 3, rid, {"code": code, "type": "Broken", "message": message}])


def answer(body: bytes, started: float) -> bytes | None:
    try:
        m = msgpack.unpackb(body, raw=False)
    except Exception:
        return error(0, 4, "undecodable")
    if not isinstance(m, list) or len(m) < 3:
        return error(0, 4, "not a message")
    kind, rid = m[1], m[2] if isinstance(m[2], int) else 0  # version: never looked at
    if kind == 6:
        return msgpack.packb([1, 7, rid])
    if kind in (1, 4) and len(m) >= 4:
        method = m[3]
        if method == "zcall.ping":  # arguments and deadline ignored
            result = {"service": "broken", "pid": os.getpid(), "uptime": time.time() - started}
        elif method == "zcall.methods":
            result = [dict(name="zcall.ping", signature="()", doc="", coroutine=False, idempotent=True)]
        else:
            return error(rid, 2, f"no method {method!r}")  # no data.close
        return msgpack.packb([1, 2, rid, result])  # a NOTIFY gets its REPLY too
    return None  # everything else: silence


def main() -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind("tcp://127.0.0.1:*")
    print(f"READY {sock.getsockopt_string(zmq.LAST_ENDPOINT)}", flush=True)
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    started = time.time()
    while running:
        if not sock.poll(100):  # wakes to see the SIGTERM flag
            continue
        frames = sock.recv_multipart()
        if len(frames) != 3 or frames[1] != b"":  # no framing errors: dropped silently
            continue
        reply = answer(frames[2], started)
        if reply is not None:
            sock.send_multipart([frames[0], b"", reply])
    sock.close(linger=0)
    ctx.term()


if __name__ == "__main__":
    main()
