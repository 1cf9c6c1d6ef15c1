"""File transfer: a large file goes from one peer to another in chunks, and back, in bounded memory.

This process is the "sender" peer; it starts a "store" peer (a process of its own). The file goes up as
a **client stream**: ``peer.stream("store", "upload", name, chunks(path))``, where ``chunks`` is a plain
generator reading the file a chunk at a time, and the store's ``upload(name, chunks)`` handler writes
what it takes. It comes back as a **server stream**: ``for chunk in peer.stream("store", "download",
name)``. Both ways are credit-controlled (``window`` chunks in flight at most), so neither process
holds more than a few windows of chunks whatever the file's size: both processes' RSS is sampled
throughout and checked against ``--max-rss`` (100 MiB). The sha256 of the file, of what the store
wrote, and of what came back must be equal.

The same file then moves between the same two processes over raw pyzmq (DEALER/ROUTER, the same chunks,
the same credit window, the same reading, writing and hashing on each side, no zcall): the throughput of
both, and their ratio, in the same run. (``scripts/bench.py`` measures the transport alone.)

Run alone:  python patterns/file_transfer.py [--size-mib 1024] [--chunk-kib 1024] [--window 8]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import zmq

import zcall
from zcall.testing import SpawnError, spawn
from zcall.tools.ready import announce
from zcall.tools.serving import serve_until_stopped

MiB = 1024 * 1024

# -- the store peer (its own process) -------------------------------------------------------------------

store_service = zcall.Service("store")
STORE_DIR = Path(tempfile.mkdtemp(prefix="zcall-store-"))
CHUNK = MiB


@store_service.method
def upload(name: str, chunks: Iterator[bytes]) -> dict[str, object]:
    """Write the caller's chunks to ``name`` as they come; returns its size and sha256."""
    digest, size = hashlib.sha256(), 0
    with open(STORE_DIR / Path(name).name, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


@store_service.method
def download(name: str, chunk_size: int = MiB) -> Iterator[bytes]:
    """Stream the stored file ``name`` back, ``chunk_size`` bytes at a time."""
    with open(STORE_DIR / Path(name).name, "rb") as f:
        while chunk := f.read(chunk_size):
            yield chunk


@store_service.method(inline=True)
def remove(name: str) -> None:
    (STORE_DIR / Path(name).name).unlink(missing_ok=True)


def raw_store(endpoint: str, window: int) -> str:
    """The raw pyzmq baseline's server, on a thread, doing the store's work without zcall: ``up NAME n``
    then n chunks (written and hashed as they come; credit granted ``window`` at a time, then half that
    each time half is taken), answered ``done SHA256``; ``down NAME size`` streams the file back in
    chunks under the caller's credit, then an empty frame."""
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    half = window // 2 or 1

    def run() -> None:
        while True:
            frames = sock.recv_multipart()
            if len(frames) != 4:
                continue  # credit that came after the last chunk of a download went
            ident, cmd, name, arg = frames
            path = STORE_DIR / ("raw-" + Path(name.decode()).name)
            if cmd == b"up":
                n, digest = int(arg), hashlib.sha256()
                sock.send_multipart([ident, str(window).encode()])  # the first credit
                with open(path, "wb") as f:
                    for got in range(1, n + 1):
                        chunk = sock.recv_multipart(copy=False)[1]
                        f.write(chunk.buffer)
                        digest.update(chunk.buffer)
                        if got % half == 0 and got < n:
                            sock.send_multipart([ident, str(half).encode()])
                sock.send_multipart([ident, b"done " + digest.hexdigest().encode()])
            elif cmd == b"down":
                credit = window
                with open(path, "rb") as f:
                    while piece := f.read(int(arg)):
                        while not credit:
                            credit += int(sock.recv_multipart()[1])
                        sock.send_multipart([ident, piece], copy=False)
                        credit -= 1
                sock.send_multipart([ident, b""])
                path.unlink()
            else:
                return

    threading.Thread(target=run, daemon=True, name="raw-store").start()
    return bound


def serve_store(window: int) -> None:
    """The store peer: serve until SIGTERM/SIGINT; ``READY <endpoint> raw=<endpoint>`` once bound."""
    peer = zcall.Peer("store", store_service, workers=4)
    raw = raw_store("tcp://127.0.0.1:*", window)

    def ready(endpoint: str) -> None:
        announce(endpoint)
        print(f"RAW {raw}", flush=True)

    try:
        serve_until_stopped(peer, on_ready=ready)
    finally:
        for f in STORE_DIR.iterdir():
            f.unlink()
        STORE_DIR.rmdir()


# -- the sender (this process) ----------------------------------------------------------------------


def rss_of(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes (Linux ``/proc``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssWatch:
    """Samples the RSS of some processes every 20 ms, on a thread, and keeps each one's peak."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak = {name: rss_of(pid) for name, pid in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-watch")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):  # the sampling period is what is asked for, not a wait
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss_of(pid))

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join(2)
        return self.peak


def make_file(path: Path, size: int, chunk: int) -> str:
    """A file of ``size`` pseudo-random bytes (a repeating random block: fast to make); its sha256."""
    block = os.urandom(chunk)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left > 0:
            piece = block[: min(chunk, left)]
            f.write(piece)
            digest.update(piece)
            left -= len(piece)
            block = block[1:] + block[:1]  # not the same chunk twice: a hash would tell a missing one
    return digest.hexdigest()


def chunks(path: Path, size: int) -> Iterator[bytes]:
    """The file, ``size`` bytes at a time (read as the store takes them: never more than its window)."""
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def raw_transfer(endpoint: str, src: Path, back: Path, size: int, window: int) -> tuple[float, float, str]:
    """The same file, in the same chunks, up and down over raw DEALER/ROUTER with the same credit
    window and the same work on each side (read, write, hash); returns (up MB/s, down MB/s, sha256 back)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    total = src.stat().st_size
    n = -(-total // size)
    try:
        t0 = time.perf_counter()
        sock.send_multipart([b"up", b"file.bin", str(n).encode()])
        credit = int(sock.recv())
        for piece in chunks(src, size):
            while not credit:
                credit += int(sock.recv())
            sock.send(piece, copy=False)
            credit -= 1
        while not (msg := sock.recv()).startswith(b"done"):
            pass  # credit that came after the last chunk went
        up = total / (time.perf_counter() - t0) / 1e6
        t0 = time.perf_counter()
        sock.send_multipart([b"down", b"file.bin", str(size).encode()])
        digest, freed = hashlib.sha256(), 0
        with open(back, "wb") as f:
            while len(piece := sock.recv(copy=False)):
                f.write(piece.buffer)
                digest.update(piece.buffer)
                freed += 1
                if freed * 2 >= window:
                    sock.send(str(freed).encode())
                    freed = 0
        down = total / (time.perf_counter() - t0) / 1e6
        if msg.split()[1].decode() != digest.hexdigest():
            raise RuntimeError("the raw baseline moved the file wrongly")
        return up, down, digest.hexdigest()
    finally:
        sock.send_multipart([b"quit", b"", b""])
        sock.close(linger=100)


def run(size_mib: int, chunk_kib: int, window: int, max_rss_mib: int) -> int:
    size, chunk = size_mib * MiB, chunk_kib * 1024
    n_chunks = -(-size // chunk)
    workdir = Path(tempfile.mkdtemp(prefix="zcall-transfer-"))
    src, back = workdir / "original.bin", workdir / "back.bin"
    store = None
    try:
        print(f"making a {size_mib} MiB file of {n_chunks} chunks of {chunk_kib} KiB ...", flush=True)
        original = make_file(src, size, chunk)
        try:
            store = spawn([__file__, "--store", "--window", str(window)], timeout=30)
        except SpawnError as exc:
            raise SystemExit(f"the store peer failed to start: {exc}") from None
        raw_ep = store.expect("RAW ").split()[1]
        timeout = max(60.0, size / (20 * MiB))  # the whole stream's budget: generous, not infinite
        with zcall.Peer("sender", peers={"store": store.endpoint}, timeout=timeout) as me:
            me.call("store", "zcall.ping")
            client = me.client("store").options(window=window)
            watch = RssWatch({"sender": os.getpid(), "store": store.pid})

            t0 = time.perf_counter()
            up = client.stream_blocking("upload", "file.bin", chunks(src, chunk))
            for _ in up:
                pass  # a client stream: no items back, its result at the end
            took_up = time.perf_counter() - t0
            stored = up.result

            t0 = time.perf_counter()
            digest, got = hashlib.sha256(), 0
            with open(back, "wb") as f:
                for piece in client.stream_blocking("download", "file.bin", chunk):
                    f.write(piece)
                    digest.update(piece)
                    got += len(piece)
            took_down = time.perf_counter() - t0
            peak = watch.stop()
            me.call("store", "remove", "file.bin")

            raw_up, raw_down, _ = raw_transfer(raw_ep, src, back, chunk, window)
        zup, zdown = size / took_up / 1e6, size / took_down / 1e6
        print(f"upload   (client stream): {size_mib} MiB in {took_up:.2f} s = {zup:.0f} MB/s")
        print(f"download (server stream): {size_mib} MiB in {took_down:.2f} s = {zdown:.0f} MB/s")
        print(
            f"raw pyzmq, same chunks and window: up {raw_up:.0f} MB/s, down {raw_down:.0f} MB/s "
            f"(zcall/raw: up {zup / raw_up:.2f}, down {zdown / raw_down:.2f})"
        )
        same = original == stored["sha256"] == digest.hexdigest() and got == size == stored["bytes"]
        print(f"sha256 {'match' if same else 'MISMATCH'}: {original[:16]}... ({got} bytes back)")
        within = all(v < max_rss_mib * MiB for v in peak.values())
        print(
            f"peak RSS: sender {peak['sender'] / MiB:.0f} MiB, store {peak['store'] / MiB:.0f} MiB "
            f"({'under' if within else 'OVER'} {max_rss_mib} MiB)"
        )
        return 0 if same and within else 1
    finally:
        if store is not None:
            store.stop(timeout=5.0)  # SIGTERM, then SIGKILL; reaped by pid
            sys.stderr.write(store.stderr)
        for f in (src, back):
            f.unlink(missing_ok=True)
        workdir.rmdir()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="the file's size (default 1024 MiB)")
    parser.add_argument("--chunk-kib", type=int, default=1024, help="chunk size (default 1024 KiB)")
    parser.add_argument("--window", type=int, default=8, help="chunks in flight each way (default 8)")
    parser.add_argument("--max-rss", type=int, default=100, help="MiB each process must stay under")
    parser.add_argument("--store", action="store_true", help="only run the store peer")
    args = parser.parse_args()
    if args.store:
        serve_store(args.window)
        return 0
    return run(args.size_mib, args.chunk_kib, args.window, args.max_rss)


if __name__ == "__main__":
    sys.exit(main())
