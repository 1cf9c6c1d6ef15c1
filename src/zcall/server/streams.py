"""The ROUTER server's streams: run a streaming handler where the server runs handlers, move its items
under the caller's credit, take the caller's items, and end every stream exactly once.

Where a stream's handler runs is the server's usual choice: coroutines and async generators as a task
on the loop; a plain generator on the loop when ``inline=True`` (a burst of items per loop pass), else in
the server's thread pool, one job at a time, each making at most the credit it reserved, so a pool
thread is held only while the caller has room, and items cross to the loop in coalesced hand-offs. A
plain handler that takes the caller's items always runs in the pool (it blocks on them).

Flow control is ``engine.streams``: a handler is not advanced past its credit, and the caller's items
are refused past the credit this server granted. Push mode (a DEALER caller) sends each item as it is
made (coalesced into BATCHes per loop pass when the caller said it takes them, ``batch``, and small
items only: a large one goes alone, and zero-copy); pull mode (a REQ caller) answers each pull with one
body (``PullAnswer``). A stream ends once, at
the first of: the handler's end (REPLY, its return value) or failure (its ERROR, after the items already
sent); the caller's CANCEL; the deadline (DEADLINE_EXCEEDED); a rule the caller broke (PROTOCOL_ERROR);
the caller's connection gone (seen when a send fails, or by a probe while the stream waits for the
caller: ROUTER_MANDATORY reports a vanished peer); or the end of a graceful stop's grace period
(UNAVAILABLE, sent by the server's ``aclose``, to which a stream is one more running call). Ending a
stream stops its handler at the next yield (a generator's ``close()``, a task's cancel): its
``finally:`` runs.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import zmq

from ..engine.streams import DEFAULT_WINDOW, PULL_LINGER, Credit, PullAnswer, StreamViolation, Tally, Window
from ..engine.workers import Job, Workers
from ..errors import Rejected
from ..protocol.status import StatusCode
from ..protocol.wire import ACK, MAX_BATCH_ITEMS, End, Item, batch_frame, credit_frame
from ..protocol.wire import Credit as CreditMessage
from ..service.context import CallContext, _current
from ..service.dispatch import StreamFault, is_stream_result
from ..service.invoke import start_task
from ..service.streams import AsyncInput, SyncInput, bind_input, encode_item, input_cancelled, runs_on_loop

if TYPE_CHECKING:
    from .asynchronous import AsyncServer

__all__ = ["PULL_IDLE", "STREAM_MESSAGES", "RouterStreams"]

log = logging.getLogger("zcall.server")

STREAM_MESSAGES = (Item, CreditMessage, End, StreamFault)
"""What the dispatcher hands a ROUTER server for its open streams."""

PULL_IDLE = 60.0
"""Seconds a pulled stream (a REQ caller) may go without a pull before the server closes it: a REQ
socket cannot be probed, so a caller that died is told from a slow one only by time."""

_BURST = 64  # items an inline generator makes per loop pass before letting other work run
_RETRY_S = 0.005  # first wait before sending again to a caller whose queue was full (doubles to 0.1 s)
_NOBLOCK = int(zmq.NOBLOCK)
_ALONE_ABOVE = 64 * 1024  # frames this large leave alone, zero-copy (joining them into a BATCH copies)
_monotonic = time.monotonic
_UNSET: Any = object()


class _Stream:
    """One open stream: its call, where its handler runs, the credit both ways, what waits to go out."""

    __slots__ = (
        "owner",
        "call",
        "key",
        "envelope",
        "pull",
        "batch",
        "outq",
        "outq_bytes",
        "where",
        "credit",
        "input",
        "gen",
        "task",
        "job",
        "burst",
        "cancelled",
        "ended",
        "answer",
        "carry",
        "final",
        "stalled",
        "retry_s",
        "retry_handle",
        "outbox",
        "woken",
        "waiting",
        "tally",
        "stats",
        "deadline_handle",
        "linger_handle",
        "last_seen",
    )

    def __init__(self, owner: RouterStreams, call: CallContext, envelope: list[bytes]) -> None:
        req = call._stream
        self.owner = owner
        self.call = call
        self.key = (call.routing_id or b"", call.id)
        self.envelope = envelope
        self.pull: bool = req.pull
        self.batch: bool = req.batch and not req.pull  # the caller takes BATCHes: coalesce small frames
        self.outq: list[bytes] = []  # frames coalescing in this loop pass (batch)
        self.outq_bytes = 0
        self.where = "pool"  # where the handler makes items: "task", "inline" or "pool"
        self.credit = Credit(0 if req.pull else req.credit)
        self.input: SyncInput | AsyncInput | None = None
        self.gen: Any = None  # the plain generator, once the handler returned it
        self.task: asyncio.Task[Any] | None = None
        self.job: Job | None = None  # the pool job making items now
        self.burst = False  # an inline burst is scheduled
        self.cancelled = False
        self.ended = False
        self.answer: PullAnswer | None = None  # the pull being answered (pull mode)
        self.carry: collections.deque[bytes] = collections.deque()  # items made after their pull left
        self.final: bytes | None = None  # a pulled stream's end, waiting for the next pull
        self.stalled: collections.deque[bytes] = collections.deque()  # met a full queue: sent again later
        self.retry_s = _RETRY_S
        self.retry_handle: asyncio.TimerHandle | None = None
        self.outbox: collections.deque[bytes] = collections.deque()  # items a pool job made
        self.woken = False  # a drain of the outbox is scheduled
        self.waiting: asyncio.Future[None] | None = None  # a task waiting for credit
        self.stats: Any = call._entry.stats.streams() if call._entry is not None else None
        self.tally = Tally(self.stats)
        self.deadline_handle: asyncio.TimerHandle | None = None
        self.linger_handle: asyncio.TimerHandle | None = None
        self.last_seen = _monotonic()

    def cancel(self) -> bool:
        """``AsyncServer.aclose`` at the end of the grace period: stop (it then answers UNAVAILABLE)."""
        self.owner._grace_ended(self)
        return True

    @property
    def waits_for_caller(self) -> bool:
        """No credit left, or a handler waiting on input that has not ended: the caller must act next."""
        return not self.credit.available or (self.input is not None and not self.input.ended)


class RouterStreams:
    """Every open stream of one ``AsyncServer``, by (routing id, stream id)."""

    def __init__(self, server: AsyncServer, window: int = DEFAULT_WINDOW) -> None:
        self._srv = server
        self.window = window
        """The credit this server grants a caller's items (``AsyncServer(stream_window=...)``)."""
        self.open: dict[tuple[bytes, int], _Stream] = {}
        self._probe: asyncio.TimerHandle | None = None

    # -- what arrives -------------------------------------------------------------------------------

    def start(self, call: CallContext, envelope: list[bytes]) -> None:
        """An admitted STREAM: grant the caller's input its credit, arm the deadline, run the handler."""
        srv = self._srv
        loop = srv._loop
        entry = call._entry
        assert loop is not None and entry is not None
        req = call._stream
        st = _Stream(self, call, envelope)
        if st.stats is not None:
            st.stats.started()
        self.open[st.key] = st
        srv._running[st.key] = (call, st)
        if st.pull:
            st.answer = PullAnswer(req.credit, srv._codec.max_message_size // 2)
            st.credit.pulled(req.credit)
        if call.deadline is not None:
            delay = max(0.0, call.deadline - _monotonic())
            st.deadline_handle = loop.call_at(loop.time() + delay, self._expired, st)
        on_loop = runs_on_loop(call)
        if req.input is not None:
            window = Window(self.window)
            if on_loop:
                st.input = AsyncInput(window, lambda n: self._grant(st, n), loop)
            else:
                st.input = SyncInput(window, lambda n: self._grant_threadsafe(st, n))
            bind_input(call, st.input)
            self._emit(st, credit_frame(call.id, self.window))
        if on_loop:
            self._run_task(st)
        elif entry.inline and st.input is None:
            st.where = "inline"
            self._inline_start(st)
        else:
            self._submit(st)
        self._arm_probe()

    def on_message(self, envelope: list[bytes], ident: bytes, msg: Any) -> None:
        """An ITEM, CREDIT or END from a caller, or a malformed one (``StreamFault``)."""
        t = type(msg)
        st = self.open.get((ident, msg.id))
        if t is StreamFault:
            if st is not None and not st.ended:
                self._srv._dispatch.counters["stream_violations"] += 1
                self._end(st, final=msg.frame)
            else:
                self._srv._send(envelope, msg.frame)
            return
        if st is None:
            return  # a late message for a stream that has ended: normal, and harmless
        st.last_seen = _monotonic()
        if st.ended:
            if t is CreditMessage and st.pull and st.final is not None:
                self._answer_pull(st, envelope, msg.n)  # the end waited for this pull
            return
        try:
            if t is Item:
                if st.input is None:
                    raise StreamViolation("an item for a stream that takes no input")
                st.input.deliver(msg.item)
                st.tally.received(msg.size)
                self._srv._dispatch.counters["stream_items_received"] += 1
            elif t is CreditMessage:
                if st.pull:
                    self._answer_pull(st, envelope, msg.n)
                else:
                    st.credit.grant(msg.n)
                    self._resume(st)
            elif t is End:
                if st.input is None:
                    raise StreamViolation("an END for a stream that takes no input")
                st.input.finish()
        except StreamViolation as exc:
            self._violation(st, str(exc))

    def on_cancel(self, ident: bytes, rid: int, envelope: list[bytes]) -> bool:
        """A CANCEL: True when it named one of this server's streams (ended; ACKed in pull mode)."""
        st = self.open.get((ident, rid))
        if st is None:
            return False
        if not st.ended:
            self._end(st, error=input_cancelled("the caller cancelled the stream"), quiet=True)
        self._forget(st, now=True)
        if st.pull:
            self._srv._send(envelope, ACK)  # every request of a pulled stream is answered
        return True

    # -- where the handler runs ---------------------------------------------------------------------

    def _run_task(self, st: _Stream, made: Any = _UNSET) -> None:
        st.where = "task"
        st.task = start_task(self._srv._loop, self._drive(st, made), st.call)  # type: ignore[arg-type]
        st.task.add_done_callback(lambda t: self._task_done(st, t))

    async def _drive(self, st: _Stream, result: Any) -> Any:
        """A task: call a coroutine or async generator handler (unless ``result`` is what a handler
        already returned), make its items under credit, then return its result."""
        call = st.call
        entry = call._entry
        assert entry is not None
        if result is _UNSET:
            result = entry.fn(*call._args, **call._kwargs)
            if not entry.is_asyncgen and inspect.iscoroutine(result):
                result = await result
        if isinstance(result, AsyncIterator):
            codec = self._srv._codec
            try:
                while True:
                    while not st.credit.take():
                        st.waiting = asyncio.get_running_loop().create_future()
                        await st.waiting
                    item = await result.__anext__()
                    self._made(st, encode_item(call.id, item, codec))
            except StopAsyncIteration:
                return None
            finally:
                aclose = getattr(result, "aclose", None)
                if aclose is not None:
                    await aclose()
        if isinstance(result, Iterator):
            raise _Handover(result)  # a plain iterator from a coroutine: made on the loop, as inline
        return result

    def _task_done(self, st: _Stream, task: asyncio.Task[Any]) -> None:
        st.task = None
        if st.ended:
            return
        if task.cancelled():
            self._end(st, error=asyncio.CancelledError())
            return
        exc = task.exception()
        if isinstance(exc, _Handover):
            st.where, st.gen = "inline", exc.iterator
            self._burst(st)
            return
        self._end(st, result=None if exc is not None else task.result(), error=exc)

    def _inline_start(self, st: _Stream) -> None:
        """A plain inline handler: called on the loop; a generator it returns makes items in bursts."""
        call = st.call
        token = _current.set(call)
        try:
            result = call._entry.fn(*call._args, **call._kwargs)  # type: ignore[union-attr]
        except BaseException as exc:
            self._end(st, error=exc)
            return
        finally:
            _current.reset(token)
        self._started(st, result)

    def _started(self, st: _Stream, result: Any) -> None:
        """A plain handler returned: its value ends the stream; its iterator starts making items."""
        if not is_stream_result(result):
            self._end(st, result=result)
        elif isinstance(result, AsyncIterator):
            self._run_task(st, result)
        else:
            st.gen = result
            if st.where == "inline":
                self._burst(st)
            else:
                self._submit(st)

    def _burst(self, st: _Stream) -> None:
        """Up to ``_BURST`` items of an inline generator, as credit allows; more in the next loop pass."""
        st.burst = False
        if st.ended:
            return
        n = st.credit.take(_BURST)
        if not n:
            return
        gen, call, codec = st.gen, st.call, self._srv._codec
        token = _current.set(call)
        try:
            for _ in range(n):
                try:
                    item = next(gen)
                except StopIteration as stop:
                    self._end(st, result=stop.value)
                    return
                self._made(st, encode_item(call.id, item, codec))
                if st.ended:
                    return
        except BaseException as exc:
            self._end(st, error=exc)
            return
        finally:
            _current.reset(token)
        self._srv._reader.check()  # type: ignore[union-attr]
        if st.credit.available:
            st.burst = True
            self._srv._loop.call_soon(self._burst, st)  # type: ignore[union-attr]

    def _pool(self) -> Workers:
        srv = self._srv
        if srv._pool is None:
            srv._pool = Workers(srv._loop, srv._workers, f"zcall-{srv.service.name}")  # type: ignore[arg-type]
        return srv._pool

    def _submit(self, st: _Stream) -> None:
        """One pool job: the first calls the plain handler; each later one makes at most the credit it
        reserved here, on the loop (the job never touches the credit)."""
        if st.job is not None or st.ended:
            return
        n = 0
        if st.gen is not None:
            n = st.credit.take(st.credit.available)
            if not n:
                return  # no credit: the caller's next CREDIT submits the next job
        st.job = Job(self._work, (st, n), self._job_done)
        try:
            self._pool().submit(st.job)
        except RuntimeError as exc:  # the pool is closed: the server is stopping
            st.job = None
            self._end(st, error=exc)

    def _work(self, arg: tuple[_Stream, int]) -> tuple[str, Any]:
        """On a pool thread: call the handler (first job) or make up to ``n`` items, each handed to the
        loop as it is made. Returns what happened: started / more / end / error / closed."""
        st, n = arg
        call = st.call
        token = _current.set(call)
        try:
            if st.gen is None:
                return "started", call._entry.fn(*call._args, **call._kwargs)  # type: ignore[union-attr]
            gen, codec = st.gen, self._srv._codec
            for _ in range(n):
                if st.cancelled:
                    break
                try:
                    item = next(gen)
                except StopIteration as stop:
                    return "end", stop.value
                self._handoff(st, encode_item(call.id, item, codec))
            if st.cancelled:
                st.gen = None
                gen.close()
                return "closed", None
            return "more", None
        except BaseException as exc:
            return "error", exc
        finally:
            _current.reset(token)

    def _handoff(self, st: _Stream, frame: bytes) -> None:
        """A pool thread made an item: queue it for the loop, waking the loop once for many."""
        st.outbox.append(frame)
        if not st.woken:
            st.woken = True
            try:
                self._srv._loop.call_soon_threadsafe(self._drain, st)  # type: ignore[union-attr]
            except RuntimeError:  # the loop is closed: nobody left to send to
                st.cancelled = True

    def _drain(self, st: _Stream) -> None:
        st.woken = False
        outbox = st.outbox
        while outbox and not st.ended:
            self._made(st, outbox.popleft())
        self._srv._reader.check()  # type: ignore[union-attr]

    def _job_done(self, job: Job, result: Any, error: BaseException | None) -> None:
        st: _Stream = job.arg[0]
        st.job = None
        self._drain(st)  # the items it made go before whatever comes next
        what, value = result if error is None else ("error", error)
        if what == "closed":
            return
        if st.ended:
            if st.gen is not None:
                self._close_gen(st)  # ended while the job ran: close what it left
            return
        if what == "started":
            self._started(st, value)
        elif what == "more":
            self._submit(st)
        elif what == "error":
            self._end(st, error=value)
        else:
            self._end(st, result=value)

    def _close_gen(self, st: _Stream) -> None:
        """Close the generator a stream left (its ``finally:`` runs): in the pool while it is open."""
        gen, st.gen = st.gen, None
        if gen is None:
            return
        pool = self._srv._pool
        if pool is not None and not self._srv._closing and st.where == "pool":
            try:
                pool.submit(Job(_close, (gen, st.call), _ignore))
                return
            except RuntimeError:
                pass
        _close((gen, st.call))

    # -- what goes out ------------------------------------------------------------------------------

    def _made(self, st: _Stream, frame: bytes) -> None:
        """One item the handler made (its credit was reserved before it was made)."""
        if st.ended:
            return
        self._srv._dispatch.counters["stream_items_sent"] += 1
        st.tally.sent(len(frame))
        if not st.pull:
            self._emit(st, frame)
            return
        answer = st.answer
        if answer is None:
            st.carry.append(frame)  # its pull was answered meanwhile: it opens the next answer
            return
        answer.add(frame)
        if answer.full():
            self._send_answer(st)
        elif len(answer.frames) == 1:
            st.linger_handle = self._srv._loop.call_later(PULL_LINGER, self._lingered, st)  # type: ignore[union-attr]

    def _lingered(self, st: _Stream) -> None:
        st.linger_handle = None
        if st.answer is not None and st.answer.frames and not st.ended:
            self._send_answer(st)

    def _send_answer(self, st: _Stream, final: bytes | None = None) -> None:
        """The pending pull's answer: its items, and the end once there is one, as one body."""
        answer, st.answer = st.answer, None
        if st.linger_handle is not None:
            st.linger_handle.cancel()
            st.linger_handle = None
        st.credit.pulled(0)  # what the pull allowed and did not use is void once it is answered
        if answer is None:
            return
        frames = answer.frames
        if final is not None:
            frames.append(final)
        if frames:
            self._emit(st, frames[0] if len(frames) == 1 else batch_frame(frames), st.call._reply_to)

    def _answer_pull(self, st: _Stream, envelope: list[bytes], n: int) -> None:
        """A pull (CREDIT on a pulled stream): answer it with up to ``n`` items, as they come."""
        if st.answer is not None:
            raise StreamViolation("a pull while the previous one is still unanswered")
        st.call._reply_to = envelope
        st.answer = answer = PullAnswer(n, self._srv._codec.max_message_size // 2)
        st.credit.pulled(n)
        carry = st.carry
        while carry and not answer.full():
            answer.add(carry.popleft())
            st.credit.take()
        if st.ended:  # only its end was waiting: the rest of what it made, then the end
            if carry:
                self._send_answer(st)
            else:
                final, st.final = st.final, None
                self._send_answer(st, final)
                self._forget(st, now=True)
            return
        if answer.full():
            self._send_answer(st)
            return
        if answer.frames:
            st.linger_handle = self._srv._loop.call_later(PULL_LINGER, self._lingered, st)  # type: ignore[union-attr]
        self._resume(st)

    def _resume(self, st: _Stream) -> None:
        """New credit: let the handler make more."""
        if st.ended:
            return
        w = st.waiting
        if w is not None:
            st.waiting = None
            if not w.done():
                w.set_result(None)
        elif st.where == "inline" and st.gen is not None:
            if not st.burst:
                st.burst = True
                self._srv._loop.call_soon(self._burst, st)  # type: ignore[union-attr]
        elif st.where == "pool" and st.gen is not None:
            self._submit(st)

    def _grant(self, st: _Stream, n: int) -> None:
        """The handler took items of its input: grant the caller that many more (on the loop)."""
        if not st.ended:
            self._emit(st, credit_frame(st.call.id, n))
            self._srv._reader.check()  # type: ignore[union-attr]

    def _grant_threadsafe(self, st: _Stream, n: int) -> None:
        try:
            self._srv._loop.call_soon_threadsafe(self._grant, st, n)  # type: ignore[union-attr]
        except RuntimeError:
            pass  # the loop is closed: the stream is over anyway

    def _emit(self, st: _Stream, frame: bytes, envelope: list[bytes] | None = None) -> None:
        """Send one frame of the stream, after any queued before it: small ones coalesce into one BATCH
        per loop pass when the caller takes BATCHes; a full queue parks it."""
        if st.stalled:
            if st.outq:
                self._flush_out(st)
            st.stalled.append(frame)
            return
        n = len(frame)
        if st.batch and n < _ALONE_ABOVE:
            q = st.outq
            q.append(frame)
            st.outq_bytes += n
            if len(q) == 1:
                self._srv._loop.call_soon(self._flush_out, st)  # type: ignore[union-attr]
            elif len(q) >= MAX_BATCH_ITEMS or st.outq_bytes >= self._srv._codec.max_message_size // 2:
                self._flush_out(st)
            return
        if st.outq:
            self._flush_out(st)
        self._send(st, frame, envelope)

    def _flush_out(self, st: _Stream) -> None:
        """The frames coalesced in this pass: one alone, several as one BATCH."""
        q = st.outq
        if not q:
            return
        st.outq, st.outq_bytes = [], 0
        self._send(st, q[0] if len(q) == 1 else batch_frame(q))

    def _send(self, st: _Stream, frame: bytes, envelope: list[bytes] | None = None) -> None:
        if st.stalled:
            st.stalled.append(frame)
            return
        srv = self._srv
        if srv._batch_out:
            srv._flush_to(st.key[0])  # answers to this caller queued for a batch leave first
        env = envelope or st.envelope
        if _send_now(srv, env, frame):
            srv._reader.check()  # type: ignore[union-attr]  # a send may swallow the readable edge
            return
        if srv._send_errno == zmq.EHOSTUNREACH:
            self._lost(st)
        elif srv._send_errno == zmq.EAGAIN and not st.pull:
            srv.counters["undeliverable"] -= 1  # not lost: it goes again shortly
            st.stalled.append(frame)
            st.retry_handle = srv._loop.call_later(st.retry_s, self._unstall, st)  # type: ignore[union-attr]

    def _unstall(self, st: _Stream) -> None:
        """Send what met a full queue, in order, backing off while the caller is still full."""
        st.retry_handle = None
        srv = self._srv
        while st.stalled:
            if not _send_now(srv, st.envelope, st.stalled[0]):
                if srv._send_errno == zmq.EHOSTUNREACH:
                    st.stalled.clear()
                    self._lost(st)
                    return
                srv.counters["undeliverable"] -= 1
                st.retry_s = min(st.retry_s * 2, 0.1)
                st.retry_handle = srv._loop.call_later(st.retry_s, self._unstall, st)  # type: ignore[union-attr]
                return
            st.stalled.popleft()
        st.retry_s = _RETRY_S
        srv._reader.check()  # type: ignore[union-attr]
        if st.ended:
            self._forget(st)

    # -- the end ------------------------------------------------------------------------------------

    def _halt(self, st: _Stream) -> None:
        """Stop the handler: cancel its task, close its generator (now, or when its job returns), and
        end its input so a handler blocked on it wakes."""
        st.cancelled = True
        if st.task is not None and not st.task.done():
            st.task.cancel()
        if st.gen is not None and st.job is None:
            self._close_gen(st)
        if st.input is not None and st.input._end is None:
            st.input.finish(input_cancelled())
        w, st.waiting = st.waiting, None
        if w is not None and not w.done():
            w.cancel()

    def _end(
        self,
        st: _Stream,
        result: Any = None,
        error: BaseException | None = None,
        *,
        final: bytes | None = None,
        quiet: bool = False,
    ) -> None:
        """End the stream once (``Dispatcher.finish``: metrics, interceptors): its REPLY or ERROR (or
        ``final``, an answer already made) goes after its items, unless ``quiet`` (nobody to tell). A
        pulled stream between pulls keeps its end for the next pull."""
        if st.ended:
            return
        st.ended = True
        if st.deadline_handle is not None:
            st.deadline_handle.cancel()
            st.deadline_handle = None
        if error is not None or final is not None:
            self._halt(st)
        elif st.input is not None and st.input._end is None:
            st.input.finish(input_cancelled("the handler returned before the caller's input ended"))
        frame, _ = self._srv._dispatch.finish(st.call, result, error)
        if final is not None:
            frame = final
        st.tally.flush()
        if st.stats is not None:
            st.stats.ended()
        if frame is not None and not quiet:
            if not st.pull:
                self._emit(st, frame)
                self._flush_out(st)  # the end leaves now, after the items coalesced before it
            elif st.answer is not None and not st.carry:
                self._send_answer(st, frame)
            else:
                st.final = frame  # answered by the next pull (after the items it still has)
                self._running_done(st)
                self._srv._reader.check()  # type: ignore[union-attr]
                return
        self._forget(st)
        self._srv._reader.check()  # type: ignore[union-attr]

    def _running_done(self, st: _Stream) -> None:
        """The stream's call is over: it no longer holds a graceful stop's grace period."""
        srv = self._srv
        if srv._running.get(st.key, (None, None))[1] is st:
            del srv._running[st.key]
        if srv._closing and not srv._running and srv._idle is not None:
            srv._idle.set()

    def _forget(self, st: _Stream, now: bool = False) -> None:
        if st.stalled and not now:
            return  # its last frames still wait for room: _unstall forgets it once they are out
        for handle in (st.retry_handle, st.linger_handle):
            if handle is not None:
                handle.cancel()
        if self.open.get(st.key) is st:
            del self.open[st.key]
        self._running_done(st)

    def _expired(self, st: _Stream) -> None:
        st.deadline_handle = None
        if not st.ended:
            self._end(st, error=Rejected(StatusCode.DEADLINE_EXCEEDED, "the stream's deadline passed"))

    def _violation(self, st: _Stream, why: str) -> None:
        self._srv._dispatch.counters["stream_violations"] += 1
        log.warning("stream %r (id %d) from %s: %s", st.call.method, st.call.id, st.call.caller, why)
        self._end(st, error=Rejected(StatusCode.PROTOCOL_ERROR, why))

    def _lost(self, st: _Stream) -> None:
        """The caller is gone (or never pulled again): end the stream with nobody to tell."""
        st.stalled.clear()
        st.outq.clear()
        if not st.ended:
            self._srv._dispatch.counters["streams_lost"] += 1
            self._end(st, error=Rejected(StatusCode.CANCELLED, "the caller's connection is gone"), quiet=True)
        self._forget(st, now=True)

    def _grace_ended(self, st: _Stream) -> None:
        """``aclose`` at the end of the grace period (its ``fut.cancel()``): stop the handler; aclose
        then finishes the call UNAVAILABLE and sends that to ``call._reply_to``. A pulled stream with no
        pull to answer ends here, quietly (an unasked answer would reach a REQ socket out of turn)."""
        self._halt(st)
        if st.pull and st.answer is None:
            self._end(st, error=Rejected(StatusCode.UNAVAILABLE, "server stopped"), quiet=True)
            return
        st.ended = True
        if st.answer is not None:
            st.answer.frames.clear()  # the UNAVAILABLE is the pending pull's whole answer
        if st.deadline_handle is not None:
            st.deadline_handle.cancel()
        st.tally.flush()
        if st.stats is not None:
            st.stats.ended()
        if self.open.get(st.key) is st:
            del self.open[st.key]

    # -- liveness -----------------------------------------------------------------------------------

    def _arm_probe(self) -> None:
        if self._probe is None and self.open:
            hb = self._srv._heartbeat
            self._probe = self._srv._loop.call_later(hb.interval if hb else 1.0, self._probe_tick)  # type: ignore[union-attr]

    def _probe_tick(self) -> None:
        """While streams wait for their callers, probe each such caller once (an empty body, which
        clients ignore; under ROUTER_MANDATORY one that vanished fails at once), and close pulled
        streams nobody pulled for ``PULL_IDLE`` seconds."""
        self._probe = None
        srv = self._srv
        if srv._closing or srv._sock is None:
            return
        now = _monotonic()
        alive: dict[bytes, bool] = {}
        for st in list(self.open.values()):
            if st.pull:
                if st.answer is None and now - st.last_seen > PULL_IDLE:
                    log.info(
                        "stream %r (id %d) not pulled for %.0fs: closed",
                        st.call.method,
                        st.call.id,
                        PULL_IDLE,
                    )
                    self._lost(st)
                continue
            if st.ended or st.stalled or not st.waits_for_caller:
                continue
            ident = st.key[0]
            ok = alive.get(ident)
            if ok is None:
                try:
                    srv._sock.send_multipart([*st.envelope, ACK], _NOBLOCK)
                    ok = True
                except zmq.ZMQError as exc:
                    ok = exc.errno != zmq.EHOSTUNREACH
                alive[ident] = ok
            if not ok:
                self._lost(st)
        if alive:
            srv._reader.check()  # type: ignore[union-attr]
        self._arm_probe()

    def close(self) -> None:
        """The server closed: forget every stream (a stop has already stopped their handlers)."""
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        for st in list(self.open.values()):
            for handle in (st.retry_handle, st.linger_handle, st.deadline_handle):
                if handle is not None:
                    handle.cancel()
        self.open.clear()


class _Handover(Exception):
    """A coroutine handler returned a plain iterator: it makes its items on the loop, as inline ones."""

    def __init__(self, iterator: Iterator[Any]) -> None:
        self.iterator = iterator
        super().__init__("a coroutine returned a plain iterator")


def _send_now(srv: AsyncServer, envelope: list[bytes], frame: bytes) -> bool:
    """``AsyncServer._send``, zero-copy for a large frame (libzmq reads it from the bytes object)."""
    if len(frame) < _ALONE_ABOVE:
        return srv._send(envelope, frame)
    sock = srv._sock
    if sock is None or sock.closed:
        srv.counters["undeliverable"] += 1
        return False
    try:
        sock.send_multipart([*envelope, frame], _NOBLOCK, copy=False)
        return True
    except zmq.ZMQError as exc:
        srv._send_errno = exc.errno
        srv.counters["undeliverable"] += 1
        return False


def _close(arg: tuple[Any, CallContext]) -> None:
    gen, call = arg
    token = _current.set(call)
    try:
        gen.close()
    except Exception:
        log.exception("closing the generator of stream %r raised", call.method)
    finally:
        _current.reset(token)


def _ignore(job: Job, result: Any, error: BaseException | None) -> None:
    """A closing job's outcome: nothing more to do (``_close`` logged any failure)."""
