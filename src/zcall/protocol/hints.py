"""Values against type hints: check them, and convert where the conversion is faithful.

Two users, one set of rules. A dataclass arriving as a record (``protocol/types.py``) gets each field
converted to its annotation *leniently*: what converts faithfully does, anything else is kept as it
came (a dataclass does not check its field types either). A handler registered with ``validate=True``
gets its arguments checked *strictly*: a value that does not fit raises ``Mismatch``, which the service
turns into ``InvalidArguments`` naming the parameter, the path inside it and the expected type.

A value fits a type when ``isinstance`` says so, deep inside containers whose annotation says what they
hold. The conversions (each one undoes what msgpack, or a client in another language, cannot tell):

- an array to a ``tuple[...]`` (tuples travel as arrays), a ``set``/``frozenset``, or a ``NamedTuple``;
- a map to a dataclass (its fields, converted in turn; unknown keys and missing required fields do
  not fit), or to a ``TypedDict``'s value types;
- a plain value to a member of an ``Enum`` annotation (``IntEnum``/``StrEnum`` members travel as their
  ints and strs);
- a str or an int to ``Decimal``, a str (or 16 bytes) to ``UUID``.

Nothing else converts: a float never becomes a ``Decimal``, a str never becomes an int. Annotations that
say nothing checkable (``Any``, ``object``, a ``TypeVar``, a ``Protocol``, a ``Callable``) accept
anything. Only classes the annotations name are ever built, never one a peer names.
"""

from __future__ import annotations

import collections.abc as abc
import dataclasses
import decimal
import enum
import inspect
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["Mismatch", "compile_hint", "convert", "field_hints", "hint_text"]

Converter = Callable[[Any, str], Any]
"""``convert(value, path) -> value``: the value as the hint wants it (maybe the same object), or raises
``Mismatch`` (strict) / returns the value unchanged (lenient)."""

_SEQUENCE_ORIGINS = (list, abc.Sequence, abc.MutableSequence, abc.Iterable, abc.Collection)
_SET_ORIGINS = (set, frozenset, abc.Set, abc.MutableSet)
_MAPPING_ORIGINS = (dict, abc.Mapping, abc.MutableMapping)


class Mismatch(Exception):
    """A value that does not fit its annotation: where (``path``), what was expected, what came."""

    def __init__(self, path: str, expected: str, got: Any, detail: str = "") -> None:
        self.path = path
        self.expected = expected
        self.got = type(got).__name__
        self.detail = detail
        text = f"{path}: expected {expected}, got {self.got}"
        super().__init__(f"{text} ({detail})" if detail else text)


def hint_text(hint: Any) -> str:
    """An annotation as people write it: ``int``, ``list[str]``, ``Order``, ``Order | None``."""
    if hint is None or hint is type(None):
        return "None"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(hint_text(a) for a in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin is typing.Annotated:
        return hint_text(args[0])
    if origin is not None and args:
        name = getattr(origin, "__qualname__", None) or str(origin)
        return f"{name}[{', '.join('...' if a is Ellipsis else hint_text(a) for a in args)}]"
    if isinstance(hint, type):
        return hint.__qualname__
    return inspect.formatannotation(hint).replace("typing.", "")


def convert(value: Any, hint: Any, path: str = "value", *, strict: bool = True) -> Any:
    """``value`` as ``hint`` wants it (see the module docstring); one-off form of ``compile_hint``."""
    return compile_hint(hint, strict=strict)(value, path)


def field_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass's fields (``{}`` when they do not resolve)."""
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:
        return {}
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name in hints}


def compile_hint(hint: Any, *, strict: bool = True) -> Converter:
    """A converter for ``hint``, made once (the checks it needs, nothing else)."""
    return _Compiler(strict).compile(hint)


def _accept(value: Any, path: str) -> Any:
    return value


class _Compiler:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self._records: dict[type, Converter] = {}  # dataclasses being compiled: recursive types end here
        self._twin: _Compiler | None = None  # the strict compiler a lenient one tries union members with

    def strict_twin(self) -> _Compiler:
        """A strict compiler sharing one cache for this one's lifetime (union members are tried
        strictly, and a recursive dataclass must meet itself in a cache, not compile forever)."""
        if self.strict:
            return self
        if self._twin is None:
            self._twin = _Compiler(True)
        return self._twin

    def fail(self, value: Any, path: str, expected: str, detail: str = "") -> Any:
        if self.strict:
            raise Mismatch(path, expected, value, detail)
        return value

    def compile(self, hint: Any) -> Converter:  # one branch per kind of annotation
        if hint is Any or hint is object or hint is inspect.Parameter.empty or isinstance(hint, str):
            return _accept
        if isinstance(hint, typing.TypeVar) or hint is typing.Callable or hint is abc.Callable:
            return _accept
        if hint is None or hint is type(None):
            return self.exactly(lambda v: v is None, "None")
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin is typing.Annotated:
            return self.compile(args[0])
        if origin is typing.Union or origin is types.UnionType:
            return self.union(hint, args)
        if origin is typing.Literal:
            return self.literal(hint, args)
        if origin is abc.Callable or origin is type:
            return _accept if origin is abc.Callable else self.instance(type, hint)
        if callable(getattr(hint, "__supertype__", None)) or hasattr(hint, "__supertype__"):  # NewType
            return self.compile(hint.__supertype__)
        if origin is tuple or hint is tuple:
            return self.tuple_(hint, args)
        if origin in _SEQUENCE_ORIGINS or hint is list:
            return self.sequence(hint, origin or list, args)
        if origin in _SET_ORIGINS or hint in (set, frozenset):
            return self.set_(hint, origin or hint, args)
        if origin in _MAPPING_ORIGINS or hint is dict:
            return self.mapping(hint, origin or dict, args)
        if origin is not None:  # another generic (a user's Generic[T], collections.deque[int] ...)
            return self.compile(origin) if isinstance(origin, type) else _accept
        if not isinstance(hint, type):
            return _accept
        if getattr(hint, "_is_protocol", False):
            return _accept
        if issubclass(hint, enum.Enum):
            return self.enum_(hint)
        if dataclasses.is_dataclass(hint):
            return self.record(hint)
        if typing.is_typeddict(hint):
            return self.typeddict(hint)
        if issubclass(hint, tuple) and hasattr(hint, "_fields"):
            return self.namedtuple(hint)
        if hint is decimal.Decimal:
            return self.decimal()
        if hint is uuid.UUID:
            return self.uuid_()
        if hint is float:
            return self.exactly(lambda v: isinstance(v, float | int), "float")
        if hint is complex:
            return self.exactly(lambda v: isinstance(v, complex | float | int), "complex")
        return self.instance(hint, hint)

    # -- leaves ---------------------------------------------------------------------------------------

    def exactly(self, test: Callable[[Any], bool], expected: str) -> Converter:
        def check(value: Any, path: str) -> Any:
            return value if test(value) else self.fail(value, path, expected)

        return check

    def instance(self, cls: type, hint: Any) -> Converter:
        expected = hint_text(hint)

        def check(value: Any, path: str) -> Any:
            return value if isinstance(value, cls) else self.fail(value, path, expected)

        return check

    def literal(self, hint: Any, options: tuple[Any, ...]) -> Converter:
        expected = hint_text(hint)

        def check(value: Any, path: str) -> Any:
            for option in options:
                if type(value) is type(option) and value == option:
                    return value
            return self.fail(value, path, expected)

        return check

    def decimal(self) -> Converter:
        def check(value: Any, path: str) -> Any:
            if isinstance(value, decimal.Decimal):
                return value
            if (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str):
                try:
                    return decimal.Decimal(value)
                except decimal.InvalidOperation:
                    return self.fail(value, path, "Decimal", f"{value!r} is not a decimal number")
            return self.fail(value, path, "Decimal")

        return check

    def uuid_(self) -> Converter:
        def check(value: Any, path: str) -> Any:
            if isinstance(value, uuid.UUID):
                return value
            try:
                if isinstance(value, str):
                    return uuid.UUID(value)
                if isinstance(value, bytes) and len(value) == 16:
                    return uuid.UUID(bytes=value)
            except ValueError:
                return self.fail(value, path, "UUID", f"{value!r} is not a UUID")
            return self.fail(value, path, "UUID")

        return check

    def enum_(self, cls: type[enum.Enum]) -> Converter:
        expected = cls.__qualname__

        def check(value: Any, path: str) -> Any:
            if isinstance(value, cls):
                return value
            member = enum_member(cls, value)
            if member is None:
                values = ", ".join(repr(m.value) for m in list(cls)[:8])
                return self.fail(value, path, expected, f"{value!r} is not one of its values ({values})")
            return member

        return check

    # -- containers -----------------------------------------------------------------------------------

    def union(self, hint: Any, members: tuple[Any, ...]) -> Converter:
        expected = hint_text(hint)
        twin = self.strict_twin()
        exact = [twin.compile(m) for m in members]

        def check(value: Any, path: str) -> Any:
            converted = []
            for one in exact:  # a member that takes the value as it is wins; else the first that converts
                try:
                    got = one(value, path)
                except Mismatch:
                    continue
                if got is value:
                    return value
                converted.append(got)
            if converted:
                return converted[0]
            return self.fail(value, path, expected)

        return check

    def tuple_(self, hint: Any, args: tuple[Any, ...]) -> Converter:
        expected = hint_text(hint)
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item = self.compile(args[0]) if args else _accept

            def variadic(value: Any, path: str) -> Any:
                if not isinstance(value, list | tuple):
                    return self.fail(value, path, expected)
                items = tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value))
                return value if type(value) is tuple and _same(items, value) else items

            return variadic
        if args == ((),):  # tuple[()]
            args = ()
        items = [self.compile(a) for a in args]

        def fixed(value: Any, path: str) -> Any:
            if not isinstance(value, list | tuple):
                return self.fail(value, path, expected)
            if len(value) != len(items):
                return self.fail(value, path, expected, f"{len(value)} items, not {len(items)}")
            out = tuple(c(v, f"{path}[{i}]") for i, (c, v) in enumerate(zip(items, value, strict=True)))
            return value if type(value) is tuple and _same(out, value) else out

        return fixed

    def sequence(self, hint: Any, origin: Any, args: tuple[Any, ...]) -> Converter:
        expected = hint_text(hint)
        item = self.compile(args[0]) if args else _accept
        want_list = origin is list

        def check(value: Any, path: str) -> Any:
            ok = isinstance(value, list) if want_list else isinstance(value, origin)
            if not ok:
                return self.fail(value, path, expected)
            if item is _accept or isinstance(value, str | bytes):
                return value
            items = [item(v, f"{path}[{i}]") for i, v in enumerate(value)]
            return value if _same(items, value) else (items if want_list else type(value)(items))

        return check

    def set_(self, hint: Any, origin: Any, args: tuple[Any, ...]) -> Converter:
        expected = hint_text(hint)
        item = self.compile(args[0]) if args else _accept
        make = frozenset if origin is frozenset else set

        def check(value: Any, path: str) -> Any:
            if isinstance(value, list | tuple):
                try:
                    return make(item(v, f"{path}[{i}]") for i, v in enumerate(value))
                except TypeError as exc:  # an unhashable item
                    return self.fail(value, path, expected, str(exc))
            if not isinstance(value, set | frozenset):
                return self.fail(value, path, expected)
            if origin is frozenset and type(value) is not frozenset:
                value = frozenset(value)
            if item is _accept:
                return value
            items = [item(v, f"{path}[{v!r}]") for v in value]
            return value if _same(items, list(value)) else make(items)

        return check

    def mapping(self, hint: Any, origin: Any, args: tuple[Any, ...]) -> Converter:
        expected = hint_text(hint)
        key = self.compile(args[0]) if args else _accept
        val = self.compile(args[1]) if len(args) > 1 else _accept

        def check(value: Any, path: str) -> Any:
            if not isinstance(value, dict if origin is dict else origin):
                return self.fail(value, path, expected)
            if key is _accept and val is _accept:
                return value
            out = {key(k, f"{path}[{k!r}] (a key)"): val(v, f"{path}[{k!r}]") for k, v in value.items()}
            same = len(out) == len(value) and all(k in value and value[k] is v for k, v in out.items())
            return value if same else out

        return check

    def record(self, cls: type) -> Converter:
        known = self._records.get(cls)
        if known is not None:
            return known
        fields: dict[str, Converter] = {}
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        expected = cls.__qualname__

        def check(value: Any, path: str) -> Any:
            if isinstance(value, cls):
                if not self.strict:
                    return value
                changed = {}
                for name, conv in fields.items():
                    if hasattr(value, name):
                        old = getattr(value, name)
                        new = conv(old, f"{path}.{name}")
                        if new is not old and name in init:
                            changed[name] = new
                return dataclasses.replace(value, **changed) if changed else value  # type: ignore[type-var]
            if not isinstance(value, dict):
                return self.fail(value, path, expected)
            unknown = [k for k in value if k not in init]
            if unknown:
                return self.fail(value, path, expected, f"no field {unknown[0]!r}")
            missing = sorted(required - value.keys())
            if missing:
                return self.fail(value, path, expected, f"missing field {missing[0]!r}")
            kw = {k: fields[k](v, f"{path}.{k}") if k in fields else v for k, v in value.items()}
            try:
                return cls(**kw)
            except Exception as exc:  # its __init__ or __post_init__ refused
                return self.fail(value, path, expected, f"{type(exc).__name__}: {exc}")

        self._records[cls] = check
        for name, h in field_hints(cls).items():
            fields[name] = self.compile(h)
        return check

    def typeddict(self, cls: Any) -> Converter:
        try:
            hints = typing.get_type_hints(cls, include_extras=True)
        except Exception:
            hints = {}
        values = {k: self.compile(h) for k, h in hints.items()}
        required = set(getattr(cls, "__required_keys__", ()))
        expected = cls.__qualname__

        def check(value: Any, path: str) -> Any:
            if not isinstance(value, dict):
                return self.fail(value, path, expected)
            missing = sorted(required - value.keys())
            if missing:
                return self.fail(value, path, expected, f"missing key {missing[0]!r}")
            out = {k: values[k](v, f"{path}[{k!r}]") if k in values else v for k, v in value.items()}
            return value if all(value[k] is v for k, v in out.items()) else out

        return check

    def namedtuple(self, cls: Any) -> Converter:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:
            hints = {}
        names = list(cls._fields)
        items = [self.compile(hints.get(n, Any)) for n in names]
        expected = cls.__qualname__

        def check(value: Any, path: str) -> Any:
            if not isinstance(value, list | tuple):
                return self.fail(value, path, expected)
            if len(value) != len(names):
                return self.fail(value, path, expected, f"{len(value)} items, not {len(names)}")
            out = [c(v, f"{path}.{n}") for c, n, v in zip(items, names, value, strict=True)]
            if isinstance(value, cls) and _same(out, value):
                return value
            return cls(*out)

        return check


def _same(new: Any, old: Any) -> bool:
    """Whether converting a container changed none of its items (then the container is kept)."""
    return all(a is b for a, b in zip(new, old, strict=True))


def enum_member(cls: type[enum.Enum], value: Any) -> enum.Enum | None:
    """The member of ``cls`` with value ``value`` (an array matches a tuple value), or None."""
    try:
        return cls(value)
    except (ValueError, TypeError):
        pass
    if isinstance(value, list):
        try:
            return cls(_tuplify(value))
        except (ValueError, TypeError):
            return None
    return None


def _tuplify(value: Any) -> Any:
    """Arrays as tuples, all the way down: what a hashable value (a set item, an enum value) was."""
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value
