"""The I/O-free envelope: every kind round-trips, every validation branch of decode names the problem and
keeps the id when it is readable, and error_for maps each decoding failure to its status code."""

from __future__ import annotations

import datetime as dt

import msgpack
import pytest

from zcall.errors import (
    DeadlineExceeded,
    InvalidArguments,
    MessageTooLarge,
    MethodNotFound,
    ProtocolError,
    RemoteError,
    RemoteMessageTooLarge,
    RemoteProtocolError,
    SerializationError,
    ServerBusy,
)
from zcall.protocol.codec import Codec
from zcall.protocol.status import StatusCode
from zcall.protocol.wire import (
    MAX_ID,
    BadMessage,
    Call,
    Cancel,
    ErrorRecord,
    ErrorReply,
    Event,
    Kind,
    Notify,
    Ping,
    Pong,
    Reply,
    UnsupportedVersion,
    call_frame,
    decode,
    encode,
    error_for,
    peek_id,
)

ID = 0x1234ABCD_00000007
WHEN = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)


def raw(*items: object) -> bytes:
    """A body built with plain msgpack, bypassing zcall's encoder (to build invalid messages)."""
    return msgpack.packb(list(items), use_bin_type=True)


def refused(frame: bytes, codec: Codec | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(frame, codec) if codec is not None else decode(frame)
    return info.value


# -- round trips -------------------------------------------------------------------------------------------

ROUND_TRIPS = [
    Call(ID, "math.add", [1, 2.5, "x", b"\x00\xff", None, True], {"scale": [1, {"a": WHEN}]}),
    Call(ID, "slow", [], {}, deadline_ms=1500),
    Call(ID, "slow", [], {}, deadline_ms=0, headers={"trace": "abc", "n": 1}),
    Call(0, "m", [], {}, headers={"only": "headers"}),
    Call(ID, "orders.create", [1], {}, deadline_ms=5000, retry=True),
    Call(MAX_ID, "m"),
    Notify(ID, "log.write", ["hello"], {"level": "info"}, deadline_ms=20, headers={"h": b"\x01"}),
    Reply(ID, {"nested": [[], {}, [1, [2, [3]]]], "when": WHEN, "blob": b"\x00" * 300}),
    Reply(ID, None),
    ErrorReply(ID, ErrorRecord(StatusCode.HANDLER_ERROR, "ValueError", "bad", "Traceback...", {"k": 1})),
    ErrorReply(0, ErrorRecord(StatusCode.PROTOCOL_ERROR, "zcall.ProtocolError", "junk")),
    Event(42, "prices.tick", {"px": 101.25}),
    Event(0, "t"),
    Ping(ID),
    Pong(ID),
    Cancel(ID),
]


@pytest.mark.parametrize("msg", ROUND_TRIPS, ids=lambda m: type(m).__name__)
def test_every_kind_round_trips(msg):
    back = decode(encode(msg))
    if isinstance(msg, Call | Notify):
        msg.args = list(msg.args)  # arrays come back as lists
    assert back == msg
    assert type(back) is type(msg)


def test_kind_numbers_are_the_documented_ones():
    assert {k.name: int(k) for k in Kind} == {
        "CALL": 1,
        "REPLY": 2,
        "ERROR": 3,
        "NOTIFY": 4,
        "EVENT": 5,
        "PING": 6,
        "PONG": 7,
        "CANCEL": 8,
        "BATCH": 9,
        "STREAM": 10,
        "ITEM": 11,
        "CREDIT": 12,
        "END": 13,
    }


def test_layouts_on_the_wire():
    """Each kind's positional layout, as docs/protocol.md states it (decoded with plain msgpack)."""
    unpack = msgpack.unpackb
    assert unpack(encode(Call(5, "f", (1,), {"k": 2}, 100, {"h": 1}))) == [
        1,
        1,
        5,
        "f",
        [1],
        {"k": 2},
        {"deadline": 100, "headers": {"h": 1}},
    ]
    assert unpack(encode(Call(5, "f", retry=True)))[6] == {"retry": True}
    assert unpack(encode(Notify(5, "f"))) == [1, 4, 5, "f", [], {}, {}]
    assert unpack(encode(Reply(5, "r"))) == [1, 2, 5, "r"]
    assert unpack(encode(ErrorReply(5, ErrorRecord(StatusCode.OVERLOADED, "T", "m")))) == [
        1,
        3,
        5,
        {"code": 7, "type": "T", "message": "m", "traceback": None, "data": None},
    ]
    assert unpack(encode(Event(9, "t", [1]))) == [1, 5, 9, "t", [1]]
    assert [unpack(encode(cls(5))) for cls in (Ping, Pong, Cancel)] == [[1, 6, 5], [1, 7, 5], [1, 8, 5]]


def test_call_frame_is_the_same_bytes_as_encoding_a_call():
    args = ([1, "a"], {"k": b"v"}, 250, {"trace": "t"})
    assert call_frame(ID, "m", *args) == encode(Call(ID, "m", *args))
    assert call_frame(ID, "m", (), {}) == encode(Call(ID, "m"))


def test_empty_headers_are_left_out_of_meta():
    assert msgpack.unpackb(encode(Call(1, "f", [], {}, None, {})))[6] == {}
    assert decode(encode(Call(1, "f", [], {}, None, {}))).headers is None


def test_encode_refuses_non_messages_and_unsendable_values():
    with pytest.raises(TypeError, match="not a zcall message"):
        encode([1, 6, 5])  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match="object"):
        encode(Reply(1, object()))
    with pytest.raises(SerializationError):
        encode(Ping(2**64))  # ids are 64-bit


def test_forward_compatible_extras_are_ignored():
    assert decode(raw(1, 6, 9, "future", 1)) == Ping(9)
    assert decode(raw(1, 1, 5, "f", [], {}, {"deadline": 3, "priority": "hi"}, "x")) == Call(
        5, "f", [], {}, 3, None
    )
    assert decode(raw(1, 2, 5, "r", "extra")) == Reply(5, "r")


def test_retry_flag_counts_only_when_exactly_true():
    assert decode(raw(1, 1, 5, "f", [], {}, {"retry": True})).retry is True
    for value in (1, "yes", None, False, [True]):
        assert decode(raw(1, 1, 5, "f", [], {}, {"retry": value})).retry is False
    assert not hasattr(decode(raw(1, 4, 5, "f", [], {}, {"retry": True})), "retry")  # NOTIFY: no such thing


def test_nil_kwargs_and_meta_read_as_empty():
    assert decode(raw(1, 1, 5, "f", [1], None, None)) == Call(5, "f", [1], {}, None, None)


# -- every validation branch of decode ------------------------------------------------------------------

C = (1, 1, 5, "f", [], {}, {})  # a valid CALL's items, to break one at a time


def broken(index: int, value: object) -> bytes:
    items = list(C)
    items[index] = value
    return raw(*items)


BAD_WITH_ID = [
    ("kind unknown", raw(1, 99, 5), "unknown message kind 99"),
    ("batch with an id", raw(1, 9, 5), "a batch has id 0"),
    ("kind zero", raw(1, 0, 5), "unknown message kind 0"),
    ("kind bool", broken(1, True), "kind must be an integer"),
    ("kind float", broken(1, 1.0), "kind must be an integer"),
    ("kind str", broken(1, "CALL"), "kind must be an integer"),
    ("call too short", raw(*C[:6]), "call needs 7 items"),
    ("notify too short", raw(1, 4, 5, "f"), "notify needs 7 items"),
    ("method int", broken(3, 7), "method name must be a string, got int"),
    ("method bin", broken(3, b"f"), "method name must be a string, got bytes"),
    ("args map", broken(4, {"a": 1}), "args must be an array, got dict"),
    ("args nil", broken(4, None), "args must be an array, got NoneType"),
    ("kwargs array", broken(5, [1]), "kwargs must be a map, got list"),
    ("kwargs int", broken(5, 3), "kwargs must be a map, got int"),
    ("kwargs bin key", broken(5, {b"k": 1}), "kwargs keys must be strings, got bytes"),
    ("meta array", broken(6, []), "meta must be a map, got list"),
    ("meta str", broken(6, "m"), "meta must be a map, got str"),
    ("deadline negative", broken(6, {"deadline": -1}), "deadline must be a non-negative integer"),
    ("deadline float", broken(6, {"deadline": 1.5}), "deadline must be a non-negative integer"),
    ("deadline bool", broken(6, {"deadline": True}), "deadline must be a non-negative integer"),
    ("deadline str", broken(6, {"deadline": "1s"}), "deadline must be a non-negative integer"),
    ("headers array", broken(6, {"headers": ["a"]}), "headers must be a map, got list"),
    ("reply short", raw(1, 2, 5), "reply needs 4 items"),
    ("error short", raw(1, 3, 5), "error needs 4 items"),
    ("error record str", raw(1, 3, 5, "boom"), "error needs 4 items"),
    ("event short", raw(1, 5, 5, "t"), "event needs 5 items"),
    ("event topic int", raw(1, 5, 5, 1, None), "topic:str"),
]


@pytest.mark.parametrize(("case", "frame", "text"), BAD_WITH_ID, ids=[c[0] for c in BAD_WITH_ID])
def test_bad_field_is_refused_with_the_id(case, frame, text):
    exc = refused(frame)
    assert isinstance(exc, BadMessage)
    assert exc.id == 5 and peek_id(exc) == 5
    assert text in str(exc)
    assert error_for(exc).code == StatusCode.PROTOCOL_ERROR


BAD_WITHOUT_ID = [
    ("not an array", msgpack.packb({"v": 1}), "msgpack array, got dict"),
    ("a bare int", msgpack.packb(7), "msgpack array, got int"),
    ("too few items", raw(1, 1), "at least 3 items"),
    ("empty array", raw(), "at least 3 items"),
    ("id negative", raw(1, 6, -1), "unsigned 64-bit integer, got -1"),
    ("id str", raw(1, 6, "5"), "unsigned 64-bit integer, got '5'"),
    ("id float", raw(1, 6, 5.0), "unsigned 64-bit integer"),
    ("id bool", raw(1, 6, True), "unsigned 64-bit integer, got True"),
    ("id nil", raw(1, 6, None), "unsigned 64-bit integer, got None"),
]


@pytest.mark.parametrize(("case", "frame", "text"), BAD_WITHOUT_ID, ids=[c[0] for c in BAD_WITHOUT_ID])
def test_unaddressable_message_is_refused_without_id(case, frame, text):
    exc = refused(frame)
    assert isinstance(exc, BadMessage)
    assert peek_id(exc) is None
    assert text in str(exc)
    assert error_for(exc).code == StatusCode.PROTOCOL_ERROR


@pytest.mark.parametrize(
    ("version", "id_", "expected_id"),
    [
        (2, 5, 5),
        (0, 5, 5),
        ("1", 5, 5),
        (True, 5, 5),
        (1.0, 5, 5),
        (None, 5, 5),
        (2, "x", None),
        (2, -1, None),
    ],
)
def test_other_version_is_unsupported_with_the_id_when_readable(version, id_, expected_id):
    exc = refused(raw(version, 1, id_, "f", [], {}, {}))
    assert isinstance(exc, UnsupportedVersion)
    assert exc.version == version and peek_id(exc) == expected_id
    assert "speaks 1" in str(exc)
    assert error_for(exc).code == StatusCode.UNSUPPORTED_VERSION


def test_invalid_msgpack_is_a_protocol_error_without_id():
    for frame in (b"", b"\xc1", encode(Ping(5))[:-1], encode(Ping(5)) + b"\x00"):
        exc = refused(frame)
        assert peek_id(exc) is None
        assert error_for(exc).code == StatusCode.PROTOCOL_ERROR


def test_too_large_maps_to_message_too_large():
    exc = refused(encode(Call(5, "f", ["x" * 100])), Codec(max_message_size=50))
    assert isinstance(exc, MessageTooLarge)
    assert peek_id(exc) is None
    record = error_for(exc)
    assert record.code == StatusCode.MESSAGE_TOO_LARGE
    assert record.type == "zcall.MessageTooLarge" and "exceeds the limit of 50 bytes" in record.message


def test_error_for_gives_a_sendable_record_with_the_reason():
    exc = refused(broken(3, 7))
    record = error_for(exc)
    assert record.type == "zcall.ProtocolError"
    assert record.message == str(exc)
    back = decode(encode(ErrorReply(5, record)))
    assert back.error.code == StatusCode.PROTOCOL_ERROR


def test_deeply_nested_junk_in_any_field_gives_protocol_error_not_recursion_error():
    """~1000 levels decode fine but plain repr() of them recurses too deep: error text must stay bounded."""
    deep = b"\x91" * 1000 + b"\x01"
    frames = [
        b"\x93" + deep + b"\x01\x05",  # version
        b"\x93\x01\x01" + deep,  # id
        b"\x93\x01" + deep + b"\x05",  # kind
        b"\x97\x01\x01\x05\xa1f\x90\x80\x81\xa8deadline" + deep,  # meta.deadline
    ]
    for frame in frames:
        exc = refused(frame)
        assert len(str(exc)) < 300
    record = decode(b"\x94\x01\x03\x05\x82\xa4type" + deep + b"\xa7message" + deep).error
    assert len(record.type) < 100 and len(record.message) < 100


def test_huge_string_is_not_echoed_back_whole():
    exc = refused(raw("v" * 100_000, 1, 5))
    assert len(str(exc)) < 300


# -- error records -------------------------------------------------------------------------------------


def test_lenient_error_record_decoding():
    rec = decode(raw(1, 3, 5, {})).error
    assert (rec.code, rec.type, rec.message, rec.traceback, rec.data) == (
        StatusCode.INTERNAL,
        "Exception",
        "",
        None,
        None,
    )
    assert decode(raw(1, 3, 5, {"code": 99})).error.code == StatusCode.INTERNAL  # unknown code
    assert decode(raw(1, 3, 5, {"code": True})).error.code == StatusCode.INTERNAL  # bool is not a code
    assert decode(raw(1, 3, 5, {"code": 2.0})).error.code == StatusCode.INTERNAL
    assert decode(raw(1, 3, 5, {"code": [1]})).error.code == StatusCode.INTERNAL
    rec = decode(raw(1, 3, 5, {"code": 2, "type": 7, "message": b"m", "traceback": 3})).error
    assert (rec.code, rec.type, rec.message, rec.traceback) == (StatusCode.METHOD_NOT_FOUND, "7", "b'm'", "3")


def test_error_record_from_exception_names_the_type():
    class Custom(Exception):
        pass

    try:
        raise Custom("nope")
    except Custom as exc:
        rec = ErrorRecord.from_exception(exc)
    assert rec.code == StatusCode.HANDLER_ERROR
    assert rec.type.endswith("test_error_record_from_exception_names_the_type.<locals>.Custom")
    assert rec.type.startswith(__name__)
    assert rec.message == "nope" and "raise Custom" in rec.traceback
    builtin = ErrorRecord.from_exception(KeyError("k"), with_traceback=False)
    assert builtin.type == "KeyError" and builtin.traceback is None


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (StatusCode.HANDLER_ERROR, RemoteError),
        (StatusCode.METHOD_NOT_FOUND, MethodNotFound),
        (StatusCode.INVALID_ARGUMENTS, InvalidArguments),
        (StatusCode.OVERLOADED, ServerBusy),
        (StatusCode.UNAVAILABLE, ServerBusy),
        (StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (StatusCode.PROTOCOL_ERROR, RemoteProtocolError),
        (StatusCode.UNSUPPORTED_VERSION, RemoteProtocolError),
        (StatusCode.MESSAGE_TOO_LARGE, RemoteMessageTooLarge),
    ],
)
def test_record_to_exception_picks_the_class_by_code(code, cls):
    rec = ErrorRecord(code, "T", "text", "tb", {"d": 1})
    exc = decode(encode(ErrorReply(5, rec))).error.to_exception("svc.m")
    assert type(exc) is cls
    assert (exc.code, exc.type, exc.message, exc.traceback, exc.data, exc.method) == (
        code,
        "T",
        "text",
        "tb",
        {"d": 1},
        "svc.m",
    )
    assert str(exc) == f"T in 'svc.m': text [{code.name}]"


def test_status_codes_are_the_documented_numbers():
    assert [(c.name, int(c)) for c in StatusCode] == [
        ("OK", 0),
        ("HANDLER_ERROR", 1),
        ("METHOD_NOT_FOUND", 2),
        ("INVALID_ARGUMENTS", 3),
        ("PROTOCOL_ERROR", 4),
        ("UNSUPPORTED_VERSION", 5),
        ("DEADLINE_EXCEEDED", 6),
        ("OVERLOADED", 7),
        ("CANCELLED", 8),
        ("MESSAGE_TOO_LARGE", 9),
        ("UNAVAILABLE", 10),
        ("INTERNAL", 11),
        ("PERMISSION_DENIED", 12),
    ]
