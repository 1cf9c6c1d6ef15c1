"""docs/reliability.md's bounds table and the code agree: every default it states is the code's, and every
test it names exists (the tests it names check the behaviour at each bound)."""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import pytest
import zmq

import zcall
from zcall.client.asynchronous import DEFAULT_MAX_IN_FLIGHT as CLIENT_MAX_IN_FLIGHT
from zcall.engine.sockets import MAX_SOCKETS_WANTED, frame_limit
from zcall.protocol.codec import COUNTED_ABOVE, DEFAULT_MAX_DECODED_BYTES, DEFAULT_MAX_MESSAGE_SIZE
from zcall.protocol.wire import MAX_BATCH_ITEMS, MAX_REQUEST_FRAMES
from zcall.server.events import _SWEEP_MIN
from zcall.server.lifecycle import DEFAULT_GRACE
from zcall.service.dispatch import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_IN_FLIGHT_BYTES,
    MAX_PATTERN_LENGTH,
    MAX_PATTERNS,
)
from zcall.service.metrics import Metrics
from zcall.service.registry import MAX_HINTED_NAME
from zcall.service.replycache import ReplyCache
from zcall.tools.cli import build_parser

TESTS = Path(__file__).resolve().parent
DOC = TESTS.parent / "docs" / "reliability.md"
MIB = 1024 * 1024


def table() -> dict[str, list[str]]:
    """The bounds table's rows: resource (bold marks stripped) -> its cells."""
    text = DOC.read_text()
    start = text.index("## Bounds")
    rows: dict[str, list[str]] = {}
    for line in text[start:].splitlines()[1:]:
        if line.startswith("## "):
            break
        if not line.startswith("| ") or line.startswith("| resource") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 6, f"a row of the bounds table needs 6 cells: {line}"
        rows[cells[0].strip("*")] = cells
    return rows


ROWS = table()


def default(resource: str) -> str:
    return ROWS[resource][2]


def mib(n: int) -> str:
    assert n % MIB == 0
    return f"{n // MIB} MiB"


@pytest.mark.parametrize("resource", sorted(ROWS))
def test_every_row_names_tests_that_exist(resource: str) -> None:
    checked_by = ROWS[resource][5]
    refs = re.findall(r"`(test_[a-z0-9_]+\.py)(?:::(test_[a-z0-9_]+))?`", checked_by)
    assert refs, f"{resource!r}: no test named"
    for filename, function in refs:
        path = TESTS / filename
        assert path.exists(), f"{resource!r}: {filename} does not exist"
        if function:
            assert re.search(rf"^def {function}\(", path.read_text(), re.M), f"{filename}::{function} missing"


def test_the_defaults_in_the_table_are_the_codes() -> None:
    assert default("one body") == mib(DEFAULT_MAX_MESSAGE_SIZE) == "16 MiB"
    extra = frame_limit(DEFAULT_MAX_MESSAGE_SIZE) - DEFAULT_MAX_MESSAGE_SIZE
    assert default("one frame") == f"{mib(DEFAULT_MAX_MESSAGE_SIZE)} + {mib(extra)}"
    assert frame_limit(1024) == 1024 + 64 * 1024 and frame_limit(64 * MIB) == 72 * MIB  # "max(64 KiB, /8)"
    assert default("frames of one request") == str(MAX_REQUEST_FRAMES)
    assert default("messages in one BATCH (AsyncServer, Peer)") == str(MAX_BATCH_ITEMS)
    decoded = ROWS["maps and arrays of one message, decoded"]
    assert decoded[2].startswith(mib(DEFAULT_MAX_DECODED_BYTES) + " ")
    assert f"bodies under {COUNTED_ABOVE // 1024} KiB are not counted" in decoded[1]
    assert default("calls running or queued (AsyncServer, Peer)") == str(DEFAULT_MAX_IN_FLIGHT)
    for cls in (zcall.AsyncServer, zcall.Peer):
        assert inspect.signature(cls).parameters["max_in_flight"].default == DEFAULT_MAX_IN_FLIGHT
    assert default("request bytes of those calls") == mib(DEFAULT_MAX_IN_FLIGHT_BYTES)
    assert default("event patterns of one connection") == f"{MAX_PATTERNS} of {MAX_PATTERN_LENGTH}"
    assert default("subscribers") == f"at least {_SWEEP_MIN} between sweeps"
    c = ReplyCache()
    assert default("kept replies (calls marked `retry`)") == (
        f"{c.max_entries:,} replies, {mib(c.max_bytes)}, {c.ttl:g} s"
    )
    assert default("resends joined to a running call") == str(c.max_waiters)
    assert default("close-match search for an unknown method name") == str(MAX_HINTED_NAME)
    assert default("metrics rows") == str(inspect.signature(Metrics).parameters["max_methods"].default)
    assert default("calls pending on one AsyncClient") == str(CLIENT_MAX_IN_FLIGHT)
    assert default("a reply a server sends") == default("a reply a client accepts") == "16 MiB"
    assert default("zmq sockets in one process") == f"min(`ulimit -n`, {MAX_SOCKETS_WANTED:,})"
    grace = ROWS["a stopping server"][2]
    assert grace.startswith(f"{DEFAULT_GRACE:g} s ")
    assert build_parser().parse_args(["serve", "x:y"]).grace == DEFAULT_GRACE


def test_the_pool_size_in_the_table_is_the_servers() -> None:
    assert default("threads running plain handlers (AsyncServer, Peer)") == "min(32, CPUs + 4)"
    server = zcall.AsyncServer(zcall.Service("t"))  # not started: nothing bound
    assert server._workers == min(32, (os.cpu_count() or 1) + 4)


def test_the_sync_servers_queue_in_the_table_is_its_sockets() -> None:
    """The table says how many requests libzmq queues per connection for a SyncServer (its RCVHWM)."""
    with zcall.SyncServer(zcall.Service("t")) as server:
        hwm = int(server._sock.getsockopt(zmq.RCVHWM))  # type: ignore[union-attr, arg-type]
    assert default("requests waiting for a SyncServer") == f"{hwm} messages per connection"
