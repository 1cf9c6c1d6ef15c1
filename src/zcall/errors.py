"""Every error zcall raises, in one tree, split by blame (local vs remote)::

    ZcallError                      root: catch this to catch everything zcall raises
    ├── RemoteError                 the callee answered with an error record (.code .type .message ...)
    │   ├── MethodNotFound          no such method (the message lists close matches)
    │   ├── InvalidArguments        the arguments did not bind to the method's signature
    │   ├── ServerBusy              the callee refused the call: at its concurrency limit or stopping
    │   └── DeadlineExceeded        the callee dropped the call because its deadline had passed
    ├── CallTimeout                 no reply in time (also a TimeoutError); names endpoints and attempts
    ├── ProtocolError               bytes that are not a valid zcall message (also a ValueError)
    │   └── MessageTooLarge         a frame over the configured size limit
    ├── SerializationError          a value msgpack cannot carry (also a TypeError)
    ├── Backpressure                too many calls in flight on this client: slow down or raise the limit
    ├── ConnectionLost              the server's connection dropped with the call pending (it may have run)
    ├── AuthenticationFailed        the CURVE handshake failed (key not allowed, wrong server key): not sent
    └── ClientClosed                the client (or engine) was closed while the call was pending

``RemoteError`` subclasses are chosen from the wire status code, so ``except zcall.MethodNotFound`` works
the same for every server kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .protocol.status import StatusCode

__all__ = [
    "AuthenticationFailed",
    "Backpressure",
    "CallTimeout",
    "ClientClosed",
    "ConnectionLost",
    "DeadlineExceeded",
    "InvalidArguments",
    "MessageTooLarge",
    "MethodNotFound",
    "ProtocolError",
    "RemoteError",
    "SerializationError",
    "ServerBusy",
    "ZcallError",
]


class ZcallError(Exception):
    """Root of every exception zcall raises."""


class RemoteError(ZcallError):
    """The remote side reported an error for a call; its details travel in the error record."""

    code: StatusCode
    type: str
    message: str
    traceback: str | None
    data: Any
    method: str | None

    def __init__(
        self,
        message: str,
        *,
        code: StatusCode | int = StatusCode.HANDLER_ERROR,
        type: str = "Exception",  # noqa: A002 - the wire field is called "type"
        traceback: str | None = None,
        data: Any = None,
        method: str | None = None,
    ) -> None:
        try:
            code = StatusCode(code)
        except ValueError:
            code = StatusCode.INTERNAL
        self.code = code
        self.type = type
        self.message = message
        self.traceback = traceback
        self.data = data
        self.method = method
        super().__init__(message)

    def __str__(self) -> str:
        where = f" in {self.method!r}" if self.method else ""
        return f"{self.type}{where}: {self.message} [{self.code.name}]"

    @classmethod
    def from_record(cls, record: Any, method: str | None = None) -> RemoteError:
        """Build the most specific ``RemoteError`` for a decoded wire error record (a dict)."""
        code = record.get("code", StatusCode.INTERNAL)
        klass = _BY_CODE.get(code, RemoteError)
        return klass(
            str(record.get("message", "")),
            code=code,
            type=str(record.get("type", "Exception")),
            traceback=record.get("traceback"),
            data=record.get("data"),
            method=method,
        )


class MethodNotFound(RemoteError):
    """The callee has no public method by that name."""


class InvalidArguments(RemoteError):
    """The arguments did not bind to the remote method's signature."""


class ServerBusy(RemoteError):
    """The callee refused the call (concurrency limit reached, or shutting down); retry later."""


class DeadlineExceeded(RemoteError):
    """The callee dropped the call unstarted because the caller's deadline had already passed."""


_BY_CODE: dict[int, type[RemoteError]] = {
    StatusCode.METHOD_NOT_FOUND: MethodNotFound,
    StatusCode.INVALID_ARGUMENTS: InvalidArguments,
    StatusCode.OVERLOADED: ServerBusy,
    StatusCode.UNAVAILABLE: ServerBusy,
    StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


class CallTimeout(ZcallError, TimeoutError):
    """No reply arrived in time; says which endpoints were tried, how often, and for how long."""

    def __init__(
        self,
        method: str,
        endpoints: Sequence[str],
        attempts: int,
        elapsed: float,
        detail: str = "",
    ) -> None:
        self.method = method
        self.endpoints = list(endpoints)
        self.attempts = attempts
        self.elapsed = elapsed
        where = ", ".join(self.endpoints) or "<no endpoint>"
        msg = (
            f"call {method!r} got no reply from {where} after {attempts} attempt"
            f"{'s' if attempts != 1 else ''} in {elapsed:.3f}s"
        )
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class ProtocolError(ZcallError, ValueError):
    """Bytes that are not a valid zcall message: what was wrong is in the message."""


class MessageTooLarge(ProtocolError):
    """A frame larger than the configured ``max_message_size``; refused before decoding."""


class SerializationError(ZcallError, TypeError):
    """A value that zcall's msgpack codec cannot encode (register an ext type for it)."""


class Backpressure(ZcallError):
    """Too many calls in flight on this client: wait for some to finish or raise ``max_in_flight``."""


class ConnectionLost(ZcallError, ConnectionError):
    """The connection to the server dropped while the call was pending: it may or may not have run."""

    def __init__(self, method: str, endpoint: str) -> None:
        self.method = method
        self.endpoint = endpoint
        super().__init__(
            f"connection to {endpoint} lost while call {method!r} was pending "
            "(it may or may not have run; retry only if the method is idempotent)"
        )


class AuthenticationFailed(ZcallError, ConnectionError):
    """No connection could be made: the security handshake with ``endpoint`` failed, so the call was
    never sent. ``reason`` says which way (client key refused, server key wrong, CURVE on one side only).
    """

    def __init__(self, method: str, endpoint: str, reason: str) -> None:
        self.method = method
        self.endpoint = endpoint
        self.reason = reason
        super().__init__(f"call {method!r} not sent: security handshake with {endpoint} failed: {reason}")


class ClientClosed(ZcallError):
    """The client was closed (or its engine stopped) before the call finished."""
