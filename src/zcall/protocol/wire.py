"""The zcall wire protocol, I/O-free: message objects in, one msgpack frame out, and back.

Every message body is one msgpack array whose first three items are always
``[version, kind, id, ...]`` (docs/protocol.md is the normative text, with test vectors). Nothing here
touches a socket: servers and clients of every flavour share this module, and it is unit-tested alone.

Two ways in and out: ``encode``/``decode`` with message objects (clear, checked), and the hot-path
encoders (``call_frame``, ``reply_frame``, ``error_frame``, ``pong_frame`` ...) and decoders
(``decode_request``, ``decode_answer``: a CALL's or a REPLY's fields, anything else as its message),
which skip the objects where they can. Both write the same bytes; every frame zcall sends is made by
one of them.
"""

from __future__ import annotations

import reprlib
import traceback as _tb
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final

import msgpack

from ..errors import (
    MessageTooLarge,
    ProtocolError,
    RemoteError,
    SerializationError,
    error_for_record,
    wire_type,
)
from .codec import Codec, default_codec
from .status import StatusCode

__all__ = [
    "ACK",
    "DELIMITER",
    "MAX_REQUEST_FRAMES",
    "PROTOCOL_VERSION",
    "Call",
    "Cancel",
    "ErrorRecord",
    "ErrorReply",
    "Event",
    "Kind",
    "Message",
    "Notify",
    "Ping",
    "Pong",
    "Reply",
    "BATCH_CAPABILITY",
    "MAX_MESSAGE_PROPERTY",
    "handshake_properties",
    "read_handshake",
    "MAX_BATCH_ITEMS",
    "Batch",
    "batch_frame",
    "from_array",
    "is_batch",
    "request_fields_of",
    "decode_request",
    "call_frame",
    "check_readable",
    "cancel_frame",
    "decode",
    "encode",
    "error_for",
    "error_frame",
    "event_frame",
    "event_tail",
    "notify_frame",
    "peek_id",
    "peek_header_kind",
    "peek_kind",
    "peek_reply_id",
    "ping_frame",
    "pong_frame",
    "answer_fields_of",
    "decode_answer",
    "reply_fields_of",
    "reply_frame",
    "split_routed",
    "subscribe_frame",
    # streams (docs/protocol.md section 7, "Streams")
    "MAX_CREDIT",
    "STREAM_KINDS",
    "Credit",
    "End",
    "Item",
    "Stream",
    "credit_frame",
    "end_frame",
    "item_frame",
    "stream_frame",
]

PROTOCOL_VERSION: Final = 1
"""The one version this implementation speaks; a message with another gets UNSUPPORTED_VERSION."""

MAX_ID: Final = 2**64 - 1

ACK: Final = b""
"""The empty body: what a REP server answers to a request that wants no reply (NOTIFY, CANCEL). Never a
message: clients ignore it (a server that receives one answers PROTOCOL_ERROR, like any bad body)."""

DELIMITER: Final = b""
"""The empty frame between a ROUTER envelope (or a DEALER's nothing) and the body."""

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60


def _short(x: Any) -> str:
    """A bounded repr of untrusted decoded data for error text (plain ``repr`` may recurse ~1000 deep)."""
    return _repr.repr(x)


class Kind(IntEnum):
    """Message kinds (the second array item)."""

    CALL = 1
    REPLY = 2
    ERROR = 3
    NOTIFY = 4
    EVENT = 5
    PING = 6
    PONG = 7
    CANCEL = 8
    BATCH = 9
    STREAM = 10
    ITEM = 11
    CREDIT = 12
    END = 13


@dataclass(slots=True)
class ErrorRecord:
    """Why a call failed, as it travels: a status code, the remote exception type, text, extra data."""

    code: StatusCode
    type: str
    message: str
    traceback: str | None = None
    data: Any = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "code": int(self.code),
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
            "data": self.data,
        }

    def to_exception(self, method: str | None = None, **where: Any) -> RemoteError:
        """The ``RemoteError`` (most specific subclass for the code) a caller raises for this record;
        ``where`` (endpoint, attempts, elapsed) goes to ``errors.error_for_record``."""
        return error_for_record(self.to_wire(), method=method, **where)

    @classmethod
    def refusal(cls, code: StatusCode, message: str, data: Any = None) -> ErrorRecord:
        """A refusal made by zcall itself (not by a handler): its ``type`` comes from the code."""
        return cls(code, wire_type(code), message, None, data)

    @classmethod
    def from_exception(
        cls, exc: BaseException, code: StatusCode = StatusCode.HANDLER_ERROR, with_traceback: bool = True
    ) -> ErrorRecord:
        """Describe an exception a handler raised (type as ``module.Name`` unless a builtin).

        A ``RemoteError`` from a nested call keeps the remote type and message (and its remote traceback
        after the local one), so the caller sees what really failed, not a wrapper of a wrapper."""
        tb = "".join(_tb.format_exception(exc)) if with_traceback else None
        if isinstance(exc, RemoteError):
            r = exc.remote  # a rebuilt registered exception keeps the record's fields here
            where = f" (in nested call {r.method!r})" if r.method else ""
            if tb is not None and r.traceback:
                tb += "\nRemote traceback:\n" + r.traceback
            return cls(code, r.type, r.message + where, tb, r.data)
        t = type(exc)
        name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
        return cls(code, name, str(exc), tb)


@dataclass(slots=True)
class Call:
    """A request that expects a reply. ``deadline_ms`` is the caller's remaining time when sent;
    ``retry`` says the caller may resend this id (a server then keeps the reply to answer a resend)."""

    id: int
    method: str
    args: list[Any] | tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    deadline_ms: int | None = None
    headers: dict[str, Any] | None = None
    retry: bool = False


@dataclass(slots=True)
class Notify:
    """A one-way call: same shape as ``Call``, never answered (not even with an error)."""

    id: int
    method: str
    args: list[Any] | tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    deadline_ms: int | None = None
    headers: dict[str, Any] | None = None


@dataclass(slots=True)
class Reply:
    """The successful result of the call with the same id."""

    id: int
    result: Any = None


@dataclass(slots=True)
class ErrorReply:
    """The failure of the call with the same id (id 0 when the request's id could not be read)."""

    id: int
    error: ErrorRecord


@dataclass(slots=True)
class Event:
    """A payload pushed by a peer under a topic; ``id`` is the publisher's sequence number."""

    id: int
    topic: str
    payload: Any = None


@dataclass(slots=True)
class Ping:
    """Liveness probe; answered with a ``Pong`` carrying the same id."""

    id: int


@dataclass(slots=True)
class Pong:
    """Answer to the ``Ping`` with the same id."""

    id: int


@dataclass(slots=True)
class Cancel:
    """The caller gave up on the call with this id: best effort, the callee may already be done."""

    id: int


@dataclass(slots=True)
class Batch:
    """Several messages in one body, to be taken in order as if each had come alone.

    Sent only on a connection that agreed to it (``BATCH_CAPABILITY`` in the server's ZMTP handshake
    metadata; a server batches only to a client that sent BATCH). ``decode`` leaves ``items`` as the
    decoded arrays, for the receiver to read one by one (``request_fields_of``, ``reply_fields_of``,
    ``from_array``); ``encode`` takes message objects."""

    id: int
    items: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class Stream:
    """A call whose results (and, with ``input``, whose arguments) travel as a stream of ITEMs.

    ``credit``: how many ITEMs the caller takes before it grants more (CREDIT); ``input``: where the
    caller's own items go (an index into ``args`` or a name in ``kwargs``, whose value on the wire is a
    nil placeholder), or None when the caller sends none; ``pull``: the caller pulls (a REQ socket): every
    STREAM, CREDIT and CANCEL of the stream gets exactly one answer; ``batch``: the caller takes the
    stream's messages in BATCHes. Never resent, so no ``retry``."""

    id: int
    method: str
    args: list[Any] | tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    deadline_ms: int | None = None
    headers: dict[str, Any] | None = None
    credit: int = 0
    input: int | str | None = None
    pull: bool = False
    batch: bool = False
    """The caller takes this stream's messages coalesced in BATCHes (a server may send them so)."""


@dataclass(slots=True)
class Item:
    """One item of stream ``id``: a result from the server, or one of the caller's items. ``size`` is
    its body's length when the receiver knows it (for the byte counts), not a wire field."""

    id: int
    item: Any = None
    size: int = field(default=0, compare=False, repr=False)


@dataclass(slots=True)
class Credit:
    """The sender of this grants ``n`` more ITEMs on stream ``id`` (in pull mode: a pull of up to n)."""

    id: int
    n: int = 1


@dataclass(slots=True)
class End:
    """The caller's items on stream ``id`` are complete (the server's end is its REPLY or ERROR)."""

    id: int


Message = (
    Call | Notify | Reply | ErrorReply | Event | Ping | Pong | Cancel | Batch | Stream | Item | Credit | End
)

STREAM_KINDS: Final = frozenset((10, 11, 12, 13))
"""STREAM, ITEM, CREDIT, END: the kinds a peer without streams refuses (unknown kind, PROTOCOL_ERROR)."""

MAX_CREDIT: Final = 2**32 - 1
"""The largest credit one STREAM or CREDIT may grant; credit never adds up beyond it either."""

_V = PROTOCOL_VERSION
_CALL, _REPLY, _ERROR, _NOTIFY = int(Kind.CALL), int(Kind.REPLY), int(Kind.ERROR), int(Kind.NOTIFY)
_PING, _PONG, _CANCEL = int(Kind.PING), int(Kind.PONG), int(Kind.CANCEL)
_STREAM, _ITEM, _CREDIT, _END = int(Kind.STREAM), int(Kind.ITEM), int(Kind.CREDIT), int(Kind.END)


def _meta(deadline_ms: int | None, headers: Mapping[str, Any] | None, retry: bool = False) -> dict[str, Any]:
    if deadline_ms is None and not headers and not retry:
        return {}
    meta: dict[str, Any] = {}
    if deadline_ms is not None:
        meta["deadline"] = deadline_ms
    if headers:
        meta["headers"] = headers
    if retry:
        meta["retry"] = True
    return meta


def encode(msg: Message, codec: Codec = default_codec) -> bytes:
    """One message → one frame. Raises ``SerializationError`` if a value cannot be sent."""
    if isinstance(msg, Call):
        meta = _meta(msg.deadline_ms, msg.headers, msg.retry)
        return codec.packb([_V, _CALL, msg.id, msg.method, msg.args, msg.kwargs, meta])
    if isinstance(msg, Notify):
        meta = _meta(msg.deadline_ms, msg.headers)
        return codec.packb([_V, _NOTIFY, msg.id, msg.method, msg.args, msg.kwargs, meta])
    if isinstance(msg, Reply):
        return codec.packb([_V, _REPLY, msg.id, msg.result])
    if isinstance(msg, ErrorReply):
        return codec.packb([_V, int(Kind.ERROR), msg.id, msg.error.to_wire()])
    if isinstance(msg, Event):
        return codec.packb([_V, int(Kind.EVENT), msg.id, msg.topic, msg.payload])
    if isinstance(msg, Ping):
        return codec.packb([_V, int(Kind.PING), msg.id])
    if isinstance(msg, Pong):
        return codec.packb([_V, int(Kind.PONG), msg.id])
    if isinstance(msg, Cancel):
        return codec.packb([_V, int(Kind.CANCEL), msg.id])
    if isinstance(msg, Batch):
        return batch_frame([encode(m, codec) for m in msg.items])
    if isinstance(msg, Stream):
        return stream_frame(
            msg.id, msg.method, msg.args, msg.kwargs, msg.credit, msg.input, msg.pull,
            msg.deadline_ms, msg.headers, codec, msg.batch,
        )  # fmt: skip
    if isinstance(msg, Item):
        return item_frame(msg.id, msg.item, codec)
    if isinstance(msg, Credit):
        return credit_frame(msg.id, msg.n)
    if isinstance(msg, End):
        return end_frame(msg.id)
    raise TypeError(f"not a zcall message: {msg!r}")


def call_frame(
    id: int,  # noqa: A002
    method: str,
    args: Any,
    kwargs: dict[str, Any],
    deadline_ms: int | None = None,
    headers: Mapping[str, Any] | None = None,
    codec: Codec = default_codec,
    retry: bool = False,
) -> bytes:
    """Encode a CALL without building a ``Call`` object first (the clients' hot path)."""
    return codec.packb([_V, _CALL, id, method, args, kwargs, _meta(deadline_ms, headers, retry)])


def notify_frame(
    id: int,  # noqa: A002
    method: str,
    args: Any,
    kwargs: dict[str, Any],
    deadline_ms: int | None = None,
    headers: Mapping[str, Any] | None = None,
    codec: Codec = default_codec,
) -> bytes:
    """Encode a NOTIFY (a CALL that is never answered)."""
    return codec.packb([_V, _NOTIFY, id, method, args, kwargs, _meta(deadline_ms, headers)])


def reply_frame(id: int, result: Any, codec: Codec = default_codec) -> bytes:  # noqa: A002
    """Encode a REPLY; raises ``SerializationError`` when the result cannot travel."""
    return codec.packb([_V, _REPLY, id, result])


def error_frame(id: int, record: ErrorRecord, codec: Codec = default_codec) -> bytes:  # noqa: A002
    """Encode an ERROR; error ``data`` that cannot travel is dropped (the error itself always goes)."""
    try:
        return codec.packb([_V, _ERROR, id, record.to_wire()])
    except SerializationError:
        record.data = None
        return codec.packb([_V, _ERROR, id, record.to_wire()])


def stream_frame(
    id: int,  # noqa: A002
    method: str,
    args: Any,
    kwargs: dict[str, Any],
    credit: int,
    input: int | str | None = None,  # noqa: A002
    pull: bool = False,
    deadline_ms: int | None = None,
    headers: Mapping[str, Any] | None = None,
    codec: Codec = default_codec,
    batch: bool = False,
) -> bytes:
    """Encode a STREAM ``[1, 10, id, method, args, kwargs, meta, {credit, input?, pull?, batch?}]``; the
    value at ``input`` in args or kwargs must be the nil placeholder."""
    opts: dict[str, Any] = {"credit": credit}
    if input is not None:
        opts["input"] = input
    if pull:
        opts["pull"] = True
    if batch:
        opts["batch"] = True
    return codec.packb([_V, _STREAM, id, method, args, kwargs, _meta(deadline_ms, headers), opts])


def item_frame(id: int, item: Any, codec: Codec = default_codec) -> bytes:  # noqa: A002
    """Encode an ITEM ``[1, 11, id, item]`` (raises ``SerializationError`` for a value that cannot go).
    One pack of the whole array: a large item is copied once."""
    return codec.packb([_V, _ITEM, id, item])


def credit_frame(id: int, n: int) -> bytes:  # noqa: A002
    """Encode a CREDIT ``[1, 12, id, n]``: n more items may come (pull mode: a pull of up to n)."""
    return default_codec.packb([_V, _CREDIT, id, n])


def end_frame(id: int) -> bytes:  # noqa: A002
    """Encode an END ``[1, 13, id]``: the caller's items are complete."""
    return default_codec.packb([_V, _END, id])


def ping_frame(id: int) -> bytes:  # noqa: A002
    return default_codec.packb([_V, _PING, id])


def pong_frame(id: int) -> bytes:  # noqa: A002
    return default_codec.packb([_V, _PONG, id])


def cancel_frame(id: int) -> bytes:  # noqa: A002
    return default_codec.packb([_V, _CANCEL, id])


_EVENT_HEAD = bytes([0x95, _V, int(Kind.EVENT)])  # msgpack fixarray(5), version, kind


def event_tail(topic: str, payload: Any, codec: Codec = default_codec) -> bytes:
    """The topic and payload of an EVENT, encoded once for every subscriber (see ``event_frame``)."""
    return codec.packb(topic) + codec.packb(payload)


def event_frame(seq: int, tail: bytes) -> bytes:
    """One subscriber's EVENT: its own sequence number in the id position, then the shared tail."""
    return _EVENT_HEAD + default_codec.packb(seq) + tail


def subscribe_frame(id: int, patterns: list[str], codec: Codec = default_codec) -> bytes:  # noqa: A002
    """The NOTIFY that replaces this connection's event subscriptions (``[]`` unsubscribes)."""
    from .topics import SUBSCRIBE_METHOD

    return codec.packb([_V, _NOTIFY, id, SUBSCRIBE_METHOD, [patterns], {}, {}])


MAX_REQUEST_FRAMES: Final = 18
"""A request read on a ROUTER has at most this many frames: the body, the delimiter, and up to 16
routing ids (a chain of proxies). More is refused before any frame is copied."""


BATCH_CAPABILITY: Final = ("X-Zcall-Batch", "1")
"""The ZMTP handshake property (ZMQ_METADATA) of a socket that accepts BATCH messages."""

MAX_MESSAGE_PROPERTY: Final = "X-Zcall-Max-Message-Size"
"""The ZMTP handshake property that states the largest body a server reads, in bytes (decimal)."""


def handshake_properties(max_message_size: int, *, batch: bool) -> list[bytes]:
    """The ``ZMQ_METADATA`` values a server sets, one property each: its size limit, and BATCH if taken."""
    props = [f"{MAX_MESSAGE_PROPERTY}:{max_message_size}".encode()]
    if batch:
        props.append(f"{BATCH_CAPABILITY[0]}:{BATCH_CAPABILITY[1]}".encode())
    return props


def read_handshake(batch: str | None, max_message_size: str | None) -> tuple[bool, int | None]:
    """What a server's handshake properties say (None: absent): ``(takes BATCH, its size limit)``."""
    size = int(max_message_size) if max_message_size and max_message_size.isdigit() else None
    return batch == BATCH_CAPABILITY[1], size


MAX_BATCH_ITEMS: Final = 256
"""A sender puts at most this many messages in one BATCH (and at most half the receiver's size limit)."""

_BATCH_HEAD = bytes([0x94, _V, 9, 0])  # fixarray(4), version, kind BATCH, id 0


def batch_frame(bodies: list[bytes]) -> bytes:
    """One BATCH body ``[1, 9, 0, [m1, ..., mn]]`` from messages already encoded: their bytes are joined
    under one array header, never decoded again."""
    n = len(bodies)
    if n < 16:
        head = bytes((0x90 | n,))
    elif n < 65536:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return _BATCH_HEAD + head + b"".join(bodies)


def is_batch(body: Any) -> bool:
    """Whether ``body`` starts like a BATCH as zcall writes it (a cheap test; ``decode`` is the real one)."""
    return len(body) > 4 and body[0] == 0x94 and body[1] == _V and body[2] == 9


def split_routed(frames: list[Any]) -> tuple[list[Any], Any] | None:
    """``(envelope, body)`` of a request read on a ROUTER: the body is the last frame, the one before it
    is the empty delimiter, and everything before the body (delimiter included) is the envelope to reply
    with. ``None`` for any other shape, or more than ``MAX_REQUEST_FRAMES`` frames (answer PROTOCOL_ERROR
    id 0 to ``[frames[0], DELIMITER]``)."""
    n = len(frames)
    if n < 3 or n > MAX_REQUEST_FRAMES or len(frames[-2]) != 0:
        return None
    return frames[:-1], frames[-1]


class UnsupportedVersion(ProtocolError):
    """A well-formed envelope in a protocol version this side does not speak."""

    def __init__(self, version: Any, id: int | None) -> None:  # noqa: A002
        self.version = version
        self.id = id
        super().__init__(f"protocol version {_short(version)} is not supported (this side speaks {_V})")


class BadMessage(ProtocolError):
    """A malformed message; ``id`` is set when the request id could still be read (so it can be answered)."""

    def __init__(self, reason: str, id: int | None = None) -> None:  # noqa: A002
        self.id = id
        super().__init__(reason)


def _check_call_fields(m: list[Any], n: int, id_: int, what: str) -> tuple[Any, Any, Any, Any]:
    if n < 7:
        raise BadMessage(
            f"{what} needs 7 items [version, kind, id, method, args, kwargs, meta], got {n}", id_
        )
    method, args, kwargs, meta = m[3], m[4], m[5], m[6]
    if type(method) is not str:
        raise BadMessage(f"{what} method name must be a string, got {type(method).__name__}", id_)
    if type(args) is not list:
        raise BadMessage(f"{what} args must be an array, got {type(args).__name__}", id_)
    if type(kwargs) is not dict:
        if kwargs is None:
            kwargs = {}
        else:
            raise BadMessage(f"{what} kwargs must be a map, got {type(kwargs).__name__}", id_)
    for k in kwargs:
        if type(k) is not str:
            raise BadMessage(f"{what} kwargs keys must be strings, got {type(k).__name__}", id_)
    if meta is None:
        meta = {}
    elif type(meta) is not dict:
        raise BadMessage(f"{what} meta must be a map, got {type(meta).__name__}", id_)
    return method, args, kwargs, meta


def _meta_fields(meta: dict[str, Any], id_: int) -> tuple[int | None, dict[str, Any] | None, bool]:
    if not meta:
        return None, None, False
    deadline = meta.get("deadline")
    if deadline is not None and (type(deadline) is not int or deadline < 0):
        raise BadMessage(f"meta.deadline must be a non-negative integer (ms), got {_short(deadline)}", id_)
    headers = meta.get("headers")
    if headers is not None and type(headers) is not dict:
        raise BadMessage(f"meta.headers must be a map, got {type(headers).__name__}", id_)
    return deadline, headers, meta.get("retry") is True


def decode(frame: bytes, codec: Codec = default_codec) -> Message:
    """One frame → one message. Raises ``ProtocolError`` (``BadMessage``/``UnsupportedVersion``)."""
    return _message(codec.unpackb(frame), frame)


def _message(m: Any, frame: bytes) -> Message:
    """The message of body ``m``, decoded from ``frame`` (an ITEM learns its size, for the byte counts)."""
    msg = from_array(m)
    if type(msg) is Item:
        msg.size = len(frame)
    return msg


def from_array(m: Any, *, in_batch: bool = False) -> Message:
    """A decoded body (or one item of a BATCH) → its message; the checks of ``decode``."""
    if type(m) is not list:
        raise BadMessage(f"a zcall message is a msgpack array, got {type(m).__name__}")
    n = len(m)
    if n < 3:
        raise BadMessage(f"a zcall message has at least 3 items [version, kind, id], got {n}")
    version, kind, id_ = m[0], m[1], m[2]
    id_ok = type(id_) is int and 0 <= id_ <= MAX_ID
    if version != _V or type(version) is not int:
        raise UnsupportedVersion(version, id_ if id_ok else None)
    if not id_ok:
        raise BadMessage(f"message id must be an unsigned 64-bit integer, got {_short(id_)}")
    if type(kind) is not int:  # not bool or float: true == 1.0 == Kind.CALL in Python
        raise BadMessage(f"message kind must be an integer, got {type(kind).__name__}", id_)
    # Plain int constants, the two hot kinds first: this runs once per message on every socket.
    if kind == _REPLY:
        if n < 4:
            raise BadMessage("reply needs 4 items [version, kind, id, result]", id_)
        return Reply(id_, m[3])
    if kind in (_CALL, _NOTIFY):
        what = "call" if kind == _CALL else "notify"
        method, args, kwargs, meta = _check_call_fields(m, n, id_, what)
        if meta:
            deadline, headers, retry = _meta_fields(meta, id_)
        else:
            deadline, headers, retry = None, None, False
        if kind == _CALL:
            return Call(id_, method, args, kwargs, deadline, headers, retry)
        return Notify(id_, method, args, kwargs, deadline, headers)
    if kind == Kind.ERROR:
        if n < 4 or type(m[3]) is not dict:
            raise BadMessage("error needs 4 items [version, kind, id, {code, type, message, ...}]", id_)
        rec = m[3]
        code = rec.get("code")
        try:
            code = StatusCode(code) if type(code) is int else StatusCode.INTERNAL
        except ValueError:  # a code this side does not know
            code = StatusCode.INTERNAL
        etype, text, tb = rec.get("type"), rec.get("message"), rec.get("traceback")
        if etype is None:  # nil reads as absent, as in meta
            etype = "Exception"
        if text is None:
            text = ""
        return ErrorReply(
            id_,
            ErrorRecord(
                code,
                etype if type(etype) is str else _short(etype),
                text if type(text) is str else _short(text),
                tb if tb is None or type(tb) is str else _short(tb),
                rec.get("data"),
            ),
        )
    if kind == Kind.EVENT:
        if n < 5 or type(m[3]) is not str:
            raise BadMessage("event needs 5 items [version, kind, id, topic:str, payload]", id_)
        return Event(id_, m[3], m[4])
    if kind == Kind.PING:
        return Ping(id_)
    if kind == Kind.PONG:
        return Pong(id_)
    if kind == Kind.CANCEL:
        return Cancel(id_)
    if kind == Kind.BATCH:
        if in_batch:
            raise BadMessage("a batch cannot hold a batch", id_)
        if id_ != 0:
            raise BadMessage(f"a batch has id 0, got {id_}", id_)
        if n < 4 or type(m[3]) is not list or not 1 <= len(m[3]) <= MAX_BATCH_ITEMS:
            raise BadMessage(
                f"batch needs 4 items [version, kind, 0, [message, ...]], 1 to {MAX_BATCH_ITEMS} messages",
                id_,
            )
        return Batch(id_, m[3])
    if kind == _ITEM:
        if n < 4:
            raise BadMessage("item needs 4 items [version, kind, id, item]", id_)
        return Item(id_, m[3])
    if kind == _CREDIT:
        if n < 4 or type(m[3]) is not int or not 1 <= m[3] <= MAX_CREDIT:
            got = _short(m[3]) if n >= 4 else "nothing"
            raise BadMessage(f"credit needs 4 items [version, kind, id, n], n 1 ... 2**32-1, got {got}", id_)
        return Credit(id_, m[3])
    if kind == _END:
        return End(id_)
    if kind == _STREAM:
        return _stream(m, n, id_)
    raise BadMessage(f"unknown message kind {kind}", id_)


def _stream(m: list[Any], n: int, id_: int) -> Stream:
    """The checks of a STREAM: a CALL's fields, then its stream options ``{credit, input, pull}``."""
    method, args, kwargs, meta = _check_call_fields(m, n, id_, "stream")
    if n < 8:
        raise BadMessage("stream needs 8 items [version, kind, id, method, args, kwargs, meta, options]", id_)
    deadline, headers, _ = _meta_fields(meta, id_) if meta else (None, None, False)
    opts = m[7]
    if opts is None:
        opts = {}
    elif type(opts) is not dict:
        raise BadMessage(f"stream options must be a map, got {type(opts).__name__}", id_)
    credit = opts.get("credit")
    if credit is None:
        credit = 0
    elif type(credit) is not int or not 0 <= credit <= MAX_CREDIT:
        raise BadMessage(f"stream credit must be an integer 0 ... 2**32-1, got {_short(credit)}", id_)
    where = opts.get("input")
    if where is not None:
        if type(where) is int:
            if not 0 <= where < len(args) or args[where] is not None:
                raise BadMessage(f"stream input {where} is not a nil placeholder in args", id_)
        elif type(where) is str:
            if kwargs.get(where, 0) is not None:
                raise BadMessage(f"stream input {where!r} is not a nil placeholder in kwargs", id_)
        else:
            raise BadMessage(f"stream input must be an index or a name, got {_short(where)}", id_)
    pull, batch = opts.get("pull") is True, opts.get("batch") is True
    return Stream(id_, method, args, kwargs, deadline, headers, credit, where, pull, batch)


def decode_request(
    frame: bytes, codec: Codec = default_codec
) -> tuple[int, str, list[Any], dict[str, Any], int | None, dict[str, Any] | None, bool, bool] | Message:
    """What a server receives, decoded once: ``(id, method, args, kwargs, deadline_ms, headers, retry,
    notify)`` for a well-formed CALL or NOTIFY (the hot path: no message object, the checks ``decode``
    makes for them), else the message as ``decode`` makes it (a BATCH, a PING, a stream's ITEM...).
    Raises ``ProtocolError`` as ``decode`` does."""
    m = codec.unpackb(frame)
    fields = request_fields_of(m)
    if fields is not None:
        return fields
    return _message(m, frame)


def request_fields_of(
    m: Any,
) -> tuple[int, str, list[Any], dict[str, Any], int | None, dict[str, Any] | None, bool, bool] | None:
    """``decode_request``'s fields of a decoded body (or of one item of a BATCH), or None."""
    if type(m) is not list or len(m) < 7:
        return None
    v, k, rid, method, args, kwargs, meta = m[0], m[1], m[2], m[3], m[4], m[5], m[6]
    if (
        type(v) is not int
        or v != _V
        or type(k) is not int
        or (k != _CALL and k != _NOTIFY)
        or type(rid) is not int
        or not 0 <= rid <= MAX_ID
        or type(method) is not str
        or type(args) is not list
    ):
        return None
    if type(kwargs) is not dict:
        if kwargs is not None:
            return None
        kwargs = {}
    elif kwargs:
        for key in kwargs:
            if type(key) is not str:
                return None
    if type(meta) is not dict or not meta:
        if meta is None or type(meta) is dict:
            return rid, method, args, kwargs, None, None, False, k == _NOTIFY
        return None
    deadline = meta.get("deadline")
    if deadline is not None and (type(deadline) is not int or deadline < 0):
        return None
    headers = meta.get("headers")
    if headers is not None and type(headers) is not dict:
        return None
    notify = k == _NOTIFY
    return rid, method, args, kwargs, deadline, headers, (not notify and meta.get("retry") is True), notify


def decode_answer(frame: bytes, codec: Codec = default_codec) -> tuple[int, Any] | Message:
    """What a client receives, decoded once: ``(id, result)`` for a well-formed REPLY (the hot path: no
    message object), else the message as ``decode`` makes it. Raises ``ProtocolError`` as ``decode`` does."""
    m = codec.unpackb(frame)
    fast = reply_fields_of(m)
    if fast is not None:
        return fast
    return _message(m, frame)


_FAST_ANSWERS = frozenset((_REPLY, _ITEM))


def answer_fields_of(m: Any) -> tuple[int, int, Any] | None:
    """``(kind, id, value)`` of a well-formed REPLY or ITEM (a decoded body, or one item of a BATCH): the
    two answers a client takes most, without a message object; None for anything else (``from_array``)."""
    if type(m) is list and len(m) >= 4:
        v, k, rid = m[0], m[1], m[2]
        ok = type(v) is int and type(k) is int and type(rid) is int and v == _V and 0 <= rid <= MAX_ID
        if ok and k in _FAST_ANSWERS:
            return k, rid, m[3]
    return None


def reply_fields_of(m: Any) -> tuple[int, Any] | None:
    """``(id, result)`` of a well-formed REPLY (a decoded body, or one item of a BATCH), or None."""
    if type(m) is list and len(m) >= 4:
        v, k, rid = m[0], m[1], m[2]
        if type(v) is int and type(k) is int and type(rid) is int and v == _V and k == _REPLY and rid >= 0:
            return (rid, m[3]) if rid <= MAX_ID else None
    return None


def check_readable(frame: bytes, codec: Codec = default_codec) -> None:
    """Raise ``ProtocolError`` if a receiver with ``codec``'s limits would refuse ``frame`` (a map key
    that is not str or bin, too deep, too many containers): a server checks its replies with it."""
    codec.unpackb(frame)


_ANSWERS = (_REPLY, _ERROR, _ITEM, _CREDIT)  # what a client receives for a call or a stream


def peek_reply_id(body: bytes) -> int | None:
    """The id of a reply that cannot be decoded (too large, a non-str map key, a bad value further in),
    read from its first items only, so the client can fail that call at once; None if even that fails."""
    try:
        u = msgpack.Unpacker(max_buffer_size=256, raw=True, strict_map_key=False)
        u.feed(bytes(body[:64]))
        if u.read_array_header() < 3:
            return None
        version, kind, rid = u.unpack(), u.unpack(), u.unpack()
    except Exception:
        return None
    ok = type(version) is int and type(kind) is int and kind in _ANSWERS and type(rid) is int
    return rid if ok and 0 < rid <= MAX_ID else None


def peek_header_kind(body: Any) -> int | None:
    """The kind of a body that failed to decode, read from its first bytes only (bounded: never the
    rest of a hostile body), or None; for a server deciding what an error answers."""
    try:
        u = msgpack.Unpacker(max_buffer_size=256, raw=True, strict_map_key=False)
        u.feed(bytes(body[:64]))
        if u.read_array_header() < 3:
            return None
        u.skip()
        kind = u.unpack()
    except Exception:
        return None
    return kind if type(kind) is int else None


def peek_kind(body: bytes) -> Kind | None:
    """The kind of a zcall message body, read leniently (any version, any payload), or None if it is not
    one; for tools that watch traffic (the test fault proxy), never for serving."""
    try:
        m = msgpack.unpackb(body, raw=True, strict_map_key=False)  # bounded by the body's own size
    except Exception:
        return None
    if type(m) is not list or len(m) < 2 or type(m[1]) is not int:
        return None
    try:
        return Kind(m[1])
    except ValueError:
        return None


def peek_id(exc: ProtocolError) -> int | None:
    """The request id a decoding error could still read, so the sender can be told; else None."""
    return getattr(exc, "id", None)


def error_for(exc: ProtocolError) -> ErrorRecord:
    """The error record that answers a message which failed to decode."""
    if isinstance(exc, UnsupportedVersion):
        code = StatusCode.UNSUPPORTED_VERSION
    elif isinstance(exc, MessageTooLarge):
        code = StatusCode.MESSAGE_TOO_LARGE
        if exc.size is not None and exc.limit is not None:  # so the sender can tell which message it was
            return ErrorRecord(code, wire_type(code), str(exc), None, {"size": exc.size, "limit": exc.limit})
    else:
        code = StatusCode.PROTOCOL_ERROR
    return ErrorRecord(code, wire_type(code), str(exc))
