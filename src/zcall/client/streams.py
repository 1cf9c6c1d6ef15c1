"""Streams on the DEALER client: one ``ClientStream`` per stream, whichever face consumes it.

A stream is a call (``ClientCore._begin``: budget, headers, interceptors, metrics; one attempt) whose
``OutgoingCall`` sits in the client's call table like any other, so its deadline, a dropped connection,
``close()`` and cancellation end it through the same paths as a call; its REPLY or ERROR ends it after
the items that came before. ``ClientStream`` holds what only a stream has: the items received and not
yet taken (never more than the window it granted: ``engine.streams.Window``), the credit it returns as
they are taken, and the caller's own items going up (``Credit``), pulled from the iterator argument
only while the server has granted room.

The faces differ only in how the consumer waits:

- asyncio: ``async for item in client.stream(method, *args)`` (``AsyncStream``; ``async with`` and
  ``aclose()`` stop it early, and so does dropping it after ``break``);
- callbacks: ``client.stream_async(method, *args, on_item=, on_done=, on_error=)`` returns a future for
  the end; ``on_item`` runs on the client's loop thread (keep it short, as every callback there). An
  item counts as taken when ``on_item`` returns, or, when it returns a future or an awaitable, when
  that completes: a consumer slower than the producer hands items to its own thread and returns a
  future, and the producer waits for it (flow control without blocking the loop);
- blocking, from a plain thread: ``for item in client.stream_blocking(method, *args)``
  (``BlockingStream``; what ``Peer.stream`` uses).

An argument that is an iterator (a generator, an async generator, any ``Iterator``/``AsyncIterator``)
is the caller's input: its items go to the server as the handler takes them, END after the last. A
plain iterator is read on a thread of its own (it may block); an async one as a task on the client's
loop. If it raises, the stream is cancelled and the consumer gets that exception.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..engine.loop import on_loop
from ..engine.streams import DEFAULT_WINDOW, Credit, StreamViolation, Tally, Window
from ..errors import Backpressure, ClientClosed, ProtocolError, SerializationError, StreamsUnsupported
from ..protocol.status import StatusCode
from ..protocol.wire import cancel_frame, credit_frame, end_frame, item_frame, stream_frame
from .futures import CallFuture

if TYPE_CHECKING:
    from ..protocol.wire import ErrorRecord
    from .core import CallOptions, OutgoingCall

__all__ = ["AsyncStream", "BlockingStream", "ClientStream", "StreamingClient", "split_input"]

log = logging.getLogger("zcall.client")

_ITEM, _END, _FAILED = 0, 1, 2
_RETRY_S = 0.005  # wait before sending again an input item that met a full queue
_ALONE_ABOVE = 64 * 1024  # larger items go as messages of their own (a BATCH would copy them again)
_MAX_RETRY_S = 0.1


def split_input(args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any], int | str | None, Any]:
    """``(args, kwargs, where, iterator)``: the caller's input taken out of the arguments (its place left
    as the nil placeholder the wire wants), or ``where = None`` when no argument is an iterator."""
    found: list[tuple[int | str, Any]] = [
        (i, a) for i, a in enumerate(args) if isinstance(a, Iterator | AsyncIterator)
    ]
    found += [(k, v) for k, v in kwargs.items() if isinstance(v, Iterator | AsyncIterator)]
    if not found:
        return args, kwargs, None, None
    if len(found) > 1:
        raise TypeError(
            f"a stream takes at most one iterator argument (the caller's items), got {len(found)}: "
            f"{[w for w, _ in found]}"
        )
    where, it = found[0]
    if isinstance(where, int):
        args = list(args)
        args[where] = None
    else:
        kwargs = {**kwargs, where: None}
    return args, kwargs, where, it


class ClientStream:
    """One stream's client side: items received and not taken, the end, credit both ways, the input.

    The client's loop thread delivers items and the end and sends every frame; the consumer takes items
    from any thread (``take``); both under one lock."""

    def __init__(
        self,
        client: StreamingClient,
        call: OutgoingCall,
        window: int,
        where: int | str | None,
        upstream: Any,
    ) -> None:
        self._client = client
        self.call = call
        self.where = where
        self.window = Window(window)
        self._cond = threading.Condition()
        self._items: collections.deque[Any] = collections.deque()
        self.outcome: tuple[int, Any] | None = None
        """``(_END, result)`` or ``(_FAILED, exception)`` once the stream is over."""
        self.closed = False  # the consumer stopped it
        self._waiter: asyncio.Future[None] | None = None
        self.on_item: Callable[[Any], Any] | None = None  # the callback face
        self.on_done: Callable[[Any], Any] | None = None
        self.on_error: Callable[[BaseException], Any] | None = None
        self.upstream = upstream
        self.up_credit = Credit(0)
        self._up_cond = threading.Condition()
        self._up_started = False
        self._up_waiter: asyncio.Future[None] | None = None
        self._upbox: collections.deque[tuple[bool, bytes]] = collections.deque()  # (is an item, frame)
        self._up_scheduled = False
        self._retry_s = _RETRY_S
        self.stats = client.metrics.stats(call.method).streams()
        self.stats.started()
        self.tally = Tally(self.stats)
        self._finalized = False

    @property
    def started_input(self) -> bool:
        return self._up_started

    # -- the loop thread ----------------------------------------------------------------------------

    def deliver(self, value: Any, nbytes: int) -> None:
        """An ITEM came (raises ``StreamViolation`` if it was beyond the credit granted)."""
        on_item = self.on_item
        with self._cond:
            if self.outcome is not None:
                return
            self.window.arrived()
            if on_item is None:
                self._items.append(value)
                waiter, self._waiter = self._waiter, None
                self._cond.notify()
        self.tally.received(nbytes)
        if on_item is not None:  # the callback face: taken when on_item returns, or when what it
            later = on_item(value)  # returned (a future, an awaitable) completes
            if later is None:
                self._taken()
            elif isinstance(later, concurrent.futures.Future | asyncio.Future):
                later.add_done_callback(lambda _: self._taken())
            elif inspect.isawaitable(later):
                task = asyncio.ensure_future(later, loop=self._client._loop)
                task.add_done_callback(lambda _: self._taken())
            else:
                self._taken()
        elif waiter is not None:
            _wake(waiter)

    def on_credit(self, n: Any) -> None:
        """A CREDIT from the server: room for that many more of the caller's items."""
        if self.upstream is None:
            raise StreamViolation("a credit for a stream that sends no items")
        with self._up_cond:
            self.up_credit.grant(n)
            self._up_cond.notify()
        w, self._up_waiter = self._up_waiter, None
        if w is not None and not w.done():
            w.set_result(None)
        if not self._up_started:
            self._up_started = True
            self._start_input()

    def done_ok(self, result: Any) -> None:
        """The REPLY: the stream is over, after the items already here."""
        self._over((_END, result))
        if self.on_done is not None:
            self.on_done(result)

    def done_err(self, exc: BaseException) -> None:
        """An ERROR, or a local end (timeout, connection lost, closed): over, after the items here."""
        self._over((_FAILED, exc))
        if isinstance(exc, ProtocolError) and self.call.channel is not None:
            self.call.channel.send_quietly(cancel_frame(self.call.id))  # a reply it could not read
        if self.on_error is not None:
            self.on_error(exc)

    def _over(self, outcome: tuple[int, Any]) -> None:
        with self._cond:
            if self.outcome is None:
                self.outcome = outcome
            waiter, self._waiter = self._waiter, None
            self._cond.notify_all()
        if waiter is not None:
            _wake(waiter)
        with self._up_cond:
            self._up_cond.notify_all()
        w, self._up_waiter = self._up_waiter, None
        if w is not None and not w.done():
            w.cancel()
        self._finalize()

    def _finalize(self) -> None:
        if not self._finalized:
            self._finalized = True
            self.tally.flush()
            self.stats.ended()

    # -- the consumer -------------------------------------------------------------------------------

    def take(self) -> tuple[int, Any] | None:
        """The next item ``(_ITEM, value)``, or the end (``_END``/``_FAILED``), or None: nothing yet."""
        with self._cond:  # one lock for the item and its credit (``_taken``, inlined)
            if self._items:
                value = self._items.popleft()
                n = self.window.taken()
            elif self.outcome is not None:
                return self.outcome
            else:
                return None
        if n:
            self._send(credit_frame(self.call.id, n))
        elif self.window.pull:
            self._defer(self._pull)
        return _ITEM, value

    def _taken(self) -> None:
        with self._cond:
            n = self.window.taken()
        if n:
            self._send(credit_frame(self.call.id, n))
        elif self.window.pull:
            self._defer(self._pull)

    def _pull(self) -> None:
        """Pull mode (on the loop, after the answer being read): the next pull once every item of the
        last answer was taken."""
        with self._cond:
            n = self.window.next_pull() if self.outcome is None else 0
        if n:
            self._send_now(credit_frame(self.call.id, n))

    def _defer(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the loop after what it is doing now (a batch being read, an ``on_item``)."""
        loop = self._client._loop
        try:
            if on_loop(loop):
                loop.call_soon(job)
            else:
                loop.call_soon_threadsafe(job)
        except RuntimeError:
            pass  # the loop is closed: the stream is over

    def has_news(self) -> bool:
        return bool(self._items) or self.outcome is not None

    async def wait_async(self) -> None:
        """Until an item or the end is here (from any loop)."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._items or self.outcome is not None:
                return
            fut = self._waiter = loop.create_future()
        await fut

    def wait_blocking(self) -> None:
        """Until an item or the end is here (a plain thread)."""
        with self._cond:
            while not self._items and self.outcome is None:
                self._cond.wait()

    def cancel(self) -> None:
        """The consumer stops (break, close, cancel): the server is told, the items here are dropped."""
        with self._cond:
            if self.outcome is not None or self.closed:
                return
            self.closed = True
            self.outcome = (_FAILED, ClientClosed("the stream was closed by its consumer"))
            self._items.clear()
        with self._up_cond:
            self._up_cond.notify_all()
        client = self._client
        try:
            client._run_soon(functools.partial(self._cancel_on_loop))
        except (ClientClosed, RuntimeError):
            pass  # the client is closed: its streams are over

    def _cancel_on_loop(self) -> None:
        w, self._up_waiter = self._up_waiter, None
        if w is not None and not w.done():
            w.cancel()
        self._client._cancel_from_user(self.call)
        self._finalize()

    # -- sending ------------------------------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        """Send a CREDIT of this stream from any thread (the consumer's)."""
        self._queue_up(frame, False)

    def _send_now(self, frame: bytes) -> None:
        self._upbox.append((False, frame))
        self._flush_up()

    def _start_input(self) -> None:
        up = self.upstream
        if isinstance(up, AsyncIterator):
            task = self._client._loop.create_task(self._input_async(up))
            task.add_done_callback(_log_task_failure)
        else:
            name = f"zcall-stream-input-{self.call.method}"
            threading.Thread(target=self._input_sync, args=(up,), name=name, daemon=True).start()

    def _input_sync(self, it: Iterator[Any]) -> None:
        """A plain iterator's items, read on a thread of their own while the server has room."""
        codec, rid = self._client._codec, self.call.id
        while True:
            with self._up_cond:
                while not self.up_credit.available and self.outcome is None:
                    self._up_cond.wait()
                if self.outcome is not None:
                    return
                self.up_credit.take()
            try:
                item = next(it)
            except StopIteration:
                self._queue_up(end_frame(rid), False)
                return
            except BaseException as exc:
                self._client._run_soon(functools.partial(self._input_failed, exc))
                return
            try:
                frame = item_frame(rid, item, codec)
            except SerializationError as exc:
                self._client._run_soon(functools.partial(self._input_failed, exc))
                return
            self._queue_up(frame, True)

    async def _input_async(self, it: AsyncIterator[Any]) -> None:
        """An async iterator's items, as a task on the client's loop, while the server has room."""
        codec, rid, loop = self._client._codec, self.call.id, self._client._loop
        while self.outcome is None:
            while not self.up_credit.take():
                self._up_waiter = loop.create_future()
                try:
                    await self._up_waiter
                except asyncio.CancelledError:
                    return
                if self.outcome is not None:
                    return
            try:
                item = await it.__anext__()
                frame = item_frame(rid, item, codec)
            except StopAsyncIteration:
                self._queue_up(end_frame(rid), False)
                return
            except BaseException as exc:
                self._input_failed(exc)
                return
            self._queue_up(frame, True)

    def _queue_up(self, frame: bytes, is_item: bool) -> None:
        """A frame of this stream (an input ITEM or END, a CREDIT) for the loop to send, in order, from
        any thread; one wake-up for many."""
        self._upbox.append((is_item, frame))
        if not self._up_scheduled:
            self._up_scheduled = True
            try:
                self._client._run_soon(self._flush_up)
            except ClientClosed:
                pass

    def _flush_up(self) -> None:
        """Send what is queued (the loop); a full queue is tried again shortly, in order: no frame of a
        stream is ever dropped while it runs (a lost CREDIT would stall it)."""
        self._up_scheduled = False
        ch, box = self.call.channel, self._upbox
        while box:
            if self.outcome is not None or ch is None:
                box.clear()
                return
            is_item, frame = box[0]
            if not (ch.send_alone(frame) if len(frame) > _ALONE_ABOVE else ch.send(frame)):
                self._up_scheduled = True
                self._client._loop.call_later(self._retry_s, self._flush_up)
                self._retry_s = min(self._retry_s * 2, _MAX_RETRY_S)
                return
            self._retry_s = _RETRY_S
            box.popleft()
            if is_item:
                self.tally.sent(len(frame))

    def _input_failed(self, exc: BaseException) -> None:
        """The caller's iterator raised (or made an item that cannot travel): cancel, fail with it."""
        client, call = self._client, self.call
        if client._table.pop(call.id) is None:
            return
        client._abandon(call, send_cancel=True)
        client._settle_err(call, exc)

    def _cancelled_by_user(self, call: OutgoingCall) -> None:
        """The callback face's future was cancelled (any thread; again on a second ``cancel()``, which a
        cancelled ``Future`` answers True too)."""
        with self._cond:
            if self.closed:
                return
            self.closed = True
            if self.outcome is None:
                self.outcome = (_FAILED, concurrent.futures.CancelledError())
        try:
            self._client._cancel_soon(call)
            self._client._run_soon(self._finalize)
        except ClientClosed:
            pass  # the client is closed: its streams are over


def _wake(fut: asyncio.Future[None]) -> None:
    """Wake a consumer waiting on ``fut``, on whatever loop it waits."""
    loop = fut.get_loop()
    if on_loop(loop):
        if not fut.done():
            fut.set_result(None)
    else:
        try:
            loop.call_soon_threadsafe(_set_if_pending, fut)
        except RuntimeError:  # its loop is closed: nobody waits any more
            pass


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("a stream's input task failed: %r", task.exception())


def _result(outcome: tuple[int, Any]) -> Any:
    kind, value = outcome
    if kind == _FAILED:
        raise value
    return value


# -- the faces ---------------------------------------------------------------------------------------


class AsyncStream(AsyncIterator[Any]):
    """``async for item in client.stream(method, *args)``: the server's items as they come.

    Opens on the first ``__anext__`` (or ``async with``). Ends with ``StopAsyncIteration`` after the
    last item (``result`` is then the handler's return value), or raises the error that ended it, after
    the items that came before it. ``aclose()``, leaving ``async with``, or dropping the iterator after a
    ``break`` stops the server's handler."""

    def __init__(self, client: StreamingClient, method: str, args: Any, kwargs: dict[str, Any], opts: Any):
        self._client = client
        self._spec: tuple[str, Any, dict[str, Any], Any] | None = (method, args, kwargs, opts)
        self._core: ClientStream | None = None
        self._result: Any = None

    @property
    def result(self) -> Any:
        """The handler's return value, once the stream has ended (None before, and for most streams)."""
        return self._result

    def __aiter__(self) -> AsyncStream:
        return self

    async def _open(self) -> ClientStream:
        spec, self._spec = self._spec, None
        if spec is None:
            raise RuntimeError("this stream is closed")
        client = self._client
        call = client._begin_stream(*spec)
        core: ClientStream = call.stream
        loop = client._loop
        if on_loop(loop):
            if not client._slots.try_acquire():
                try:
                    await client._slots.acquire(call.time_remaining)
                except TimeoutError:
                    raise client._failed(
                        call, client._timed_out(call, f"no free slot: {client._slots.limit} calls in flight")
                    ) from None
        elif not client._slots.try_acquire():
            raise client._failed(call, Backpressure(f"{client._slots.limit} calls already in flight"))
        call.fut = CallFuture(client._thread_id)  # the end, which this face reads from ``core``
        call.callback, call.errback = core.done_ok, core.done_err
        self._core = core
        client._run_soon(call)
        return core

    async def __anext__(self) -> Any:
        core = self._core
        if core is None:
            core = await self._open()
        while True:
            got = core.take()
            if got is not None:
                kind, value = got
                if kind == _ITEM:
                    return value
                self._result = _result(got)
                raise StopAsyncIteration
            await core.wait_async()

    async def aclose(self) -> None:
        """Stop the stream: the server's handler is stopped at its next yield (its ``finally:`` runs)."""
        self._spec = None
        if self._core is not None:
            self._core.cancel()

    async def __aenter__(self) -> AsyncStream:
        if self._core is None:
            await self._open()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __del__(self) -> None:
        core = self._core
        if core is not None and core.outcome is None:
            try:
                core.cancel()
            except Exception:
                pass


class BlockingStream(Iterator[Any]):
    """``for item in client.stream_blocking(method, *args)`` from a plain thread, over the DEALER client
    (so it takes an iterator argument too). ``close()``, ``with`` or dropping it after a ``break`` stops
    the server's handler. Not on the client's own loop thread: that thread delivers the items."""

    def __init__(self, client: StreamingClient, method: str, args: Any, kwargs: dict[str, Any], opts: Any):
        self._client = client
        self._spec: tuple[str, Any, dict[str, Any], Any] | None = (method, args, kwargs, opts)
        self._core: ClientStream | None = None
        self._result: Any = None

    @property
    def result(self) -> Any:
        """The handler's return value, once the stream has ended."""
        return self._result

    def __iter__(self) -> BlockingStream:
        return self

    def _open(self) -> ClientStream:
        spec, self._spec = self._spec, None
        if spec is None:
            raise RuntimeError("this stream is closed")
        client = self._client
        if threading.get_ident() == client._thread_id:
            raise RuntimeError(
                "a blocking stream on the client's own loop thread would deadlock: use "
                "'async for item in client.stream(...)' there"
            )
        call = client._begin_stream(*spec)
        core: ClientStream = call.stream
        if not client._slots.try_acquire():
            raise client._failed(call, Backpressure(f"{client._slots.limit} calls already in flight"))
        call.fut = CallFuture(client._thread_id)
        call.callback, call.errback = core.done_ok, core.done_err
        self._core = core
        client._run_soon(call)
        return core

    def __next__(self) -> Any:
        core = self._core
        if core is None:
            core = self._open()
        while True:
            got = core.take()
            if got is not None:
                kind, value = got
                if kind == _ITEM:
                    return value
                self._result = _result(got)
                raise StopIteration
            core.wait_blocking()

    def close(self) -> None:
        """Stop the stream (the server's handler stops at its next yield)."""
        self._spec = None
        if self._core is not None:
            self._core.cancel()

    def __enter__(self) -> BlockingStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        core = self._core
        if core is not None and core.outcome is None:
            try:
                core.cancel()
            except Exception:
                pass


class StreamingClient:
    """The stream half of ``AsyncClient``: opening streams on every face, and what the client does with
    ITEM and CREDIT messages and with a stream's refusal."""

    if TYPE_CHECKING:  # provided by AsyncClient
        _loop: asyncio.AbstractEventLoop
        _thread_id: int | None
        _table: Any
        _slots: Any
        _codec: Any
        _defaults: CallOptions
        metrics: Any
        counters: dict[str, int]

        def _begin(self, *a: Any, **k: Any) -> OutgoingCall: ...
        def _failed(
            self, call: OutgoingCall, error: BaseException, *, hooks: bool = True
        ) -> BaseException: ...
        def _timed_out(self, call: OutgoingCall, detail: str = "") -> Any: ...
        def _run_soon(self, job: Any) -> None: ...
        def _cancel_soon(self, call: OutgoingCall) -> None: ...
        def _cancel_from_user(self, call: OutgoingCall) -> None: ...
        def _abandon(self, call: OutgoingCall, *, send_cancel: bool) -> None: ...
        def _settle_err(self, call: OutgoingCall, exc: BaseException, *, counted: bool = False) -> None: ...
        def _send_or_wait(self, item: Any) -> None: ...

    # -- the faces ----------------------------------------------------------------------------------

    def stream(self, method: str, /, *args: Any, **kwargs: Any) -> AsyncStream:
        """``async for item in client.stream("tail", path)``: the items ``method`` yields, as they come;
        an iterator argument is the caller's own items. Per-stream settings (timeout: the whole stream's
        budget; window) go through ``client.options(...)``."""
        return AsyncStream(self, method, args, kwargs, self._defaults)

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
        """Open a stream and return at once with a future for its end (the handler's return value);
        ``on_item(item)`` runs for each item, then ``on_done(result)`` or ``on_error(exc)``, on the
        client's loop thread. An item is taken when ``on_item`` returns, or when the future (or
        awaitable) it returns completes: the producer never runs more than the window ahead of that.
        ``cancel()`` on the future stops the stream; an ``on_item`` that raises stops it with that."""
        return self._stream_async(method, args, kwargs, self._defaults, on_item, on_done, on_error)

    def stream_blocking(self, method: str, /, *args: Any, **kwargs: Any) -> BlockingStream:
        """``for item in client.stream_blocking("tail", path)`` from a plain thread (what
        ``Peer.stream`` uses): the asyncio face's stream, consumed by blocking."""
        return BlockingStream(self, method, args, kwargs, self._defaults)

    # -- opening ------------------------------------------------------------------------------------

    def _begin_stream(
        self, method: str, args: Any, kwargs: dict[str, Any], opts: CallOptions
    ) -> OutgoingCall:
        """A stream's call, in the caller's context (so it inherits a handler's deadline), not yet sent."""
        if getattr(self, "_closed", False):
            raise ClientClosed("AsyncClient is closed")
        args, kwargs, where, upstream = split_input(args, kwargs)
        window = opts.window or DEFAULT_WINDOW
        # batch: a zcall client reads BATCH from any server, so it lets the server coalesce the items
        call = self._begin(method, args, kwargs, opts, stream=(window, where, False, True))
        call.stream = ClientStream(self, call, window, where, upstream)
        return call

    def _stream_async(
        self,
        method: str,
        args: Any,
        kwargs: dict[str, Any],
        opts: CallOptions,
        on_item: Callable[[Any], Any],
        on_done: Callable[[Any], Any] | None,
        on_error: Callable[[BaseException], Any] | None,
    ) -> concurrent.futures.Future[Any]:
        if not callable(on_item):
            raise TypeError("stream_async needs on_item=, a function called with each item")
        call = self._begin_stream(method, args, kwargs, opts)
        core: ClientStream = call.stream
        if not self._slots.try_acquire():
            raise self._failed(call, Backpressure(f"{self._slots.limit} calls already in flight"))
        core.on_item, core.on_done, core.on_error = on_item, on_done, on_error
        fut = CallFuture(self._thread_id)
        call.fut = fut
        call.callback, call.errback = core.done_ok, core.done_err
        fut._on_cancel = core._cancelled_by_user
        fut._call = call
        self._run_soon(call)
        return fut

    # -- what the server sends ----------------------------------------------------------------------

    def _stream_item(self, ch: Any, msg: Any) -> None:
        self._stream_item_of(ch, msg.id, msg.item, msg.size)

    def _stream_item_of(self, ch: Any, rid: int, item: Any, size: int) -> None:
        """An ITEM ``item`` of stream ``rid`` that came in ``size`` bytes (its share of a BATCH)."""
        call = self._table.pending.get(rid)
        if call is None or call.stream is None:
            self.counters["stale_replies"] += 1  # a stream that ended (or was cancelled) here
            return
        try:
            call.stream.deliver(item, size)
        except StreamViolation as exc:
            self._stream_broken(call, f"the server at {ch.endpoint} broke the stream rules: {exc}")
        except BaseException as exc:  # the callback face's on_item raised: stop, fail with it
            self._stream_stop(call, exc)

    def _stream_credit(self, ch: Any, msg: Any) -> None:
        call = self._table.pending.get(msg.id)
        if call is None or call.stream is None:
            return  # credit for a stream that ended: nothing to send any more
        try:
            call.stream.on_credit(msg.n)
        except StreamViolation as exc:
            self._stream_broken(call, f"the server at {ch.endpoint} broke the stream rules: {exc}")

    def _stream_broken(self, call: OutgoingCall, why: str) -> None:
        self.counters["bad_replies"] += 1
        log.warning("stream %r: %s", call.method, why)
        self._stream_stop(call, ProtocolError(why))

    def _stream_stop(self, call: OutgoingCall, exc: BaseException) -> None:
        """End a stream here with ``exc``, and tell the server (CANCEL)."""
        if self._table.pop(call.id) is None:
            return
        self._abandon(call, send_cancel=True)
        self._settle_err(call, exc)

    def _stream_refused(self, ch: Any, call: OutgoingCall, err: ErrorRecord) -> bool:
        """A PROTOCOL_ERROR answering a STREAM before anything else came: a server that answers only
        pulls (open it again, pulled), or one that cannot open it (``StreamsUnsupported``). True when
        handled here (``call`` was already popped from the table)."""
        st: ClientStream = call.stream
        if err.code != StatusCode.PROTOCOL_ERROR or st.window.received or st.started_input:
            return False
        data = err.data
        if isinstance(data, dict) and data.get("pull") is True and not st.window.pull and st.where is None:
            st.window = Window(st.window.size, pull=True)
            self._table.pending[call.id] = call
            call.channel = None
            call.due = call.deadline
            self._table.schedule(call)
            left_ms = max(1, int(call.time_remaining * 1000))
            call.frame = stream_frame(
                call.id, call.method, call.args, call.kwargs, st.window.size, None, True, left_ms,
                call.headers, self._codec, True,
            )  # fmt: skip
            self._send_or_wait(call)
            return True
        self._slots.release()
        exc = StreamsUnsupported(
            f"{ch.endpoint} cannot open stream {call.method!r}: {err.message}",
            code=err.code,
            type=err.type,
            traceback=err.traceback,
            data=err.data,
            method=call.method,
        )
        self._settle_err(call, exc)
        return True
