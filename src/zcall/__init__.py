"""zcall: brokerless ZeroMQ calls for Python: sync over REQ/REP, async over DEALER/ROUTER, msgpack."""

from __future__ import annotations

# The wire first: zcall.errors imports the status codes while zcall.protocol is still loading.
from .protocol import PROTOCOL_VERSION, Codec, StatusCode, register_type  # isort: skip
from .client.asynchronous import AsyncClient
from .client.core import OutgoingCall
from .client.interceptors import ClientInterceptor
from .client.sync import SyncClient
from .error_registry import register_error
from .errors import (
    AuthenticationFailed,
    Backpressure,
    CallTimeout,
    ClientClosed,
    ConnectionLost,
    DeadlineExceeded,
    InvalidArguments,
    MessageTooLarge,
    MethodNotFound,
    PermissionDenied,
    ProtocolError,
    Rejected,
    RemoteError,
    SerializationError,
    ServerBusy,
    StreamsUnsupported,
    ZcallError,
)
from .peer import Peer
from .security import ClientSecurity, ServerSecurity
from .server.asynchronous import AsyncServer
from .server.sync import SyncServer
from .service.context import CallContext, current_call
from .service.interceptors import ServerInterceptor
from .service.registry import Service

__version__ = "0.2.0"

__all__ = [
    "PROTOCOL_VERSION",
    "AsyncClient",
    "AsyncServer",
    "AuthenticationFailed",
    "Backpressure",
    "CallContext",
    "CallTimeout",
    "ClientClosed",
    "ClientInterceptor",
    "ClientSecurity",
    "Codec",
    "ConnectionLost",
    "DeadlineExceeded",
    "InvalidArguments",
    "MessageTooLarge",
    "MethodNotFound",
    "OutgoingCall",
    "Peer",
    "PermissionDenied",
    "ProtocolError",
    "Rejected",
    "RemoteError",
    "SerializationError",
    "ServerBusy",
    "ServerInterceptor",
    "ServerSecurity",
    "Service",
    "StatusCode",
    "StreamsUnsupported",
    "SyncClient",
    "SyncServer",
    "ZcallError",
    "current_call",
    "register_error",
    "register_type",
]
