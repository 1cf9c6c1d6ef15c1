"""Fork safety: zcall in a child made by os.fork / multiprocessing's fork start method, after the parent
used zcall. The children fork for real; every child reports through a pipe and is reaped by pid."""

from __future__ import annotations

import json
import multiprocessing
import os
import select
import signal
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest

import zcall

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

service = zcall.Service("forked")


@service.method(inline=True)
def whoami(x: int) -> dict[str, int]:
    return {"x": x, "pid": os.getpid()}


def in_child(body: Callable[[], dict[str, Any]], timeout: float = 20.0) -> dict[str, Any]:
    """Fork; run ``body`` in the child and return what it returned (or its error), as JSON through a
    pipe. A child that says nothing within ``timeout`` is killed by pid and the test fails: a hang."""
    r, w = os.pipe()
    with warnings.catch_warnings():  # 3.12+: "this process is multi-threaded" (the point of the test)
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(r)
            try:
                out = body()
            except BaseException as exc:
                out, code = {"error": f"{type(exc).__name__}: {exc}"}, 1
            os.write(w, json.dumps(out).encode())
            os.close(w)
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([r], [], [], max(0.0, left))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"forked child {pid} hung: nothing within {timeout}s")
            data = os.read(r, 65536)
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    return json.loads(b"".join(chunks) or b'{"error": "child said nothing"}')


@pytest.fixture
def used_zcall() -> Any:
    """The parent uses zcall the way the issue's report did: a server, and one AsyncClient call."""
    with zcall.AsyncServer(service) as server:
        client = zcall.AsyncClient(server.endpoint, timeout=5)
        assert client.call_async("whoami", 0).result(5)["pid"] == os.getpid()
        yield server, client
        client.close()


@pytest.mark.timeout(60)
def test_a_multiprocessing_pool_of_forked_workers_calls_the_parents_server(used_zcall: Any) -> None:
    server, client = used_zcall

    ctx = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with ctx.Pool(2) as pool:
            results = pool.starmap(_pool_task, [(server.endpoint, i) for i in range(6)], chunksize=1)
    assert [r["async"]["x"] for r in results] == list(range(6))
    assert all(r["async"] == r["sync"] for r in results)
    assert {r["async"]["pid"] for r in results} == {os.getpid()}  # the parent's server answered
    assert os.getpid() not in {r["worker"] for r in results}
    assert max(r["seconds"] for r in results) < 5.0  # a hang would be the 5 s timeout
    assert client.call_async("whoami", 9).result(5)["x"] == 9  # and the parent is undisturbed


def _pool_task(endpoint: str, x: int) -> dict[str, Any]:
    t0 = time.monotonic()
    with zcall.AsyncClient(endpoint, timeout=5) as c:
        a = c.call_async("whoami", x).result(10)
    with zcall.SyncClient(endpoint, timeout=5) as s:
        b = s.call("whoami", x)
    return {"async": a, "sync": b, "worker": os.getpid(), "seconds": time.monotonic() - t0}


@pytest.mark.timeout(60)
def test_an_os_fork_child_gets_a_working_zcall_of_its_own(used_zcall: Any) -> None:
    server, _ = used_zcall

    def body() -> dict[str, Any]:
        t0 = time.monotonic()
        with zcall.AsyncClient(server.endpoint, timeout=5) as c:  # to the parent's server
            parent_answer = c.call_async("whoami", 1).result(10)
        with zcall.AsyncServer(service) as own, zcall.AsyncClient(own.endpoint, timeout=5) as c:
            own_answer = c.call_async("whoami", 2).result(10)  # a server of the child's own
        peer = zcall.Peer("child", service, peers={"parent": server.endpoint}).start()
        try:
            via_peer = peer.call("parent", "whoami", 3)
        finally:
            peer.stop()
        return {"parent": parent_answer, "own": own_answer, "peer": via_peer, "s": time.monotonic() - t0}

    out = in_child(body)
    assert "error" not in out, out
    assert out["parent"] == {"x": 1, "pid": os.getpid()}
    assert out["own"]["x"] == 2 and out["own"]["pid"] != os.getpid()
    assert out["peer"] == {"x": 3, "pid": os.getpid()}


@pytest.mark.timeout(60)
def test_objects_made_before_the_fork_fail_at_once_in_the_child_and_close_quietly(used_zcall: Any) -> None:
    server, client = used_zcall

    def body() -> dict[str, Any]:
        t0 = time.monotonic()
        try:
            client.call_async("whoami", 1).result(10)
            error = None
        except zcall.ClientClosed as exc:
            error = str(exc)
        failed_in = time.monotonic() - t0
        t1 = time.monotonic()
        client.close()  # the parent's: only marked closed here
        server.stop()  # likewise: the parent keeps serving
        closed_in = time.monotonic() - t1
        with zcall.AsyncClient(server.endpoint, timeout=5) as fresh:  # and a new one works
            answer = fresh.call_async("whoami", 2).result(10)
        return {"error": error, "failed_in": failed_in, "closed_in": closed_in, "answer": answer}

    out = in_child(body)
    assert out["error"] is not None and "before os.fork()" in out["error"], out
    assert str(os.getpid()) in out["error"]  # it names the process the object came from
    assert out["failed_in"] < 1.0 and out["closed_in"] < 1.0, out
    assert out["answer"] == {"x": 2, "pid": os.getpid()}
    # the child's close and stop did not touch the parent's sockets or its loop's epoll set
    assert client.call_async("whoami", 5).result(5) == {"x": 5, "pid": os.getpid()}
    with zcall.SyncClient(server.endpoint, timeout=5) as s:
        assert s.call("whoami", 6)["x"] == 6


@pytest.mark.timeout(60)
def test_a_grandchild_forked_from_a_forked_child_works_too() -> None:
    with zcall.AsyncServer(service) as server, zcall.AsyncClient(server.endpoint, timeout=5) as c:
        assert c.call_async("whoami", 0).result(5)

        def grandchild() -> dict[str, Any]:
            with zcall.AsyncClient(server.endpoint, timeout=5) as g:
                return g.call_async("whoami", 7).result(10)  # type: ignore[no-any-return]

        def child() -> dict[str, Any]:
            with zcall.AsyncClient(server.endpoint, timeout=5) as cc:
                mine = cc.call_async("whoami", 4).result(10)
                return {"mine": mine, "grandchild": in_child(grandchild)}

        out = in_child(child, timeout=30)
    assert out["mine"]["x"] == 4 and out["grandchild"]["x"] == 7, out
