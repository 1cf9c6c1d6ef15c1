"""zcall: brokerless ZeroMQ calls for Python: sync over REQ/REP, async over DEALER/ROUTER, msgpack."""

from __future__ import annotations

from .async_client import AsyncClient
from .async_server import AsyncServer
from .codec import Codec, register_type
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
    ProtocolError,
    RemoteError,
    SerializationError,
    ServerBusy,
    ZcallError,
)
from .peer import Peer
from .protocol import PROTOCOL_VERSION
from .security import ClientSecurity, ServerSecurity
from .service import Service
from .status import StatusCode
from .sync_client import SyncClient
from .sync_server import SyncServer

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "AsyncClient",
    "AsyncServer",
    "AuthenticationFailed",
    "Backpressure",
    "CallTimeout",
    "ClientClosed",
    "ClientSecurity",
    "Codec",
    "ConnectionLost",
    "DeadlineExceeded",
    "InvalidArguments",
    "MessageTooLarge",
    "MethodNotFound",
    "Peer",
    "ProtocolError",
    "RemoteError",
    "SerializationError",
    "ServerBusy",
    "ServerSecurity",
    "Service",
    "StatusCode",
    "SyncClient",
    "SyncServer",
    "ZcallError",
    "register_type",
]
