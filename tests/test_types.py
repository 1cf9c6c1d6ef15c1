"""zcall's built-in ext types (codes 96 ... 104), names for enums and dataclasses, and values against type
hints (protocol/hints.py), without sockets; tests/test_contract.py carries them over every face."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import logging
import typing
import uuid
from typing import Any, Literal, NamedTuple, NewType, TypedDict

import msgpack
import pytest

import zcall
from zcall.errors import ProtocolError, SerializationError
from zcall.protocol import types as T
from zcall.protocol.codec import MAX_EXT_NESTING, Codec, register_type
from zcall.protocol.hints import Mismatch, convert

pytestmark = pytest.mark.timeout(30)


class Suit(enum.Enum):
    HEARTS = "h"
    PAIR = (1, 2)  # a tuple value travels as an array


class Perm(enum.IntFlag):
    R = 4
    W = 2


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int = 0
    tag: tuple[str, ...] = ()
    area: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "area", self.x * self.y)


@dataclasses.dataclass
class Checked:
    n: int

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError("n must not be negative")


def codes(body: bytes) -> list[int]:
    """The ext codes in a packed value, read with no decoders at all (what a foreign reader sees)."""
    seen: list[int] = []

    def hook(code: int, data: bytes) -> Any:
        seen.append(code)
        return None

    msgpack.unpackb(body, ext_hook=hook, strict_map_key=False)
    return seen


def test_each_built_in_has_its_documented_code() -> None:
    c = Codec()
    cases = [
        (decimal.Decimal("1.10"), T.DECIMAL),
        (uuid.UUID(int=1), T.UUID),
        (dt.date(2024, 1, 2), T.DATE),
        (dt.time(1, 2, 3), T.TIME),
        (dt.timedelta(seconds=1), T.TIMEDELTA),
        (Suit.HEARTS, T.ENUM),
        (Point(1, 2), T.RECORD),
        ({1}, T.SET),
        (frozenset({1}), T.FROZENSET),
    ]
    for value, code in cases:
        assert codes(c.packb(value)) == [code], value
    assert {code for _, code in cases} == set(T.BUILTIN_CODES)
    assert c.packb(dt.datetime(2024, 1, 2, tzinfo=dt.UTC))[:2] == b"\xd6\xff"  # still Timestamp -1


def test_a_foreign_reader_decodes_the_data_with_plain_msgpack() -> None:
    c = Codec()
    seen: list[tuple[int, Any]] = []

    def hook(code: int, data: bytes) -> Any:
        seen.append((code, data if code < T.TIMEDELTA else msgpack.unpackb(data, ext_hook=hook)))
        return code

    body = c.packb([dt.timedelta(days=-1, seconds=1), Point(2, 3), {decimal.Decimal("5")}])
    msgpack.unpackb(body, ext_hook=hook)
    assert seen == [
        (T.TIMEDELTA, [-1, 1, 0]),
        (T.RECORD, ["test_types.Point", {"x": 2, "y": 3, "tag": [], "area": 6}]),
        (T.DECIMAL, b"5"),  # inside the set: an ext value there too
        (T.SET, [T.DECIMAL]),
    ]


def test_naive_datetimes_are_still_refused_and_never_sent_as_dates() -> None:
    with pytest.raises(SerializationError, match="naive datetime"):
        Codec().packb(dt.datetime(2024, 1, 2))


@pytest.mark.parametrize(
    ("code", "data"),
    [
        (T.DECIMAL, b"1.2.3"),
        (T.DECIMAL, b"1_000"),  # Decimal() would take it; the protocol's text does not
        (T.UUID, b"\x00" * 15),
        (T.DATE, b"2024-1-2"),
        (T.DATE, b"2024-02-30"),
        (T.TIME, b"25:00:00"),
        (T.TIME, b"T10:00:00"),
        (T.TIMEDELTA, msgpack.packb([1, 2])),
        (T.TIMEDELTA, msgpack.packb([0, 86400, 0])),  # not normalized
        (T.SET, msgpack.packb({"a": 1})),
        (T.SET, msgpack.packb([{"a": 1}])),  # a map cannot be in a set
        (T.FROZENSET, b"\xc1"),
        (T.ENUM, msgpack.packb(["only a name"])),
        (T.RECORD, msgpack.packb(["name", [1, 2]])),
        (T.RECORD, msgpack.packb([7, {}])),
    ],
)
def test_a_malformed_built_in_is_a_protocol_error(code: int, data: bytes) -> None:
    body = msgpack.packb([1, 2, 5, msgpack.ExtType(code, data)])
    with pytest.raises(ProtocolError, match=f"ext type {code} failed to decode"):
        Codec().unpackb(body)


def test_ext_values_nest_only_so_deep() -> None:
    c = Codec()
    value: Any = frozenset()
    for _ in range(MAX_EXT_NESTING - 1):
        value = frozenset({value})
    assert c.unpackb(c.packb(value)) == value
    with pytest.raises(ProtocolError, match="nested in ext values more than 32 deep"):
        c.unpackb(c.packb(frozenset({value})))


def test_what_ext_values_hold_counts_towards_the_decode_budget() -> None:
    c = Codec(max_decoded_bytes=64 * 1024)
    body = c.packb(frozenset({tuple(() for _ in range(5000))}))  # 5 KB of empty arrays, in a set
    assert len(body) > 4096
    with pytest.raises(ProtocolError, match="more than 65536 bytes once decoded"):
        c.unpackb(body)


def test_sets_of_tuples_come_back_hashable() -> None:
    c = Codec()
    value = {(1, (2, 3)), ("a",), frozenset({(4,)})}
    assert c.unpackb(c.packb(value)) == value


# -- enums and dataclasses: by name ---------------------------------------------------------------------


def test_enums_and_dataclasses_are_rebuilt_only_when_registered_here() -> None:
    sender, receiver = Codec(), Codec()  # the sender registers nothing
    body = sender.packb([Suit.PAIR, Perm.R | Perm.W, Point(2, 3, ("a",))])
    assert receiver.unpackb(body) == [[1, 2], 6, {"x": 2, "y": 3, "tag": ["a"], "area": 6}]
    receiver.register(Suit)
    receiver.register(Point)
    back = receiver.unpackb(body)
    assert back[0] is Suit.PAIR and back[1] == 6  # an IntFlag is an int on the wire
    assert back[2] == Point(2, 3, ("a",)) and back[2].area == 6  # through __init__ and __post_init__


def test_a_dataclass_takes_defaults_drops_unknown_fields_and_falls_back_to_its_map(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = Codec()
    c.register(Point)
    c.register(Checked)
    record = msgpack.ExtType(T.RECORD, msgpack.packb(["test_types.Point", {"x": 4, "color": "red"}]))
    assert c.unpackb(msgpack.packb(record)) == Point(4)
    bad = msgpack.ExtType(T.RECORD, msgpack.packb(["test_types.Checked", {"n": -1}]))
    with caplog.at_level(logging.WARNING, "zcall.codec"):
        assert c.unpackb(msgpack.packb(bad)) == {"n": -1}  # __post_init__ refused: the map, logged
    assert "Checked not rebuilt (ValueError: n must not be negative)" in caplog.text
    missing = msgpack.ExtType(T.RECORD, msgpack.packb(["test_types.Checked", {}]))
    assert c.unpackb(msgpack.packb(missing)) == {}


def test_wire_names_are_chosen_once_and_never_shared() -> None:
    c = Codec()
    c.register(Suit, name="cards.Suit")
    c.register(Suit, name="cards.Suit")  # the same again: nothing happens
    assert msgpack.unpackb(codes_data(c.packb(Suit.HEARTS))) == ["cards.Suit", "h"]

    class Other(enum.Enum):
        A = 1

    with pytest.raises(ValueError, match=r"already registered for test_types\.Suit"):
        c.register(Other, name="cards.Suit")
    with pytest.raises(ValueError, match=r"already registered as 'cards\.Suit'"):
        c.register(Suit, name="cards.Suit2")
    with pytest.raises(TypeError, match="takes an Enum or a dataclass"):
        c.register(int)
    with pytest.raises(TypeError, match="name= is for an Enum or a dataclass"):
        c.register(Suit, 5, lambda s: b"", lambda b: None, name="x")


def codes_data(body: bytes) -> bytes:
    return msgpack.unpackb(body, ext_hook=lambda code, data: data)  # type: ignore[no-any-return]


def test_register_type_returns_the_class_and_works_as_a_decorator() -> None:
    @register_type(name="test_types.Decorated")
    @dataclasses.dataclass
    class Decorated:
        a: int

    @zcall.register_type
    class Bare(enum.Enum):
        X = 1

    c = zcall.protocol.codec.default_codec
    assert c.unpackb(c.packb([Decorated(1), Bare.X])) == [Decorated(1), Bare.X]


# -- values against type hints ---------------------------------------------------------------------------


class Pair(NamedTuple):
    a: int
    b: str


class Opts(TypedDict, total=False):
    depth: int


UserId = NewType("UserId", int)


@pytest.mark.parametrize(
    ("value", "hint", "expected"),
    [
        ([1, 2], tuple[int, int], (1, 2)),
        ([1, 2, 3], tuple[int, ...], (1, 2, 3)),
        ([1, "x"], Pair, Pair(1, "x")),
        ([1, 1, 2], set[int], {1, 2}),
        ([1], frozenset[int], frozenset({1})),
        ({"depth": 2}, Opts, {"depth": 2}),
        (5, UserId, 5),
        ("h", Suit, Suit.HEARTS),
        ([1, 2], Suit, Suit.PAIR),
        ("1.5", decimal.Decimal, decimal.Decimal("1.5")),
        (3, decimal.Decimal, decimal.Decimal(3)),
        ("12345678123456781234567812345678", uuid.UUID, uuid.UUID(int=0x12345678123456781234567812345678)),
        ({"x": 1}, Point, Point(1)),
        ([{"x": 1}], list[Point], [Point(1)]),
        ({"k": [1, 2]}, dict[str, tuple[int, int]], {"k": (1, 2)}),
        ("b", Literal["a", "b"], "b"),
        (None, int | None, None),
        (3, float, 3),
        ([1, 2], tuple[int, int] | list[int], [1, 2]),  # the member that takes it as it is wins
        (object(), Any, None),
    ],
)
def test_values_convert_where_that_is_faithful(value: Any, hint: Any, expected: Any) -> None:
    got = convert(value, hint)
    if expected is None and hint is Any:
        assert got is value
    else:
        assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("value", "hint", "text"),
    [
        ("1", int, "v: expected int, got str"),
        (1.5, decimal.Decimal, "v: expected Decimal, got float"),
        ([1, "x"], list[int], "v[1]: expected int, got str"),
        ([1, 2, 3], tuple[int, int], "v: expected tuple[int, int], got list (3 items, not 2)"),
        ({"x": 1, "z": 2}, Point, "v: expected Point, got dict (no field 'z')"),
        ({}, Point, "v: expected Point, got dict (missing field 'x')"),
        ({"n": -1}, Checked, "v: expected Checked, got dict (ValueError: n must not be negative)"),
        ("c", Literal["a", "b"], "v: expected Literal['a', 'b'], got str"),
        ("x", Suit, "v: expected Suit, got str ('x' is not one of its values ('h', (1, 2)))"),
        ({"depth": "deep"}, Opts, "v['depth']: expected int, got str"),
        (2, str | None, "v: expected str | None, got int"),
    ],
)
def test_a_value_that_does_not_fit_says_where_and_what(value: Any, hint: Any, text: str) -> None:
    with pytest.raises(Mismatch) as info:
        convert(value, hint, "v")
    assert str(info.value) == text
    assert convert(value, hint, "v", strict=False) is value  # leniently, it is kept as it came


@dataclasses.dataclass
class Node:
    value: int
    children: list[Node] = dataclasses.field(default_factory=list)
    parent: Node | None = None


def test_recursive_dataclasses_convert_both_ways() -> None:
    tree = {"value": 1, "children": [{"value": 2, "parent": {"value": 0}}]}
    node = convert(tree, Node)
    assert node == Node(1, [Node(2, [], Node(0))])
    assert convert(tree, Node, strict=False) == node
    with pytest.raises(Mismatch, match=r"v\.children\[0\]\.parent: expected Node \| None, got str"):
        convert({"value": 1, "children": [{"value": 2, "parent": "x"}]}, Node, "v")


def test_validation_is_checked_when_registered() -> None:
    svc = zcall.Service("v", validate=True)

    def later(x: Missing) -> None:  # type: ignore[name-defined]  # noqa: F821
        pass

    with pytest.raises(ValueError, match="validate=True: the annotations of later do not resolve"):
        svc.add(later)
    svc.add(later, validate=False)  # opted out: registered as it is

    @svc.method
    def pos(a: int, /, *rest: int, k: str = "", **more: float) -> None:
        pass

    m = svc.lookup("pos")
    assert m.validate and not svc.lookup("later").validate
    args, kwargs = [1, 2, 3], {"k": "x", "f": 1}
    m.check(args, kwargs)
    with pytest.raises(zcall.Rejected) as info:
        m.check([1, 2, "3"], {})
    assert info.value.data == {"parameter": "rest", "path": "rest[1]", "expected": "int", "got": "str"}
    with pytest.raises(zcall.Rejected):
        m.check([1], {"f": "no"})
    assert typing.get_type_hints(pos)["rest"] is int


def test_conform_lets_a_server_that_does_not_decode_these_types_take_them_as_opaque() -> None:
    """A malformed built-in is refused by a receiver that decodes zcall's types; one that does not
    (another language's server) answers the call as usual, and `zcall conform` passes it either way."""
    from types import SimpleNamespace

    from zcall.tools.conform import Answer, Failed, _vector_check, load_vectors

    vector = next(v for v in load_vectors() if v["name"] == "ext-uuid-15-bytes")
    assert vector["requires"] == "zcall-types"

    def run(answer: list[Any]) -> str:
        probe = SimpleNamespace(send=lambda body: None, fence=lambda: [Answer(b"x", value=answer)])
        return _vector_check(vector)(SimpleNamespace(probe=probe))  # type: ignore[arg-type]

    assert "PROTOCOL_ERROR" in run([1, 3, 0, {"code": 4, "type": "zcall.ProtocolError", "message": ""}])
    assert "opaque" in run([1, 2, 5, None])  # answered as a call: its types were not decoded
    assert "opaque" in run([1, 3, 5, {"code": 2, "type": "x", "message": "no method 'f'"}])
    with pytest.raises(Failed):
        run([1, 3, 5, {"code": 4, "type": "zcall.ProtocolError", "message": "id 5 is not 0"}])
