"""zcall's built-in ext types: the values msgpack has no type for, carried faithfully (docs/protocol.md §8).

| code | Python | the ext's data |
|-----:|--------|----------------|
| 96 | ``decimal.Decimal`` | its text as ``str(d)`` writes it (ASCII: ``12.50``, ``-1E+3``, ``NaN``) |
| 97 | ``uuid.UUID`` | its 16 bytes, big-endian (``u.bytes``) |
| 98 | ``datetime.date`` | ``YYYY-MM-DD`` (ASCII) |
| 99 | ``datetime.time`` | ``HH:MM:SS[.ffffff][+HH:MM[:SS[.ffffff]]]`` (ASCII, as ``t.isoformat()``) |
| 100 | ``datetime.timedelta`` | msgpack ``[days, seconds, microseconds]``, normalized as Python keeps them |
| 101 | an ``Enum`` member | msgpack ``[name, value]``: the enum's wire name, the member's value |
| 102 | a dataclass | msgpack ``[name, {field: value, ...}]``: the class's wire name, every field |
| 103 | ``set`` | msgpack array of the items |
| 104 | ``frozenset`` | msgpack array of the items |

Codes 96 ... 127 are zcall's (105 ... 127 kept for later built-ins); 0 ... 95 are the application's
(``register_type(cls, code, encode, decode)``). The data of 100 ... 104 is itself one msgpack value, so
a reader in any language decodes it with the msgpack library it already has; ext values inside it
(a ``Decimal`` in a set, a dataclass in a dataclass) are ext values there too.

Enums and dataclasses travel by *wire name* (``module.qualname`` unless registered with ``name=``):
the sender needs no registration, and the receiver rebuilds only a class registered under that name
in its own process (``register_type(Order)``): never one a peer names. A receiver without it gets the
plain value (an enum's value, a dataclass's fields as a map), so nothing is ever unreadable. A
dataclass is rebuilt with its ``__init__`` (its ``__post_init__`` runs), each field converted to its
annotation where that is faithful (``protocol/hints.py``: an array to a ``tuple[...]``, a value to an
``IntEnum`` member ...); a field the class does not have is dropped, a missing one takes its default,
and a class that still cannot be built leaves the map (logged). ``IntEnum``/``StrEnum``/``IntFlag``
members are ints and strs to msgpack and travel as such (they equal their values), as do tuples,
which are arrays: annotations (a dataclass field, a handler's ``validate=True``) make them members and
tuples again.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any, Final

from .hints import Converter, compile_hint, enum_member, field_hints

__all__ = [
    "BUILTIN_CODES",
    "DATE",
    "DECIMAL",
    "ENUM",
    "FIRST_BUILTIN",
    "FROZENSET",
    "RECORD",
    "SET",
    "TIME",
    "TIMEDELTA",
    "UUID",
    "NamedTypes",
    "builtin_decoders",
    "builtin_encoders",
]

log = logging.getLogger("zcall.codec")

FIRST_BUILTIN: Final = 96
"""Ext codes 96 ... 127 are zcall's built-ins; applications register 0 ... 95."""

DECIMAL: Final = 96
UUID: Final = 97
DATE: Final = 98
TIME: Final = 99
TIMEDELTA: Final = 100
ENUM: Final = 101
RECORD: Final = 102
SET: Final = 103
FROZENSET: Final = 104
BUILTIN_CODES: Final = frozenset(range(DECIMAL, FROZENSET + 1))

_DATE_TEXT = re.compile(rb"\d{4}-\d{2}-\d{2}")
_TIME_TEXT = re.compile(rb"\d{2}:\d{2}:\d{2}(\.\d{6})?([+-]\d{2}:\d{2}(:\d{2}(\.\d{6})?)?)?")
_DECIMAL_TEXT = re.compile(rb"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?(Infinity|Inf|s?NaN\d*)", re.I)
_MAX_DAYS = 999_999_999

Pack = Callable[[Any], bytes]
Unpack = Callable[[bytes], Any]


# -- the scalar ones: data is text or bytes ---------------------------------------------------------


def _decimal_out(d: decimal.Decimal) -> bytes:
    return str(d).encode("ascii")


def _decimal_in(data: bytes) -> decimal.Decimal:
    if not _DECIMAL_TEXT.fullmatch(data):
        raise ValueError(f"not a decimal number: {data[:40]!r}")
    return decimal.Decimal(data.decode("ascii"))


def _uuid_out(u: uuid.UUID) -> bytes:
    return u.bytes


def _uuid_in(data: bytes) -> uuid.UUID:
    if len(data) != 16:
        raise ValueError(f"a UUID is 16 bytes, got {len(data)}")
    return uuid.UUID(bytes=bytes(data))


def _date_out(d: _dt.date) -> bytes:
    return d.isoformat().encode("ascii")


def _date_in(data: bytes) -> _dt.date:
    if not _DATE_TEXT.fullmatch(data):
        raise ValueError(f"not a date as YYYY-MM-DD: {data[:40]!r}")
    return _dt.date.fromisoformat(data.decode("ascii"))


def _time_out(t: _dt.time) -> bytes:
    return t.isoformat().encode("ascii")


def _time_in(data: bytes) -> _dt.time:
    if not _TIME_TEXT.fullmatch(data):
        raise ValueError(f"not a time as HH:MM:SS[.ffffff][+HH:MM]: {data[:40]!r}")
    return _dt.time.fromisoformat(data.decode("ascii"))


def builtin_encoders() -> dict[type, tuple[int, Callable[[Any], bytes]]]:
    """Type → (code, encode) for the built-ins whose data does not hold msgpack (the codec adds the
    others, which pack their contents with it)."""
    return {
        decimal.Decimal: (DECIMAL, _decimal_out),
        uuid.UUID: (UUID, _uuid_out),
        _dt.date: (DATE, _date_out),
        _dt.time: (TIME, _time_out),
    }


def builtin_decoders() -> dict[int, Callable[[bytes], Any]]:
    return {DECIMAL: _decimal_in, UUID: _uuid_in, DATE: _date_in, TIME: _time_in}


# -- the ones whose data is msgpack -----------------------------------------------------------------


def timedelta_payload(td: _dt.timedelta) -> list[int]:
    return [td.days, td.seconds, td.microseconds]


def timedelta_from(value: Any) -> _dt.timedelta:
    if type(value) is not list or len(value) != 3 or any(type(v) is not int for v in value):
        raise ValueError("a timedelta is [days, seconds, microseconds], three integers")
    days, seconds, micro = value
    if not (-_MAX_DAYS <= days <= _MAX_DAYS and 0 <= seconds < 86400 and 0 <= micro < 1_000_000):
        raise ValueError(f"timedelta fields out of range: {value!r}")
    return _dt.timedelta(days, seconds, micro)


def hashable(value: Any) -> Any:
    """A set's item as it was: arrays were tuples (a list cannot be in a set), all the way down."""
    if type(value) is list:
        return tuple(hashable(v) for v in value)
    return value


class NamedTypes:
    """The enums and dataclasses a codec rebuilds, by wire name, and how it writes each one."""

    __slots__ = ("_by_name", "_names", "_builders", "_fields")

    def __init__(self) -> None:
        self._by_name: dict[str, type] = {}
        self._names: dict[type, str] = {}
        self._builders: dict[type, Callable[[dict[str, Any]], Any]] = {}
        self._fields: dict[type, tuple[str, ...]] = {}

    def copy(self) -> NamedTypes:
        c = NamedTypes()
        c._by_name = dict(self._by_name)
        c._names = dict(self._names)
        return c

    def register(self, cls: type, name: str | None = None) -> None:
        if not (isinstance(cls, type) and (issubclass(cls, enum.Enum) or dataclasses.is_dataclass(cls))):
            raise TypeError(
                f"register_type({cls!r}) without a code takes an Enum or a dataclass; for another type "
                "give an ext code 0..95 and encode/decode functions"
            )
        wire = f"{cls.__module__}.{cls.__qualname__}" if name is None else name
        if type(wire) is not str or not wire:
            raise ValueError(f"a type's wire name is a non-empty str, got {wire!r}")
        owner = self._by_name.get(wire)
        if owner is cls:
            return
        if owner is not None:
            raise ValueError(
                f"type name {wire!r} is already registered for {owner.__module__}.{owner.__qualname__}: "
                "register this one with another name=..."
            )
        if cls in self._names:
            raise ValueError(f"{cls.__qualname__} is already registered as {self._names[cls]!r}")
        self._by_name[wire] = cls
        self._names[cls] = wire

    def name_of(self, cls: type) -> str:
        """The wire name instances of ``cls`` travel under: registered, else ``module.qualname``."""
        name = self._names.get(cls)
        return name if name is not None else f"{cls.__module__}.{cls.__qualname__}"

    def fields_of(self, obj: Any) -> dict[str, Any]:
        cls = type(obj)
        names = self._fields.get(cls)
        if names is None:
            names = self._fields[cls] = tuple(f.name for f in dataclasses.fields(obj))
        return {n: getattr(obj, n) for n in names}

    def enum_from(self, value: Any) -> Any:
        """An ENUM ext's payload ``[name, value]`` → the member, or the plain value (unknown name)."""
        name, raw = _named_payload(value, "enum")
        cls = self._by_name.get(name)
        if cls is None or not issubclass(cls, enum.Enum):
            return raw
        member = enum_member(cls, raw)
        if member is None:
            log.warning("enum %s has no value %r: delivered as the plain value", name, raw)
            return raw
        return member

    def record_from(self, value: Any) -> Any:
        """A RECORD ext's payload ``[name, fields]`` → the dataclass, or the fields map (unknown name, or
        a class that cannot be built from them)."""
        name, fields = _named_payload(value, "dataclass")
        if type(fields) is not dict:
            raise ValueError("a dataclass record's fields are a map")
        cls = self._by_name.get(name)
        if cls is None or not dataclasses.is_dataclass(cls):
            return fields
        build = self._builders.get(cls)
        if build is None:
            build = self._builders[cls] = _record_builder(cls)
        try:
            return build(fields)
        except Exception as exc:
            log.warning(
                "dataclass %s not rebuilt (%s: %s): delivered as a map", name, type(exc).__name__, exc
            )
            return fields


def _named_payload(value: Any, what: str) -> tuple[str, Any]:
    if type(value) is not list or len(value) != 2 or type(value[0]) is not str:
        raise ValueError(f"an {what} ext holds [name, value]")
    return value[0], value[1]


def _record_builder(cls: type) -> Callable[[dict[str, Any]], Any]:
    """How a registered dataclass is made from its fields: the init fields through ``__init__``, each
    converted leniently to its annotation; the others set after it (as a frozen one's ``__init__``
    would); fields it does not have are dropped."""
    init: dict[str, Converter] = {}
    later: dict[str, Converter] = {}
    hints = field_hints(cls)
    for f in dataclasses.fields(cls):
        conv = compile_hint(hints.get(f.name, Any), strict=False)
        (init if f.init else later)[f.name] = conv

    def build(fields: dict[str, Any]) -> Any:
        kw = {k: conv(fields[k], k) for k, conv in init.items() if k in fields}
        obj = cls(**kw)
        for k, conv in later.items():
            if k in fields:
                object.__setattr__(obj, k, conv(fields[k], k))
        return obj

    return build
