"""Status codes carried in error records on the wire (a small, stable enum, as gRPC's)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["StatusCode"]


class StatusCode(IntEnum):
    """Why a call failed; the integer value is what travels on the wire (docs/protocol.md)."""

    OK = 0
    HANDLER_ERROR = 1  # the handler raised an exception
    METHOD_NOT_FOUND = 2  # no public method by that name
    INVALID_ARGUMENTS = 3  # arguments do not bind to the signature
    PROTOCOL_ERROR = 4  # the request was not a valid zcall message
    UNSUPPORTED_VERSION = 5  # the request's protocol version is not spoken here
    DEADLINE_EXCEEDED = 6  # the deadline passed before the work started
    OVERLOADED = 7  # concurrency limit reached; retry later
    CANCELLED = 8  # the caller cancelled the call
    MESSAGE_TOO_LARGE = 9  # the request exceeded the size limit
    UNAVAILABLE = 10  # the server is shutting down
    INTERNAL = 11  # the server failed outside the handler (e.g. result not serializable)
    PERMISSION_DENIED = 12  # the caller may not make this call (an allow-list or another interceptor)
