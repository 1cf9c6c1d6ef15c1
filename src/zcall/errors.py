"""Every error zcall raises, in one tree, split by blame (local vs remote)::

    ZcallError                      root: catch this to catch everything zcall raises
    ├── RemoteError                 the callee answered with an error record (.code .type .message ...)
    │   ├── MethodNotFound          no such method (.data["close"] lists close matches)
    │   ├── InvalidArguments        the arguments did not bind to the method's signature
    │   ├── PermissionDenied        the callee refused this caller (an allow-list or another interceptor)
    │   ├── ServerBusy              the callee refused the call: at its concurrency limit or stopping
    │   ├── StreamsUnsupported      the callee cannot open this stream (no streams, or not this kind)
    │   ├── DeadlineExceeded        the callee dropped the call unstarted: its deadline had passed
    │   │                           (also a CallTimeout: the call ran out of time)
    │   └── RemoteProtocolError     the callee could not read the request (also a ProtocolError)
    │       └── RemoteMessageTooLarge   ... because it was too large (also a MessageTooLarge)
    ├── CallTimeout                 no reply in time (also a TimeoutError); names endpoints and attempts
    ├── ProtocolError               bytes that are not a valid zcall message (also a ValueError)
    │   └── MessageTooLarge         a message over a size limit (.size, .limit): refused before sending,
    │                               or by the receiver
    ├── SerializationError          a value msgpack cannot carry (also a TypeError)
    ├── Backpressure                too many calls in flight on this client: slow down or raise the limit
    ├── ConnectionLost              the server's connection dropped with the call pending (it may have run)
    ├── AuthenticationFailed        the CURVE handshake failed (key not allowed, wrong server key): not sent
    └── ClientClosed                the client (or engine) was closed while the call was pending

    Rejected                        raised *inside* a handler or server interceptor to answer the call
                                    with a status code of your choice (the caller gets the class above)

``RemoteError`` subclasses are chosen from the wire status code by ``error_for_record``, the one map from
code to class, so ``except zcall.MethodNotFound`` works the same on every client face and server kind.
A refusal of the request itself is both remote and a protocol error: ``PROTOCOL_ERROR`` and
``UNSUPPORTED_VERSION`` arrive as ``RemoteProtocolError`` (a ``RemoteError`` and a ``ProtocolError``),
``MESSAGE_TOO_LARGE`` as ``RemoteMessageTooLarge`` (also a ``MessageTooLarge``).

A handler's exception (``HANDLER_ERROR``) whose class is registered (``zcall.register_error``, and the
builtins handlers commonly raise) is rebuilt as itself: an instance of that class *and* of
``RemoteError``, whose ``.remote`` holds the record's fields (zcall.error_registry says how).
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
    "PermissionDenied",
    "ProtocolError",
    "Rejected",
    "RemoteError",
    "RemoteMessageTooLarge",
    "RemoteProtocolError",
    "SerializationError",
    "ServerBusy",
    "StreamsUnsupported",
    "ZcallError",
    "class_for",
    "error_for_record",
    "wire_type",
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
    _remote: RemoteError | None = None

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
        Exception.__init__(self, message)  # not super(): DeadlineExceeded's next base is CallTimeout

    def __str__(self) -> str:
        where = f" in {self.method!r}" if self.method else ""
        return f"{self.type}{where}: {self.message} [{self.code.name}]"

    @property
    def remote(self) -> RemoteError:
        """The error record as read: ``code``, ``type``, ``message``, ``traceback``, ``data``, ``method``.

        This error itself, except for a rebuilt registered exception: its own attributes may reuse those
        names (an ``OutOfStock`` with a ``code`` of its own), so the record's fields live beside it, in a
        plain ``RemoteError``. Code that handles any remote error reads ``exc.remote.code``."""
        return self._remote if self._remote is not None else self

    @classmethod
    def from_record(cls, record: Any, method: str | None = None) -> RemoteError:
        """The most specific ``RemoteError`` for a decoded wire error record (a dict)."""
        return error_for_record(record, method=method)


class MethodNotFound(RemoteError):
    """The callee has no public method by that name."""


class InvalidArguments(RemoteError):
    """The arguments did not bind to the remote method's signature."""


class ServerBusy(RemoteError):
    """The callee refused the call (concurrency limit reached, or shutting down); retry later."""


class PermissionDenied(RemoteError):
    """The callee refused this caller: its key or address is not allowed to make this call."""


class StreamsUnsupported(RemoteError):
    """The callee refused to open a stream: it does not speak streams (an older zcall, another
    implementation: it answered PROTOCOL_ERROR to the STREAM), or not this kind of stream (a REP-style
    server takes no items from its callers). ``message`` holds the callee's own words."""


class CallTimeout(ZcallError, TimeoutError):
    """No reply arrived in time; says which endpoints were tried, how often, and for how long."""

    method: str | None
    endpoints: list[str]
    attempts: int
    elapsed: float

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


class DeadlineExceeded(RemoteError, CallTimeout):
    """The callee dropped the call unstarted because its deadline had passed (on arrival or in a queue).

    Both a ``RemoteError`` (the callee said so, with a status code) and a ``CallTimeout`` (the call ran out
    of time), so ``except zcall.CallTimeout`` catches every way a call can run out of time."""

    def __init__(
        self,
        message: str,
        *,
        code: StatusCode | int = StatusCode.DEADLINE_EXCEEDED,
        type: str = "zcall.DeadlineExceeded",  # noqa: A002 - the wire field is called "type"
        traceback: str | None = None,
        data: Any = None,
        method: str | None = None,
        endpoints: Sequence[str] = (),
        attempts: int = 1,
        elapsed: float = 0.0,
    ) -> None:
        RemoteError.__init__(
            self, message, code=code, type=type, traceback=traceback, data=data, method=method
        )
        self.endpoints = list(endpoints)
        self.attempts = attempts
        self.elapsed = elapsed


class ProtocolError(ZcallError, ValueError):
    """Bytes that are not a valid zcall message: what was wrong is in the message."""


class MessageTooLarge(ProtocolError):
    """A message larger than a ``max_message_size``: ``size`` and ``limit`` in bytes (None when unknown).

    Raised by a client that refuses to send a call the server would refuse (its limit is known from the
    server's handshake, else the client's own), by a decoder refusing a frame before reading it, and, as
    ``RemoteMessageTooLarge``, for a server's ``MESSAGE_TOO_LARGE`` answer."""

    size: int | None = None
    limit: int | None = None

    def __init__(self, message: str, *, size: int | None = None, limit: int | None = None) -> None:
        self.size = size
        self.limit = limit
        super().__init__(message)


class RemoteProtocolError(RemoteError, ProtocolError):
    """The callee could not read the request (``PROTOCOL_ERROR``) or does not speak its version
    (``UNSUPPORTED_VERSION``): remote, and a ``ProtocolError``."""


class RemoteMessageTooLarge(RemoteProtocolError, MessageTooLarge):
    """The callee refused the request as too large (``MESSAGE_TOO_LARGE``); ``size`` and ``limit`` come
    from the record's ``data`` (``{"size": n, "limit": m}``) when the callee sent them."""

    def __init__(self, message: str, **fields: Any) -> None:
        RemoteError.__init__(self, message, **fields)
        data = self.data
        if isinstance(data, dict):
            size, limit = data.get("size"), data.get("limit")
            self.size = size if type(size) is int else None
            self.limit = limit if type(limit) is int else None


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


class Rejected(ZcallError):
    """Raise inside a handler or a server interceptor to answer the call with ``code`` and ``message``.

    ``raise zcall.Rejected(zcall.StatusCode.PERMISSION_DENIED, "not on the allow-list")`` reaches the
    caller as ``zcall.PermissionDenied``. ``data`` travels in the error record (plain msgpack data)."""

    def __init__(
        self,
        code: StatusCode | int,
        message: str,
        *,
        data: Any = None,
        type: str | None = None,  # noqa: A002 - the wire field is called "type"
    ) -> None:
        self.code = StatusCode(code)
        self.message = message
        self.data = data
        self.type = type or wire_type(self.code)
        super().__init__(message)


# -- the one map from status code to class ----------------------------------------------------------

_BY_CODE: dict[int, type[RemoteError]] = {
    StatusCode.METHOD_NOT_FOUND: MethodNotFound,
    StatusCode.INVALID_ARGUMENTS: InvalidArguments,
    StatusCode.OVERLOADED: ServerBusy,
    StatusCode.UNAVAILABLE: ServerBusy,
    StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    StatusCode.PERMISSION_DENIED: PermissionDenied,
    StatusCode.PROTOCOL_ERROR: RemoteProtocolError,
    StatusCode.UNSUPPORTED_VERSION: RemoteProtocolError,
    StatusCode.MESSAGE_TOO_LARGE: RemoteMessageTooLarge,
}

_WIRE_TYPE: dict[int, str] = {
    StatusCode.HANDLER_ERROR: "Exception",
    StatusCode.METHOD_NOT_FOUND: "zcall.MethodNotFound",
    StatusCode.INVALID_ARGUMENTS: "zcall.InvalidArguments",
    StatusCode.PROTOCOL_ERROR: "zcall.ProtocolError",
    StatusCode.UNSUPPORTED_VERSION: "zcall.ProtocolError",
    StatusCode.DEADLINE_EXCEEDED: "zcall.DeadlineExceeded",
    StatusCode.OVERLOADED: "zcall.ServerBusy",
    StatusCode.CANCELLED: "zcall.Cancelled",
    StatusCode.MESSAGE_TOO_LARGE: "zcall.MessageTooLarge",
    StatusCode.UNAVAILABLE: "zcall.ServerBusy",
    StatusCode.INTERNAL: "zcall.InternalError",
    StatusCode.PERMISSION_DENIED: "zcall.PermissionDenied",
}


def class_for(code: int) -> type[RemoteError]:
    """The ``RemoteError`` class a caller raises for wire status ``code`` (``RemoteError`` if none finer)."""
    return _BY_CODE.get(code, RemoteError)


def wire_type(code: int) -> str:
    """The error record ``type`` a zcall server writes when it refuses a call with ``code`` itself."""
    return _WIRE_TYPE.get(code, "zcall.RemoteError")


def error_for_record(
    record: Any,
    *,
    method: str | None = None,
    endpoint: str | None = None,
    attempts: int = 1,
    elapsed: float = 0.0,
) -> RemoteError:
    """The exception a caller raises for a decoded error record (a dict): one rule for every face."""
    code = record.get("code", StatusCode.INTERNAL)
    klass = class_for(code)
    kwargs: dict[str, Any] = {
        "code": code,
        "type": str(record.get("type", "Exception")),
        "traceback": record.get("traceback"),
        "data": record.get("data"),
        "method": method,
    }
    if klass is DeadlineExceeded:
        kwargs.update(endpoints=[endpoint] if endpoint else [], attempts=attempts, elapsed=elapsed)
    err = klass(str(record.get("message", "")), **kwargs)
    if code == StatusCode.HANDLER_ERROR:  # the handler raised: its class, if registered, comes back
        from .error_registry import rebuild  # the error path only: nothing to import for a result

        return rebuild(err)
    return err
