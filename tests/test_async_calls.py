"""Asynchronous calls over real sockets: interleaving, where handlers run, both faces, errors, cancel, notify.

Servers are ``AsyncServer`` on zcall's engine thread; clients are ``AsyncClient`` over tcp 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

import zcall
from helpers.async_services import Probe
from helpers.async_support import raw_socket, recv_message, served
from zcall.protocol.wire import Call, Notify, Reply, encode

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def srv() -> Iterator[tuple[zcall.AsyncServer, Probe]]:
    with served() as sp:
        yield sp


@pytest.fixture
def server(srv: tuple[zcall.AsyncServer, Probe]) -> zcall.AsyncServer:
    return srv[0]


@pytest.fixture
def probe(srv: tuple[zcall.AsyncServer, Probe]) -> Probe:
    return srv[1]


@pytest.fixture
def client(server: zcall.AsyncServer) -> Iterator[zcall.AsyncClient]:
    with zcall.AsyncClient(server.endpoint, timeout=5.0) as c:
        yield c


# -- concurrency and where handlers run --------------------------------------------------------------


def test_fast_call_is_not_delayed_by_a_slow_coroutine_issued_before_it(client: zcall.AsyncClient) -> None:
    assert client.call_async("triple", 0).result(5) == 0  # connected
    slow = client.call_async("nap", 0.5, "slow")
    t0 = time.monotonic()
    fast = client.call_async("triple", 7)
    assert fast.result(5) == 21
    fast_elapsed = time.monotonic() - t0
    assert not slow.done(), "the fast call should complete while the slow one is still sleeping"
    assert fast_elapsed < 0.3
    assert slow.result(5) == "slow"


def test_blocking_handler_runs_in_the_pool_and_does_not_stall_the_loop(
    client: zcall.AsyncClient, probe: Probe
) -> None:
    blocked = client.call_async("block", 3.0, "b")
    probe.wait_started("b")
    t0 = time.monotonic()
    assert client.call_async("zcall.ping").result(5)["service"] == "asyncsvc"
    assert client.call_async("triple", 2).result(5) == 6
    assert time.monotonic() - t0 < 1.5  # a stalled loop would have waited for the 3 s handler
    assert not blocked.done()
    assert blocked.result(5) == "b"


def test_inline_and_coroutine_handlers_run_on_the_loop_plain_ones_in_the_pool(
    client: zcall.AsyncClient,
) -> None:
    assert client.call_async("where").result(5) == "zcall-engine"
    assert client.call_async("where_coro").result(5) == "zcall-engine"
    pool_thread = client.call_async("where_pool").result(5)
    assert pool_thread.startswith("zcall-asyncsvc")


# -- the asyncio face --------------------------------------------------------------------------------


@pytest.mark.parametrize("home", ["own-loop", "engine"])
def test_many_concurrent_awaits_on_one_client_all_correct(server: zcall.AsyncServer, home: str) -> None:
    """500 awaits at once, with the client made in the running loop, or made in a thread and bridged."""

    async def main(c: zcall.AsyncClient | None) -> list[int]:
        own = c is None
        c = c or zcall.AsyncClient(server.endpoint, timeout=10.0)
        try:
            return await asyncio.gather(*(c.call("triple", i) for i in range(500)))
        finally:
            if own:
                await c.aclose()

    if home == "own-loop":
        got = asyncio.run(main(None))
    else:
        with zcall.AsyncClient(server.endpoint, timeout=10.0) as c:
            got = asyncio.run(main(c))
    assert got == [3 * i for i in range(500)]


# -- the callback face -------------------------------------------------------------------------------


def test_callbacks_and_errbacks_fire_exactly_once_from_many_threads(client: zcall.AsyncClient) -> None:
    threads, per_thread = 6, 40
    total = threads * per_thread
    lock = threading.Lock()
    fired: collections.Counter[tuple[int, int]] = collections.Counter()
    results: dict[tuple[int, int], object] = {}
    all_fired = threading.Event()

    def record(key: tuple[int, int], value: object) -> None:
        with lock:
            fired[key] += 1
            results[key] = value
            if sum(fired.values()) >= total:
                all_fired.set()

    def worker(t: int) -> None:
        for i in range(per_thread):
            key = (t, i)
            n = t * 1000 + i
            if i % 2 == 0:
                client.call_async("triple", n, callback=lambda r, k=key: record(k, r))
            else:
                client.call_async("boom", f"no {n}", errback=lambda e, k=key: record(k, e))

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert all_fired.wait(10), f"only {sum(fired.values())} of {total} callbacks fired"
    client.call_async("triple", 1).result(5)  # anything still queued on the loop has run by now
    assert len(fired) == total
    assert set(fired.values()) == {1}
    for (t, i), value in results.items():
        n = t * 1000 + i
        if i % 2 == 0:
            assert value == 3 * n
        else:
            assert isinstance(value, zcall.RemoteError) and value.message == f"no {n}"


def test_done_callback_added_after_the_result_runs_at_once_in_the_caller(client: zcall.AsyncClient) -> None:
    fut = client.call_async("triple", 5)
    assert fut.result(5) == 15
    ran: list[tuple[int, int]] = []
    fut.add_done_callback(lambda f: ran.append((threading.get_ident(), f.result())))
    assert ran == [(threading.get_ident(), 15)]


def test_exception_in_a_callback_is_logged_and_counted_and_the_client_goes_on(
    client: zcall.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    def bad(result: object) -> None:
        raise RuntimeError(f"callback blew up on {result}")

    caplog.set_level(logging.ERROR, logger="zcall.client")
    client.call_async("triple", 3, callback=bad)
    # Replies are handled in order on the loop thread: once a later one is in, the callback has run.
    assert client.call_async("triple", 4).result(5) == 12
    assert client.statistics()["callback_errors"] == 1
    logged = [r for r in caplog.records if r.name == "zcall.client" and r.exc_info]
    assert logged, "the callback's exception should be logged with its traceback"
    assert "callback blew up on 9" in str(logged[0].exc_info[1])  # type: ignore[index]
    assert client.call_async("triple", 5).result(5) == 15


def test_a_callback_can_make_the_next_call(client: zcall.AsyncClient) -> None:
    """Callbacks run on the client's loop thread; calling from there must not deadlock or reorder."""
    seen: list[object] = []
    done = threading.Event()

    def step(result: object) -> None:
        seen.append(result)
        if len(seen) < 5:
            client.call_async("triple", result, callback=step, errback=step)
        else:
            done.set()

    client.call_async("triple", 1, callback=step, errback=step)
    assert done.wait(5), seen
    assert seen == [3, 9, 27, 81, 243]


# -- errors: the same records as the sync face --------------------------------------------------------


def test_remote_errors_carry_the_same_records_as_the_sync_face(
    server: zcall.AsyncServer, client: zcall.AsyncClient
) -> None:
    cases = [
        ("boom", ("kaput 1",), {}, zcall.RemoteError),
        ("aboom", ("kaput 2",), {}, zcall.RemoteError),
        ("nope", (), {}, zcall.MethodNotFound),
        ("triplee", (1,), {}, zcall.MethodNotFound),
        ("kw", (1,), {}, zcall.InvalidArguments),
        ("kw", (1, 2, 3), {"c": 1}, zcall.InvalidArguments),
    ]

    async def via_asyncio(method: str, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        async with zcall.AsyncClient(server.endpoint, timeout=5.0) as c:
            await c.call(method, *args, **kwargs)

    with zcall.SyncClient(server.endpoint, timeout=5.0) as sync:
        for method, args, kwargs, expected in cases:
            errs: list[zcall.RemoteError] = []
            for face in ("sync", "callback", "asyncio"):
                with pytest.raises(expected) as info:
                    if face == "sync":
                        sync.call(method, *args, **kwargs)
                    elif face == "callback":
                        client.call_async(method, *args, **kwargs).result(5)
                    else:
                        asyncio.run(via_asyncio(method, args, kwargs))
                assert type(info.value.remote) is expected  # a ValueError is rebuilt: the record beside it
                errs.append(info.value)
            first = errs[0]
            for e in errs[1:]:
                assert (e.code, e.type, e.message, e.method) == (
                    first.code,
                    first.type,
                    first.message,
                    method,
                )
    boom = client.call_async("boom", "kaput 3")
    err = boom.exception(5)
    assert isinstance(err, zcall.RemoteError)
    assert (
        err.type == "ValueError" and err.message == "kaput 3" and err.code is zcall.StatusCode.HANDLER_ERROR
    )
    assert err.traceback is not None and "in boom" in err.traceback and "ValueError: kaput 3" in err.traceback
    akey = client.call_async("aboom", "k").exception(5)
    assert (
        isinstance(akey, zcall.RemoteError) and akey.type == "KeyError" and "in aboom" in str(akey.traceback)
    )
    nf = client.call_async("triplee", 1).exception(5)
    assert isinstance(nf, zcall.MethodNotFound) and "did you mean 'triple'" in nf.message
    assert client.call_async("kw", 1, c=2).result(5) == [1, 0, 2]


# -- cancel ------------------------------------------------------------------------------------------


def test_cancelling_an_asyncio_task_cancels_the_call_on_the_server(
    server: zcall.AsyncServer, probe: Probe
) -> None:
    async def main() -> None:
        async with zcall.AsyncClient(server.endpoint, timeout=10.0) as c:
            task = asyncio.create_task(c.call("nap", 5.0, "task"))
            await asyncio.to_thread(probe.wait_started, "task")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.to_thread(probe.wait_cancelled, "task")
            assert c.statistics()["cancelled"] == 1
            assert c.statistics()["in_flight"] == 0
            assert await c.call("triple", 2) == 6  # keeps working

    asyncio.run(main())
    assert server.statistics()["cancelled"] == 1
    assert "task" not in probe.finished


def test_future_cancel_on_the_callback_face_cancels_the_call_on_the_server(
    server: zcall.AsyncServer, client: zcall.AsyncClient, probe: Probe
) -> None:
    called: list[object] = []
    fut = client.call_async("nap", 5.0, "cf", callback=called.append, errback=called.append)
    probe.wait_started("cf")
    assert fut.cancel(), "a call still waiting for its reply must be cancellable"
    assert fut.cancelled()
    probe.wait_cancelled("cf")
    assert server.statistics()["cancelled"] == 1
    assert client.call_async("triple", 3).result(5) == 9
    assert client.statistics()["cancelled"] == 1
    assert client.statistics()["in_flight"] == 0
    assert called == []  # neither callback nor errback for a cancelled call


def test_late_reply_after_a_timeout_is_dropped_and_counted(test_service: zcall.Service) -> None:
    """A REP server cannot cancel a running call: its reply arrives after the client gave up."""
    from zcall.testing import running_server

    with running_server(test_service) as rep, zcall.AsyncClient(rep.endpoint, timeout=5.0) as c:
        assert c.call_async("double", 1).result(5) == 2
        with pytest.raises(zcall.CallTimeout):
            c.options(timeout=0.1).call_async("slow", 0.4, "late").result(5)
        # REP answers in order: once this reply is in, the late one has arrived (and was dropped).
        assert c.call_async("double", 4).result(5) == 8
        stats = c.statistics()
        assert stats["stale_replies"] == 1
        assert stats["timeouts"] == 1 and stats["in_flight"] == 0


# -- notify ------------------------------------------------------------------------------------------


def test_notify_runs_on_the_server_and_gets_no_reply(
    server: zcall.AsyncServer, client: zcall.AsyncClient
) -> None:
    client.notify("mark", "n1")
    client.notify("mark", "n2")
    assert client.call_async("marks").result(5) == ["n1", "n2"]
    stats = client.statistics()
    assert stats["stale_replies"] == 0 and stats["bad_replies"] == 0 and stats["in_flight"] == 0
    # On the wire: a notify is answered by nothing; the next message back is the reply to the next call.
    with raw_socket(zmq.DEALER, server.endpoint) as d:
        d.send_multipart([b"", encode(Notify(11, "mark", ["raw"], {}))])
        d.send_multipart([b"", encode(Call(12, "marks"))])
        msg = recv_message(d)
        assert msg == Reply(12, ["n1", "n2", "raw"])
        assert d.poll(100) == 0
    # A notify to a missing method or with bad arguments is dropped without a reply, the server goes on.
    client.notify("missing", 1)
    client.notify("mark")
    assert client.call_async("marks").result(5) == ["n1", "n2", "raw"]


def test_server_counts_pings_it_answers(server: zcall.AsyncServer) -> None:
    """App-level pings are answered on the loop and counted (liveness tests read this counter)."""
    import msgpack
    import zmq

    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.connect(server.endpoint)
    try:
        before = server.statistics()["pings"]
        for i in range(3):
            s.send_multipart([b"", msgpack.packb([1, 6, 1000 + i])])
            assert msgpack.unpackb(s.recv_multipart()[-1]) == [1, 7, 1000 + i]
        assert server.statistics()["pings"] == before + 3
    finally:
        s.close()


def test_waiting_on_a_call_inside_a_callback_raises_instead_of_deadlocking(
    client: zcall.AsyncClient,
) -> None:
    """Callbacks run on the client's loop thread, which is the one that would resolve the inner call."""
    seen: list[BaseException] = []
    done = threading.Event()

    def callback(_: object) -> None:
        try:
            client.call_async("triple", 2).result(5)
        except RuntimeError as exc:
            seen.append(exc)
        finally:
            done.set()

    client.call_async("triple", 1, callback=callback)
    assert done.wait(5)
    assert len(seen) == 1 and "would deadlock" in str(seen[0])
    assert client.call_async("triple", 3).result(5) == 9  # and the client is fine
