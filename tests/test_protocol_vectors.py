"""docs/protocol-vectors.json holds zcall to the written protocol: every vector decodes to its stated
fields (or to its stated error and id), and every canonical one re-encodes to the identical bytes.

Vectors that describe behaviour the code does not have yet are skipped, with a reason starting
"pending:" (``PENDING``); set ZCALL_RUN_PENDING=1 to run them anyway."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import os
import pathlib
import struct
import uuid
from typing import Any

import msgpack
import pytest

import zcall
from zcall.errors import MessageTooLarge, ProtocolError
from zcall.protocol import wire as protocol
from zcall.protocol.codec import Codec, default_codec
from zcall.protocol.status import StatusCode
from zcall.protocol.wire import (
    Batch,
    Call,
    Cancel,
    Credit,
    End,
    ErrorRecord,
    ErrorReply,
    Event,
    Item,
    Message,
    Notify,
    Ping,
    Pong,
    Reply,
    Stream,
)

VECTORS_PATH = pathlib.Path(__file__).resolve().parent.parent / "docs" / "protocol-vectors.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text())
POSITIVE = [v for v in VECTORS if "message" in v]
NEGATIVE = [v for v in VECTORS if "error" in v]
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
NEST_MIN = 64  # a chain of at least this many one-item arrays is written {"$nest": ...}


class Size(enum.Enum):
    """The enum the vectors name "shop.Size" (registered under that name, so it is rebuilt)."""

    S = "s"
    M = "m"


@dataclasses.dataclass
class Line:
    """The dataclass the vectors name "shop.Line"."""

    sku: str
    qty: int
    size: Size = Size.M


NAMED: dict[str, type] = {"shop.Size": Size, "shop.Line": Line}
for _name, _cls in NAMED.items():
    zcall.register_type(_cls, name=_name)
WIRE_NAMES = {cls: name for name, cls in NAMED.items()}

# Vectors for behaviour decided in docs/protocol.md that the code does not have yet: name -> why skipped.
PENDING: dict[str, str] = {}
RUN_PENDING = os.environ.get("ZCALL_RUN_PENDING") == "1"


def skip_pending(v: dict[str, Any]) -> None:
    if v["name"] in PENDING and not RUN_PENDING:
        pytest.skip(PENDING[v["name"]])


# -- the JSON rendering of values (docs/protocol.md, "Test vectors") ---------------------------------


def from_json(v: Any) -> Any:
    """Tagged JSON -> the Python value zcall decodes to ($bin, $float, $timestamp, $ext, $map, $nest)."""
    if isinstance(v, dict):
        if len(v) == 1:
            ((tag, x),) = v.items()
            if tag == "$bin":
                return bytes.fromhex(x)
            if tag == "$float":
                return float(x)
            if tag == "$timestamp":
                assert x["nanoseconds"] % 1000 == 0, "Python datetimes hold microseconds"
                return EPOCH + dt.timedelta(seconds=x["seconds"], microseconds=x["nanoseconds"] // 1000)
            if tag == "$ext":
                return msgpack.ExtType(x["code"], bytes.fromhex(x["data"]))
            if tag == "$decimal":
                return decimal.Decimal(x)
            if tag == "$uuid":
                return uuid.UUID(x)
            if tag == "$date":
                return dt.date.fromisoformat(x)
            if tag == "$time":
                return dt.time.fromisoformat(x)
            if tag == "$timedelta":
                return dt.timedelta(*x)
            if tag == "$set":
                return {_hashable(from_json(y)) for y in x}
            if tag == "$frozenset":
                return frozenset(_hashable(from_json(y)) for y in x)
            if tag == "$enum":
                return NAMED[x["name"]](from_json(x["value"]))
            if tag == "$record":
                return NAMED[x["name"]](**{k: from_json(y) for k, y in x["fields"].items()})
            if tag == "$map":
                return {from_json(k): from_json(y) for k, y in x}
            if tag == "$nest":
                value = from_json(x["value"])
                for _ in range(x["depth"]):  # a loop, not recursion: the nesting may be 1000 deep
                    value = [value]
                return value
        return {k: from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_json(x) for x in v]
    return v


def _hashable(v: Any) -> Any:
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v


def to_json(v: Any) -> Any:
    """A decoded Python value -> the tagged JSON form used in the vectors."""
    if isinstance(v, enum.Enum):
        return {"$enum": {"name": WIRE_NAMES[type(v)], "value": to_json(v.value)}}
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, tuple) and not isinstance(v, msgpack.ExtType):  # only inside a set: an array there
        return [to_json(x) for x in v]
    if isinstance(v, decimal.Decimal):
        return {"$decimal": str(v)}
    if isinstance(v, uuid.UUID):
        return {"$uuid": str(v)}
    if isinstance(v, dt.timedelta):
        return {"$timedelta": [v.days, v.seconds, v.microseconds]}
    if isinstance(v, dt.time):
        return {"$time": v.isoformat()}
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return {"$date": v.isoformat()}
    if isinstance(v, frozenset):
        return {"$frozenset": [to_json(x) for x in v]}
    if isinstance(v, set):
        return {"$set": [to_json(x) for x in v]}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        fields = {f.name: to_json(getattr(v, f.name)) for f in dataclasses.fields(v)}
        return {"$record": {"name": WIRE_NAMES[type(v)], "fields": fields}}
    if isinstance(v, list):
        depth, inner = 0, v
        while type(inner) is list and len(inner) == 1:
            depth, inner = depth + 1, inner[0]
        if depth >= NEST_MIN:
            return {"$nest": {"depth": depth, "value": to_json(inner)}}
    if isinstance(v, float):
        return {"$float": repr(v)}
    if isinstance(v, bytes):
        return {"$bin": v.hex()}
    if isinstance(v, dt.datetime):
        assert v.tzinfo is not None, "decoded timestamps are aware (UTC)"
        td = v - EPOCH
        return {
            "$timestamp": {"seconds": td.days * 86400 + td.seconds, "nanoseconds": td.microseconds * 1000}
        }
    if isinstance(v, msgpack.ExtType):
        return {"$ext": {"code": v.code, "data": v.data.hex()}}
    if isinstance(v, list):
        return [to_json(x) for x in v]
    if isinstance(v, dict):
        if all(type(k) is str for k in v) and not (len(v) == 1 and next(iter(v)).startswith("$")):
            return {k: to_json(x) for k, x in v.items()}
        return {"$map": [[to_json(k), to_json(x)] for k, x in v.items()]}
    raise AssertionError(f"unexpected decoded type {type(v)}")


def meta_as_read(kind: str, meta: Any) -> dict[str, Any]:
    """What a receiver makes of a vector's ``meta`` (listed as encoded) by docs/protocol.md section 4: nil
    and absent are the same, unknown keys are ignored, retry counts only when exactly true on a CALL."""
    m = from_json(meta) if meta is not None else {}
    read: dict[str, Any] = {}
    if m.get("deadline") is not None:
        read["deadline"] = m["deadline"]
    if m.get("headers") is not None:
        read["headers"] = to_json(m["headers"])
    if kind == "CALL" and m.get("retry") is True:
        read["retry"] = True
    return read


def message_as_read(m: dict[str, Any]) -> dict[str, Any]:
    """A vector's ``message`` with kwargs and meta read as a receiver reads them (nil kwargs: ``{}``)."""
    if m["kind"] == "BATCH":
        return {**m, "items": [message_as_read(x) for x in m["items"]]}
    if m["kind"] not in ("CALL", "NOTIFY", "STREAM"):
        return m
    return {
        **m,
        "kwargs": {} if m["kwargs"] is None else m["kwargs"],
        "meta": meta_as_read(m["kind"], m["meta"]),
    }


def message_to_json(msg: Message) -> dict[str, Any]:
    """Render a decoded message the way the vectors state it (kwargs and meta as read)."""
    t = type(msg)
    if t is Stream:
        meta: dict[str, Any] = {}
        if msg.deadline_ms is not None:
            meta["deadline"] = msg.deadline_ms
        if msg.headers is not None:
            meta["headers"] = to_json(msg.headers)
        options: dict[str, Any] = {"credit": msg.credit}
        if msg.input is not None:
            options["input"] = msg.input
        if msg.pull:
            options["pull"] = True
        return {
            "kind": "STREAM",
            "id": msg.id,
            "method": msg.method,
            "args": to_json(list(msg.args)),
            "kwargs": to_json(msg.kwargs),
            "meta": meta,
            "options": options,
        }
    if t is Item:
        return {"kind": "ITEM", "id": msg.id, "item": to_json(msg.item)}
    if t is Credit:
        return {"kind": "CREDIT", "id": msg.id, "n": msg.n}
    if t is Call or t is Notify:
        meta: dict[str, Any] = {}
        if msg.deadline_ms is not None:
            meta["deadline"] = msg.deadline_ms
        if msg.headers is not None:
            meta["headers"] = to_json(msg.headers)
        if t is Call and msg.retry:
            meta["retry"] = True
        return {
            "kind": "CALL" if t is Call else "NOTIFY",
            "id": msg.id,
            "method": msg.method,
            "args": to_json(list(msg.args)),
            "kwargs": to_json(msg.kwargs),
            "meta": meta,
        }
    if t is Reply:
        return {"kind": "REPLY", "id": msg.id, "result": to_json(msg.result)}
    if t is ErrorReply:
        e = msg.error
        assert isinstance(e.code, StatusCode)
        return {
            "kind": "ERROR",
            "id": msg.id,
            "error": {
                "code": int(e.code),
                "type": e.type,
                "message": e.message,
                "traceback": e.traceback,
                "data": to_json(e.data),
            },
        }
    if t is Event:
        return {"kind": "EVENT", "id": msg.id, "topic": msg.topic, "payload": to_json(msg.payload)}
    if t is Batch:  # decoded items are arrays, each read as if it had come alone
        items = [message_to_json(protocol.from_array(x, in_batch=True)) for x in msg.items]
        return {"kind": "BATCH", "id": msg.id, "items": items}
    return {"kind": t.__name__.upper(), "id": msg.id}


def message_from_json(m: dict[str, Any]) -> Message:
    """Build the zcall message object a vector describes."""
    kind, id_ = m["kind"], m["id"]
    if kind in ("CALL", "NOTIFY"):
        meta = m["meta"]
        fields = (
            id_,
            m["method"],
            from_json(m["args"]),
            from_json(m["kwargs"]),
            meta.get("deadline"),
            from_json(meta["headers"]) if "headers" in meta else None,
        )
        if kind == "NOTIFY":
            assert "retry" not in meta
            return Notify(*fields)
        return Call(*fields, retry=meta.get("retry", False))
    if kind == "REPLY":
        return Reply(id_, from_json(m["result"]))
    if kind == "ERROR":
        e = m["error"]
        record = ErrorRecord(
            StatusCode(e["code"]), e["type"], e["message"], e["traceback"], from_json(e["data"])
        )
        return ErrorReply(id_, record)
    if kind == "EVENT":
        return Event(id_, m["topic"], from_json(m["payload"]))
    if kind == "BATCH":
        return Batch(id_, [message_from_json(x) for x in m["items"]])
    if kind == "STREAM":
        meta, opts = m["meta"], m["options"]
        return Stream(
            id_,
            m["method"],
            from_json(m["args"]),
            from_json(m["kwargs"]),
            meta.get("deadline"),
            from_json(meta["headers"]) if "headers" in meta else None,
            opts["credit"],
            opts.get("input"),
            opts.get("pull", False),
        )
    if kind == "ITEM":
        return Item(id_, from_json(m["item"]))
    if kind == "CREDIT":
        return Credit(id_, m["n"])
    return {"PING": Ping, "PONG": Pong, "CANCEL": Cancel, "END": End}[kind](id_)


# -- the file itself ------------------------------------------------------------------------------------


def test_vector_file_is_well_formed():
    names = [v["name"] for v in VECTORS]
    assert len(names) == len(set(names)), "vector names are unique"
    assert set(PENDING) <= set(names), "every pending skip names a vector"
    for v in VECTORS:
        assert ("message" in v) != ("error" in v), v["name"]
        assert v["description"], v["name"]
        bytes.fromhex(v["hex"])
    kinds = {v["message"]["kind"] for v in POSITIVE}
    assert kinds == {
        "CALL",
        "REPLY",
        "ERROR",
        "NOTIFY",
        "EVENT",
        "PING",
        "PONG",
        "CANCEL",
        "BATCH",
        "STREAM",
        "ITEM",
        "CREDIT",
        "END",
    }
    errors = {v["error"] for v in NEGATIVE}
    assert errors == {"PROTOCOL_ERROR", "UNSUPPORTED_VERSION", "MESSAGE_TOO_LARGE"}


# Checked by hand against the msgpack spec (https://github.com/msgpack/msgpack/blob/master/spec.md), so the
# vector file is not only "whatever the generator printed".
HAND_CHECKED = {
    # fixarray(7) | version 1 | CALL | id 1 | fixstr(4) "ping" | args [] | kwargs {} | meta {}
    "call-minimal": "97 01 01 01 a4 70696e67 90 80 80",
    # fixarray(7) | 1 | CALL | uint64 id | fixstr(9) "slow.work" | [fixstr(5) "job-7"] | {} |
    # {fixstr(8) "deadline": uint16 1500}
    "call-deadline": "97 01 01 cf 9e3779b900000002 a9 736c6f772e776f726b 91 a5 6a6f622d37 80"
    " 81 a8 646561646c696e65 cd 05dc",
    # fixarray(4) | 1 | REPLY | id 12 | bin8 len 4 | 00 01 fe ff
    "reply-bin": "94 01 02 0c c4 04 0001feff",
    # fixarray(4) | 1 | REPLY | id 13 | fixext8 type -1 | uint64: ns 123456000 << 34 | seconds 1704164645
    "reply-timestamp64": "94 01 02 0d d7 ff 1d6f2800 65937d25",
    # fixarray(4) | 1 | REPLY | id 14 | ext8 len 12 type -1 | uint32 ns 500000000 | int64 seconds -1
    "reply-timestamp96": "94 01 02 0e c7 0c ff 1dcd6500 ffffffffffffffff",
    # fixarray(5) | 1 | EVENT | seq 77 | fixstr(11) "prices.tick" | fixmap(2) {"sym": "ABC",
    # "px": float64 101.25}
    "event": "95 01 05 4d ab 7072696365732e7469636b 82 a3 73796d a3 414243 a2 7078 cb 4059500000000000",
    # fixarray(3) | 1 | CANCEL | uint64 id
    "cancel": "93 01 08 cf 9e3779b900000002",
    # fixarray(3) | 1 | PING | uint64 2**64-1
    "max-id": "93 01 06 cf ffffffffffffffff",
    # fixarray(4) | 1 | REPLY | id 20 | ext8 len 5 type 96 | "12.50"
    "reply-decimal": "94 01 02 14 c7 05 60 31322e3530",
    # fixarray(4) | 1 | REPLY | id 21 | fixext16 type 97 | the UUID's 16 bytes
    "reply-uuid": "94 01 02 15 d8 61 12345678123456781234567812345678",
    # fixarray(4) | 1 | REPLY | id 24 | fixext4 type 100 | fixarray(3) [-1 (negative fixint), 5, 7]
    "reply-timedelta": "94 01 02 18 d6 64 93 ff 05 07",
    # fixarray(4) | 1 | REPLY | id 27 | ext8 len 13 type 101 | fixarray(2) [fixstr(9) "shop.Size", "m"]
    "reply-enum": "94 01 02 1b c7 0d 65 92 a9 73686f702e53697a65 a1 6d",
}


def test_hand_checked_vectors():
    by_name = {v["name"]: v for v in VECTORS}
    for name, hx in HAND_CHECKED.items():
        assert by_name[name]["hex"] == hx.replace(" ", ""), name


def _call_f(args: bytes) -> bytes:
    """fixarray(7) | 1 | CALL | id 5 | fixstr(1) "f" | args | kwargs {} | meta {}"""
    return bytes.fromhex("97 01 01 05 a1 66") + args + bytes.fromhex("80 80")


def _nested_args(depth: int) -> bytes:
    """args for a CALL nested ``depth`` deep: the zcall array is depth 1, args depth 2, and the innermost
    empty array sits at ``depth`` (fixarray(1) 0x91 for each level, fixarray(0) 0x90 inside)."""
    return b"\x91" * (depth - 2) + b"\x90"


# The boundary vectors, built byte by byte from the msgpack spec rather than by an encoder.
BUILT = {
    "nesting-1024": _call_f(_nested_args(1024)),
    "nesting-1025": _call_f(_nested_args(1025)),
    # args [fixext8 type -1: uint64 nanoseconds << 34 | seconds], nanoseconds 10**9, seconds 0
    "timestamp64-ns-too-big": _call_f(b"\x91\xd7\xff" + struct.pack(">Q", 10**9 << 34)),
    # args [ext8 len 12 type -1: uint32 nanoseconds, int64 seconds], nanoseconds 10**9, seconds 0
    "timestamp96-ns-too-big": _call_f(b"\x91\xc7\x0c\xff" + struct.pack(">Iq", 10**9, 0)),
}


def test_boundary_vectors_are_built_as_described():
    by_name = {v["name"]: v for v in VECTORS}
    for name, frame in BUILT.items():
        assert by_name[name]["hex"] == frame.hex(), name
    assert len(BUILT["nesting-1025"]) == len(BUILT["nesting-1024"]) + 1


def test_vector_file_needs_no_deep_json():
    """Deep values are written with $nest, so any JSON parser's default depth limit reads the file."""

    def depth(x: Any) -> int:
        if isinstance(x, dict):
            return 1 + max((depth(y) for y in x.values()), default=0)
        if isinstance(x, list):
            return 1 + max((depth(y) for y in x), default=0)
        return 0

    assert max(depth(v) for v in VECTORS) <= 32


# -- decode and encode ----------------------------------------------------------------------------------


@pytest.mark.parametrize("v", POSITIVE, ids=[v["name"] for v in POSITIVE])
def test_positive_vector_decodes_to_its_fields(v):
    skip_pending(v)
    msg = protocol.decode(bytes.fromhex(v["hex"]))
    assert message_to_json(msg) == message_as_read(v["message"])


@pytest.mark.parametrize("v", [v for v in POSITIVE if v.get("canonical", True)], ids=lambda v: v["name"])
def test_positive_vector_encodes_to_identical_bytes(v):
    skip_pending(v)
    msg = message_from_json(v["message"])
    assert protocol.encode(msg).hex() == v["hex"]


@pytest.mark.parametrize("v", NEGATIVE, ids=[v["name"] for v in NEGATIVE])
def test_negative_vector_is_refused_with_code_and_id(v):
    skip_pending(v)
    codec = Codec(max_message_size=v["max_message_size"]) if "max_message_size" in v else default_codec
    with pytest.raises(ProtocolError) as info:
        protocol.decode(bytes.fromhex(v["hex"]), codec)
    exc = info.value
    assert protocol.error_for(exc).code == StatusCode[v["error"]]
    assert (protocol.peek_id(exc) or 0) == v["error_id"]
    if v["error"] == "MESSAGE_TOO_LARGE":
        assert isinstance(exc, MessageTooLarge)
        protocol.decode(bytes.fromhex(v["hex"]))  # the same bytes are fine under the default limit
