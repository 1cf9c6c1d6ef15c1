"""Exceptions that cross the wire as themselves: a registry of error classes, and the record's ``data``.

A handler that raises ``OutOfStock(sku, available)`` answers ERROR ``HANDLER_ERROR`` (1) as before; when
``OutOfStock`` is registered (``zcall.register_error``) on both sides, the caller gets an ``OutOfStock``
back, with its arguments and attributes, and can ``except OutOfStock``. The builtins handlers commonly
raise (``BUILTIN_ERRORS``: ``KeyError``, ``ValueError``, ``TypeError``, ``LookupError``,
``PermissionError``, ``TimeoutError``, ``NotImplementedError``) are registered from the start.

What travels (docs/protocol.md §5): the record's ``type`` is the class's *wire name* (``module.qualname``
unless registered with ``name=``; a builtin's bare name), and its ``data`` is a map::

    {"args": [...],             # the exception's args, when all of them can travel
     "attrs": {name: value},    # its public instance attributes (``__zcall_data__()`` to choose them)
     "bases": [wire name, ...]} # registered ancestors, nearest first, so a caller that lacks the class
                                #   still rebuilds the closest one it has

Each key is left out when it would be empty, a value msgpack cannot carry is left out, and attributes
then args are dropped when the data would be over a sixteenth of the message size limit (an error must
always fit in its reply). An exception with no registered class in its MRO keeps ``data`` nil: nothing
about it is sent beyond type, message and traceback.

How a caller rebuilds one, and why it is safe: only a ``HANDLER_ERROR`` record is a candidate, and only
a class registered *in this process* is ever built: its name is looked up in this registry, never
imported, and nothing is unpickled. The instance is made with the class's ``__new__`` and its ``args``,
then its attributes are set; the class's ``__init__`` does not run (it might need arguments the wire
does not hold). The result is an instance of the registered class *and* of ``zcall.RemoteError`` (a
subclass made once per class, at registration, named like it), so ``except OutOfStock`` and
``except zcall.RemoteError`` both catch it; its ``str()`` is the original's, a note says it was raised
remotely, and ``exc.remote`` holds the record's fields (``code``, ``type``, ``message``, ``traceback``,
``data``, ``method``) in case the class's own attributes use those names. Anything that goes wrong on
the way (no class by that name, data of another shape, an attribute that cannot be set) leaves the plain
``RemoteError``: a caller never fails to get its error.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from .errors import RemoteError, ZcallError
from .protocol.codec import encoded_size

if TYPE_CHECKING:
    from .protocol.codec import Codec

__all__ = ["BUILTIN_ERRORS", "ErrorRegistry", "default_registry", "describe", "rebuild", "register_error"]

log = logging.getLogger("zcall.errors")

E = TypeVar("E", bound=type[Exception])

BUILTIN_ERRORS: tuple[type[Exception], ...] = (
    KeyError,
    ValueError,
    TypeError,
    LookupError,
    PermissionError,
    TimeoutError,
    NotImplementedError,
)
"""Registered in every process from the start, under their bare names (``"KeyError"`` ...)."""

_RESERVED_PREFIX = "zcall."
_OSERROR_ATTRS = ("filename", "filename2")  # an OSError's state outside its args


class _Rebuilt(RemoteError):
    """The zcall half of every rebuilt exception. Its ``__init__`` is only reached from a registered
    class's own ``__init__`` calling ``super().__init__(...)`` (zcall never calls it): it then does what
    ``Exception.__init__`` would."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        BaseException.__init__(self, *args)


class ErrorRegistry:
    """Wire name ↔ exception class, both ways; one per process (``default_registry``)."""

    def __init__(self) -> None:
        self._by_name: dict[str, type[Exception]] = {}
        self._names: dict[type[BaseException], str] = {}
        self._rebuilt: dict[type[Exception], type[Exception]] = {}
        self._lock = threading.Lock()

    def register(self, cls: E, *, name: str | None = None) -> E:
        """Carry ``cls`` (an ``Exception`` subclass) as itself, under ``name`` (default: ``module.qualname``;
        a builtin's bare name). Registering the same class under the same name again does nothing; any
        other reuse of a name or a class is a ``ValueError``."""
        if not isinstance(cls, type) or not issubclass(cls, Exception):
            raise TypeError(f"register_error() takes an Exception subclass, got {cls!r}")
        if cls is Exception:
            raise ValueError("register_error(Exception): too general; register the classes you raise")
        if issubclass(cls, ZcallError):
            raise TypeError(
                f"{cls.__qualname__} is zcall's own: its errors travel by status code (raise zcall.Rejected "
                "to answer with one)"
            )
        wire = default_name(cls) if name is None else name
        if type(wire) is not str or not wire:
            raise ValueError(f"an error's wire name is a non-empty str, got {wire!r}")
        if wire.startswith(_RESERVED_PREFIX):
            raise ValueError(f"error names starting with {_RESERVED_PREFIX!r} are zcall's own, got {wire!r}")
        with self._lock:
            owner = self._by_name.get(wire)
            if owner is cls:
                return cls
            if owner is not None:
                raise ValueError(
                    f"error name {wire!r} is already registered for {_describe(owner)}: register "
                    f"{_describe(cls)} with another name=..."
                )
            known = self._names.get(cls)
            if known is not None:
                raise ValueError(f"{_describe(cls)} is already registered as {known!r}")
            rebuilt = _combine(cls)
            self._by_name[wire] = cls
            self._names[cls] = wire
            if rebuilt is not None:
                self._rebuilt[cls] = rebuilt
        return cls

    def unregister(self, cls: type[Exception]) -> None:
        """Forget ``cls`` (for tests and plugins that unload; the builtins can be forgotten too)."""
        with self._lock:
            name = self._names.pop(cls, None)
            if name is not None:
                self._by_name.pop(name, None)
            self._rebuilt.pop(cls, None)

    def name_of(self, cls: type[BaseException]) -> str | None:
        """The wire name ``cls`` is registered under, or None."""
        return self._names.get(cls)

    def lookup(self, name: Any) -> type[Exception] | None:
        """The class registered under wire name ``name``, or None (never an import)."""
        return self._by_name.get(name) if type(name) is str else None

    # -- the sender ---------------------------------------------------------------------------------

    def describe(self, exc: BaseException, codec: Codec) -> tuple[str, dict[str, Any]] | None:
        """``(wire type, data)`` for an exception a handler raised, or None when neither its class nor
        an ancestor is registered (its record then keeps today's type and nil data)."""
        names = self._names
        own = names.get(type(exc))
        bases = [n for k in type(exc).__mro__[1:] if isinstance(k, type) and (n := names.get(k)) is not None]
        if own is None and not bases:
            return None
        data: dict[str, Any] = {}
        args = list(exc.args)
        if args and _travels(args, codec):
            data["args"] = args
        try:
            attrs = _attributes(exc, codec)
        except Exception as problem:  # a broken __zcall_data__: the error still goes, without them
            log.warning("%s: attributes not sent: %r", type(exc).__qualname__, problem)
            attrs = {}
        if attrs:
            data["attrs"] = attrs
        if bases:
            data["bases"] = bases
        budget = max(4096, codec.max_message_size // 16)  # an error must always fit in its reply
        for key in ("attrs", "args"):
            if key in data and (encoded_size(codec, data) or 0) > budget:
                log.warning("%s: its %s are over %d bytes: left out", type(exc).__qualname__, key, budget)
                del data[key]
        return (own if own is not None else _qualified(type(exc))), data

    # -- the receiver -------------------------------------------------------------------------------

    def rebuild(self, err: RemoteError) -> RemoteError:
        """The exception a caller raises for a ``HANDLER_ERROR`` read as ``err``: the registered class it
        names (or its nearest registered base), rebuilt; ``err`` itself when there is none or it fails."""
        data = err.data
        if data is not None and type(data) is not dict:
            return err
        data = data or {}
        bases = data.get("bases")
        candidates = [err.type, *(bases if type(bases) is list else ())]
        cls = None
        for name in candidates:
            cls = self.lookup(name)
            if cls is not None:
                break
        if cls is None:
            return err
        args = data.get("args")
        if type(args) is not list:
            args = [err.message]
        attrs = data.get("attrs")
        if type(attrs) is not dict:
            attrs = {}
        try:
            return self._build(cls, err, args, attrs)
        except Exception as exc:  # a caller always gets its error: the plain one, then
            log.debug("could not rebuild %s from %r: %r", _describe(cls), err.type, exc)
            return err

    def _build(self, cls: type[Exception], err: RemoteError, args: list[Any], attrs: dict[str, Any]) -> Any:
        rebuilt = self._rebuilt.get(cls)
        made: Any = (rebuilt or cls).__new__(rebuilt or cls, *args)
        if not made.args and args:  # a class whose __new__ does not keep its arguments
            made.args = tuple(args)
        if rebuilt is not None:
            d = made.__dict__
            d.update(code=err.code, type=err.type, message=err.message, traceback=err.traceback)
            d.update(data=err.data, method=err.method, _remote=err)
        for key, value in attrs.items():
            if type(key) is not str:
                raise TypeError(f"attribute name {key!r} is not a str")
            setattr(made, key, value)
        if rebuilt is None:
            made.remote = err  # the class could not be combined with RemoteError: the record beside it
        where = f" by {err.method!r}" if err.method else ""
        made.add_note(f"(raised remotely{where}; the remote traceback is in .remote.traceback)")
        return made


def _combine(cls: type[Exception]) -> type[Exception] | None:
    """``cls`` and ``RemoteError`` in one class, named like ``cls`` and printing like it; None if Python
    will not combine them (a layout or metaclass conflict): rebuilt instances are then plain ``cls``."""
    namespace = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "__str__": cls.__str__,
        "__repr__": cls.__repr__,
    }
    try:
        meta: Any = type(cls)
        return meta(cls.__name__, (cls, _Rebuilt), namespace)  # type: ignore[no-any-return]
    except TypeError as exc:
        log.info("%s cannot be combined with RemoteError (%s): rebuilt as itself only", _describe(cls), exc)
        return None


def default_name(cls: type[BaseException]) -> str:
    """The wire name a class gets unless registered with ``name=``: ``module.qualname``, or a builtin's
    bare name (the record's ``type``, as ``ErrorRecord.from_exception`` writes it)."""
    return cls.__qualname__ if cls.__module__ == "builtins" else _qualified(cls)


def _qualified(cls: type[BaseException]) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _describe(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _travels(value: Any, codec: Codec) -> bool:
    return encoded_size(codec, value) is not None


def _attributes(exc: BaseException, codec: Codec) -> dict[str, Any]:
    """What of ``exc`` travels besides its args: ``__zcall_data__()`` if it has one, else its public
    instance attributes (slotted dataclass fields included, an OSError's filenames); each value that
    msgpack cannot carry is left out (and logged)."""
    hook: Callable[[], Any] | None = getattr(exc, "__zcall_data__", None)
    if hook is not None:
        chosen = hook()
        if not isinstance(chosen, dict):
            raise TypeError(f"{type(exc).__qualname__}.__zcall_data__() must return a dict, got {chosen!r}")
        found = dict(chosen)
    else:
        found = {k: v for k, v in getattr(exc, "__dict__", {}).items() if not k.startswith("_")}
        if dataclasses.is_dataclass(exc):
            for f in dataclasses.fields(exc):
                if not f.name.startswith("_") and hasattr(exc, f.name):
                    found.setdefault(f.name, getattr(exc, f.name))
        if isinstance(exc, OSError):
            for k in _OSERROR_ATTRS:
                if getattr(exc, k, None) is not None:
                    found[k] = getattr(exc, k)
    kept = {}
    for k, v in found.items():
        if type(k) is str and _travels(v, codec):
            kept[k] = v
        else:
            log.warning(
                "%s: attribute %r cannot travel (msgpack cannot carry it): left out",
                type(exc).__qualname__,
                k,
            )
    return kept


default_registry = ErrorRegistry()
"""The registry every zcall server and client of this process uses."""

for _builtin in BUILTIN_ERRORS:
    default_registry.register(_builtin)


def describe(exc: BaseException, codec: Codec) -> tuple[str, dict[str, Any]] | None:
    """``default_registry.describe``: the wire type and data of a handler's exception, if registered."""
    return default_registry.describe(exc, codec)


def rebuild(err: RemoteError) -> RemoteError:
    """``default_registry.rebuild``: a ``HANDLER_ERROR`` as the registered exception it names."""
    return default_registry.rebuild(err)


@overload
def register_error(cls: E, /, *, name: str | None = None) -> E: ...
@overload
def register_error(*, name: str | None = None) -> Callable[[E], E]: ...


def register_error(cls: E | None = None, /, *, name: str | None = None) -> E | Callable[[E], E]:
    """Let exceptions of ``cls`` cross the wire as themselves; do it on both sides.

    ``zcall.register_error(OutOfStock)``, or as a decorator, bare or with a wire name::

        @zcall.register_error(name="inventory.OutOfStock")
        class OutOfStock(Exception): ...

    The name defaults to ``module.qualname``; a name another class has is a ``ValueError``. A caller
    that registered the class gets an instance of it (and of ``zcall.RemoteError``) with the args and
    public attributes the handler's exception had; ``__zcall_data__(self) -> dict`` chooses the
    attributes instead. A caller that did not gets a ``RemoteError`` whose ``data`` holds them.
    """
    if cls is None:
        return lambda c: default_registry.register(c, name=name)
    return default_registry.register(cls, name=name)
