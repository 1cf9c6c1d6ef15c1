"""FaultProxy over real sockets: forwarding for both pairings, each fault, the seeded RNG, cut/restore,
thread-safe commands, clean shutdown.

The server behind the proxy is a raw echo (ROUTER or REP) on a thread, so what arrives is exactly what the
proxy let through; clients are raw DEALER/REQ sockets with a receive timeout.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

import zcall
from zcall.protocol.wire import Call, Ping, Reply, encode
from zcall.testing import FaultProxy, ipc_endpoint, is_call, is_reply, kind_of

pytestmark = pytest.mark.timeout(30)


@contextlib.contextmanager
def echo_server(kind: int = zmq.ROUTER, endpoint: str = "tcp://127.0.0.1:*") -> Iterator[str]:
    """A raw echo server on a thread (ROUTER: envelope and body back; REP: body back); yields its endpoint."""
    ctx = zmq.Context.instance()
    ready = threading.Event()
    stop = threading.Event()
    bound: list[str] = []

    def run() -> None:
        sock = ctx.socket(kind)
        sock.linger = 0
        sock.bind(endpoint)
        bound.append(sock.last_endpoint.decode())
        ready.set()
        try:
            while not stop.is_set():
                if sock.poll(20):
                    sock.send_multipart(sock.recv_multipart())
        finally:
            sock.close(0)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    ready.wait(5)
    try:
        yield bound[0]
    finally:
        stop.set()
        t.join(5)


@contextlib.contextmanager
def dealer(endpoint: str, timeout_ms: int = 2000) -> Iterator[zmq.Socket]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.rcvtimeo = timeout_ms
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(0)


def ask(sock: zmq.Socket, body: bytes) -> None:
    sock.send_multipart([b"", body])


def answer(sock: zmq.Socket) -> bytes:
    return sock.recv_multipart()[-1]


def answers(sock: zmq.Socket, n: int) -> list[bytes]:
    return [answer(sock) for _ in range(n)]


def nothing_arrives(sock: zmq.Socket, within_ms: int = 200) -> bool:
    """True if no message arrives within the window (the window is the behaviour: a drop is silence)."""
    return sock.poll(within_ms) == 0


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    with echo_server() as ep, FaultProxy(ep) as p:
        yield p


# -- forwarding ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_kind", "server_kind"),
    [(zmq.DEALER, zmq.ROUTER), (zmq.REQ, zmq.REP), (zmq.REQ, zmq.ROUTER), (zmq.DEALER, zmq.REP)],
    ids=["dealer-router", "req-rep", "req-router", "dealer-rep"],
)
def test_forwards_both_ways_for_every_pairing(client_kind: int, server_kind: int) -> None:
    with echo_server(server_kind) as ep, FaultProxy(ep) as p:
        sock = zmq.Context.instance().socket(client_kind)
        sock.linger, sock.rcvtimeo = 0, 2000
        sock.connect(p.endpoint)
        try:
            for i in range(5):
                body = f"m{i}".encode()
                if client_kind == zmq.REQ:
                    sock.send(body)
                    assert sock.recv() == body
                else:
                    ask(sock, body)
                    assert answer(sock) == body
        finally:
            sock.close(0)
        stats = p.wait_for(lambda s: s["replies"]["forwarded"] == 5)
        assert stats["requests"]["received"] == stats["requests"]["forwarded"] == 5


def test_zcall_clients_and_servers_work_through_it() -> None:
    svc = zcall.Service("t")
    svc.add(lambda x: x + 1, name="inc")
    for kind in ("sync", "async"):
        with zcall.testing.running_server(svc, kind=kind) as srv, FaultProxy(srv.endpoint) as p:
            with zcall.SyncClient(p.endpoint, timeout=2) as c:
                assert c.call("inc", 1) == 2
            with zcall.AsyncClient(p.endpoint, timeout=2) as ac:
                assert ac.call_async("inc", 2).result(3) == 3


# -- faults ----------------------------------------------------------------------------------------


def test_drop_takes_exactly_the_next_n_messages_of_one_direction(proxy: FaultProxy) -> None:
    rule = proxy.drop("requests", count=2)
    with dealer(proxy.endpoint) as d:
        for i in range(4):
            ask(d, b"%d" % i)
        assert answers(d, 2) == [b"2", b"3"]
        assert rule.fired == 2 and not rule.active
        proxy.drop("replies")
        ask(d, b"lost")
        ask(d, b"kept")
        assert answer(d) == b"kept"
    stats = proxy.stats
    assert stats["requests"]["dropped"] == 2 and stats["replies"]["dropped"] == 1
    assert stats["requests"]["forwarded"] == 4 and stats["replies"]["forwarded"] == 3


def test_probability_draws_from_the_seeded_rng_so_runs_repeat() -> None:
    def run(seed: int) -> list[bytes]:
        with echo_server() as ep, FaultProxy(ep, seed=seed) as p:
            p.drop("requests", count=None, probability=0.5)
            with dealer(p.endpoint) as d:
                for i in range(40):
                    ask(d, b"%d" % i)
                stats = p.wait_for(lambda s: s["requests"]["forwarded"] + s["requests"]["dropped"] == 40)
                got = answers(d, stats["requests"]["forwarded"])
                assert nothing_arrives(d, 50)
                return got

    first, again, other = run(7), run(7), run(8)
    assert first == again  # same seed, same fate for every message
    assert first != other
    assert 5 < len(first) < 35  # about half of 40 survive


def test_match_selects_messages_by_predicate() -> None:
    with echo_server() as ep, FaultProxy(ep) as p:
        p.drop("requests", count=None, match=is_call)
        with dealer(p.endpoint) as d:
            ask(d, encode(Call(1, "m")))
            ask(d, encode(Ping(2)))
            ask(d, b"not zcall")
            assert [kind_of([m]) for m in answers(d, 2)] == [zcall.protocol.Kind.PING, None]
            assert nothing_arrives(d, 100)
        assert p.stats["requests"]["dropped"] == 1


def test_kind_helpers() -> None:
    assert is_call([b"id", b"", encode(Call(1, "m"))])
    assert is_reply([encode(Reply(1, None))]) and not is_reply([encode(Ping(3))])
    assert kind_of([]) is None and kind_of([b"\xc1"]) is None and kind_of([b"\x93\x01\x63\x01"]) is None


def test_delay_holds_a_message_while_later_ones_overtake_it(proxy: FaultProxy) -> None:
    proxy.delay("replies", 0.3)
    with dealer(proxy.endpoint) as d:
        t0 = time.monotonic()
        ask(d, b"late")
        proxy.wait_for(lambda s: s["replies"]["delayed"] == 1)
        ask(d, b"early")
        assert answer(d) == b"early"
        assert answer(d) == b"late"
        assert time.monotonic() - t0 >= 0.29
    assert proxy.stats["replies"]["delayed"] == 1


def test_duplicate_sends_extra_copies(proxy: FaultProxy) -> None:
    proxy.duplicate("replies", copies=2)
    proxy.duplicate("requests")
    with dealer(proxy.endpoint) as d:
        ask(d, b"x")  # duplicated on the way in (2 echoes), the first echo tripled on the way back
        assert answers(d, 4) == [b"x"] * 4
        assert nothing_arrives(d, 100)
    stats = proxy.stats
    assert stats["requests"]["duplicated"] == 1 and stats["replies"]["duplicated"] == 2


def test_reorder_releases_a_window_newest_first_or_shuffled(proxy: FaultProxy) -> None:
    with dealer(proxy.endpoint) as d:
        proxy.reorder("replies", 4)
        for i in range(5):
            ask(d, b"%d" % i)
        assert answers(d, 5) == [b"3", b"2", b"1", b"0", b"4"]
        proxy.reorder("requests", 6, shuffle=True)
        for i in range(6):
            ask(d, b"%d" % i)
        got = answers(d, 6)
        assert sorted(got) == [b"%d" % i for i in range(6)] and got != sorted(got)
    assert proxy.stats["replies"]["reordered"] == 4 and proxy.stats["requests"]["reordered"] == 6


def test_reorder_window_not_filled_is_released_after_hold() -> None:
    with echo_server() as ep, FaultProxy(ep, hold=0.2) as p, dealer(p.endpoint) as d:
        p.reorder("replies", 10)
        ask(d, b"a")
        ask(d, b"b")
        assert answers(d, 2) == [b"b", b"a"]


def test_clear_cancels_rules_and_releases_what_they_hold(proxy: FaultProxy) -> None:
    with dealer(proxy.endpoint) as d:
        proxy.reorder("replies", 5)
        proxy.drop("requests", count=None, match=lambda f: f[-1] == b"never")
        ask(d, b"held")
        proxy.wait_for(lambda s: s["replies"]["received"] == 1)
        assert len(proxy.rules) == 2
        proxy.clear()
        assert answer(d) == b"held"
        assert proxy.rules == []
        ask(d, b"never")
        assert answer(d) == b"never"


def test_bad_arguments_are_refused(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="direction"):
        proxy.drop("sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probability"):
        proxy.drop("requests", probability=1.5)
    with pytest.raises(ValueError, match="count"):
        proxy.drop("requests", count=0)
    with pytest.raises(ValueError, match="count >= 2"):
        proxy.reorder("replies", 1)
    with pytest.raises(ValueError, match="mode"):
        proxy.cut("gently")  # type: ignore[arg-type]


# -- the link --------------------------------------------------------------------------------------


@contextlib.contextmanager
def monitored_dealer(endpoint: str) -> Iterator[tuple[zmq.Socket, Callable[[int, float], bool]]]:
    """A DEALER whose monitor is attached before it connects (so no event is missed), and
    ``wait(event, timeout)``: True once that connection event is seen."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger, sock.rcvtimeo = 0, 2000
    mon = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)

    def wait(event: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if mon.poll(int(left * 1000) + 1) and recv_monitor_message(mon)["event"] == event:
                return True
        return False

    sock.connect(endpoint)
    try:
        yield sock, wait
    finally:
        sock.disable_monitor()
        mon.close(0)
        sock.close(0)


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_cut_disconnects_clients_and_restore_rebinds_the_same_endpoint(
    transport: str, tmp_path: Path
) -> None:
    front = "tcp://127.0.0.1:*" if transport == "tcp" else ipc_endpoint(tmp_path)
    with echo_server() as ep, FaultProxy(ep, front) as p, monitored_dealer(p.endpoint) as (d, wait):
        assert wait(zmq.EVENT_HANDSHAKE_SUCCEEDED, 5)
        endpoint = p.endpoint
        p.cut()
        assert p.is_cut
        assert wait(zmq.EVENT_DISCONNECTED, 5), "the client never saw its connection go"
        ask(d, b"while cut")  # DEALER queues it for when a connection comes back
        p.restore()
        assert p.endpoint == endpoint and not p.is_cut
        assert wait(zmq.EVENT_HANDSHAKE_SUCCEEDED, 5)
        ask(d, b"after")
        assert answers(d, 2) == [b"while cut", b"after"]
        assert p.stats["cuts"] == 1 and p.stats["restores"] == 1


def test_blackhole_cut_keeps_connections_and_drops_everything_both_ways(proxy: FaultProxy) -> None:
    with monitored_dealer(proxy.endpoint) as (d, wait):
        assert wait(zmq.EVENT_HANDSHAKE_SUCCEEDED, 5)
        proxy.delay("replies", 5.0)
        ask(d, b"held then lost")
        proxy.wait_for(lambda s: s["replies"]["delayed"] == 1)
        proxy.cut("blackhole")
        ask(d, b"lost")
        proxy.wait_for(lambda s: s["requests"]["cut_dropped"] == 1)
        assert not wait(zmq.EVENT_DISCONNECTED, 0.2)  # still connected: only silence
        proxy.restore()
        ask(d, b"back")
        assert answer(d) == b"back"
        assert nothing_arrives(d, 100)
    stats = proxy.stats
    assert stats["requests"]["cut_dropped"] == 1 and stats["replies"]["cut_dropped"] == 1


def test_async_client_sees_a_cut_as_connection_lost() -> None:
    svc = zcall.Service("t")

    @svc.method
    def nap(s: float) -> float:
        time.sleep(s)
        return s

    with (
        zcall.testing.running_server(svc, kind="async", grace=0.1) as srv,
        FaultProxy(srv.endpoint) as p,
        zcall.AsyncClient(p.endpoint, timeout=10) as c,
    ):
        assert c.call_async("nap", 0).result(5) == 0
        fut = c.call_async("nap", 10.0)
        p.wait_for(lambda s: s["requests"]["forwarded"] >= 2)
        t0 = time.monotonic()
        p.cut()
        with pytest.raises(zcall.ConnectionLost):
            fut.result(8)
        assert time.monotonic() - t0 < 5.0  # promptly, not when the 10 s call would have ended
        p.restore()
        assert c.call_async("nap", 0).result(5) == 0


# -- commands, lifecycle ---------------------------------------------------------------------------


def test_commands_from_many_threads_while_traffic_flows(proxy: FaultProxy) -> None:
    n_threads, per_thread = 8, 25
    errors: list[BaseException] = []

    def commander() -> None:
        try:
            for _ in range(per_thread):
                proxy.duplicate("replies", count=1, match=lambda f: False)  # never fires: pure churn
                proxy.stats  # noqa: B018
        except BaseException as exc:
            errors.append(exc)

    with dealer(proxy.endpoint) as d:
        threads = [threading.Thread(target=commander) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for i in range(200):
            ask(d, b"%d" % i)
        got = answers(d, 200)
        for t in threads:
            t.join(10)
    assert errors == []
    assert got == [b"%d" % i for i in range(200)]
    assert len(proxy.rules) == n_threads * per_thread
    proxy.clear()
    assert proxy.rules == []


def test_close_uses_linger_zero_so_context_term_returns() -> None:
    ctx = zmq.Context()
    with echo_server() as ep:
        p = FaultProxy("tcp://127.0.0.1:1", context=ctx).start()  # backend never answers
        with dealer(p.endpoint) as d:
            for _ in range(10):
                ask(d, b"stuck in the backend queue")
            p.wait_for(lambda s: s["requests"]["forwarded"] == 10)
        p.close()
        p.close()  # idempotent
        t0 = time.monotonic()
        ctx.term()
        assert time.monotonic() - t0 < 5.0  # returns (a LINGER left unbounded would hang here)
        with pytest.raises(RuntimeError, match="not running"):
            p.drop("requests")
        assert ep  # the echo server was never needed


def test_bind_failure_is_raised_in_the_caller() -> None:
    with echo_server() as ep, FaultProxy(ep) as p:
        clash = FaultProxy(ep, p.endpoint)
        with pytest.raises(OSError, match="cannot bind"):
            clash.start()
    with pytest.raises(RuntimeError, match="not started"):
        FaultProxy(ep).endpoint  # noqa: B018


def test_wait_for_times_out_with_the_stats(proxy: FaultProxy) -> None:
    with pytest.raises(TimeoutError, match="received"):
        proxy.wait_for(lambda s: s["requests"]["received"] > 0, timeout=0.05)
