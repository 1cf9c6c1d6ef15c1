"""msgpack, configured once for untrusted input: size and length limits, an ext-type registry, no pickle.

A ``Codec`` turns Python values into msgpack bytes and back. Datetimes travel as msgpack's standard
Timestamp ext type (-1); ``Decimal``, ``UUID``, ``date``, ``time``, ``timedelta``, enums, dataclasses,
``set`` and ``frozenset`` as zcall's built-in ext types 96 ... 104 (``protocol/types.py``); users add
their own with ``register`` (codes 0 ... 95, or an enum or dataclass by name). Decoding never executes
code beyond the registered decoders and the ``__init__`` of registered dataclasses, and never allocates
more than the frame's own size can justify (msgpack's length limits default to the frame length, so a
"huge declared length" fails fast; ext values nested in ext values count towards the same budget, at
most ``MAX_EXT_NESTING`` deep).

A plain value (what msgpack has a type for) never reaches this module's Python code: msgpack packs and
unpacks it in C, and only the values it cannot handle come to ``_encode_other`` and ``_ext_hook``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import threading
from collections.abc import Callable
from typing import Any, TypeVar, overload

import msgpack

from ..errors import MessageTooLarge, ProtocolError, SerializationError
from . import types as _types
from .types import FIRST_BUILTIN, NamedTypes

T = TypeVar("T", bound=type)

MAX_EXT_NESTING = 32
"""How deep ext values whose data is msgpack (sets, dataclasses, enums, timedeltas) may nest in one
another: each level is a decode of its own, so this bounds the recursion the depth limit cannot see."""

_CONTAINERS: dict[type, int] = {
    _dt.timedelta: _types.TIMEDELTA,
    set: _types.SET,
    frozenset: _types.FROZENSET,
}

__all__ = [
    "DEFAULT_MAX_DECODED_BYTES",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Codec",
    "default_codec",
    "encoded_size",
    "find_bad_key",
    "map_key_refusal",
    "register_type",
]

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
"""Largest frame zcall accepts by default (16 MiB); larger ones are refused before decoding."""


COUNTED_ABOVE = 4096
"""Bodies of at least this many bytes are decoded with what their maps and arrays cost counted against
``Codec.max_decoded_bytes``; smaller ones cannot cost more than ~64x their size (256 KiB)."""

DEFAULT_MAX_DECODED_BYTES = 64 * 1024 * 1024
"""What the maps and arrays of one message may cost once decoded, by default (64 MiB)."""


class _OverBudget(Exception):
    pass


class _ContainerBudget:
    """msgpack's list_hook/object_hook: adds up what each map and array costs in Python as it is built
    (an estimate of CPython's sizes) and stops decoding at the budget."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.left = self.limit = limit

    def __call__(self, obj: Any) -> Any:
        self.left -= (64 + 32 * len(obj)) if type(obj) is dict else (56 + 8 * len(obj))
        if self.left < 0:
            raise _OverBudget(
                f"the maps and arrays of this message would take more than {self.limit} bytes once "
                "decoded: refused before decoding the rest (raise Codec(max_decoded_bytes=...) on both "
                "sides if the data really is that dense)"
            )
        return obj


class Codec:
    """msgpack encoder/decoder with explicit limits and a registry of extension types."""

    __slots__ = (
        "max_message_size",
        "max_decoded_bytes",
        "strict_map_key",
        "_by_type",
        "_by_code",
        "_named",
        "_default",
        "_local",
    )

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        strict_map_key: bool = True,
    ) -> None:
        self.max_message_size = max_message_size
        self.max_decoded_bytes = max_decoded_bytes
        """What the maps and arrays of one message may cost once decoded (``COUNTED_ABOVE``)."""
        self.strict_map_key = strict_map_key
        self._by_type: dict[type, tuple[int, Callable[[Any], bytes]]] = _types.builtin_encoders()
        self._by_code: dict[int, Callable[[bytes], Any]] = _types.builtin_decoders()
        self._named = NamedTypes()
        self._default = self._encode_other
        # One msgpack.Packer per thread, reused: msgpack.packb() builds a new Packer every call, which
        # costs more than the packing of a typical call frame. A Packer is not re-entrant, so a user
        # ext encoder that packs again gets a fresh one (see _encode_other).
        self._local = threading.local()

    def register(
        self,
        cls: type,
        code: int | None = None,
        encode: Callable[[Any], bytes] | None = None,
        decode: Callable[[bytes], Any] | None = None,
        *,
        name: str | None = None,
    ) -> None:
        """Carry instances of ``cls`` faithfully, both ways.

        An ``Enum`` or a dataclass needs only itself (``register(Order)``): it travels by name as zcall's
        built-in ext type, and this codec rebuilds it; ``name`` is its wire name (default
        ``module.qualname``, the same on both sides). Any other type gets an application ext ``code``
        (0 ... 95; 96 ... 127 are zcall's) and ``encode``/``decode`` functions to and from bytes."""
        if code is None:
            if encode is not None or decode is not None:
                raise TypeError(
                    "encode and decode go with an ext type code: register(cls, code, encode, decode)"
                )
            self._named.register(cls, name)
            return
        if name is not None:
            raise TypeError("name= is for an Enum or a dataclass registered without a code")
        if type(code) is not int or not 0 <= code <= 127:
            raise ValueError(f"ext type code must be in 0..127 (negative codes are msgpack's), got {code!r}")
        if code >= FIRST_BUILTIN:
            raise ValueError(
                f"ext type codes {FIRST_BUILTIN}..127 are zcall's built-in types (docs/protocol.md §8): "
                f"use 0..{FIRST_BUILTIN - 1} for your own, got {code}"
            )
        if encode is None or decode is None:
            raise TypeError(f"register({cls.__qualname__}, {code}, ...) needs both encode and decode")
        owner = self._by_code.get(code)
        if owner is not None and self._by_type.get(cls, (None,))[0] != code:
            raise ValueError(f"ext type code {code} is already registered")
        self._by_type[cls] = (code, encode)
        self._by_code[code] = decode

    def copy(self) -> Codec:
        """A codec with the same limits and registrations, to change without touching this one."""
        c = Codec(
            max_message_size=self.max_message_size,
            max_decoded_bytes=self.max_decoded_bytes,
            strict_map_key=self.strict_map_key,
        )
        c._by_type = dict(self._by_type)
        c._by_code = dict(self._by_code)
        c._named = self._named.copy()
        return c

    # -- encoding ---------------------------------------------------------------------------------

    def _encode_other(self, obj: Any) -> Any:
        """msgpack's ``default``: the ext value for anything msgpack has no type for (registered types
        first, by exact type, then zcall's built-ins, then registered base classes), or
        ``SerializationError`` saying what to do."""
        t = type(obj)
        entry = self._by_type.get(t)
        if entry is None:
            code = _CONTAINERS.get(t)
            if code is not None:
                return msgpack.ExtType(code, self._nested_pack(code, obj))
            if isinstance(obj, _dt.datetime):  # only naive ones reach here: aware ones are packed natively
                raise SerializationError(
                    f"cannot send naive datetime {obj!r}: attach a tzinfo (e.g. datetime.timezone.utc)"
                )
            for klass, candidate in self._by_type.items():
                if isinstance(obj, klass):
                    entry = candidate
                    break
        if entry is None:
            if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
                return msgpack.ExtType(_types.RECORD, self._nested_pack(_types.RECORD, obj))
            if isinstance(obj, enum.Enum):
                return msgpack.ExtType(_types.ENUM, self._nested_pack(_types.ENUM, obj))
            for klass, code in _CONTAINERS.items():
                if isinstance(obj, klass):
                    return msgpack.ExtType(code, self._nested_pack(code, obj))
        if entry is not None:
            code, encode = entry
            local = self._local
            packer = getattr(local, "packer", None)
            local.packer = None  # the user's encoder may call packb: it must not reuse our packer
            try:
                return msgpack.ExtType(code, encode(obj))
            finally:
                local.packer = packer
        if isinstance(obj, int):  # msgpack hands over the ints it cannot pack
            raise SerializationError(f"integer {obj} is outside msgpack's range -2**63 .. 2**64-1")
        raise SerializationError(
            f"cannot send a {type(obj).__module__}.{type(obj).__qualname__} with msgpack: "
            "convert it to plain data, or give it an ext code with zcall.register_type(cls, code, encode, "
            "decode) on both sides"
        )

    def _nested_pack(self, code: int, obj: Any) -> bytes:
        """The data of a built-in ext whose data is msgpack: packed by a Packer of its own (the thread's
        one is busy with the value around it)."""
        if code == _types.TIMEDELTA:
            payload: Any = _types.timedelta_payload(obj)
        elif code == _types.RECORD:
            payload = [self._named.name_of(type(obj)), self._named.fields_of(obj)]
        elif code == _types.ENUM:
            payload = [self._named.name_of(type(obj)), obj.value]
        else:
            payload = list(obj)
        return msgpack.packb(payload, default=self._default, datetime=True)  # type: ignore[no-any-return]

    def packb(self, obj: Any) -> bytes:
        """Encode ``obj``; raises ``SerializationError`` naming the type that could not be sent."""
        try:
            try:
                packer = self._local.packer
            except AttributeError:
                packer = self._local.packer = self._new_packer()
            if packer is None:  # re-entered from an ext encoder on this thread
                return msgpack.packb(obj, default=self._default, datetime=True)
            return packer.pack(obj)  # a failed pack() resets the packer's buffer
        except SerializationError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(f"cannot encode value with msgpack: {exc}") from None

    def held_by(self, data: Any) -> int:
        """What ``data``, decoded last on this thread by ``unpackb``, holds in memory: its size, or the
        estimated cost of its maps and arrays when that is more (counted for bodies of ``COUNTED_ABOVE``
        bytes and up). Servers charge calls in flight with it: a dense request holds ~60x its size."""
        n = len(data)
        if n < COUNTED_ABOVE:
            return n
        cost: int = getattr(self._local, "decoded_cost", 0)
        return cost if cost > n else n

    def _new_packer(self) -> msgpack.Packer:
        return msgpack.Packer(default=self._default, datetime=True, autoreset=True)

    # -- decoding ---------------------------------------------------------------------------------

    def _ext_hook(self, code: int, data: bytes) -> Any:
        decode = self._by_code.get(code)
        if decode is None:
            if _types.TIMEDELTA <= code <= _types.FROZENSET:
                return self._nested_unpack(code, data)
            return msgpack.ExtType(code, data)
        try:
            return decode(data)
        except Exception as exc:
            raise ProtocolError(f"ext type {code} failed to decode: {exc!r}") from None

    def _nested_unpack(self, code: int, data: bytes) -> Any:
        """A built-in ext whose data is msgpack: decoded with this codec's rules, under the budget of the
        message around it, at most ``MAX_EXT_NESTING`` deep; a malformed one is a ``ProtocolError``."""
        local = self._local
        depth = getattr(local, "ext_depth", 0)
        if depth >= MAX_EXT_NESTING:
            raise ProtocolError(f"ext values nested in ext values more than {MAX_EXT_NESTING} deep")
        budget = getattr(local, "budget", None)
        hooks: dict[str, Any] = {} if budget is None else {"list_hook": budget, "object_hook": budget}
        local.ext_depth = depth + 1
        try:
            value = msgpack.unpackb(
                data,
                raw=False,
                timestamp=3,
                strict_map_key=self.strict_map_key,
                ext_hook=self._ext_hook,
                **hooks,
            )
            if code == _types.SET:
                return set(map(_types.hashable, _array(value)))
            if code == _types.FROZENSET:
                return frozenset(map(_types.hashable, _array(value)))
            if code == _types.TIMEDELTA:
                return _types.timedelta_from(value)
            if code == _types.RECORD:
                return self._named.record_from(value)
            return self._named.enum_from(value)
        except (ProtocolError, _OverBudget):
            raise
        except Exception as exc:
            raise ProtocolError(f"ext type {code} failed to decode: {exc!r}") from None
        finally:
            local.ext_depth = depth

    def unpackb(self, data: bytes) -> Any:
        """Decode one msgpack value; raises ``ProtocolError`` (never anything else) on bad input."""
        if len(data) > self.max_message_size:
            raise MessageTooLarge(
                f"message of {len(data)} bytes exceeds the limit of {self.max_message_size} bytes",
                size=len(data),
                limit=self.max_message_size,
            )
        n = len(data)
        try:
            if n < COUNTED_ABOVE:
                return msgpack.unpackb(
                    data, raw=False, timestamp=3, strict_map_key=self.strict_map_key, ext_hook=self._ext_hook
                )
            # A large body is decoded with its containers counted: an empty map or array costs one wire
            # byte and ~60 bytes once decoded, so a body of nothing else would decode to ~60x its size.
            # Ext values decoded inside it (a set, a dataclass) count towards the same budget.
            hook = _ContainerBudget(self.max_decoded_bytes)
            local = self._local
            outer = getattr(local, "budget", None)
            local.budget = hook
            try:
                value = msgpack.unpackb(
                    data,
                    raw=False,
                    timestamp=3,
                    strict_map_key=self.strict_map_key,
                    ext_hook=self._ext_hook,
                    list_hook=hook,
                    object_hook=hook,
                )
            finally:
                local.budget = outer
            local.decoded_cost = hook.limit - hook.left
            return value
        except ProtocolError:
            raise
        except _OverBudget as exc:
            raise ProtocolError(str(exc)) from None
        except msgpack.ExtraData:
            raise ProtocolError("trailing bytes after the msgpack value") from None
        except msgpack.StackError:
            raise ProtocolError("msgpack value nested too deeply") from None
        except ValueError as exc:
            if "not allowed for map key" in str(exc):  # msgpack's strict_map_key refusal: say the fix
                raise ProtocolError(map_key_refusal(str(exc).split(" ", 1)[0])) from None
            raise ProtocolError(f"invalid msgpack: {type(exc).__name__}: {exc}") from None
        except Exception as exc:  # FormatError, UnicodeDecodeError, TypeError ...
            raise ProtocolError(f"invalid msgpack: {type(exc).__name__}: {exc}") from None


def encoded_size(codec: Codec, value: Any) -> int | None:
    """How many bytes ``value`` takes encoded with ``codec``, or None when it cannot be encoded (what an
    error's data may hold is decided with it)."""
    try:
        return len(codec.packb(value))
    except SerializationError:
        return None


def find_bad_key(roots: dict[str, Any], limit: int = 100_000) -> tuple[str, Any] | None:
    """``(path, key)`` of the first map key in ``roots``' values that is neither str nor bytes (what a
    strict decoder refuses), e.g. ``("args[0]['counts']", 1)``; None if there is none among the first
    ``limit`` values. For error messages only: it walks the values in Python."""
    stack: list[tuple[str, Any]] = [(name, value) for name, value in reversed(list(roots.items()))]
    seen = 0
    while stack and seen < limit:
        path, value = stack.pop()
        seen += 1
        t = type(value)
        if t is dict or isinstance(value, dict):
            for k in value:
                if type(k) is not str and type(k) is not bytes:
                    return path, k
            stack.extend((f"{path}[{k!r}]", v) for k, v in reversed(list(value.items())))
        elif t is list or t is tuple or isinstance(value, list | tuple):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


def map_key_refusal(key_type: str, where: str = "") -> str:
    """What a map key that is neither str nor bin is told: the rule, and the two ways out."""
    at = f" at {where}" if where else ""
    return (
        f"a map key{at} is of type {key_type}: zcall's maps take str (or bin) keys (docs/protocol.md §8): "
        "convert the keys (e.g. {str(k): v for k, v in d.items()}), or use Codec(strict_map_key=False) on "
        "both sides"
    )


def _array(value: Any) -> list[Any]:
    if type(value) is not list:
        raise ValueError(f"the items of a set are an array, got {type(value).__name__}")
    return value


default_codec = Codec()
"""The codec every zcall socket uses unless given another."""


@overload
def register_type(
    cls: T,
    code: int | None = None,
    encode: Callable[[Any], bytes] | None = None,
    decode: Callable[[bytes], Any] | None = None,
    *,
    name: str | None = None,
) -> T: ...
@overload
def register_type(*, name: str | None = None) -> Callable[[T], T]: ...


def register_type(
    cls: T | None = None,
    code: int | None = None,
    encode: Callable[[Any], bytes] | None = None,
    decode: Callable[[bytes], Any] | None = None,
    *,
    name: str | None = None,
) -> T | Callable[[T], T]:
    """Carry ``cls`` faithfully through the default codec; do it on both sides. Returns ``cls``.

    ``zcall.register_type(Order)`` for an ``Enum`` or a dataclass (also as a decorator, bare or as
    ``@zcall.register_type(name="shop.Order")``): it is rebuilt by name on arrival (without it, the
    receiver gets its value or its fields as a map). Any other class takes an application ext ``code``
    (0 ... 95) and ``encode(obj) -> bytes`` / ``decode(bytes) -> obj``. ``Decimal``, ``UUID``, dates,
    times, timedeltas, sets and frozensets need nothing: they are built in."""
    if cls is None:
        return lambda c: register_type(c, name=name)
    default_codec.register(cls, code, encode, decode, name=name)
    return cls
