"""What a stream is to a handler, on every server kind: the caller's items as an iterator argument, the
handler's yields as items, and the end of both.

A handler streams when it is a generator or an async generator, or returns an iterator; it receives the
caller's items when the caller passed an iterator argument: that argument becomes an ``Input``, a
blocking iterator for a plain handler (which runs in a pool thread) or an async one for a coroutine or
async generator handler. An ``Input`` holds at most the credit it granted (``engine.streams.Window``)
and grants more as the handler takes items; an item beyond its credit is a ``StreamViolation``.

The servers choose only where the handler runs and how frames move (``server/streams.py`` for ROUTER,
``server/pulled.py`` for the REP-style server); this module is the part they share.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from ..engine.streams import StreamViolation, Window
from ..errors import Rejected, SerializationError
from ..protocol.codec import Codec
from ..protocol.status import StatusCode
from ..protocol.wire import item_frame
from .context import CallContext

__all__ = [
    "AsyncInput",
    "Input",
    "SyncInput",
    "bind_input",
    "encode_item",
    "input_cancelled",
    "runs_on_loop",
]


def input_cancelled(why: str = "the stream ended before its input did") -> BaseException:
    """What a handler's input raises when the stream ends under it (cancelled, caller gone, stopped)."""
    return concurrent.futures.CancelledError(why)


class Input:
    """The caller's items for one stream, as the handler takes them; fed by the server's loop.

    ``deliver`` (the loop) adds an item or raises ``StreamViolation``; ``finish`` ends the input: END
    (``None``: the iterator ends after the items already here) or the stream's end (an exception: the
    iterator raises it at once, dropping what it held). ``grant(n)`` is called whenever the handler has
    freed credit, from whatever thread the handler runs in."""

    def __init__(self, window: Window, grant: Callable[[int], None]) -> None:
        self._window = window
        self._grant = grant
        self._items: collections.deque[Any] = collections.deque()
        self._end: BaseException | None = None
        self._ended = False
        self._lock = threading.Lock()

    @property
    def ended(self) -> bool:
        """END came, or the stream ended."""
        return self._ended

    def deliver(self, item: Any) -> None:
        with self._lock:
            if self._ended:
                raise StreamViolation("an item after the caller's END")
            self._window.arrived()
            self._items.append(item)
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        with self._lock:
            if error is not None:
                self._items.clear()
                self._end = error
            elif self._ended:
                raise StreamViolation("a second END")
            self._ended = True
        self._wake()

    def _take(self) -> tuple[bool, Any]:
        """(True, item), or (False, None) when nothing is here yet; raises at the end."""
        with self._lock:
            if self._items:
                item = self._items.popleft()
                n = self._window.taken()
            elif self._end is not None:
                raise self._end
            elif self._ended:
                raise _Exhausted
            else:
                return False, None
        if n:
            self._grant(n)
        return True, item

    def _wake(self) -> None:
        raise NotImplementedError


class _Exhausted(Exception):
    """The input's END came and every item was taken."""


class SyncInput(Input, Iterator[Any]):
    """The caller's items for a plain handler: ``for item in chunks:`` blocks until the next one comes."""

    def __init__(self, window: Window, grant: Callable[[int], None]) -> None:
        super().__init__(window, grant)
        self._cond = threading.Condition(self._lock)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def __next__(self) -> Any:
        while True:
            try:
                ok, item = self._take()
            except _Exhausted:
                raise StopIteration from None
            if ok:
                return item
            with self._cond:
                if not self._items and not self._ended:
                    self._cond.wait()


class AsyncInput(Input, AsyncIterator[Any]):
    """The caller's items for a coroutine or async generator handler: ``async for item in chunks:``.
    Lives on the server's loop (deliver and take both happen there)."""

    def __init__(self, window: Window, grant: Callable[[int], None], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(window, grant)
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def __anext__(self) -> Any:
        while True:
            try:
                ok, item = self._take()
            except _Exhausted:
                raise StopAsyncIteration from None
            if ok:
                return item
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


def runs_on_loop(call: CallContext) -> bool:
    """Whether a stream's handler runs as a task on the server's loop (coroutine or async generator)."""
    entry = call._entry
    return bool(entry is not None and (entry.is_coroutine or entry.is_asyncgen))


def bind_input(call: CallContext, value: Any) -> None:
    """Put the handler's ``Input`` where the caller's iterator argument was (its nil placeholder)."""
    where = call._stream.input
    if type(where) is int:
        args = list(call._args)
        args[where] = value
        call._args = args
    else:
        call._kwargs = {**call._kwargs, where: value}


def encode_item(rid: int, value: Any, codec: Codec) -> bytes:
    """One ITEM frame, or ``Rejected(INTERNAL)`` that says why it cannot go (not encodable, too large):
    the stream then ends with that error, after the items already sent."""
    try:
        frame = item_frame(rid, value, codec)
    except SerializationError as exc:
        text = f"stream item not sendable: {exc}"
        raise Rejected(StatusCode.INTERNAL, text, type="zcall.SerializationError") from None
    if len(frame) > codec.max_message_size:
        raise Rejected(
            StatusCode.INTERNAL,
            f"stream item of {len(frame)} bytes exceeds the limit of {codec.max_message_size} bytes a "
            "caller accepts: yield smaller items",
            type="zcall.SerializationError",
        )
    return frame
