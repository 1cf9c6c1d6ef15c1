"""Handlers cannot kill a server: whatever a handler raises is its call's answer, over real processes.

Decided (docs/reliability.md, Handlers): ``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit`` and any
other ``BaseException`` raised inside a handler, of any kind (inline on the loop, in the pool, a
coroutine; the sync server's serving thread), do nothing to the process: the caller gets
HANDLER_ERROR naming the type, the server logs a warning and keeps serving, and the process later
stops on SIGTERM as usual (exit 0). Stopping a server is ``stop()`` or a signal, never a remote call.
A loop that dies anyway (a bug in zcall, injected here) is logged critically.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq

import zcall
from helpers.hardening import HANDLER_ERROR, INTERNAL, error_of, raw, spawn_hostile
from zcall.testing import ProcessHandle, free_tcp_endpoint

pytestmark = pytest.mark.timeout(60)

RAISED = {
    "SystemExit": "SystemExit",
    "KeyboardInterrupt": "KeyboardInterrupt",
    "GeneratorExit": "GeneratorExit",
    "Boom": "__main__.Boom",  # a BaseException of the application's own (its module runs as __main__)
}
HANDLER_KINDS = ["raise_inline", "raise_pool", "raise_coroutine"]


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.term()


def wait_stderr(h: ProcessHandle, text: str, timeout: float = 5.0) -> str:
    """The child's stderr once it contains ``text`` (polled: stderr lines arrive on their own)."""
    deadline = time.monotonic() + timeout
    while text not in h.stderr:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not on stderr within {timeout}s:\n{h.stderr[-2000:]}")
        time.sleep(0.01)
    return h.stderr


@pytest.mark.parametrize("kind", ["async", "sync", "peer", "peer-sync"])
def test_every_base_exception_from_every_handler_kind_is_the_calls_answer(
    kind: str, ctx: zmq.Context
) -> None:
    sync_ep = free_tcp_endpoint() if kind == "peer-sync" else None
    options = ["--log-level", "WARNING"] + (["--sync-bind", sync_ep] if sync_ep else [])
    with spawn_hostile("peer" if kind.startswith("peer") else kind, *options) as h:
        endpoint = sync_ep or h.endpoint
        with raw(ctx, zmq.REQ if sync_ep else zmq.DEALER, endpoint, timeout_ms=5000) as sock:
            rid = 0
            for method in HANDLER_KINDS:
                for name, wire_type in RAISED.items():
                    rid += 1
                    m = sock.call(rid, method, name)
                    got_id, code, text = error_of(m)
                    assert (got_id, code, m[3]["type"]) == (rid, HANDLER_ERROR, wire_type), m
                    assert name in text
                    assert sock.result(1000 + rid, "echo", rid) == rid  # and it keeps serving
            assert sock.probe()["pid"] == h.pid  # the same process throughout
        # a zcall client sees an ordinary RemoteError naming the type
        err: BaseException | None
        if kind in ("sync", "peer-sync"):
            with zcall.SyncClient(endpoint, timeout=5.0) as c, pytest.raises(zcall.RemoteError) as info:
                c.call("raise_pool", "SystemExit")
            err = info.value
        else:
            with zcall.AsyncClient(endpoint, timeout=5.0) as ac:
                err = ac.call_async("raise_coroutine", "KeyboardInterrupt").exception(5)
        assert isinstance(err, zcall.RemoteError), err
        assert err.code is zcall.StatusCode.HANDLER_ERROR and err.type in RAISED
        assert h.alive()
        log = h.stderr
        assert "raised SystemExit" in log and "raised KeyboardInterrupt" in log  # logged, as warnings
        h.terminate()
        assert h.wait(10) == 0  # SIGTERM still stops it the usual way


def test_an_engine_loop_that_dies_anyway_is_reported_critically(ctx: zmq.Context) -> None:
    """Fault injection: a callback raises KeyboardInterrupt out of the engine loop itself (nothing a
    handler can do: handlers' exceptions are answers). The death is logged at CRITICAL at once."""
    with spawn_hostile("async", "--log-level", "WARNING") as h, raw(ctx, zmq.DEALER, h.endpoint) as d:
        try:
            assert d.result(1, "kill_loop") == "scheduled"
            log = wait_stderr(h, "engine loop died")
        finally:
            h.kill()  # it cannot stop cleanly: its loop is gone (see the next test)
        assert "CRITICAL zcall.engine" in log and "KeyboardInterrupt: injected into the loop" in log


def test_a_server_whose_engine_loop_died_ends_its_process_with_a_failure(ctx: zmq.Context) -> None:
    with spawn_hostile("async") as h, raw(ctx, zmq.DEALER, h.endpoint) as d:
        try:
            assert d.result(1, "kill_loop") == "scheduled"
            code = h.wait(3)
        finally:
            h.kill()
    assert code != 0


@pytest.mark.parametrize(
    ("kind", "method", "name"),
    [
        ("async", "explosive", "RuntimeError"),
        ("async", "explosive_pool", "Boom"),
        ("sync", "explosive", "RuntimeError"),
        ("sync", "explosive", "SystemExit"),
    ],
)
def test_a_result_whose_encoder_raises_is_an_internal_error_and_the_server_keeps_serving(
    kind: str, method: str, name: str, ctx: zmq.Context
) -> None:
    with spawn_hostile(kind) as h, raw(ctx, zmq.DEALER, h.endpoint, timeout_ms=1000) as d:
        m = d.call(1, method, name)
        assert error_of(m)[1] == INTERNAL and "not sendable" in error_of(m)[2], m
        assert d.result(2, "echo", "after") == "after"
        assert h.alive()
