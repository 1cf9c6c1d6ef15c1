"""What every server does with a request, independent of socket type: decode, check, run, encode.

``Dispatcher`` is shared by the REP server and the ROUTER server so both answer every kind of bad input
with the same error record and the same log line; it holds no socket.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import ProtocolError, SerializationError
from ..protocol.codec import Codec
from ..protocol.status import StatusCode
from ..protocol.wire import (
    PROTOCOL_VERSION,
    Call,
    ErrorRecord,
    Kind,
    Message,
    Notify,
    decode,
    error_for,
    peek_id,
)
from .metrics import OTHER, CallToken, Outcome, outcome_for_status
from .registry import Method, Rejected, Service
from .replycache import ReplyCache

__all__ = ["ACK", "NEVER_AWAITABLE", "Dispatcher"]

log = logging.getLogger("zcall.server")

_OK = int(Outcome.OK)
_ERROR = int(Outcome.ERROR)
_REJECTED = int(Outcome.REJECTED)

NEVER_AWAITABLE = frozenset((int, float, str, bytes, bool, list, dict, type(None)))
"""Result types a server need not check for awaitability (the check costs on the hot path)."""

ACK = b""
"""An empty body: what a REP server sends when it must answer but the request wants no reply."""


class Dispatcher:
    """Turns request frames into reply frames for one ``Service``; counts what it refused."""

    __slots__ = (
        "__weakref__",
        "_pack",
        "codec",
        "counters",
        "metrics",
        "replies",
        "send_tracebacks",
        "service",
    )

    def __init__(
        self,
        service: Service,
        codec: Codec,
        *,
        send_tracebacks: bool = True,
        reply_cache: ReplyCache | None = None,
    ) -> None:
        self.service = service
        self.codec = codec
        self.send_tracebacks = send_tracebacks
        self.counters = {
            "calls": 0,
            "errors": 0,
            "bad_messages": 0,
            "expired": 0,
        }
        self._pack = codec.packb
        self.replies = reply_cache if reply_cache is not None else ReplyCache()
        self.metrics = service.metrics  # per service, shared by every server serving it
        service._servers.add(self)

    def decode(self, frame: bytes) -> Message | bytes:
        """The decoded request, or (for bad input) the error frame to answer it with (logged)."""
        try:
            return decode(frame, self.codec)
        except ProtocolError as exc:
            self.counters["bad_messages"] += 1
            log.warning("bad message (%d bytes): %s", len(frame), exc)
            return self.error_frame(peek_id(exc) or 0, error_for(exc))

    def bad_frames(self, nframes: int) -> bytes:
        """Answer to a request that arrived as the wrong number of frames."""
        self.counters["bad_messages"] += 1
        msg = f"a zcall request is exactly one body frame after the envelope, got {nframes}"
        log.warning("bad message: %s", msg)
        return self.error_frame(0, ErrorRecord(StatusCode.PROTOCOL_ERROR, "zcall.ProtocolError", msg))

    def unexpected(self, msg: Message) -> bytes:
        """Answer to a message a server does not take (a reply, an event ... sent to a server)."""
        self.counters["bad_messages"] += 1
        text = f"a server does not accept {type(msg).__name__.lower()} messages"
        log.warning("bad message: %s", text)
        return self.error_frame(msg.id, ErrorRecord(StatusCode.PROTOCOL_ERROR, "zcall.ProtocolError", text))

    def prepare(self, msg: Call | Notify) -> Method:
        """Look the method up and bind the arguments; raises ``Rejected`` with the record to send."""
        self.counters["calls"] += 1
        try:
            m = self.service.lookup(msg.method)
        except Rejected:
            self.metrics.record(OTHER, _REJECTED)  # never the caller's made-up name: bounded rows
            raise
        try:
            m.check(msg.args, msg.kwargs)
        except Rejected:
            self.metrics.record(m.name, _REJECTED)
            raise
        return m

    def reply_frame(self, id: int, result: Any, token: CallToken | None = None) -> bytes:  # noqa: A002
        """Encode a result; a result msgpack cannot carry becomes an INTERNAL error instead."""
        try:
            frame = self._pack([PROTOCOL_VERSION, Kind.REPLY, id, result])
            if token is not None:
                self.metrics.finished(token, _OK)
            return frame
        except SerializationError as exc:
            if token is not None:
                self.metrics.finished(token, _ERROR)
            self.counters["errors"] += 1
            log.error("reply to call %d cannot be encoded: %s", id, exc)
            record = ErrorRecord(
                StatusCode.INTERNAL, "zcall.SerializationError", f"result not sendable: {exc}"
            )
            return self.error_frame(id, record)

    def error_frame(self, id: int, record: ErrorRecord) -> bytes:  # noqa: A002
        try:
            return self._pack([PROTOCOL_VERSION, Kind.ERROR, id, record.to_wire()])
        except SerializationError:  # error data that cannot travel: drop the data, keep the error
            record.data = None
            return self._pack([PROTOCOL_VERSION, Kind.ERROR, id, record.to_wire()])

    def exception_frame(
        self,
        id: int,  # noqa: A002
        method: str,
        exc: BaseException,
        token: CallToken | None = None,
    ) -> bytes:
        """The error reply for an exception raised by a handler (logged with its traceback)."""
        if token is not None:
            self.metrics.finished(token, _ERROR)
        self.counters["errors"] += 1
        log.info("handler %r raised %s: %s", method, type(exc).__name__, exc)
        record = ErrorRecord.from_exception(exc, with_traceback=self.send_tracebacks)
        return self.error_frame(id, record)

    def rejected_frame(
        self,
        id: int,  # noqa: A002
        record: ErrorRecord,
        *,
        method: str | None = None,
        token: CallToken | None = None,
    ) -> bytes:
        """The error reply for a call refused or dropped (counted under ``method`` or its ``token``)."""
        if token is not None:
            self.metrics.finished(token, outcome_for_status(record.code))
        elif method is not None:
            self.metrics.record(method, outcome_for_status(record.code))
        self.counters["errors"] += 1
        if record.code == StatusCode.DEADLINE_EXCEEDED:
            self.counters["expired"] += 1
        return self.error_frame(id, record)
