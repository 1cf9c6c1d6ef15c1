"""Replies are checked before they are sent: a result the caller would refuse is an error reply that
names the problem, at once, on every client face; an oversized one never costs another call its
connection. Servers run in child processes (``helpers.hostile_server``); callers are this process.

Before: an int-keyed map was a ProtocolError at once on the sync face and a CallTimeout after the
whole timeout on the async face; a 20 MB result made the async caller wait its whole timeout; a 100 MB
result cut the connection and failed an innocent call on it too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import zcall
from helpers.hardening import MIB, spawn_hostile
from zcall.protocol.codec import DEFAULT_MAX_MESSAGE_SIZE
from zcall.testing import ProcessHandle

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 10.0
AT_ONCE = TIMEOUT / 2  # the failure is waiting out the whole timeout: half of it on a loaded machine


@pytest.fixture(scope="module")
def servers() -> Iterator[Callable[..., ProcessHandle]]:
    started: dict[tuple[str, ...], ProcessHandle] = {}

    def get(kind: str, *options: str) -> ProcessHandle:
        key = (kind, *options)
        if key not in started or not started[key].alive():
            started[key] = spawn_hostile(kind, *options)
        return started[key]

    yield get
    for h in started.values():
        h.stop(timeout=5.0)


def call_on_face(face: str, endpoint: str, method: str, *args: Any) -> tuple[Any, float]:
    """Call ``method`` through one client face; returns (the result or the exception, seconds taken)."""
    t0 = time.monotonic()
    try:
        if face == "sync":
            with zcall.SyncClient(endpoint, timeout=TIMEOUT) as c:
                out: Any = c.call(method, *args)
        elif face == "callback":
            with zcall.AsyncClient(endpoint, timeout=TIMEOUT) as ac:
                fut = ac.call_async(method, *args)
                out = fut.exception(TIMEOUT + 5) or fut.result()
        elif face == "asyncio":

            async def main() -> Any:
                async with zcall.AsyncClient(endpoint, timeout=TIMEOUT) as ac:
                    return await ac.call(method, *args)

            out = asyncio.run(main())
        elif face.startswith("peer"):
            peer = zcall.Peer("caller", timeout=TIMEOUT)
            peer.connect("server", endpoint)
            try:
                if face == "peer-call":
                    out = peer.call("server", method, *args)
                elif face == "peer-call_async":
                    pf = peer.call_async("server", method, *args)
                    out = pf.exception(TIMEOUT + 5) or pf.result()
                else:
                    out = asyncio.run(peer.acall("server", method, *args))
            finally:
                peer.stop(0)
        else:
            raise ValueError(face)
    except zcall.ZcallError as exc:
        out = exc
    return out, time.monotonic() - t0


FACES = ["sync", "callback", "asyncio", "peer-call", "peer-call_async", "peer-acall"]


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("method", ["int_keys", "int_keys_inside"])
def test_an_int_keyed_map_result_is_an_internal_error_naming_the_problem_on_every_face(
    method: str, face: str, kind: str, servers: Callable[..., ProcessHandle]
) -> None:
    h = servers(kind)
    err, took = call_on_face(face, h.endpoint, method)
    assert isinstance(err, zcall.RemoteError), err
    assert err.code is zcall.StatusCode.INTERNAL and err.type == "zcall.SerializationError", err
    assert "result not sendable" in err.message and "map key" in err.message, err.message
    assert took < AT_ONCE, took


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_an_int_keyed_dict_subclass_result_is_an_internal_error_too(
    kind: str, servers: Callable[..., ProcessHandle]
) -> None:
    err, _ = call_on_face("sync", servers(kind).endpoint, "int_keys_subclass")
    assert isinstance(err, zcall.RemoteError) and err.code is zcall.StatusCode.INTERNAL, err


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("face", ["sync", "callback"])
def test_a_result_nested_too_deep_to_encode_is_an_internal_error(
    face: str, kind: str, servers: Callable[..., ProcessHandle]
) -> None:
    err, took = call_on_face(face, servers(kind).endpoint, "deep", 2000)
    assert isinstance(err, zcall.RemoteError) and err.code is zcall.StatusCode.INTERNAL, err
    assert "result not sendable" in err.message
    assert took < AT_ONCE


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("face", ["sync", "callback", "asyncio"])
def test_a_20_mb_result_is_an_error_at_once(
    face: str, kind: str, servers: Callable[..., ProcessHandle]
) -> None:
    """Over the 16 MiB a caller accepts: refused by the server, naming sizes, before it is sent."""
    err, took = call_on_face(face, servers(kind).endpoint, "big", 20_000_000)
    assert isinstance(err, zcall.RemoteError) and err.code is zcall.StatusCode.INTERNAL, err
    assert f"exceeds the limit of {DEFAULT_MAX_MESSAGE_SIZE} bytes" in err.message, err.message
    assert took < AT_ONCE, took


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_100_mb_result_is_an_error_and_another_call_on_the_connection_is_unaffected(
    kind: str, servers: Callable[..., ProcessHandle]
) -> None:
    h = servers(kind)
    with zcall.AsyncClient(h.endpoint, timeout=TIMEOUT) as c:
        assert c.call_async("echo", "connected").result(TIMEOUT) == "connected"
        other = c.call_async("asleep", 0.5, "innocent") if kind == "async" else None
        huge = c.call_async("big", 100_000_000)
        after = c.call_async("echo", "after")  # queued behind it on the same connection
        err = huge.exception(TIMEOUT)
        assert isinstance(err, zcall.RemoteError) and err.code is zcall.StatusCode.INTERNAL, err
        assert "exceeds the limit" in err.message
        if other is not None:
            assert other.result(TIMEOUT) == "innocent"
        assert after.result(TIMEOUT) == "after"
        stats = c.statistics()
    assert stats["connection_lost"] == 0 and stats["timeouts"] == 0


@pytest.mark.parametrize("face", ["callback", "asyncio"])
def test_an_async_client_fails_a_reply_it_cannot_decode_at_once(
    face: str, servers: Callable[..., ProcessHandle]
) -> None:
    """From a server that does not check its replies (check_replies=False): the async client reads the
    id from the reply's first items and fails that call with ProtocolError, not at its timeout."""
    h = servers("async", "--no-check-replies")
    err, took = call_on_face(face, h.endpoint, "int_keys")
    assert isinstance(err, zcall.ProtocolError) and "cannot be read" in str(err), err
    assert took < AT_ONCE


def test_a_reply_over_the_callers_own_limit_fails_that_call_at_once(
    servers: Callable[..., ProcessHandle],
) -> None:
    """The server (16 MiB) sends 1.05 MiB to a caller whose limit is 1 MiB: within the caller's frame
    wall, so it is read, refused unread (MESSAGE_TOO_LARGE, its id peeked) and only that call fails."""
    h = servers("async")
    with zcall.AsyncClient(h.endpoint, timeout=TIMEOUT, codec=zcall.Codec(max_message_size=MIB)) as c:
        t0 = time.monotonic()
        err = c.call_async("big", MIB + 50_000).exception(TIMEOUT)
        took = time.monotonic() - t0
        assert isinstance(err, zcall.ProtocolError) and "cannot be read" in str(err), err
        assert c.call_async("echo", "same connection").result(TIMEOUT) == "same connection"
        assert c.statistics()["connection_lost"] == 0
    assert took < AT_ONCE
