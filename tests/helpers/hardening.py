"""What the hardening tests share: the hostile server in a child process, raw sockets that speak the
wire by hand (so a test controls every frame and counts every answer), and the probe read through them.

``spawn_hostile(kind, *options)`` runs ``helpers.hostile_server`` (``--kind async|sync|peer`` and its
options) and returns its handle; the caller stops it by pid (``with`` block). ``Raw`` is a DEALER or REQ
socket with ``send``/``recv`` of decoded zcall messages; ``call`` sends one CALL and returns the answer.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import zmq

from zcall.testing import ProcessHandle, spawn

TESTS_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = TESTS_DIR.parent

CALL, REPLY, ERROR, NOTIFY, EVENT, PING, PONG, CANCEL = range(1, 9)
HANDLER_ERROR, METHOD_NOT_FOUND, PROTOCOL_ERROR = 1, 2, 4
DEADLINE_EXCEEDED, OVERLOADED, MESSAGE_TOO_LARGE, UNAVAILABLE, INTERNAL = 6, 7, 9, 10, 11
KIB, MIB = 1024, 1024 * 1024


def spawn_hostile(kind: str = "async", *options: str, timeout: float = 15.0) -> ProcessHandle:
    """``helpers.hostile_server --kind KIND OPTIONS...`` in a child process, once it printed READY."""
    return spawn(
        ["-m", "helpers.hostile_server", "--kind", kind, *options],
        cwd=REPO_ROOT,
        pythonpath=[TESTS_DIR],
        timeout=timeout,
    )


def call_body(
    rid: int,
    method: str,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    *,
    kind: int = CALL,
) -> bytes:
    return msgpack.packb([1, kind, rid, method, list(args), kwargs or {}, meta or {}])


def decode(body: bytes) -> list[Any]:
    """A server's answer, read leniently (int keys allowed: a test looks at what was sent)."""
    return msgpack.unpackb(body, raw=False, strict_map_key=False)  # type: ignore[no-any-return]


class Raw:
    """A raw DEALER (frames ``["", body]``) or REQ (``[body]``) socket talking zcall by hand."""

    def __init__(self, ctx: zmq.Context, kind: int, endpoint: str, timeout_ms: int = 10_000) -> None:
        self.dealer = kind == zmq.DEALER
        self.sock = ctx.socket(kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        self.sock.connect(endpoint)

    def send_body(self, body: bytes) -> None:
        self.sock.send_multipart([b"", body] if self.dealer else [body])

    def send(self, rid: int, method: str, *args: Any, meta: dict[str, Any] | None = None, **kw: Any) -> None:
        self.send_body(call_body(rid, method, args, kw, meta))

    def recv(self) -> list[Any]:
        """The next message, skipping empty bodies (ACKs, sweep probes); raises zmq.Again on timeout."""
        while True:
            body = self.sock.recv_multipart()[-1]
            if body:
                return decode(body)

    def call(self, rid: int, method: str, *args: Any, meta: dict[str, Any] | None = None, **kw: Any) -> Any:
        """Send one CALL and return the message that answers it (REPLY or ERROR), checking its id."""
        self.send(rid, method, *args, meta=meta, **kw)
        m = self.recv()
        assert m[2] == rid, m
        return m

    def result(self, rid: int, method: str, *args: Any, **kw: Any) -> Any:
        m = self.call(rid, method, *args, **kw)
        assert m[1] == REPLY, m
        return m[3]

    def probe(self, reset_peak: bool = False) -> dict[str, Any]:
        return self.result(7, "probe", reset_peak)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.sock.close(linger=0)


@contextlib.contextmanager
def raw(ctx: zmq.Context, kind: int, endpoint: str, timeout_ms: int = 10_000) -> Iterator[Raw]:
    r = Raw(ctx, kind, endpoint, timeout_ms)
    try:
        yield r
    finally:
        r.close()


def error_of(m: list[Any]) -> tuple[int, int, str]:
    """(id, code, message) of an ERROR message."""
    assert m[1] == ERROR, m
    return m[2], m[3]["code"], m[3]["message"]


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "the condition") -> None:
    """Poll ``predicate`` (a cheap check) until true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
