"""Starting and stopping async clients and servers: pending calls on close, graceful stop, threads left
behind, process exit, ``Context.term``, and the asyncio-native ``async with`` / ``serve()`` forms."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

import zcall
from helpers.async_services import Probe, make_service
from helpers.async_support import REPO_ROOT, TESTS_DIR, served
from zcall.testing import spawn

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def srv() -> Iterator[tuple[zcall.AsyncServer, Probe]]:
    with served() as sp:
        yield sp


def test_close_fails_pending_calls_with_client_closed_and_does_not_hang(
    srv: tuple[zcall.AsyncServer, Probe],
) -> None:
    server, probe = srv
    c = zcall.AsyncClient(server.endpoint, timeout=30.0)
    errors: list[BaseException] = []
    lock = threading.Lock()

    def errback(e: BaseException) -> None:
        with lock:
            errors.append(e)

    futs = [c.call_async("nap", 20.0, f"c{i}", errback=errback) for i in range(5)]
    probe.wait_started("c4")
    t0 = time.monotonic()
    c.close()
    assert time.monotonic() - t0 < 5.0  # not the 20 s the calls would take
    for f in futs:
        assert isinstance(f.exception(1), zcall.ClientClosed)
    assert len(errors) == 5 and all(isinstance(e, zcall.ClientClosed) for e in errors)
    with pytest.raises(zcall.ClientClosed):
        c.call_async("triple", 1)
    c.close()  # twice is fine


def test_aclose_fails_pending_awaits_with_client_closed(srv: tuple[zcall.AsyncServer, Probe]) -> None:
    server, probe = srv

    async def main() -> list[object]:
        c = zcall.AsyncClient(server.endpoint, timeout=30.0)
        tasks = [asyncio.create_task(c.call("nap", 20.0, f"a{i}")) for i in range(3)]
        await asyncio.to_thread(probe.wait_started, "a2")
        await c.aclose()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2)

    results = asyncio.run(main())
    assert all(isinstance(r, zcall.ClientClosed) for r in results), results


class _LogSignal(logging.Handler):
    """Sets an event when a log message containing ``text`` is emitted (a signal, not a sleep)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


def test_stop_with_grace_finishes_in_flight_calls_and_refuses_new_ones() -> None:
    svc, probe = make_service()
    server = zcall.AsyncServer(svc).start()
    signal = _LogSignal("stopping")
    logger = logging.getLogger("zcall.server")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(signal)
    try:
        with zcall.AsyncClient(server.endpoint, timeout=5.0) as c:
            in_flight = c.call_async("nap", 0.6, "grace")
            probe.wait_started("grace")
            t0 = time.monotonic()
            stopper = threading.Thread(target=server.stop, args=(5.0,))
            stopper.start()
            assert signal.seen.wait(5)
            late = c.call_async("triple", 1).exception(5)
            assert isinstance(late, zcall.ServerBusy)
            assert late.code is zcall.StatusCode.UNAVAILABLE
            assert in_flight.result(5) == "grace"
            stopper.join(5)
            assert not stopper.is_alive()
            assert time.monotonic() - t0 < 4.0  # it waited for the 0.6 s call, not the whole 5 s grace
    finally:
        logger.removeHandler(signal)
        logger.setLevel(old_level)
        server.stop(0)


def test_stop_grace_expiry_answers_unfinished_calls_with_server_busy(
    srv: tuple[zcall.AsyncServer, Probe],
) -> None:
    server, probe = srv
    with zcall.AsyncClient(server.endpoint, timeout=10.0) as c:
        fut = c.call_async("nap", 10.0, "cut")
        probe.wait_started("cut")
        t0 = time.monotonic()
        server.stop(0.3)
        assert time.monotonic() - t0 < 5.0  # the grace, not the 10 s call
        err = fut.exception(5)
        # docs/reliability.md, Shutdown: the calls still running when the grace period ends are
        # answered UNAVAILABLE, and that answer leaves before the socket closes (never ConnectionLost)
        assert isinstance(err, zcall.ServerBusy) and err.code is zcall.StatusCode.UNAVAILABLE, err
        assert time.monotonic() - t0 < 5.0
        probe.wait_cancelled("cut")


_NO_THREADS_LEFT = """
import threading, zmq, zcall
from helpers.async_services import make_service

ctx = zmq.Context()
svc, _ = make_service()
server = zcall.AsyncServer(svc, context=ctx).start()
client = zcall.AsyncClient(server.endpoint, context=ctx, timeout=5)
client.on("t.*", lambda t, p: None)
assert client.call_async("where_pool").result(5).startswith("zcall-")
assert client.call_async("nap", 0.01, "x").result(5) == "x"
pending = client.call_async("nap", 10.0, "pending")
server.publish("t.x", 1)
client.close()
server.stop(0.2)
for t in threading.enumerate():
    if t.name.startswith("zcall"):
        t.join(3)  # pool workers exit once idle
left = [t.name for t in threading.enumerate() if t.name.startswith("zcall") and t.is_alive()]
print("LEFT", left, flush=True)
term = threading.Thread(target=ctx.term, daemon=True)
term.start()
term.join(5)
print("TERM", "hung" if term.is_alive() else "ok", flush=True)
"""


def test_no_zcall_thread_is_left_and_context_term_returns_after_closing() -> None:
    with spawn(["-c", _NO_THREADS_LEFT], ready_prefix="LEFT", pythonpath=[TESTS_DIR], cwd=REPO_ROOT) as p:
        assert p.ready_line == "LEFT []"
        assert p.expect("TERM", timeout=10) == "TERM ok"
        assert p.wait(10) == 0, p.stderr


_EXIT_WITHOUT_CLOSING = """
import zcall
from helpers.async_services import make_service

svc, _ = make_service()
server = zcall.AsyncServer(svc).start()
client = zcall.AsyncClient(server.endpoint, timeout=30)
assert client.call_async("triple", 2).result(5) == 6
client.call_async("nap", 30.0, "left pending")
assert client.call_async("where_pool").result(5).startswith("zcall-")  # the pool exists
other = zcall.AsyncClient("tcp://127.0.0.1:9", timeout=30)  # never connects
other.call_async("triple", 1)
print("EXITING", flush=True)
"""


def test_process_that_never_closes_still_exits_promptly() -> None:
    t0 = time.monotonic()
    with spawn(
        ["-c", _EXIT_WITHOUT_CLOSING], ready_prefix="EXITING", pythonpath=[TESTS_DIR], cwd=REPO_ROOT
    ) as p:
        t1 = time.monotonic()
        assert p.wait(10) == 0, p.stderr
        assert time.monotonic() - t1 < 3.0, "exit took too long after the script ended"
        assert "Traceback" not in p.stderr, p.stderr
    assert time.monotonic() - t0 < 15


def test_context_term_does_not_hang_after_everything_is_closed_in_process() -> None:
    ctx = zmq.Context()
    svc, _ = make_service()
    server = zcall.AsyncServer(svc, context=ctx).start()
    try:
        with zcall.AsyncClient(server.endpoint, context=ctx, timeout=5.0) as c:
            assert c.call_async("triple", 3).result(5) == 9
            c.call_async("nap", 5.0, "abandoned")
    finally:
        server.stop(0.1)
    term = threading.Thread(target=ctx.term, daemon=True)
    term.start()
    term.join(5)
    assert not term.is_alive(), "Context.term() hung"


# -- asyncio-native -----------------------------------------------------------------------------------


def test_async_with_server_and_client_inside_asyncio_run() -> None:
    svc, probe = make_service()

    async def main() -> None:
        async with zcall.AsyncServer(svc) as server, zcall.AsyncClient(server.endpoint, timeout=5.0) as c:
            assert await c.call("where") == threading.current_thread().name  # on this very loop
            assert await asyncio.gather(*(c.call("nap", 0.05, str(i)) for i in range(20))) == [
                str(i) for i in range(20)
            ]
            assert probe.max_concurrent == 20  # they overlapped on one loop

    asyncio.run(main())


def test_cancelling_serve_closes_the_server() -> None:
    svc, _ = make_service()

    async def main() -> str:
        server = zcall.AsyncServer(svc)
        bound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(server.serve(grace=0.1, on_ready=bound.set_result))
        endpoint = await asyncio.wait_for(bound, 5)  # the bind signal, not a scheduler turn
        async with zcall.AsyncClient(endpoint, timeout=5.0) as c:
            assert await c.call("triple", 4) == 12
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises((zcall.CallTimeout, zcall.ConnectionLost)):  # no server answers
                await c.options(timeout=0.3).call("triple", 1)
        return endpoint

    endpoint = asyncio.run(main())
    # The socket is really closed: the same tcp port can be bound again at once.
    with served(endpoint) as (again, _), zcall.AsyncClient(again.endpoint, timeout=5.0) as c:
        assert c.call_async("triple", 5).result(5) == 15
