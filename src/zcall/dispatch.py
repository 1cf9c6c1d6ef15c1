"""What every server does with a request, independent of socket type: decode, check, run, encode.

``Dispatcher`` is shared by the REP server and the ROUTER server so both answer every kind of bad input
with the same error record and the same log line; it holds no socket.
"""

from __future__ import annotations

import logging
from typing import Any

from .codec import Codec
from .errors import ProtocolError, SerializationError
from .protocol import (
    PROTOCOL_VERSION,
    Call,
    ErrorRecord,
    Kind,
    Message,
    decode,
    error_for,
    peek_id,
)
from .replycache import ReplyCache
from .service import Method, Service
from .status import StatusCode

__all__ = ["Dispatcher", "ACK"]

log = logging.getLogger("zcall.server")

ACK = b""
"""An empty body: what a REP server sends when it must answer but the request wants no reply."""


class Dispatcher:
    """Turns request frames into reply frames for one ``Service``; counts what it refused."""

    __slots__ = ("_pack", "codec", "counters", "replies", "send_tracebacks", "service")

    def __init__(self, service: Service, codec: Codec, *, send_tracebacks: bool = True) -> None:
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
        self.replies = ReplyCache()

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

    def prepare(self, msg: Call) -> Method:
        """Look the method up and bind the arguments; raises ``Rejected`` with the record to send."""
        self.counters["calls"] += 1
        m = self.service.lookup(msg.method)
        m.check(msg.args, msg.kwargs)
        return m

    def reply_frame(self, id: int, result: Any) -> bytes:  # noqa: A002
        """Encode a result; a result msgpack cannot carry becomes an INTERNAL error instead."""
        try:
            return self._pack([PROTOCOL_VERSION, Kind.REPLY, id, result])
        except SerializationError as exc:
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

    def exception_frame(self, id: int, method: str, exc: BaseException) -> bytes:  # noqa: A002
        """The error reply for an exception raised by a handler (logged with its traceback)."""
        self.counters["errors"] += 1
        log.info("handler %r raised %s: %s", method, type(exc).__name__, exc)
        record = ErrorRecord.from_exception(exc, with_traceback=self.send_tracebacks)
        return self.error_frame(id, record)

    def rejected_frame(self, id: int, record: ErrorRecord) -> bytes:  # noqa: A002
        self.counters["errors"] += 1
        if record.code == StatusCode.DEADLINE_EXCEEDED:
            self.counters["expired"] += 1
        return self.error_frame(id, record)
