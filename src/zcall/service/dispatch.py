"""The one server lifecycle of a call, independent of socket type: admit once, finish once.

``Dispatcher.admit(body)`` decodes a request and decides, in the order docs/protocol.md §7 gives, whether
it runs: method lookup, argument binding, the reply cache (a resend is answered from memory), stopping,
the deadline, the in-flight limit, then the service's interceptors. It returns what the server must do:

- a ``CallContext``: run its handler (the only thing a server chooses is *how*: inline, pool, task);
- ``bytes``: send this frame now (an error, a PONG, a cached reply);
- ``None``: send nothing (a NOTIFY, a resend joined to its running first attempt);
- a ``Cancel`` or ``Subscribe``: connection-level requests only a ROUTER server acts on (a CALL of
  ``zcall.subscribe`` is answered with ``subscribed``: the patterns kept, ``[]`` from a REP server);
- a ``StreamStart`` (a STREAM, admitted like a CALL: its ``CallContext`` carries the request in
  ``call._stream``), an ``Item``, ``Credit`` or ``End`` of an open stream, or a ``StreamFault`` (a
  malformed one: that stream ends with its frame), for the server's stream machinery.

``Dispatcher.finish(call, result=..., error=...)`` records metrics, runs the interceptors' reply hooks,
fills the reply cache and returns the frame to send (and the resends waiting for it). It holds no
socket, so the REP and ROUTER servers answer every request, good or bad, with the same bytes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

from ..error_registry import describe as describe_error
from ..errors import ProtocolError, Rejected, RemoteError, SerializationError
from ..protocol.codec import Codec
from ..protocol.status import StatusCode
from ..protocol.topics import SUBSCRIBE_METHOD
from ..protocol.wire import (
    STREAM_KINDS,
    Batch,
    Cancel,
    Credit,
    End,
    ErrorRecord,
    Item,
    Ping,
    Stream,
    check_readable,
    decode_request,
    error_for,
    error_frame,
    from_array,
    peek_header_kind,
    peek_id,
    pong_frame,
    reply_frame,
)
from .context import CallContext, _current
from .metrics import OTHER, Outcome, outcome_for_status
from .registry import Service
from .replycache import IN_PROGRESS, ReplyCache

__all__ = [
    "NEVER_AWAITABLE",
    "Dispatcher",
    "Expired",
    "StreamFault",
    "StreamStart",
    "Subscribe",
    "is_stream_result",
]

log = logging.getLogger("zcall.server")

_OK = int(Outcome.OK)
_ERROR = int(Outcome.ERROR)
_REJECTED = int(Outcome.REJECTED)
_CANCELLED = int(Outcome.CANCELLED)
_monotonic = time.monotonic

NEVER_AWAITABLE: Final = frozenset((int, float, str, bytes, bool, list, dict, type(None)))
"""Result types a server need not check for awaitability (the check costs on the hot path)."""

DEFAULT_MAX_IN_FLIGHT: Final = 1000
DEFAULT_MAX_IN_FLIGHT_BYTES: Final = 64 * 1024 * 1024
"""Request bytes (on the wire) of the calls admitted and not finished, at most, by default: with
``max_in_flight`` it bounds what queued work holds (a call over the rest is OVERLOADED)."""
MAX_PATTERNS: Final = 64
"""Event patterns one connection may hold; more in one ``zcall.subscribe`` are ignored (logged)."""
MAX_PATTERN_LENGTH: Final = 256
_CANCELLED_ERRORS = (asyncio.CancelledError, concurrent.futures.CancelledError)
_CONTAINERS = (dict, list, tuple)  # result types whose encoding is checked by decoding it (check_replies)
_NO_WAITERS: list[Any] = []  # returned (never changed) when no resend joined a call: no list per call
_STREAM_CONTROL = (Item, Credit, End)


def is_stream_result(value: Any) -> bool:
    """Whether a handler's result streams: a generator or any other iterator (sync or async), not a
    container (a list is a value, sent whole)."""
    return isinstance(value, Iterator | AsyncIterator)


class Expired(Exception):
    """A call whose deadline passed while it waited to start (in a queue): it is not started."""


class StreamStart:
    """An admitted STREAM: the server starts it (``call._stream`` is the request)."""

    __slots__ = ("call",)

    def __init__(self, call: CallContext) -> None:
        self.call = call


class StreamFault:
    """A malformed ITEM, CREDIT or END whose id could be read: the server ends that stream (if it is
    open on this connection) with ``frame``, the PROTOCOL_ERROR that answers it, or else sends it."""

    __slots__ = ("id", "frame")

    def __init__(self, id: int, frame: bytes) -> None:  # noqa: A002
        self.id = id
        self.frame = frame


class Subscribe:
    """A ``zcall.subscribe``: the connection's event patterns, replacing the previous ones. ``id`` is the
    request id of the CALL form, which is answered (``Dispatcher.subscribed``); None for the NOTIFY."""

    __slots__ = ("patterns", "id")

    def __init__(self, patterns: list[str], id: int | None = None) -> None:  # noqa: A002
        self.patterns = patterns
        self.id = id


class Dispatcher:
    """Admits and finishes the calls of one server for one ``Service``; counts what it refused."""

    __slots__ = (
        "__weakref__",
        "codec",
        "counters",
        "in_flight",
        "interceptors",
        "max_in_flight",
        "in_flight_bytes",
        "max_in_flight_bytes",
        "metrics",
        "replies",
        "send_tracebacks",
        "service",
        "stopping",
        "check_replies",
        "push_streams",
        "input_streams",
    )

    def __init__(
        self,
        service: Service,
        codec: Codec,
        *,
        send_tracebacks: bool = True,
        reply_cache: ReplyCache | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_in_flight_bytes: int = DEFAULT_MAX_IN_FLIGHT_BYTES,
        check_replies: bool = True,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if max_in_flight_bytes < 1:
            raise ValueError(f"max_in_flight_bytes must be >= 1, got {max_in_flight_bytes}")
        self.max_in_flight_bytes = max_in_flight_bytes
        self.check_replies = check_replies
        """Decode a map or array result before sending it, so one the caller's decoder would refuse (a
        non-str key, too deep, too many containers) becomes an error reply that says so, here."""
        self.in_flight_bytes = 0
        """Request bytes of the calls admitted and not yet finished."""
        self.service = service
        self.codec = codec
        self.send_tracebacks = send_tracebacks
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        """Calls (and one-way calls) admitted and not yet finished."""
        self.stopping = False
        """Set when a graceful stop begins: new calls are answered UNAVAILABLE from then on."""
        self.counters = {
            "calls": 0,
            "errors": 0,
            "bad_messages": 0,
            "expired": 0,
            "overloaded": 0,
            "cancelled": 0,
            "pings": 0,
            "cache_hits": 0,
            "streams": 0,
            "stream_items_sent": 0,
            "stream_items_received": 0,
            "stream_violations": 0,
            "streams_lost": 0,
        }
        self.push_streams = True
        """Whether this server sends a stream's items as credit allows (a ROUTER server); a REP-style one
        answers only pulls, and refuses a pushed STREAM with PROTOCOL_ERROR, data ``{"pull": true}``."""
        self.input_streams = True
        """Whether this server takes the caller's items (client streams: a ROUTER server only)."""
        self.replies = reply_cache if reply_cache is not None else ReplyCache()
        self.metrics = service.metrics  # per service, shared by every server serving it
        self.interceptors = service.interceptors
        service._servers.add(self)

    # -- admit once ---------------------------------------------------------------------------------

    def admit(
        self,
        body: Any,
        reply_to: Any = None,
        routing_id: bytes | None = None,
        frame: Any = None,
        can_wait: bool = True,
    ) -> CallContext | bytes | Cancel | Subscribe | Batch | StreamFault | None:
        """Decide what to do with one request body (see the module docstring for the answers; a
        ``Batch`` is the server's to unpack: each item goes through ``admit_fields``/``other_item``).

        ``reply_to`` is what a joined resend is answered with later (the ROUTER envelope); ``frame`` is the
        zmq frame the body came in (for the caller's address and key); ``can_wait=False`` (REP, which
        cannot park a request) answers a resend of a still-running call UNAVAILABLE instead of joining it.
        """
        # The hot path: a well-formed CALL or NOTIFY as its fields; anything else as its message. One decode.
        try:
            got = decode_request(body, self.codec)
        except ProtocolError as exc:
            self.counters["bad_messages"] += 1
            log.warning("bad message (%d bytes): %s", len(body), exc)
            err = error_frame(peek_id(exc) or 0, error_for(exc), self.codec)
            return self._fault(exc, body, err)
        if type(got) is tuple:
            return self.admit_fields(got, self.codec.held_by(body), reply_to, routing_id, frame, can_wait)
        return self._other(got, body, reply_to, routing_id, frame)

    def admit_fields(
        self,
        fields: tuple[int, str, list[Any], dict[str, Any], int | None, dict[str, Any] | None, bool, bool],
        size: int,
        reply_to: Any = None,
        routing_id: bytes | None = None,
        frame: Any = None,
        can_wait: bool = True,
        stream: Stream | None = None,
    ) -> CallContext | bytes | Subscribe | None:
        """``admit`` for a CALL or NOTIFY already parsed (``protocol.decode_request``): one of a BATCH's
        items, or a single request. ``size`` is its share of the request bytes in flight. Written out
        in one function: each call layer costs ~0.1 us per request. ``stream``: the STREAM this call
        opens (``_admit_stream``)."""
        rid, name, args, kwargs, deadline_ms, headers, retry, notify = fields
        if notify and name == SUBSCRIBE_METHOD:
            return self._subscription(args)
        counters = self.counters
        counters["calls"] += 1
        # a, b: does this call make sense here at all?
        try:
            entry = self.service.lookup(name)
        except Rejected as r:
            if name == SUBSCRIBE_METHOD:  # the acknowledged form: a CALL (here, off the hot path)
                return self._subscription(args, rid)
            self.metrics.record(OTHER, _REJECTED)  # never the caller's made-up name: bounded rows
            return self._refused(rid, name, notify, r)
        try:
            entry.check(args, kwargs)
            if entry.streams and stream is None:
                raise Rejected(
                    StatusCode.INVALID_ARGUMENTS,
                    f"{name!r} streams its results: open it with stream(), not call()",
                    data={"stream": True},
                )
        except Rejected as r:
            entry.stats.record(_REJECTED)
            return self._refused(rid, name, notify, r)
        # c: at most once. A resend is answered from memory, never run again (even while stopping or
        # overloaded: the call ran, its answer is the truth). The key holds the method too, so a guessed
        # id alone cannot fetch another caller's reply.
        cache_key = None
        if retry and not entry.idempotent:
            cache_key = (rid, name)
            seen = self.replies.begin(cache_key)
            if seen is not None:
                if seen is not IN_PROGRESS:
                    counters["cache_hits"] += 1
                    return seen  # type: ignore[no-any-return]
                if can_wait:
                    self.replies.wait(cache_key, reply_to)  # bounded: past max_waiters it is dropped
                    return None
                still = Rejected(StatusCode.UNAVAILABLE, "the first attempt of this call still runs")
                return self._refused(rid, name, notify, still)
        # d, e, f: can this server take it now? (a stopping server still answers its health probes)
        if (
            (self.stopping and not entry.while_stopping)
            or deadline_ms == 0
            or self.in_flight >= self.max_in_flight
            or (self.in_flight_bytes + size > self.max_in_flight_bytes and self.in_flight)
        ):
            return self._cannot_take(rid, name, notify, entry, deadline_ms, cache_key)
        call = CallContext(
            name,
            rid,
            headers,
            None if deadline_ms is None else _monotonic() + deadline_ms / 1000,
            retry,
            notify,
            routing_id,
            frame,
            entry,
            args,
            kwargs,
            cache_key,
            reply_to,
        )
        call._server = self
        call._size = size
        call._stream = stream
        self.in_flight_bytes += size
        st = entry.stats
        call._token = (st, st.started())
        self.in_flight += 1
        # g: the service's interceptors may still refuse it
        if self.interceptors:
            token = _current.set(call)
            try:
                for i in self.interceptors:
                    i.on_call(call)
            except BaseException as exc:  # every refusal or failure becomes the answer
                return self.finish(call, error=exc)[0]  # nobody joined a call that never ran
            finally:
                _current.reset(token)
        return call

    def subscribed(self, request: Subscribe, kept: list[str]) -> bytes | None:
        """The answer to a ``zcall.subscribe``: for the CALL form, REPLY with the patterns the server now
        keeps for that connection (``kept``: a REP server keeps none, it cannot push); None (nothing, or
        an ACK on REP) for the NOTIFY form."""
        if request.id is None:
            return None
        return reply_frame(request.id, kept, self.codec)

    def _subscription(self, args: list[Any], rid: int | None = None) -> Subscribe:
        """A ``zcall.subscribe``'s patterns, bounded (``MAX_PATTERNS`` of ``MAX_PATTERN_LENGTH``)."""
        wanted = args[0] if args and type(args[0]) is list else []
        patterns = [p for p in wanted if type(p) is str and len(p) <= MAX_PATTERN_LENGTH]
        if len(patterns) != len(wanted) or len(patterns) > MAX_PATTERNS:
            self.counters["bad_messages"] += 1
            log.warning(
                "subscribe with %d pattern(s): kept %d (at most %d patterns of %d characters, strings only)",
                len(wanted),
                min(len(patterns), MAX_PATTERNS),
                MAX_PATTERNS,
                MAX_PATTERN_LENGTH,
            )
        return Subscribe(patterns[:MAX_PATTERNS], rid)

    def _other(
        self, msg: Any, body: Any, reply_to: Any = None, routing_id: bytes | None = None, frame: Any = None
    ) -> Any:
        """Anything but a well-formed CALL/NOTIFY, decoded from ``body``: a PING, a CANCEL, a BATCH, a
        stream's messages."""
        if type(msg) is Batch:
            return msg
        if type(msg) is Item:
            return msg
        return self._other_message(msg, self.codec.held_by(body), reply_to, routing_id, frame)

    def other_item(
        self, item: Any, reply_to: Any = None, routing_id: bytes | None = None, frame: Any = None
    ) -> Any:
        """One item of a BATCH that is not a CALL/NOTIFY: a PING, a CANCEL, a stream's message, or bad
        input (answered)."""
        try:
            msg = from_array(item, in_batch=True)
        except ProtocolError as exc:
            self.counters["bad_messages"] += 1
            log.warning("bad message in a batch: %s", exc)
            err = error_frame(peek_id(exc) or 0, error_for(exc), self.codec)
            return self._fault(exc, item, err)
        return self._other_message(msg, 0, reply_to, routing_id, frame)

    @staticmethod
    def _fault(exc: ProtocolError, body: Any, err: bytes) -> bytes | StreamFault:
        """A malformed ITEM/CREDIT/END with a readable id is a ``StreamFault``: its stream ends too.
        ``body`` is the raw body, or a BATCH's item (decoded): only its first bytes are ever read."""
        rid = peek_id(exc)
        if not rid:
            return err  # the id was not even read: nothing to tie it to (and no more of it is read)
        batch_item = type(body) is list
        kind = (body[1] if len(body) > 1 else None) if batch_item else peek_header_kind(body)
        if kind in STREAM_KINDS:
            return StreamFault(rid, err)
        return err

    def _other_message(
        self, msg: Any, size: int = 0, reply_to: Any = None, routing_id: Any = None, frame: Any = None
    ) -> Any:
        t = type(msg)
        if t is Ping:
            self.counters["pings"] += 1
            return pong_frame(msg.id)
        if t is Cancel or t in _STREAM_CONTROL:
            return msg
        if t is Stream:
            return self._admit_stream(msg, size, reply_to, routing_id, frame)
        self.counters["bad_messages"] += 1
        text = f"a server does not accept {t.__name__.lower()} messages"
        log.warning("bad message: %s", text)
        return error_frame(msg.id, ErrorRecord.refusal(StatusCode.PROTOCOL_ERROR, text), self.codec)

    def _admit_stream(
        self, msg: Stream, size: int, reply_to: Any, routing_id: bytes | None, frame: Any
    ) -> StreamStart | bytes | None:
        """A STREAM goes through a CALL's checks (docs/protocol.md §7), after what this server takes:
        a REP-style server answers only pulls, and only a ROUTER server takes the caller's items."""
        refusal, data = None, None
        if msg.pull and msg.input is not None:
            refusal = "a pulled stream cannot carry the caller's items (pull mode is for REQ sockets)"
        elif msg.pull and msg.credit < 1:
            refusal = "a pulled stream needs a credit of at least 1 (the most items its answer may hold)"
        elif msg.input is not None and not self.input_streams:
            refusal = (
                "this server takes no items from its callers: client streams need a ROUTER server (a "
                "REP-style server reads one request at a time)"
            )
        elif not msg.pull and not self.push_streams:
            refusal = "this server answers streams only in pull mode (one request, one answer): pull them"
            data = {"pull": True}
        if refusal is not None:
            self.counters["bad_messages"] += 1
            record = ErrorRecord.refusal(StatusCode.PROTOCOL_ERROR, refusal, data)
            return error_frame(msg.id, record, self.codec)
        fields = (msg.id, msg.method, msg.args, msg.kwargs, msg.deadline_ms, msg.headers, False, False)
        r = self.admit_fields(fields, size, reply_to, routing_id, frame, True, msg)  # type: ignore[arg-type]
        if type(r) is CallContext:
            self.counters["streams"] += 1
            return StreamStart(r)  # type: ignore[arg-type]
        return r  # type: ignore[return-value]

    def _cannot_take(
        self, rid: int, name: str, notify: bool, entry: Any, deadline_ms: int | None, cache_key: Any
    ) -> bytes | None:
        """d, e, f: refused for what the server is doing now (stopping, late, full), not for the call."""
        if self.stopping and not entry.while_stopping:
            refusal = Rejected(StatusCode.UNAVAILABLE, "server is shutting down")
        elif deadline_ms == 0:
            self.counters["expired"] += 1
            refusal = Rejected(StatusCode.DEADLINE_EXCEEDED, "deadline passed on arrival")
        else:
            self.counters["overloaded"] += 1
            if self.in_flight >= self.max_in_flight:
                text = f"server at its limit of {self.max_in_flight} calls in flight; retry later"
            else:
                limit = self.max_in_flight_bytes
                text = f"server at its limit of {limit} request bytes in flight; retry later"
            refusal = Rejected(StatusCode.OVERLOADED, text)
        if cache_key is not None:
            self.replies.forget(cache_key)  # refused before running: a resend may run it
        entry.stats.record(outcome_for_status(refusal.code))
        return self._refused(rid, name, notify, refusal)

    def batch_refused(self) -> bytes:
        """The answer of a server that does not take BATCH (it does not advertise it) to one."""
        self.counters["bad_messages"] += 1
        text = "this server does not take BATCH messages (its handshake does not advertise them)"
        return error_frame(0, ErrorRecord.refusal(StatusCode.PROTOCOL_ERROR, text), self.codec)

    def internal_error(self, rid: int, exc: BaseException) -> bytes:
        """The answer when the server itself failed on a request (a bug): INTERNAL, with the id."""
        self.counters["errors"] += 1
        text = f"the server failed on this request: {type(exc).__name__}: {exc}"
        return error_frame(rid, ErrorRecord.refusal(StatusCode.INTERNAL, text), self.codec)

    def bad_framing(self, nframes: int) -> bytes:
        """The answer to a request of the wrong shape (not one body after the envelope): id 0."""
        self.counters["bad_messages"] += 1
        text = f"a zcall request is exactly one body frame after the envelope, got {nframes}"
        log.warning("bad message: %s", text)
        return error_frame(0, ErrorRecord.refusal(StatusCode.PROTOCOL_ERROR, text), self.codec)

    def _refused(self, rid: int, name: str, notify: bool, r: Rejected) -> bytes | None:
        self.counters["errors"] += 1
        if notify:
            log.warning("notify %r refused: %s", name, r.message)
            return None
        return error_frame(rid, ErrorRecord(r.code, r.type, r.message, None, r.data), self.codec)

    # -- finish once --------------------------------------------------------------------------------

    def finish(
        self,
        call: CallContext,
        result: Any = None,
        error: BaseException | None = None,
    ) -> tuple[bytes | None, list[Any]]:
        """End ``call`` (exactly once: later calls return ``(None, [])``) with its result or error.

        Returns the frame to send (None for a NOTIFY) and the envelopes of resends that joined it while
        it ran (send them the same frame). Every interceptor's ``on_reply``/``on_error`` runs, innermost
        first, whichever step ended the call.
        """
        token = call._token
        if token is None:
            return None, _NO_WAITERS
        call._token = None
        st, t0 = token
        self.in_flight -= 1
        self.in_flight_bytes -= call._size
        interceptors = self.interceptors
        if interceptors:
            ctx_token = _current.set(call)
            try:
                for i in reversed(interceptors):
                    try:
                        if error is None:
                            result = i.on_reply(call, result)
                        else:
                            error = i.on_error(call, error)
                    except BaseException as exc:
                        error = exc
            finally:
                _current.reset(ctx_token)
        codec = self.codec
        cache_key = call._cache_key
        if error is None:
            if call.notify:
                st.finished(t0, _OK)
                return None, _NO_WAITERS
            try:
                frame = reply_frame(call.id, result, codec)
                problem = None
                if len(frame) > codec.max_message_size:
                    problem = (
                        f"result of {len(frame)} bytes exceeds the limit of {codec.max_message_size} bytes "
                        "a caller accepts: return less, or stream it"
                    )
                elif self.check_replies and isinstance(result, _CONTAINERS):
                    check_readable(frame, codec)  # as the caller's decoder will: refuse it here, not there
            except BaseException as exc:  # whatever an ext encoder raises: the call's answer, not ours
                problem = (
                    f"result not sendable: {exc}"
                    if isinstance(exc, SerializationError | ProtocolError)
                    else (f"result not sendable: its encoder raised {type(exc).__name__}: {exc}")
                )
                if call._stream is None and is_stream_result(result):
                    return self._not_a_call(call, result, st, t0)
            if problem is None:
                st.finished(t0, _OK)
            else:
                self.counters["errors"] += 1
                log.error("reply to %r (call %d) not sent: %s", call.method, call.id, problem)
                record = ErrorRecord.refusal(StatusCode.INTERNAL, problem)
                record.type = "zcall.SerializationError"
                st.finished(t0, _ERROR)
                frame = error_frame(call.id, record, codec)
        else:
            record = self._record_for(call, error)
            self.counters["errors"] += 1
            st.finished(t0, outcome_for_status(record.code))
            if call.notify:
                return None, _NO_WAITERS
            frame = error_frame(call.id, record, codec)
            if cache_key is not None and record.code in (StatusCode.CANCELLED, StatusCode.UNAVAILABLE):
                return frame, self.replies.forget(cache_key)  # not done: a later resend may run it
        if cache_key is not None:
            return frame, self.replies.complete(cache_key, frame)
        return frame, _NO_WAITERS

    def _not_a_call(self, call: CallContext, result: Any, st: Any, t0: float) -> tuple[bytes, list[Any]]:
        """A CALL whose handler returned a generator: it streams, so the caller is told to open a stream
        (as it is for a generator function, before it runs); the generator is closed unstarted."""
        close = getattr(result, "close", None) or getattr(result, "aclose", None)
        if close is not None and not inspect.isasyncgen(result):
            close()
        self.counters["errors"] += 1
        st.finished(t0, _REJECTED)
        text = f"{call.method!r} streams its results: open it with stream(), not call()"
        record = ErrorRecord.refusal(StatusCode.INVALID_ARGUMENTS, text, {"stream": True})
        return error_frame(call.id, record, self.codec), _NO_WAITERS

    def _record_for(self, call: CallContext, error: BaseException) -> ErrorRecord:
        """The error record for how a call ended: refusals keep their code, handler failures are 1.

        Whatever a handler raises is its answer, ``SystemExit`` and ``KeyboardInterrupt`` included: a
        remote call can never stop a server (stop it with ``stop()`` or a signal); those two are logged
        as warnings."""
        original = getattr(error, "original", None)
        if original is not None and type(error).__name__ == "HandlerExit":
            error = original
        if isinstance(error, Rejected):
            if error.code == StatusCode.DEADLINE_EXCEEDED:
                self.counters["expired"] += 1
            return ErrorRecord(error.code, error.type, error.message, None, error.data)
        if isinstance(error, Expired):
            self.counters["expired"] += 1
            return ErrorRecord.refusal(StatusCode.DEADLINE_EXCEEDED, "deadline passed in queue")
        if isinstance(error, _CANCELLED_ERRORS):
            self.counters["cancelled"] += 1
            return ErrorRecord.refusal(StatusCode.CANCELLED, "call cancelled")
        level = logging.INFO if isinstance(error, Exception) else logging.WARNING
        log.log(level, "handler %r raised %s: %s", call.method, type(error).__name__, error)
        record = ErrorRecord.from_exception(error, with_traceback=self.send_tracebacks)
        if not isinstance(error, RemoteError):  # a registered class travels as itself (error_registry)
            described = describe_error(error, self.codec)
            if described is not None:
                record.type, record.data = described
        return record

    def unavailable(
        self, call: CallContext, why: str = "server stopped before the call finished"
    ) -> tuple[bytes | None, list[Any]]:
        """End a call cut short by a graceful stop's grace period: UNAVAILABLE (``finish``'s answer)."""
        return self.finish(call, error=Rejected(StatusCode.UNAVAILABLE, why))
