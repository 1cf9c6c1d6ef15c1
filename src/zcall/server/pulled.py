"""The REP-style server's streams: every one is pulled, one request and one answer at a time.

A REQ socket sends one request and takes one answer, so a REP-style server (``SyncServer``) cannot push
items: it keeps a streaming handler's generator between requests and answers each pull (the STREAM,
then each CREDIT) with the next items, at most the pull's credit, as one body (a BATCH of ITEMs, with
the REPLY or ERROR last once the handler is done). While it makes an answer the server does nothing
else, as it does while it runs a call: an answer holds the items made until the credit is used, the
stream ends, or ``PULL_LINGER`` has passed with at least one item (so a slow producer's items reach its
caller one by one, as they come). It takes no items from its callers (a handler blocked on them would
block the only thread that reads them): such a STREAM is refused (``Dispatcher.input_streams``).

A kept stream ends at its handler's end, the caller's CANCEL, its deadline, ``PULL_IDLE`` seconds with
no pull (a REQ caller cannot be probed), or the server's stop (UNAVAILABLE to a pull that comes); the
generator is closed then, so its ``finally:`` runs.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..engine.streams import PullAnswer, Tally
from ..errors import Rejected
from ..protocol.status import StatusCode
from ..protocol.wire import Cancel, End, ErrorRecord, Item, batch_frame, error_frame
from ..protocol.wire import Credit as CreditMessage
from ..service.context import CallContext, _current
from ..service.dispatch import Dispatcher, StreamFault, StreamStart, is_stream_result
from ..service.streams import encode_item, input_cancelled
from .streams import PULL_IDLE

__all__ = ["PULLED_MESSAGES", "PulledStreams"]

log = logging.getLogger("zcall.server")

PULLED_MESSAGES = (StreamStart, CreditMessage, Item, End, StreamFault)
"""What the dispatcher hands a REP-style server for its streams (a CANCEL is checked apart)."""

_monotonic = time.monotonic


class _Pulled:
    """A stream kept between pulls: its call and what makes its items."""

    __slots__ = ("call", "gen", "agen", "tally", "stats", "last_pull")

    def __init__(self, call: CallContext) -> None:
        self.call = call
        self.gen: Any = None
        self.agen: AsyncIterator[Any] | None = None
        self.stats: Any = call._entry.stats.streams() if call._entry is not None else None
        self.tally = Tally(self.stats)
        self.last_pull = _monotonic()


class PulledStreams:
    """The streams a REP-style server keeps between pulls, by (connection, stream id)."""

    def __init__(self, dispatch: Dispatcher, new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self._d = dispatch
        self._new_loop = new_loop
        self.kept: dict[tuple[bytes, int], _Pulled] = {}
        dispatch.push_streams = False
        dispatch.input_streams = False

    def call_of(self, envelope: list[bytes], r: Any) -> CallContext | None:
        """The call a request works on (the one a graceful stop's take-over answers), if any."""
        if type(r) is StreamStart:
            return r.call  # type: ignore[no-any-return]
        kept = self.kept.get((envelope[0], r.id))
        return kept.call if kept is not None else None

    def answer(self, envelope: list[bytes], r: Any) -> bytes:
        """The one answer to a STREAM, a pull, or another stream message (refused: this server pulls)."""
        t = type(r)
        if t is StreamStart:
            return self._open(envelope, r.call)
        if t is StreamFault:
            key = (envelope[0], r.id)
            if key in self.kept:
                self._close(self.kept.pop(key), error=Rejected(StatusCode.PROTOCOL_ERROR, "malformed"))
            return r.frame  # type: ignore[no-any-return]
        if t is CreditMessage:
            kept = self.kept.get((envelope[0], r.id))
            if kept is not None:
                kept.call._reply_to = envelope
                kept.last_pull = _monotonic()
                if self._d.stopping:
                    return self._close(self.kept.pop((envelope[0], r.id)))
                return self._produce(envelope, kept, r.n)
            text = f"no open stream {r.id} here (it ended, expired, or this server restarted)"
        else:
            text = "this server takes no items from its callers (client streams need a ROUTER server)"
        self._d.counters["bad_messages"] += 1
        return error_frame(r.id, ErrorRecord.refusal(StatusCode.PROTOCOL_ERROR, text), self._d.codec)

    def cancel(self, envelope: list[bytes], r: Cancel) -> None:
        """A CANCEL: close that stream, if it is kept (the caller gets the usual ACK)."""
        kept = self.kept.pop((envelope[0], r.id), None)
        if kept is not None:
            self._close(kept, error=input_cancelled("the caller cancelled the stream"))

    # -- making answers -------------------------------------------------------------------------------

    def _open(self, envelope: list[bytes], call: CallContext) -> bytes:
        kept = _Pulled(call)
        if kept.stats is not None:
            kept.stats.started()
        entry = call._entry
        assert entry is not None
        token = _current.set(call)
        try:
            result = entry.fn(*call._args, **call._kwargs)
            if not entry.is_asyncgen and inspect.iscoroutine(result):
                result = self._new_loop().run_until_complete(result)
        except BaseException as exc:
            return self._end(kept, error=exc)
        finally:
            _current.reset(token)
        if not is_stream_result(result):
            return self._end(kept, result=result)
        if isinstance(result, AsyncIterator):
            kept.agen = result
        else:
            kept.gen = result
        self.kept[(envelope[0], call.id)] = kept
        return self._produce(envelope, kept, call._stream.credit)

    def _produce(self, envelope: list[bytes], kept: _Pulled, n: int) -> bytes:
        """Make the answer to one pull of up to ``n`` items (the loop is blocked meanwhile, as in a call)."""
        call, codec = kept.call, self._d.codec
        answer = PullAnswer(n, codec.max_message_size // 2)
        final = None
        token = _current.set(call)
        try:
            while not answer.full() and not answer.lingered():
                if call.expired:
                    deadline = Rejected(StatusCode.DEADLINE_EXCEEDED, "the stream's deadline passed")
                    final = self._end(kept, error=deadline, close=True)
                    break
                try:
                    if kept.agen is not None:
                        item = self._new_loop().run_until_complete(kept.agen.__anext__())
                    else:
                        item = next(kept.gen)
                    frame = encode_item(call.id, item, codec)
                except (StopIteration, StopAsyncIteration) as stop:
                    final = self._end(kept, result=getattr(stop, "value", None))
                    break
                except BaseException as exc:
                    final = self._end(kept, error=exc, close=True)
                    break
                answer.add(frame)
                kept.tally.sent(len(frame))
                self._d.counters["stream_items_sent"] += 1
        finally:
            _current.reset(token)
        frames = answer.frames
        if final is not None:
            self.kept.pop((envelope[0], call.id), None)
            frames.append(final)
        return frames[0] if len(frames) == 1 else batch_frame(frames)

    def _end(
        self, kept: _Pulled, result: Any = None, error: BaseException | None = None, close: bool = False
    ) -> bytes:
        """The stream's end (metrics, interceptors): its REPLY or ERROR frame."""
        if close:
            self._close_gen(kept)
        kept.tally.flush()
        if kept.stats is not None:
            kept.stats.ended()
        frame, _ = self._d.finish(kept.call, result, error)
        assert frame is not None
        return frame

    def _close(self, kept: _Pulled, error: BaseException | None = None) -> bytes:
        """End a kept stream from outside (cancel, expiry, stop): close its generator first."""
        return self._end(kept, error=error or Rejected(StatusCode.UNAVAILABLE, "server stopped"), close=True)

    def _close_gen(self, kept: _Pulled) -> None:
        token = _current.set(kept.call)
        try:
            if kept.agen is not None:
                aclose = getattr(kept.agen, "aclose", None)
                if aclose is not None:
                    self._new_loop().run_until_complete(aclose())
            elif kept.gen is not None and hasattr(kept.gen, "close"):
                kept.gen.close()
        except Exception:
            log.exception("closing the generator of stream %r raised", kept.call.method)
        finally:
            _current.reset(token)
            kept.gen = kept.agen = None

    # -- upkeep ---------------------------------------------------------------------------------------

    def expire(self) -> None:
        """Close kept streams past their deadline, or not pulled for ``PULL_IDLE`` seconds."""
        if not self.kept:
            return
        now = _monotonic()
        for key, kept in list(self.kept.items()):
            deadline = kept.call.deadline
            if deadline is not None and now >= deadline:
                self._close(self.kept.pop(key), Rejected(StatusCode.DEADLINE_EXCEEDED, "deadline passed"))
            elif now - kept.last_pull > PULL_IDLE:
                self._d.counters["streams_lost"] += 1
                self._close(self.kept.pop(key), Rejected(StatusCode.CANCELLED, "not pulled: caller gone?"))

    def close_all(self) -> None:
        """The server stops: close every kept stream (a pull that still comes finds the server gone)."""
        kept, self.kept = list(self.kept.values()), {}
        for k in kept:
            self._close(k)
