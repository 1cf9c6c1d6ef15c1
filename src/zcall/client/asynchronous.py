"""Asynchronous calls over DEALER sockets: an asyncio face and a callback face over one core.

What a call means (budget, retries, failover order, errors, interceptors, statistics) is the client
core's; where it is (pending table, deadlines, the bound on calls in flight) is the engine's call table;
each connection is an engine channel. This module is the I/O between them, and the two faces, which
differ only in the future they hand back:

- asyncio: ``await client.call(method, *args, **kwargs)``;
- callbacks, from any thread: ``client.call_async(method, *args, callback=..., errback=...)`` returns a
  ``concurrent.futures.Future``. Callbacks run on the client's loop thread (or at once, in the caller's
  thread, when registered on a finished future); an exception inside one is logged, never lost.

The client lives on one loop (its *home*): the running asyncio loop where it was made, or zcall's engine
thread when made from a plain thread. Calls go only to connections the monitor reports up, so nothing
queues towards a server that is not connected (not ZMQ_IMMEDIATE: on a disconnect it discards replies
not yet read): a call waits (within its budget) for a connection; new calls spread round-robin over
connected servers; when a connection drops, the calls pending on it are resent if they may be
(retries left, or idempotent) and fail with ``ConnectionLost`` otherwise.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import zmq

from ..engine import fork
from ..engine.calls import CallTable, Slots
from ..engine.channel import Channel, ChannelEvents
from ..engine.liveness import DEFAULT_HEARTBEAT, Heartbeat, State
from ..engine.loop import engine, on_loop, run_on, running_loop
from ..errors import (
    AuthenticationFailed,
    Backpressure,
    ClientClosed,
    ConnectionLost,
    ProtocolError,
)
from ..protocol.codec import Codec, default_codec
from ..protocol.topics import topic_matches
from ..protocol.wire import (
    MAX_BATCH_ITEMS,
    Batch,
    Credit,
    ErrorReply,
    Event,
    Item,
    Kind,
    Pong,
    Reply,
    answer_fields_of,
    cancel_frame,
    decode_answer,
    from_array,
    notify_frame,
    peek_reply_id,
    ping_frame,
)
from .core import DEFAULT_TIMEOUT, CallOptions, ClientCore, OutgoingCall
from .futures import CallFuture
from .interceptors import ClientInterceptor
from .proxy import AsyncProxy, FutureProxy
from .streams import AsyncStream, BlockingStream, StreamingClient
from .subscriptions import Subscriber

if TYPE_CHECKING:
    from ..security import ClientSecurity

__all__ = ["AsyncClient", "AsyncClientView"]

log = logging.getLogger("zcall.client")

DEFAULT_MAX_IN_FLIGHT = 1000
_monotonic = time.monotonic
_ALIVE = State.ALIVE
_REPLY_KIND = int(Kind.REPLY)


_Call = OutgoingCall  # the async faces' fields live on the call itself (fut, callbacks, channel, frame)


class _OneWay:
    """A NOTIFY waiting for a connection: its body and when it is no longer worth sending."""

    __slots__ = ("frame", "deadline")

    def __init__(self, frame: bytes, deadline: float) -> None:
        self.frame = frame
        self.deadline = deadline


class AsyncClient(StreamingClient, Subscriber, ClientCore, ChannelEvents):
    """Asynchronous calls to one endpoint or several; asyncio and callback faces over one core.
    Streams (``stream``, ``stream_async``, ``stream_blocking``) are ``client/streams.py``'s; pushed
    events through ``on()`` are ``client/subscriptions.py``'s (acknowledged subscriptions)."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int | None = None,
        idempotent: bool = False,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        headers: Mapping[str, Any] | None = None,
        heartbeat: Heartbeat | None = DEFAULT_HEARTBEAT,
        context: zmq.Context | None = None,
        codec: Codec = default_codec,
        security: ClientSecurity | None = None,
        interceptors: Sequence[ClientInterceptor] = (),
    ) -> None:
        super().__init__(
            endpoints,
            timeout=timeout,
            retries=retries,
            idempotent=idempotent,
            headers=headers,
            context=context,
            codec=codec,
            security=security,
            interceptors=interceptors,
        )
        self._heartbeat = heartbeat
        self._slots = Slots(max_in_flight)
        self._table = CallTable()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._tick_handle: asyncio.TimerHandle | None = None
        self._refused = False  # every endpoint refused the handshake: calls fail at once
        self._liveness_callbacks: list[Callable[[str, State], Any]] = []
        self._waiting: collections.deque[_Call | _OneWay] = collections.deque()
        self._inbox: collections.deque[Callable[[], None] | _Call] = collections.deque()
        self._inbox_scheduled = False
        self._handlers: dict[str, list[Callable[[str, Any], Any]]] = {}
        self._channels: dict[str, Channel] = {}
        self._single: Channel | None = None  # the channel, when there is exactly one (the hot path)
        self._closed = False
        self.counters.update(notifies_dropped=0, events=0, events_missed=0, callback_errors=0, resent=0)
        self._setup_subscriptions()
        try:
            self._loop = asyncio.get_running_loop()
            self._uses_engine = False
        except RuntimeError:
            self._loop = engine.acquire()
            self._uses_engine = True
        self._thread_id: int | None = None
        try:
            run_on(self._loop, self._open)
        except BaseException:
            if self._uses_engine:
                engine.release()
            raise

    def _open(self) -> None:
        self._thread_id = threading.get_ident()
        max_size = self._codec.max_message_size
        try:
            for ep in self.endpoints:
                self._channels[ep] = Channel(
                    self,
                    self._loop,
                    self._ctx,
                    ep,
                    max_message_size=max_size,
                    heartbeat=self._heartbeat,
                    security=self._security,
                )
        except BaseException:  # one endpoint could not be opened: give back the sockets of the others
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()
            raise
        if len(self._channels) == 1:
            self._single = self._channels[self.endpoints[0]]
        if self._heartbeat is not None:
            self._tick_handle = self._loop.call_later(self._heartbeat.interval, self._tick)

    # -- the asyncio face --------------------------------------------------------------------------

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """Call ``method``: ``await client.call(...)`` gives its result; every keyword goes to the remote
        method. (A plain function returning the coroutine: one coroutine frame per call, not two.)"""
        return self._acall(method, args, kwargs, self._defaults)

    async def _acall(self, method: str, args: Any, kwargs: dict[str, Any], opts: CallOptions) -> Any:
        loop = self._loop
        if not on_loop(loop):  # a client from another loop or the engine: bridge
            return await asyncio.wrap_future(self._submit(method, args, kwargs, opts, None, None))
        if self._closed:
            raise ClientClosed("AsyncClient is closed")
        call = self._begin(method, args, kwargs, opts)
        if not self._slots.try_acquire():
            try:
                await self._slots.acquire(call.deadline - _monotonic())
            except TimeoutError:
                raise self._failed(
                    call, self._timed_out(call, f"no free slot: {self._slots.limit} calls in flight")
                ) from None
        call.fut = fut = loop.create_future()
        self._start(call)
        try:
            return await fut
        except asyncio.CancelledError:
            if self._table.pop(call.id) is not None:
                self._abandon(call, send_cancel=True)
                self.counters["cancelled"] += 1
                self._failed(call, asyncio.CancelledError())
            raise

    # -- the callback face -------------------------------------------------------------------------

    def call_async(
        self,
        method: str,
        /,
        *args: Any,
        callback: Callable[[Any], Any] | None = None,
        errback: Callable[[BaseException], Any] | None = None,
        **kwargs: Any,
    ) -> concurrent.futures.Future[Any]:
        """Send the call and return at once with a future; ``callback(result)`` or ``errback(exc)`` follows.

        Raises ``Backpressure`` at once when ``max_in_flight`` calls are already pending (this face never
        blocks). ``callback``/``errback`` are zcall's: a remote keyword with those names needs ``options``.
        """
        return self._submit(method, args, kwargs, self._defaults, callback, errback)

    def _submit(
        self,
        method: str,
        args: Any,
        kwargs: dict[str, Any],
        opts: CallOptions,
        callback: Callable[[Any], Any] | None,
        errback: Callable[[BaseException], Any] | None,
    ) -> concurrent.futures.Future[Any]:
        if self._closed:
            raise ClientClosed("AsyncClient is closed")
        call = self._begin(method, args, kwargs, opts)
        if not self._slots.try_acquire():
            raise self._failed(
                call,
                Backpressure(
                    f"{self._slots.limit} calls already in flight on this client: wait for some to finish "
                    "or raise max_in_flight"
                ),
            )
        fut = CallFuture(self._thread_id)
        call.fut = fut
        # callback/errback are called by the client as it settles the call (no done-callback on the
        # future: that costs two more Condition round trips per call); a user's cancel() comes back
        # through the future's hook, from any thread, and is tidied up on the loop.
        call.callback, call.errback = callback, errback
        fut._on_cancel = self._cancel_soon  # bound once per client, not a closure per call
        fut._call = call
        self._run_soon(call)
        return fut

    def _cancel_soon(self, call: _Call) -> None:
        """A callback-face future was cancelled (from any thread): tidy the call up on the loop."""
        self._run_soon(functools.partial(self._cancel_from_user, call))

    def _cancel_from_user(self, call: _Call) -> None:
        if self._table.pop(call.id) is not None:
            self.counters["cancelled"] += 1
            self._abandon(call, send_cancel=True)
            self._failed(call, concurrent.futures.CancelledError())

    # -- settling (home loop) ----------------------------------------------------------------------

    def _settle_ok(self, call: _Call, result: Any) -> None:
        """The call succeeded: reply hooks, then its future, then its callback (callback face)."""
        fut = call.fut
        if fut.done():
            return  # cancelled meanwhile
        try:
            result = self._ok(call, result)
        except BaseException as exc:  # an interceptor turned it into a failure
            self._settle_err(call, exc, counted=True)
            return
        try:
            fut.set_result(result)
        except (asyncio.InvalidStateError, concurrent.futures.InvalidStateError):
            return
        if call.callback is not None:
            try:
                call.callback(result)
            except Exception:
                self.counters["callback_errors"] += 1
                log.exception("callback for call %r raised (the client keeps going)", call.method)

    def _settle_err(self, call: _Call, exc: BaseException, *, counted: bool = False) -> None:
        """The call failed: error hooks, its future, then its errback (or a log line, with a callback)."""
        fut = call.fut
        if fut.done():
            return
        if not counted:
            exc = self._failed(call, exc)
        try:
            fut.set_exception(exc)
        except (asyncio.InvalidStateError, concurrent.futures.InvalidStateError):
            return
        if call.errback is not None:
            try:
                call.errback(exc)
            except Exception:
                self.counters["callback_errors"] += 1
                log.exception("errback for call %r raised (the client keeps going)", call.method)
        elif call.callback is not None:
            log.warning("call %r failed and has no errback: %s", call.method, exc)

    # -- one-way calls and events ------------------------------------------------------------------

    def notify(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        """Send a one-way call: no reply, no error back (a failing handler is only logged remotely)."""
        self._notify(method, args, kwargs, self._defaults)

    def _notify(self, method: str, args: Any, kwargs: dict[str, Any], opts: CallOptions) -> None:
        if self._closed:
            raise ClientClosed("AsyncClient is closed")
        deadline_ms = max(1, int(opts.timeout * 1000))  # 0 would mean "already expired"
        frame = notify_frame(self._ids.next(), method, args, kwargs, deadline_ms, opts.headers, self._codec)
        self._check_size(f"notify {method!r}", frame)
        item = _OneWay(frame, _monotonic() + opts.timeout)
        self._run_soon(lambda: self._send_or_wait(item))

    # -- options, stats, lifecycle -----------------------------------------------------------------

    @property
    def proxy(self) -> AsyncProxy:
        """Awaitable attribute-style calls, names checked against the server's list:
        ``await client.proxy.double(21)``."""
        return AsyncProxy(self)

    @property
    def proxy_async(self) -> FutureProxy:
        """Attribute-style calls returning a future (the callback face):
        ``client.proxy_async.double(21, callback=print)``."""
        return FutureProxy(self)

    def options(
        self,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        idempotent: bool | None = None,
        headers: Mapping[str, Any] | None = None,
        inherit_deadline: bool | None = None,
        window: int | None = None,
    ) -> AsyncClientView:
        """A view with other per-call settings: ``await client.options(timeout=1).call(...)``;
        ``window``: a stream's items in flight."""
        opts = self._options(timeout, retries, idempotent, headers, inherit_deadline, window)
        return AsyncClientView(self, opts)

    def statistics(self) -> dict[str, Any]:
        """Counters, calls in flight, and which endpoints are connected right now."""
        chans = list(self._channels.values())
        return {
            **super().statistics(),
            "handshake_failures": sum(ch.handshake_failures for ch in chans),
            "in_flight": len(self._table),
            "waiting": len(self._waiting),
            "connected": [ch.endpoint for ch in chans if ch.connected],
        }

    def liveness(self) -> dict[str, State]:
        """What this client believes of each endpoint now: alive, suspect or dead."""
        return {ep: ch.liveness.state for ep, ch in self._channels.items()}

    def on_liveness(self, callback: Callable[[str, State], Any]) -> None:
        """Call ``callback(endpoint, state)`` on the client's loop whenever an endpoint changes state."""
        self._liveness_callbacks.append(callback)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Fail pending calls with ``ClientClosed`` and close the sockets; never hangs."""
        if self._closed:
            return
        loop = self._loop
        if fork.inherited(loop):  # made before os.fork: its sockets are the parent's, not ours to close
            self._closed = True
            return
        if running_loop() is loop or loop.is_closed() or not loop.is_running():
            # on the loop, or nobody runs it (an asyncio client closed after its loop finished): no
            # other thread can be using the sockets, so close them right here
            self._close_now()
        else:
            try:
                run_on(loop, self._close_now, timeout=10)
            except RuntimeError:  # the loop went away meanwhile: nothing left to close on it
                self._closed = True
        if self._uses_engine:
            self._uses_engine = False
            engine.release(loop)

    async def aclose(self) -> None:
        """``close()`` for asyncio code."""
        self.close()

    def __enter__(self) -> AsyncClient:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        for handle in (self._tick_handle, self._timer):
            if handle is not None:
                handle.cancel()
        self._timer = None
        self._drain_inbox()
        for call in self._table.clear():  # calls still waiting for a connection are in here too
            self._slots.release()
            self._settle_err(call, ClientClosed(f"client closed while call {call.method!r} was pending"))
        self._close_subscriptions()
        self._waiting.clear()
        for ch in self._channels.values():
            ch.close()

    # -- the core's I/O (home loop thread only) ----------------------------------------------------

    def _run_soon(self, job: Callable[[], None] | _Call) -> None:
        """Run ``job`` on the home loop: now if we are on it, else through the inbox (one wake-up a batch).

        A ``_Call`` job means "start this call" (no closure to build on the hot path)."""
        if threading.get_ident() == self._thread_id:
            if type(job) is _Call:
                self._start(job)
            else:
                job()  # type: ignore[operator]
            return
        self._inbox.append(job)
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain_inbox)
            except RuntimeError as exc:  # loop closed, or inherited across os.fork (the text says which)
                self._inbox_scheduled = False
                raise ClientClosed(f"AsyncClient's loop is closed: {exc}") from None

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False
        inbox = self._inbox
        start = self._start
        while inbox:
            job = inbox.popleft()
            try:
                if type(job) is _Call:
                    start(job)
                else:
                    job()  # type: ignore[operator]
            except Exception:
                log.exception("zcall client internal job failed")

    def _start(self, call: _Call) -> None:
        if self._closed:
            self._slots.release()
            self._settle_err(call, ClientClosed("AsyncClient is closed"))
            return
        if call.fut.cancelled():  # a callback-face future cancelled before the loop got to it
            # Not set_running_or_notify_cancel(): a RUNNING future refuses cancel(), and a call
            # awaiting its reply must stay cancellable (the cancel then reaches the server).
            self._slots.release()  # cancelled before it was sent
            self._failed(call, concurrent.futures.CancelledError())
            return
        # call.due is the call's deadline until it is sent: waiting for a connection uses the budget too
        self._table.add(call)
        if self._timer is None or call.due < self._timer_at:
            self._arm(call.due)
        single = self._single
        if single is not None:
            n = len(self._table) >> 1
            single.batch_target = 4 if n < 4 else (n if n < MAX_BATCH_ITEMS else MAX_BATCH_ITEMS)
        # The hot path (one endpoint, one attempt, nothing queued before it): _try_send and _note_attempt,
        # inlined, ~0.5 us a call; any other case (or a full queue) takes the general path below.
        if (
            single is not None
            and call.attempts == 1
            and not self._waiting
            and single.liveness.connected
            and single.send(call.frame)
        ):
            call.attempt = 1
            call.endpoint = single.endpoint
            call.channel = single
            self.counters["attempts"] += 1
            return
        self._send_or_wait(call)

    # -- timers: one for every pending call ----------------------------------------------------------

    def _arm(self, due: float) -> None:
        if self._timer is None or due < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = due
            self._timer = self._loop.call_later(max(0.0, due - _monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = _monotonic()
        for call in self._table.due(now):
            self._due(call, now)
        nxt = self._table.next_due()
        if nxt is not None and not self._closed:
            self._arm(nxt)

    def _due(self, call: _Call, now: float) -> None:
        """A call's attempt (or whole budget) ran out: resend it elsewhere, or let it time out."""
        if now >= call.deadline or call.attempt >= call.attempts or call.channel is None:
            self._expire(call)
            return
        self.counters["timeouts"] += 1  # this attempt's share is over; the call goes on
        self._failover.failed(call.channel.endpoint)
        self._resend(call, now)

    def _resend(self, call: _Call, now: float) -> None:
        call.channel = None
        call.due = call.deadline
        self._table.schedule(call)
        try:
            call.frame = self._frame(call, now)
        except BaseException as exc:  # cannot happen for a body that encoded once
            self._table.pop(call.id)
            self._slots.release()
            self._settle_err(call, exc)
            return
        self._send_or_wait(call)

    def _expire(self, call: _Call) -> None:
        if self._table.pop(call.id) is None:
            return
        self.counters["timeouts"] += 1
        sent = call.channel is not None
        self._abandon(call, send_cancel=sent)
        if not sent:
            self._unqueue(call)
        detail = "" if call.attempt else "never sent: no server connected"
        refused = [f"{ch.endpoint}: {ch.refused}" for ch in self._channels.values() if ch.refused]
        if not call.attempt and refused:
            detail += "; handshake failed at " + "; ".join(refused)
        self._settle_err(call, self._timed_out(call, detail))

    def _abandon(self, call: _Call, *, send_cancel: bool) -> None:
        """Forget a call that will not be answered here (timed out or cancelled); tell the server."""
        self._slots.release()
        ch = call.channel
        if send_cancel and ch is not None and ch.connected:
            ch.send_quietly(cancel_frame(call.id))

    # -- sending -----------------------------------------------------------------------------------

    def _pick(self, call: _Call | None) -> Channel | None:
        chans = self._channels
        if len(chans) == 1:
            ch = chans[self.endpoints[0]]
            return ch if ch.connected else None
        fallback = None
        for ep in self._failover.order(call.tried_endpoints() if call is not None else ()):
            ch = chans[ep]
            if ch.connected:
                if ch.liveness.state is State.ALIVE:
                    return ch
                fallback = fallback or ch  # suspect: only when nobody better is connected
        return fallback

    def _try_send(self, item: _Call | _OneWay) -> bool:
        call = item if type(item) is _Call else None
        ch = self._pick(call)
        if ch is None:
            return False
        if call is not None and call.attempts > 1:
            now = _monotonic()
            budget = call.attempt_budget(now)  # this attempt's share: what is left over the attempts left
            if not ch.send(item.frame):
                return False
            call.due = min(call.deadline, now + budget)
            self._table.schedule(call)
            self._arm(call.due)
        elif not ch.send(item.frame):
            return False
        if call is not None:
            self._note_attempt(call, ch.endpoint)
            call.channel = ch
        return True

    def _send_or_wait(self, item: _Call | _OneWay) -> None:
        waiting = self._waiting
        if waiting or not self._try_send(item):
            if self._refused:
                self._refuse(item)
                return
            now = _monotonic()
            while waiting and type(waiting[0]) is _OneWay and waiting[0].deadline <= now:
                waiting.popleft()  # expired notifies: never let a dead server pile them up
                self.counters["notifies_dropped"] += 1
            waiting.append(item)

    def _on_writable(self) -> None:
        self._flush_waiting()

    def _flush_waiting(self) -> None:
        waiting = self._waiting
        now = _monotonic()
        while waiting:
            item = waiting[0]
            if type(item) is _OneWay:
                if item.deadline <= now:
                    waiting.popleft()
                    self.counters["notifies_dropped"] += 1
                    continue
            elif item.id not in self._table:  # type: ignore[union-attr]
                waiting.popleft()  # timed out or cancelled while waiting
                continue
            if not self._try_send(item):
                return
            waiting.popleft()

    def _unqueue(self, call: _Call) -> None:
        """Take a call that will not be sent out of the waiting line (bounded by max_in_flight)."""
        for i, q in enumerate(self._waiting):
            if q is call:
                del self._waiting[i]
                return

    # -- what channels report ----------------------------------------------------------------------

    def _on_frames(self, ch: Channel, frames: list[Any]) -> None:
        body = frames[-1]
        if type(body) is not bytes:  # the reader hands Frames until the connection said what it speaks
            if ch.batch_ok is None:
                ch.learn(body)
                self._learned_limit(ch.endpoint, ch.server_limit)
            body = body.bytes
        lv = ch.liveness
        lv.last_heard = _monotonic()  # Liveness.heard, inlined: this runs for every message
        if lv.state is not _ALIVE and lv.connected:
            changed = lv.heard(lv.last_heard)
            if changed is not None:
                self._state_changed(ch, changed)
        if not body:
            return  # an empty-body ACK from a sync server (notify / cancel), or a sweep probe
        try:
            msg = decode_answer(body, self._codec)  # read once, whatever it is
        except ProtocolError as exc:
            self.counters["bad_replies"] += 1
            log.warning("bad reply from %s: %s", ch.endpoint, exc)
            rid = getattr(exc, "id", None) or peek_reply_id(body)  # fail that call now, not at its timeout
            call = self._table.pop(rid) if rid else None
            if call is not None:
                self._slots.release()
                self._settle_err(call, ProtocolError(f"the reply to {call.method!r} cannot be read: {exc}"))
            return
        t = type(msg)
        if t is tuple:  # the common case, a REPLY, without building a message object
            rid, result = msg  # type: ignore[misc]
            call = self._table.pending.pop(rid, None)
            if call is None:
                if not (self._sub_sent and self._sub_answer(rid, result)):
                    self.counters["stale_replies"] += 1
                return
            self._slots.release()
            self._settle_ok(call, result)
        elif t is Batch:
            self._on_batch(ch, msg.items, len(body))  # type: ignore[union-attr]
        else:
            self._on_message(ch, msg)  # type: ignore[arg-type]

    def _on_batch(self, ch: Channel, items: list[Any], size: int) -> None:
        """The answers of a BATCH, in order; a REPLY or ITEM item takes the fast path, others are decoded."""
        pending, slots, settle = self._table.pending, self._slots, self._settle_ok
        share = size // max(1, len(items))  # what each item counts in a stream's byte tally
        for m in items:
            fast = answer_fields_of(m)
            if fast is not None:
                kind, rid, value = fast
                if kind != _REPLY_KIND:
                    self._stream_item_of(ch, rid, value, share)
                    continue
                call = pending.pop(rid, None)
                if call is None:
                    if not (self._sub_sent and self._sub_answer(rid, value)):
                        self.counters["stale_replies"] += 1
                    continue
                slots.release()
                settle(call, value)
                continue
            try:
                msg = from_array(m, in_batch=True)
            except ProtocolError as exc:
                self.counters["bad_replies"] += 1
                log.warning("bad reply in a batch from %s: %s", ch.endpoint, exc)
                continue
            self._on_message(ch, msg)

    def _on_message(self, ch: Channel, msg: Any) -> None:
        """A decoded message other than a fast-path REPLY: a REPLY/ERROR, an event, a pong."""
        kind = type(msg)
        if kind is Reply or kind is ErrorReply:
            call = self._table.pop(msg.id)
            if call is None:
                if kind is ErrorReply and msg.id == 0:
                    self._unaddressed(ch, msg.error)
                elif not self._sub_sent or not (
                    self._sub_answer(msg.id, msg.result)
                    if kind is Reply
                    else self._sub_answer(msg.id, error=msg.error)
                ):
                    self.counters["stale_replies"] += 1
                return
            if kind is Reply:
                self._slots.release()
                self._settle_ok(call, msg.result)
                return
            err = msg.error
            if call.stream is not None and self._stream_refused(ch, call, err):
                return
            if self._may_retry_refusal(err.code) and call.attempt < call.attempts:
                self._table.pending[call.id] = call  # back in (``_resend`` files it): to another server
                self._failover.failed(ch.endpoint)
                self._resend(call, _monotonic())
                return
            self._slots.release()
            self._settle_err(call, self._remote_error(call, err, ch.endpoint))
        elif kind is Item:
            self._stream_item(ch, msg)
        elif kind is Credit:
            self._stream_credit(ch, msg)
        elif kind is Event:
            self._on_event(ch, msg)
        elif kind is Pong:
            ch.liveness.pong()
            if self._sub_sent:
                self._sub_answer(msg.id)  # the PING after an old server's subscription

    def _unaddressed(self, ch: Channel, record: Any) -> None:
        """An ERROR with id 0: the server could not read a request's id. Fail the pending calls it is
        about (``ClientCore._culprits``); one that matches none is only counted and logged."""
        calls = [c for c in self._table.pending.values() if c.channel is ch]
        culprits = self._culprits(record, calls, ch.endpoint)
        if not culprits:
            self.counters["stale_replies"] += 1
            log.warning("an error with id 0 from %s matches no pending call: %s", ch.endpoint, record.message)
            return
        for call, exc in culprits:
            if self._table.pop(call.id) is not None:
                self._slots.release()
                self._settle_err(call, exc)

    def _on_event(self, ch: Channel, ev: Event) -> None:
        self.counters["events"] += 1
        if ch.last_seq and ev.id > ch.last_seq + 1:
            self.counters["events_missed"] += ev.id - ch.last_seq - 1
        ch.last_seq = ev.id
        for pattern, handlers in list(self._handlers.items()):
            if topic_matches(pattern, ev.topic):
                for h in list(handlers):
                    try:
                        r = h(ev.topic, ev.payload)
                        if inspect.isawaitable(r):
                            asyncio.ensure_future(r, loop=self._loop).add_done_callback(_log_handler_failure)
                    except Exception:
                        self.counters["callback_errors"] += 1
                        log.exception("event handler for %r raised (the client keeps going)", ev.topic)

    def _on_up(self, ch: Channel) -> None:
        self._refused = False
        ch.reset()  # a new connection: it says again what it speaks
        changed = ch.liveness.up(_monotonic())
        if changed is not None:
            self._state_changed(ch, changed)
        self._subscribe(ch)
        self._flush_waiting()

    def _on_down(self, ch: Channel) -> None:
        changed = ch.liveness.down()
        self._sub_down(ch)  # what its server said about subscriptions is void now (before anyone is told)
        if changed is not None:
            self._state_changed(ch, changed)
        # The monitor is a separate socket: replies that came in just before the disconnect may still
        # be queued on the DEALER. Take them first, or their calls would fail with ConnectionLost.
        for frames in ch.drain():
            self._on_frames(ch, frames)
        ch.reset()  # what was queued for the batch went with the connection: its calls count as lost
        lost = [c for c in self._table.pending.values() if c.channel is ch]
        now = _monotonic()
        for call in lost:
            if call.idempotent or call.attempt < call.attempts:
                if call.idempotent and call.attempt >= call.attempts:
                    call.attempts += 1  # may run twice anyway: a lost connection costs no attempt
                self.counters["resent"] += 1
                self._failover.failed(ch.endpoint)
                self._resend(call, now)
                continue
            self._table.pop(call.id)
            self._slots.release()
            self.counters["connection_lost"] += 1
            self._settle_err(call, ConnectionLost(call.method, ch.endpoint))

    def _on_refused(self, ch: Channel) -> None:
        """Every endpoint refused the security handshake: fail what waits (it would only time out)."""
        chans = list(self._channels.values())
        if any(c.connected for c in chans) or not all(c.refused for c in chans):
            return
        self._refused = True
        waiting, self._waiting = list(self._waiting), collections.deque()
        for item in waiting:
            self._refuse(item)

    def _refuse(self, item: _Call | _OneWay) -> None:
        """Fail a call (or drop a notify) that no endpoint will take: every handshake was refused."""
        if type(item) is _OneWay:
            self.counters["notifies_dropped"] += 1
            return
        call: _Call = item  # type: ignore[assignment]
        if self._table.pop(call.id) is None:
            return
        self._slots.release()
        chans = [c for c in self._channels.values() if c.refused]
        where = ", ".join(c.endpoint for c in chans)
        if len(chans) == 1:
            reason = str(chans[0].refused)
        else:
            reason = "; ".join(f"{c.endpoint}: {c.refused}" for c in chans)
        self._settle_err(call, AuthenticationFailed(call.method, where, reason))

    def _state_changed(self, ch: Channel, state: State) -> None:
        log.info("%s: -> %s", ch.endpoint, state.value)
        for cb in list(self._liveness_callbacks):
            try:
                cb(ch.endpoint, state)
            except Exception:
                self.counters["callback_errors"] += 1
                log.exception("liveness callback raised (the client keeps going)")

    def _tick(self) -> None:
        """Every heartbeat interval: ping quiet connections (one ping at most), mark silent ones suspect."""
        hb = self._heartbeat
        if self._closed or hb is None:
            return
        now = _monotonic()
        for ch in self._channels.values():
            changed, ping = ch.liveness.tick(now, hb.interval)
            if changed is not None:
                self._state_changed(ch, changed)
            if ping:
                ch.send_quietly(ping_frame(self._ids.next()))
        self._tick_handle = self._loop.call_later(hb.interval, self._tick)


class AsyncClientView:
    """An ``AsyncClient`` with other per-call settings; shares the client's sockets and table."""

    __slots__ = ("_client", "_opts")

    def __init__(self, client: AsyncClient, opts: CallOptions) -> None:
        self._client = client
        self._opts = opts

    @property
    def timeout(self) -> float:
        return self._opts.timeout

    @property
    def headers(self) -> Mapping[str, Any] | None:
        return self._opts.headers

    @property
    def idempotent(self) -> bool:
        return self._opts.idempotent

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        """Like ``AsyncClient.call`` with these settings (await it)."""
        return self._client._acall(method, args, kwargs, self._opts)

    def call_async(
        self,
        method: str,
        /,
        *args: Any,
        callback: Callable[[Any], Any] | None = None,
        errback: Callable[[BaseException], Any] | None = None,
        **kwargs: Any,
    ) -> concurrent.futures.Future[Any]:
        """Like ``AsyncClient.call_async`` with these settings."""
        return self._client._submit(method, args, kwargs, self._opts, callback, errback)

    def notify(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        """Like ``AsyncClient.notify`` with these settings."""
        self._client._notify(method, args, kwargs, self._opts)

    def stream(self, method: str, /, *args: Any, **kwargs: Any) -> AsyncStream:
        """Like ``AsyncClient.stream`` with these settings (``timeout`` covers the whole stream)."""
        return AsyncStream(self._client, method, args, kwargs, self._opts)

    def stream_async(
        self,
        method: str,
        /,
        *args: Any,
        on_item: Callable[[Any], Any],
        on_done: Callable[[Any], Any] | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
        **kwargs: Any,
    ) -> concurrent.futures.Future[Any]:
        """Like ``AsyncClient.stream_async`` with these settings."""
        return self._client._stream_async(method, args, kwargs, self._opts, on_item, on_done, on_error)

    def stream_blocking(self, method: str, /, *args: Any, **kwargs: Any) -> BlockingStream:
        """Like ``AsyncClient.stream_blocking`` with these settings."""
        return BlockingStream(self._client, method, args, kwargs, self._opts)

    @property
    def proxy(self) -> AsyncProxy:
        """``AsyncClient.proxy`` with these settings."""
        return AsyncProxy(self)

    @property
    def proxy_async(self) -> FutureProxy:
        """``AsyncClient.proxy_async`` with these settings."""
        return FutureProxy(self)

    def options(self, **changes: Any) -> AsyncClientView:
        """These settings, changed again."""
        return AsyncClientView(self._client, self._opts.with_changes(**changes))


def _log_handler_failure(f: asyncio.Future[Any]) -> None:
    if not f.cancelled() and f.exception() is not None:
        log.error("async event handler raised: %r", f.exception())
