"""Bodies outside the rules, for the conformance runner (``zcall conform``): any msgpack value packed as
it is, with no zcall checks, and an answer read as plain data. Nothing else in zcall uses these; they
live here because zcall/protocol owns every byte that goes on a socket."""

from __future__ import annotations

from typing import Any

from .codec import default_codec

__all__ = ["pack_raw", "unpack_raw"]


def pack_raw(value: Any) -> bytes:
    """msgpack of ``value`` exactly as given (a request a conformance check builds by hand)."""
    return default_codec.packb(value)


def unpack_raw(body: bytes) -> Any:
    """A server's answer as plain data (raises ``ProtocolError`` when it is not one msgpack value)."""
    return default_codec.unpackb(body)
