"""Streams below the faces: the flow-control state machine alone, then raw sockets against zcall's
servers (what a misbehaving caller gets) and zcall's clients against hand-made servers (what a
misbehaving or stream-less server gets), over tcp and ipc."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import zmq

import zcall
from zcall.engine.streams import Credit, PullAnswer, StreamViolation, Window
from zcall.protocol import wire
from zcall.protocol.raw import pack_raw
from zcall.protocol.status import StatusCode
from zcall.testing import running_server

pytestmark = pytest.mark.timeout(30)


# -- the state machine ------------------------------------------------------------------------------


def test_a_sender_spends_only_what_was_granted() -> None:
    c = Credit(3)
    assert c.take(5) == 3 and c.take() == 0 and c.sent == 3
    c.grant(2)
    assert c.take() == 1 and c.available == 1
    for bad in (0, -1, 2**32, 1.5, True, "3", None):
        with pytest.raises(StreamViolation):
            c.grant(bad)
    c.grant(2**32 - 1)
    c.grant(5)
    assert c.available == 2**32 - 1  # credit never adds up past the most one grant carries
    c.pulled(4)
    assert c.available == 4  # a pull sets the credit: what the last one left is void


def test_a_receiver_holds_at_most_its_window_and_grants_as_items_are_taken() -> None:
    w = Window(4)
    for _ in range(4):
        w.arrived()
    with pytest.raises(StreamViolation, match="beyond the credit"):
        w.arrived()  # a fifth item the sender had no credit for
    assert (w.taken(), w.taken()) == (0, 2)  # half the window free: grant it, in one message
    assert w.outstanding + w.held + w.freed == w.size
    w.arrived()
    w.arrived()
    with pytest.raises(StreamViolation):
        w.arrived()
    one = Window(1)
    one.arrived()
    assert one.taken() == 1  # a window of one grants every item
    with pytest.raises(ValueError, match="window"):
        Window(0)


def test_a_puller_pulls_again_only_when_the_last_answer_is_taken() -> None:
    w = Window(3, pull=True)
    assert w.next_pull() == 0  # the STREAM was the first pull: nothing came yet
    w.arrived()
    w.arrived()
    assert w.next_pull() == 0  # items held
    w.taken()
    w.taken()
    assert w.next_pull() == 3 and w.next_pull() == 0  # once, and not again until the next answer
    for _ in range(3):
        w.arrived()
    with pytest.raises(StreamViolation):
        w.arrived()


def test_a_pull_answer_leaves_when_full_or_after_lingering_with_an_item() -> None:
    a = PullAnswer(2, 100)
    assert not a.full() and not a.lingered(a.started + 1.0)  # nothing to send yet
    a.add(b"x" * 10)
    assert not a.lingered(a.started) and a.lingered(a.started + 1.0)
    a.add(b"y")
    assert a.full()
    big = PullAnswer(10, 8)
    big.add(b"123456789")
    assert big.full()  # its bytes reached the limit


# -- wire -------------------------------------------------------------------------------------------


def test_stream_messages_round_trip() -> None:
    for msg in (
        wire.Stream(7, "up", ["a", None], {"k": 1}, 500, {"t": "x"}, 4, 1, False),
        wire.Stream(8, "up", [], {"chunks": None}, None, None, 0, "chunks"),
        wire.Stream(9, "tail", [1], {}, None, None, 16, None, True),
        wire.Item(7, {"n": 1}),
        wire.Credit(7, 3),
        wire.End(7),
    ):
        assert wire.decode(wire.encode(msg)) == msg


# -- raw callers against zcall's servers ------------------------------------------------------------

svc = zcall.Service("raw")
closed: dict[str, threading.Event] = {}
started: dict[str, threading.Event] = {}
made: dict[str, int] = {}


def _closed(tag: str) -> threading.Event:
    return closed.setdefault(tag, threading.Event())


def _started(tag: str) -> threading.Event:
    """Set when the handler has begun: a test that means to stop a running handler waits for it."""
    return started.setdefault(tag, threading.Event())


@svc.method
def forever(tag: str) -> Iterator[int]:
    i = 0
    try:
        while True:
            made[tag] = made.get(tag, 0) + 1
            yield i
            i += 1
    finally:
        _closed(tag).set()


@svc.method
async def collect(items: AsyncIterator[Any], tag: str = "") -> list[Any]:
    _started(tag).set()
    try:
        return [x async for x in items]
    finally:
        _closed(tag).set()


@svc.method
async def hold(items: AsyncIterator[Any], tag: str = "") -> None:
    """Takes the caller's items and never reads them: its input fills up to the credit granted."""
    _started(tag).set()
    try:
        await asyncio.sleep(30)
    finally:
        _closed(tag).set()


@svc.method
def total(numbers: Iterator[int], tag: str = "") -> int:
    try:
        return sum(numbers)
    finally:
        _closed(tag).set()


class Dealer:
    """A raw DEALER on a server: ``send`` a value or a body, ``recv`` the next message (empty bodies, a
    server's probes, are skipped), ``quiet`` says nothing came."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, value: Any) -> None:
        self.sock.send_multipart([b"", value if isinstance(value, bytes) else pack_raw(value)])

    def recv(self, timeout: float = 5.0) -> wire.Message:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0 and self.sock.poll(int(left * 1000)), "no answer"
            body = self.sock.recv_multipart()[-1]
            if body:
                return wire.decode(body)

    def drain(self, seconds: float) -> list[wire.Message]:
        """Every message that comes within ``seconds``."""
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.sock.poll(int(left * 1000)):
                body = self.sock.recv_multipart()[-1]
                if body:
                    out.append(wire.decode(body))
        return out

    def quiet(self, seconds: float = 0.3) -> bool:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.sock.poll(int(left * 1000)) and self.sock.recv_multipart()[-1]:
                return False
        return True

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
def router(bind_endpoint: str) -> Iterator[zcall.AsyncServer]:
    with running_server(svc, bind_endpoint, kind="async", stream_window=4) as server:
        yield server


@pytest.fixture
def raw(router: zcall.AsyncServer) -> Iterator[Dealer]:
    d = Dealer(router.endpoint)
    yield d
    d.close()


def _tag(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"


def test_the_server_sends_no_item_beyond_the_credit_it_was_given(raw: Dealer) -> None:
    tag = _tag("credit")
    raw.send(wire.stream_frame(1, "forever", [tag], {}, 5))
    got = [raw.recv() for _ in range(5)]
    assert [(type(m), m.item) for m in got] == [(wire.Item, i) for i in range(5)]  # type: ignore[union-attr]
    assert raw.quiet(0.3)  # no sixth item, however long we wait
    assert made[tag] <= 5  # and the generator was not advanced past its credit
    raw.send(wire.credit_frame(1, 3))
    assert [raw.recv().item for _ in range(3)] == [5, 6, 7]  # type: ignore[union-attr]
    assert raw.quiet(0.2)
    raw.send(wire.cancel_frame(1))
    assert _closed(tag).wait(5)


def test_items_beyond_the_servers_credit_end_the_stream_with_protocol_error(
    raw: Dealer, router: zcall.AsyncServer
) -> None:
    tag = _tag("flood")
    raw.send(wire.stream_frame(2, "hold", [None, tag], {}, 0, 0))
    credit = raw.recv()
    assert type(credit) is wire.Credit and credit.n == 4  # the server's window
    assert _started(tag).wait(5)  # running, so that it is stopped (one stopped before it ran: below)
    for i in range(4 + 3):  # three more than granted: a misbehaving caller
        raw.send(wire.item_frame(2, i))
    err = raw.recv()
    assert type(err) is wire.ErrorReply and err.id == 2
    assert err.error.code == StatusCode.PROTOCOL_ERROR and "beyond the credit" in err.error.message
    assert _closed(tag).wait(5)  # the handler was stopped
    assert router.statistics()["stream_violations"] >= 1
    raw.send(wire.call_frame(3, "zcall.ping", [], {}))  # and the server goes on
    assert type(raw.recv()) is wire.Reply


@pytest.mark.parametrize(
    "bad",
    [
        [1, 12, 4, 0],  # CREDIT of 0
        [1, 12, 4, -2],  # negative
        [1, 12, 4, "lots"],  # not an integer
        [1, 11, 4],  # an ITEM with no item
    ],
)
def test_a_malformed_message_of_an_open_stream_ends_it_with_protocol_error(
    raw: Dealer, bad: list[Any]
) -> None:
    tag = _tag("bad")
    raw.send(wire.stream_frame(4, "forever", [tag], {}, 1))
    assert raw.recv().item == 0  # type: ignore[union-attr]
    raw.send(bad)
    err = raw.recv()
    assert type(err) is wire.ErrorReply and err.id == 4 and err.error.code == StatusCode.PROTOCOL_ERROR
    assert _closed(tag).wait(5)
    assert raw.quiet(0.2)  # one answer, and nothing after it


def test_the_callers_own_stream_rules_item_after_end_and_second_end(raw: Dealer) -> None:
    for after_end in (wire.item_frame(5, 1), wire.end_frame(5)):
        tag = _tag("end")
        raw.send(wire.stream_frame(5, "collect", [None, tag], {}, 0, 0))
        assert type(raw.recv()) is wire.Credit
        assert _started(tag).wait(5)  # its finally: runs however the stream ends
        raw.send(wire.end_frame(5))
        raw.send(after_end)
        (end,) = raw.drain(0.4)  # one end, never two, never a hang:
        if type(end) is wire.ErrorReply:  # the late message came while the stream was open: refused
            assert end.error.code == StatusCode.PROTOCOL_ERROR and "END" in end.error.message
        else:  # or the handler had already returned [] (REPLY), and it was dropped
            assert type(end) is wire.Reply and end.result == []
        assert _closed(tag).wait(5)


@svc.method
async def nap(tag: str) -> None:
    _started(tag).set()
    await asyncio.sleep(30)


def test_handlers_stopped_before_their_first_step_never_run_and_leave_no_coroutine_behind(
    raw: Dealer, router: zcall.AsyncServer
) -> None:
    """A CALL and its CANCEL in one BATCH, a STREAM and items beyond its credit in another: each task is
    cancelled before it starts, so the handler never runs; its coroutine is closed, not left for the
    garbage collector to warn about ("never awaited", an error under this suite's warning filter)."""
    caught: list[str] = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: caught.append(repr(u.exc_value))
    try:
        call_tag, stream_tag = _tag("nap"), _tag("hold-early")
        raw.send(wire.batch_frame([wire.call_frame(7, "nap", [call_tag], {}), wire.cancel_frame(7)]))
        early = [wire.stream_frame(8, "hold", [None, stream_tag], {}, 0, 0)]
        raw.send(wire.batch_frame(early + [wire.item_frame(8, i) for i in range(4 + 3)]))
        got = raw.drain(0.5)
        answers = [wire.from_array(m, in_batch=True) for g in got if type(g) is wire.Batch for m in g.items]
        answers += [g for g in got if type(g) is not wire.Batch]
        ends = [m for m in answers if type(m) is wire.ErrorReply]
        assert [(m.id, m.error.code) for m in ends] == [(8, StatusCode.PROTOCOL_ERROR)], answers
        raw.send(wire.call_frame(9, "zcall.ping", [], {}))
        assert type(raw.recv()) is wire.Reply  # the server goes on
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert not _started(call_tag).is_set() and not _started(stream_tag).is_set()
    assert caught == []


def test_stream_messages_of_unknown_streams_are_dropped_and_counted_nowhere(
    raw: Dealer, router: zcall.AsyncServer
) -> None:
    before = router.statistics()
    for msg in (
        wire.credit_frame(99, 5),
        wire.item_frame(99, "x"),
        wire.end_frame(99),
        wire.cancel_frame(99),
    ):
        raw.send(msg)
    assert raw.quiet(0.3)
    assert router.statistics()["bad_messages"] == before["bad_messages"]  # a late message is normal
    raw.send(wire.call_frame(3, "zcall.ping", [], {}))
    assert type(raw.recv()) is wire.Reply


def test_another_connection_cannot_touch_a_stream_by_its_id(raw: Dealer, router: zcall.AsyncServer) -> None:
    tag = _tag("other")
    raw.send(wire.stream_frame(6, "forever", [tag], {}, 2))
    assert [raw.recv().item for _ in range(2)] == [0, 1]  # type: ignore[union-attr]
    intruder = Dealer(router.endpoint)
    try:
        intruder.send(wire.cancel_frame(6))
        intruder.send(wire.credit_frame(6, 100))
        assert intruder.quiet(0.2)
    finally:
        intruder.close()
    assert raw.quiet(0.2) and not _closed(tag).is_set()  # neither stopped nor fed by the other
    raw.send(wire.credit_frame(6, 1))
    assert raw.recv().item == 2  # type: ignore[union-attr]
    raw.send(wire.cancel_frame(6))
    assert _closed(tag).wait(5)


def test_stream_messages_ride_in_a_batch(raw: Dealer) -> None:
    # a BATCH is taken item by item as if each came alone: a STREAM, then a PING
    raw.send(wire.batch_frame([wire.stream_frame(7, "total", [None], {}, 0, 0), wire.ping_frame(8)]))
    got = [raw.recv(), raw.recv()]
    assert {type(m) for m in got} == {wire.Credit, wire.Pong}
    raw.send(wire.batch_frame([wire.item_frame(7, 20), wire.item_frame(7, 22), wire.end_frame(7)]))
    reply = raw.recv()
    while type(reply) is wire.Credit:  # the handler took items: credit for more
        reply = raw.recv()
    assert type(reply) is wire.Reply and reply.result == 42


def test_a_second_pull_before_the_first_is_answered_is_refused(raw: Dealer) -> None:
    tag = _tag("pulls")
    raw.send(wire.stream_frame(9, "forever", [tag], {}, 2, None, True))
    answer = raw.recv()
    assert type(answer) is wire.Batch and len(answer.items) == 2  # one pull, one answer
    # two pulls in one BATCH, so the server reads the second before it can have answered the first
    raw.send(wire.batch_frame([wire.credit_frame(9, 2), wire.credit_frame(9, 2)]))  # a DEALER could
    got = raw.drain(0.5)  # the refusal ends the stream (with the items the first pull had, if any)
    assert len(got) == 1, got
    (body,) = got
    end = wire.from_array(body.items[-1], in_batch=True) if type(body) is wire.Batch else body
    assert type(end) is wire.ErrorReply and end.error.code == StatusCode.PROTOCOL_ERROR
    assert "unanswered" in end.error.message
    assert _closed(tag).wait(5)


def test_a_caller_that_vanishes_mid_stream_is_found_by_the_servers_probe(router: zcall.AsyncServer) -> None:
    tag = _tag("gone")
    d = Dealer(router.endpoint)
    d.send(wire.stream_frame(10, "forever", [tag], {}, 2))
    assert [d.recv().item for _ in range(2)] == [0, 1]  # type: ignore[union-attr]
    d.close()  # gone, without a CANCEL: the stream waits for credit that will never come
    assert _closed(tag).wait(5), "the server kept the stream of a caller that is gone"
    assert router.statistics()["streams_lost"] >= 1


def test_a_rep_style_server_answers_every_stream_request(bind_endpoint: str) -> None:
    with running_server(svc, bind_endpoint, kind="sync") as server:
        d = Dealer(server.endpoint)
        try:
            d.send(wire.stream_frame(1, "forever", ["x"], {}, 4))  # pushed: it answers pulls only
            err = d.recv()
            assert type(err) is wire.ErrorReply and err.error.code == StatusCode.PROTOCOL_ERROR
            assert err.error.data == {"pull": True}
            d.send(wire.stream_frame(2, "total", [None], {}, 1, 0, False))
            assert "takes no items" in d.recv().error.message  # type: ignore[union-attr]
            for msg in (wire.credit_frame(99, 1), wire.item_frame(99, 1), wire.end_frame(99)):
                d.send(msg)
                answer = d.recv()
                assert type(answer) is wire.ErrorReply and answer.id == 99  # REP: every request answered
            tag = _tag("rep")
            d.send(wire.stream_frame(3, "forever", [tag], {}, 3, None, True))
            answer = d.recv()
            assert type(answer) is wire.Batch and [m[3] for m in answer.items] == [0, 1, 2]
            d.send(wire.cancel_frame(3))
            assert _closed(tag).wait(5)
        finally:
            d.close()


# -- zcall's clients against hand-made servers ------------------------------------------------------


class HandMadeServer:
    """A ROUTER on a thread answering every STREAM with ``answer(msg)``: a list of bodies to send."""

    def __init__(self, endpoint: str, answer: Any) -> None:
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.answer = answer
        self.seen: list[wire.Message] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            frames = self.sock.recv_multipart()
            try:
                msg = wire.decode(frames[-1])
            except zcall.ProtocolError:
                continue
            items = (
                [wire.from_array(m, in_batch=True) for m in msg.items] if type(msg) is wire.Batch else [msg]
            )
            for m in items:
                self.seen.append(m)
                for body in self.answer(m):
                    self.sock.send_multipart([*frames[:-1], body])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close(linger=0)


def _no_streams(m: wire.Message) -> list[bytes]:
    """What a server from before streams answers: unknown kind, PROTOCOL_ERROR with the id."""
    if type(m) is wire.Stream:
        record = wire.ErrorRecord.refusal(StatusCode.PROTOCOL_ERROR, "unknown message kind 10")
        return [wire.error_frame(m.id, record)]
    return []


def test_a_server_without_streams_gets_a_clear_error_not_a_hang(bind_endpoint: str) -> None:
    server = HandMadeServer(bind_endpoint, _no_streams)
    try:
        for open_stream in (
            lambda c: list(c.stream("tail")),
            lambda c: list(c.stream_blocking("tail")),
        ):
            client: Any = zcall.SyncClient(server.endpoint, timeout=5)
            if open_stream.__code__.co_names[-1] == "stream_blocking":
                client = zcall.AsyncClient(server.endpoint, timeout=5)
            with client, pytest.raises(zcall.StreamsUnsupported, match="cannot open stream 'tail'") as info:
                open_stream(client)
            assert "unknown message kind 10" in info.value.message

        async def asyncio_face() -> None:
            async with zcall.AsyncClient(server.endpoint, timeout=5) as ac:
                with pytest.raises(zcall.StreamsUnsupported):
                    [x async for x in ac.stream("tail")]

        asyncio.run(asyncio_face())
    finally:
        server.close()


def _flooding(m: wire.Message) -> list[bytes]:
    """A server that ignores the credit: twice the items it was granted."""
    if type(m) is wire.Stream:
        return [wire.item_frame(m.id, i) for i in range(2 * m.credit)]
    return []


def test_a_server_that_ignores_the_credit_fails_the_stream_and_is_cancelled(bind_endpoint: str) -> None:
    server = HandMadeServer(bind_endpoint, _flooding)
    try:
        with zcall.AsyncClient(server.endpoint, timeout=5) as c:
            got: list[Any] = []
            held: concurrent.futures.Future[None] = concurrent.futures.Future()  # never taken: no credit back

            def on_item(item: Any) -> concurrent.futures.Future[None]:
                got.append(item)
                return held

            fut = c.options(window=3).stream_async("tail", on_item=on_item)
            with pytest.raises(zcall.ProtocolError, match="broke the stream rules"):
                fut.result(5)
            assert got == [0, 1, 2]  # what the credit allowed, then the error: nothing beyond is kept
            deadline = time.monotonic() + 5
            while not any(type(m) is wire.Cancel for m in server.seen):
                assert time.monotonic() < deadline, "the client did not CANCEL the stream"
                time.sleep(0.01)
            assert c.statistics()["bad_replies"] >= 1
    finally:
        server.close()


def _garbled(m: wire.Message) -> list[bytes]:
    if type(m) is wire.Stream:
        return [wire.item_frame(m.id, 1), pack_raw([1, 11, m.id])]  # an ITEM without its item
    return []


def test_a_garbled_item_fails_the_stream_with_protocol_error(bind_endpoint: str) -> None:
    server = HandMadeServer(bind_endpoint, _garbled)
    try:
        with zcall.AsyncClient(server.endpoint, timeout=5) as c:
            s = c.stream_blocking("tail")
            assert next(s) == 1
            with pytest.raises(zcall.ProtocolError):
                next(s)
    finally:
        server.close()
