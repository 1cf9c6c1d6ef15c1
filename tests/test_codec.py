"""The msgpack codec on untrusted input: limits before decoding, fast failure on lying length headers,
nesting limits, strict types, and the ext-type registry (including datetimes as Timestamp ext -1)."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from decimal import Decimal

import msgpack
import pytest

from zcall.errors import MessageTooLarge, ProtocolError, SerializationError
from zcall.protocol.codec import DEFAULT_MAX_MESSAGE_SIZE, Codec, default_codec, register_type


@dataclass(frozen=True)
class Point:
    x: int
    y: int


def point_bytes(p: Point) -> bytes:
    return p.x.to_bytes(2, "big") + p.y.to_bytes(2, "big")


def bytes_point(b: bytes) -> Point:
    if len(b) != 4:
        raise ValueError(f"a Point is 4 bytes, got {len(b)}")
    return Point(int.from_bytes(b[:2], "big"), int.from_bytes(b[2:], "big"))


# -- plain values ----------------------------------------------------------------------------------------


def test_plain_values_round_trip_with_str_and_bin_kept_apart():
    c = Codec()
    value = {"s": "h\u00e9llo", "b": b"\x00\xff", "i": [0, -1, 2**64 - 1, -(2**63)], "f": 1.5, "n": None}
    assert c.unpackb(c.packb(value)) == value
    packed = c.packb(["a", b"a"])
    assert packed == b"\x92\xa1a\xc4\x01a"  # fixstr vs bin8


def test_tuples_become_arrays_and_sets_stay_sets():
    c = Codec()
    assert c.unpackb(c.packb((1, 2))) == [1, 2]  # tuples are arrays (docs/protocol.md §8 says why)
    assert c.unpackb(c.packb({3, 1, 2})) == {1, 2, 3}  # built-in ext 103
    assert c.unpackb(c.packb(frozenset({"a"}))) == frozenset({"a"})  # built-in ext 104


class Opaque:
    pass


def test_unsendable_value_names_its_type():
    with pytest.raises(SerializationError, match=r"test_codec\.Opaque.*register_type"):
        Codec().packb({"thing": Opaque()})
    for n in (2**64, -(2**63) - 1):
        with pytest.raises(SerializationError, match=r"outside msgpack's range"):
            Codec().packb([n])


def test_default_limit_is_16_mib():
    assert DEFAULT_MAX_MESSAGE_SIZE == 16 * 1024 * 1024
    assert Codec().max_message_size == DEFAULT_MAX_MESSAGE_SIZE
    assert default_codec.max_message_size == DEFAULT_MAX_MESSAGE_SIZE


# -- limits and malformed input --------------------------------------------------------------------------


def test_size_limit_applies_before_decoding():
    c = Codec(max_message_size=10)
    assert c.unpackb(c.packb("x" * 8)) == "x" * 8  # 9 bytes: fine
    with pytest.raises(MessageTooLarge, match="10 bytes"):
        c.unpackb(b"\xc1" * 11)  # would be invalid msgpack: refused by size first, never parsed


@pytest.mark.parametrize(
    "header",
    [
        "ddffffffff",  # array32 of 2**32-1 items
        "dfffffffff",  # map32
        "dbffffffff",  # str32 of 4 GiB
        "c6ffffffff",  # bin32
        "c9ffffffff01",  # ext32
        "dc ffff".replace(" ", ""),  # array16
    ],
)
def test_huge_declared_lengths_fail_fast(header):
    start = time.perf_counter()
    with pytest.raises(ProtocolError):
        Codec().unpackb(bytes.fromhex(header) + b"\x00" * 16)
    assert time.perf_counter() - start < 0.5


def test_deep_nesting_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="nested too deeply"):
        Codec().unpackb(b"\x91" * 5000 + b"\x01")
    assert Codec().unpackb(b"\x91" * 100 + b"\x01") is not None


def test_trailing_bytes_are_refused():
    with pytest.raises(ProtocolError, match="trailing bytes"):
        Codec().unpackb(b"\x01\x02")


@pytest.mark.parametrize("frame", [b"", b"\x92\x01", b"\xa4ab", b"\xc1", b"\xcd\x01"])
def test_truncated_or_invalid_msgpack_is_a_protocol_error(frame):
    with pytest.raises(ProtocolError, match="invalid msgpack"):
        Codec().unpackb(frame)


def test_invalid_utf8_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="UnicodeDecodeError"):
        Codec().unpackb(b"\xa2\xff\xfe")


def test_strict_map_key_by_default_and_opt_out():
    frame = msgpack.packb({1: "a"})
    with pytest.raises(ProtocolError):
        Codec().unpackb(frame)
    assert Codec(strict_map_key=False).unpackb(frame) == {1: "a"}


def test_reserved_negative_ext_types_are_refused():
    with pytest.raises(ProtocolError):
        Codec().unpackb(bytes.fromhex("d4fe00"))  # ext -2


def test_unregistered_app_ext_passes_through_opaque():
    c = Codec()
    value = c.unpackb(bytes.fromhex("d52acafe"))
    assert value == msgpack.ExtType(42, b"\xca\xfe")
    assert c.packb(value).hex() == "d52acafe"


# -- ext registry -----------------------------------------------------------------------------------------


def test_registered_type_round_trips_as_its_ext_code():
    c = Codec()
    c.register(Point, 7, point_bytes, bytes_point)
    packed = c.packb({"p": Point(1, 2)})
    assert bytes.fromhex("d6 07 0001 0002".replace(" ", "")) in packed  # fixext4, type 7
    assert c.unpackb(packed) == {"p": Point(1, 2)}


def test_registered_base_class_covers_subclasses():
    class Point3(Point):
        pass

    c = Codec()
    c.register(Point, 7, point_bytes, bytes_point)
    assert c.unpackb(c.packb(Point3(3, 4))) == Point(3, 4)


def test_duplicate_code_is_refused_but_re_registering_the_same_type_is_fine():
    c = Codec()
    c.register(Point, 7, point_bytes, bytes_point)
    c.register(Point, 7, point_bytes, bytes_point)
    with pytest.raises(ValueError, match="already registered"):
        c.register(Decimal, 7, lambda d: str(d).encode(), lambda b: Decimal(b.decode()))


@pytest.mark.parametrize("code", [-1, -128, 128, 1000, 1.5, True, "7"])
def test_bad_ext_code_is_refused(code):
    with pytest.raises(ValueError, match=r"0\.\.127"):
        Codec().register(Point, code, point_bytes, bytes_point)


@pytest.mark.parametrize("code", [96, 100, 127])
def test_the_built_in_range_is_refused_to_applications(code):
    with pytest.raises(ValueError, match=r"96\.\.127 are zcall's built-in types.*0\.\.95"):
        Codec().register(Point, code, point_bytes, bytes_point)


def test_encode_and_decode_need_a_code():
    with pytest.raises(TypeError, match="go with an ext type code"):
        Codec().register(Point, None, point_bytes, bytes_point)


def test_decoder_raising_is_a_protocol_error():
    c = Codec()
    c.register(Point, 7, point_bytes, bytes_point)
    with pytest.raises(ProtocolError, match=r"ext type 7 failed to decode.*4 bytes"):
        c.unpackb(bytes.fromhex("d507abcd"))  # fixext2: a 2-byte "Point"


def test_copy_is_independent():
    base = Codec(max_message_size=1000, strict_map_key=False)
    base.register(Point, 7, point_bytes, bytes_point)
    other = base.copy()
    other.register(Decimal, 8, lambda d: str(d).encode(), lambda b: Decimal(b.decode()))
    assert (other.max_message_size, other.strict_map_key) == (1000, False)
    assert other.unpackb(other.packb(Point(1, 1))) == Point(1, 1)
    assert other.packb(Decimal("1")).hex() == "d40831"  # its own registration: fixext1, code 8, "1"
    assert base.packb(Decimal("1")).hex() == "d46031"  # the built-in: code 96


def test_register_type_uses_the_default_codec():
    class Token:
        pass

    code = 95
    assert code not in default_codec._by_code, "test needs a free code on the default codec"
    try:
        register_type(Token, code, lambda t: b"t", lambda b: "token")
        assert default_codec.unpackb(default_codec.packb(Token())) == "token"
    finally:  # leave the process-wide codec as it was
        default_codec._by_type.pop(Token, None)
        default_codec._by_code.pop(code, None)


# -- datetimes --------------------------------------------------------------------------------------------


def test_naive_datetime_is_refused_with_a_hint():
    with pytest.raises(SerializationError, match=r"naive datetime.*tzinfo"):
        Codec().packb({"when": dt.datetime(2024, 1, 1, 12, 0)})


@pytest.mark.parametrize(
    ("when", "ext_header"),
    [
        (dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "d6ff"),  # timestamp32
        (dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC), "d7ff"),  # timestamp64
        (dt.datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=dt.UTC), "c70cff"),  # timestamp96
    ],
)
def test_aware_datetime_round_trips_as_timestamp_ext(when, ext_header):
    c = Codec()
    packed = c.packb(when)
    assert packed.hex().startswith(ext_header)
    back = c.unpackb(packed)
    assert back == when and back.tzinfo is not None


def test_datetime_in_another_zone_arrives_as_the_same_instant_in_utc():
    cet = dt.timezone(dt.timedelta(hours=1))
    when = dt.datetime(2024, 6, 1, 12, 0, tzinfo=cet)
    back = Codec().unpackb(Codec().packb(when))
    assert back == when and back.utcoffset() == dt.timedelta(0) and back.hour == 11


def test_bad_timestamp_length_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        Codec().unpackb(bytes.fromhex("c703ff000000"))
