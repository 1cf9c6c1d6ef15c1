"""The wire, I/O-free: every byte zcall puts on a socket is built and parsed here (docs/protocol.md).

``status`` (the status codes) and ``ids`` have no dependencies; ``codec`` is msgpack with limits;
``wire`` holds the message kinds, the encoders (hot-path ones too) and the decoder. Nothing outside this
package packs an envelope.
"""

from __future__ import annotations

from .codec import DEFAULT_MAX_MESSAGE_SIZE, Codec, default_codec, register_type
from .ids import IdSource
from .status import StatusCode
from .wire import (
    PROTOCOL_VERSION,
    Call,
    Cancel,
    ErrorRecord,
    ErrorReply,
    Event,
    Kind,
    Message,
    Notify,
    Ping,
    Pong,
    Reply,
    decode,
    encode,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "PROTOCOL_VERSION",
    "Call",
    "Cancel",
    "Codec",
    "ErrorRecord",
    "ErrorReply",
    "Event",
    "IdSource",
    "Kind",
    "Message",
    "Notify",
    "Ping",
    "Pong",
    "Reply",
    "StatusCode",
    "decode",
    "default_codec",
    "encode",
    "register_type",
]
