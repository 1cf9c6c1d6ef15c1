"""The handler registry: which names are callable, how arguments bind, and built-in introspection.

A ``Service`` is transport-free: the sync (REP) and async (ROUTER) servers both ask it to ``lookup`` a
method and check the arguments *before* running anything, so every server kind rejects a bad call with
the same error record.
"""

from __future__ import annotations

import difflib
import inspect
import os
import sys
import time
import typing
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, overload

from ..errors import Rejected
from ..protocol.hints import Converter, Mismatch, compile_hint
from ..protocol.status import StatusCode
from .interceptors import ServerInterceptor
from .metrics import Metrics

__all__ = ["BUILTIN_PREFIX", "Method", "Rejected", "Service"]

F = TypeVar("F", bound=Callable[..., Any])

BUILTIN_PREFIX = "zcall."
"""Reserved prefix of the built-in introspection methods (``zcall.ping``, ``zcall.methods`` ...)."""


MAX_HINTED_NAME = 200
"""Unknown names longer than this get no close-match hints (the search is quadratic in the name)."""


def _private(name: str) -> bool:
    return any(part.startswith("_") or not part for part in name.split("."))


class Method:
    """One callable entry: the function, its signature and what servers need to know to run it."""

    __slots__ = (
        "name",
        "fn",
        "is_coroutine",
        "inline",
        "idempotent",
        "doc",
        "signature",
        "_min_pos",
        "_max_pos",
        "_slow",
        "_checks",
        "stats",
        "while_stopping",
        "streams",
        "is_asyncgen",
    )

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        *,
        inline: bool = False,
        idempotent: bool = False,
        validate: bool = False,
    ) -> None:
        self.name = name
        self.fn = fn
        self.is_coroutine = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)
        )
        self.is_asyncgen = inspect.isasyncgenfunction(fn) or inspect.isasyncgenfunction(
            getattr(fn, "__call__", None)
        )
        self.streams = self.is_asyncgen or inspect.isgeneratorfunction(fn)
        """A generator (or async generator) function: it streams what it yields, and a plain CALL of it
        is refused (INVALID_ARGUMENTS, data ``{"stream": true}``: open it with ``stream()``)."""
        self.inline = inline
        self.idempotent = idempotent
        self.stats: Any = None
        """This method's row in its service's metrics (set on registration; the hot path's handle)."""
        self.while_stopping = False
        """Answered even by a stopping server (the built-in probes only)."""
        doc = inspect.getdoc(fn) or ""
        self.doc = doc.strip().splitlines()[0] if doc.strip() else ""
        try:
            self.signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            self.signature = None
        else:
            try:  # resolve postponed annotations, so zcall.methods shows (x: int), not (x: 'int')
                self.signature = inspect.signature(fn, eval_str=True)
            except Exception:
                pass
        # Precomputed fast path: positional-only calls that certainly bind skip Signature.bind, unless a
        # required keyword-only parameter or validation needs the slow path (``_slow``).
        self._min_pos = 0
        self._max_pos: int | None = 0
        self._slow = False
        self._checks: list[tuple[inspect.Parameter, Converter | None]] | None = None
        if validate:
            self._checks = _validators(name, fn, self.signature)
            self._slow = any(conv is not None for _, conv in self._checks)
        if self.signature is not None:
            for p in self.signature.parameters.values():
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                    if self._max_pos is not None:
                        self._max_pos += 1
                    if p.default is p.empty:
                        self._min_pos += 1
                elif p.kind is p.VAR_POSITIONAL:
                    self._max_pos = None
                elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
                    self._slow = True

    @property
    def validate(self) -> bool:
        """Whether arguments are checked against the annotations before the handler runs."""
        return self._checks is not None

    def check(self, args: Any, kwargs: dict[str, Any]) -> None:
        """Raise ``Rejected(INVALID_ARGUMENTS)`` unless ``fn(*args, **kwargs)`` would bind; with
        ``validate``, also unless each argument fits its annotation (``protocol/hints.py``), converting
        ``args`` (a list) and ``kwargs`` in place where that is faithful."""
        sig = self.signature
        if sig is None:
            return
        if not kwargs and not self._slow:
            n = len(args)
            if n >= self._min_pos and (self._max_pos is None or n <= self._max_pos):
                return
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            text = f"bad arguments for {self.name}{sig}: {exc}"
            raise Rejected(StatusCode.INVALID_ARGUMENTS, text) from None
        if self._checks is not None:
            try:
                _validate(self._checks, args, kwargs)
            except Mismatch as m:
                param = m.path.split(".", 1)[0].split("[", 1)[0]
                raise Rejected(
                    StatusCode.INVALID_ARGUMENTS,
                    f"bad argument {param!r} for {self.name}{sig}: {m}",
                    data={"parameter": param, "path": m.path, "expected": m.expected, "got": m.got},
                ) from None

    def describe(self) -> dict[str, Any]:
        """What ``zcall.methods`` reports for this method.

        ``stream``: the method is a generator, so it answers ``stream()`` (not ``call()``). Beside the text
        ``signature``, each parameter as data (``params``: name, kind, annotation and
        default as text, ``None`` when absent), the return annotation (``returns``) and the whole
        docstring (``docstring``), so a stub generator need not parse the signature back."""
        sig = self.signature
        return {
            "name": self.name,
            "signature": str(sig) if sig is not None else "(...)",
            "doc": self.doc,
            "coroutine": self.is_coroutine or self.is_asyncgen,
            "idempotent": self.idempotent,
            "stream": self.streams,
            "params": None if sig is None else [_describe_param(p) for p in sig.parameters.values()],
            "returns": None if sig is None else _annotation_text(sig.return_annotation),
            "docstring": inspect.getdoc(self.fn) or "",
        }

    def __repr__(self) -> str:
        return f"<Method {self.name}{self.signature or '(...)'}>"


def _validators(
    name: str, fn: Callable[..., Any], sig: inspect.Signature | None
) -> list[tuple[inspect.Parameter, Converter | None]]:
    """Each parameter with the converter of its annotation, None without one (``validate=True``); an
    annotation that does not resolve is an error now, at registration, not at the first call."""
    if sig is None:
        raise ValueError(f"validate=True: {name} has no signature to validate against")
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise ValueError(f"validate=True: the annotations of {name} do not resolve: {exc}") from None
    return [(p, compile_hint(hints[p.name]) if p.name in hints else None) for p in sig.parameters.values()]


def _validate(
    checks: list[tuple[inspect.Parameter, Converter | None]], args: Any, kwargs: dict[str, Any]
) -> None:
    """Check (and convert, in place) the arguments of a call that binds: positional ones by position,
    the others by name; a parameter left to its default is not checked."""
    n = len(args)
    i = 0
    named: set[str] = set()  # parameters a keyword argument binds to (what is left goes to **kwargs)
    for p, conv in checks:
        kind = p.kind
        if kind is p.POSITIONAL_ONLY or kind is p.POSITIONAL_OR_KEYWORD:
            if kind is p.POSITIONAL_OR_KEYWORD:
                named.add(p.name)
            if conv is not None:
                if i < n:
                    args[i] = conv(args[i], p.name)
                elif kind is p.POSITIONAL_OR_KEYWORD and p.name in kwargs:
                    kwargs[p.name] = conv(kwargs[p.name], p.name)
            i += 1
        elif kind is p.VAR_POSITIONAL:
            if conv is not None:
                for j in range(i, n):
                    args[j] = conv(args[j], f"{p.name}[{j - i}]")
            i = n
        elif kind is p.KEYWORD_ONLY:
            named.add(p.name)
            if conv is not None and p.name in kwargs:
                kwargs[p.name] = conv(kwargs[p.name], p.name)
        elif conv is not None:  # **kwargs: the keyword arguments no other parameter took
            for k in list(kwargs):
                if k not in named:
                    kwargs[k] = conv(kwargs[k], f"{p.name}[{k!r}]")


def _annotation_text(annotation: Any) -> str | None:
    """An annotation as ``str(Signature)`` writes it (``int``, ``list[str]``, ``decimal.Decimal``)."""
    if annotation is inspect.Parameter.empty:
        return None
    if isinstance(annotation, str):  # a postponed annotation that did not resolve: its source text
        return annotation
    return inspect.formatannotation(annotation)


def _describe_param(p: inspect.Parameter) -> dict[str, Any]:
    return {
        "name": p.name,
        "kind": p.kind.name.lower(),
        "annotation": _annotation_text(p.annotation),
        "default": None if p.default is p.empty else repr(p.default),
    }


class Service:
    """A named set of callable methods; hand it to any zcall server or peer."""

    def __init__(
        self,
        name: str = "zcall",
        *,
        interceptors: Sequence[ServerInterceptor] = (),
        introspection: bool = True,
        validate: bool = False,
    ) -> None:
        """``introspection=False`` leaves out ``zcall.methods`` and ``zcall.stats`` (what the service has,
        its metrics) and the pid and uptime in ``zcall.ping``; the probes (ping, health) stay. To allow
        them to some callers only, use an interceptor keyed on ``call.caller_key`` instead.
        ``validate=True`` is every method's default for argument validation (``method(validate=...)``)."""
        self.name = name
        self.validate = validate
        """The default of ``method(validate=...)`` for the methods registered from then on."""
        self.introspection = introspection
        self._methods: dict[str, Method] = {}
        self.interceptors: tuple[ServerInterceptor, ...] = ()
        """Hooks around every call of this service, on every server that serves it (``add_interceptor``)."""
        for i in interceptors:
            self.add_interceptor(i)
        self._started = time.time()
        self.metrics = Metrics()
        """Per-method call metrics, recorded by every server that serves this service."""
        self._servers: weakref.WeakSet[Any] = weakref.WeakSet()  # their dispatchers, for counters
        self._serving = True
        self._on_serving_changed: list[Callable[[bool], Any]] = []  # ROUTER servers' health events
        self._add_builtin("ping", self._ping, while_stopping=True)
        self._add_builtin("health", self._health, while_stopping=True)
        if introspection:
            self._add_builtin("methods", self._list_methods)
            self._add_builtin("stats", self._stats)

    @property
    def serving(self) -> bool:
        """False marks this service NOT_SERVING in ``zcall.health`` (e.g. while a dependency is down);
        every server also reports NOT_SERVING from the moment its graceful stop begins. A change is
        pushed as a ``zcall.health`` event by the ROUTER servers serving this service."""
        return self._serving

    @serving.setter
    def serving(self, value: bool) -> None:
        changed = bool(value) != self._serving
        self._serving = bool(value)
        if changed:
            for notify in list(self._on_serving_changed):
                notify(self._serving)

    # -- registration ------------------------------------------------------------------------------

    @overload
    def method(self, fn: F, /) -> F: ...
    @overload
    def method(
        self,
        *,
        name: str | None = None,
        inline: bool = False,
        idempotent: bool = False,
        validate: bool | None = None,
    ) -> Callable[[F], F]: ...

    def method(  # type: ignore[misc]  # the bare and the keyword-only forms in one body
        self,
        fn: F | None = None,
        /,
        *,
        name: str | None = None,
        inline: bool = False,
        idempotent: bool = False,
        validate: bool | None = None,
    ) -> F | Callable[[F], F]:
        """Register a function (plain or ``async def``) as a method; usable bare or with options.

        ``inline=True`` declares a plain function fast enough to run on the async server's event loop
        (otherwise it runs in the server's thread pool); ``idempotent=True`` says retries may run it twice;
        ``validate=True`` checks each argument against its annotation before the call (``InvalidArguments``
        names the parameter and the type), converting where faithful (a map to the dataclass annotated, an
        array to a tuple, a value to an enum member); ``None`` takes the service's ``validate``.
        """

        def deco(f: F) -> F:
            self.add(f, name=name, inline=inline, idempotent=idempotent, validate=validate)
            return f

        return deco(fn) if fn is not None else deco

    def add(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        inline: bool = False,
        idempotent: bool = False,
        validate: bool | None = None,
    ) -> Method:
        """Register ``fn`` under ``name`` (default: its ``__name__``); returns the entry."""
        name = name or getattr(fn, "__name__", None)
        if not name:
            raise ValueError(f"cannot infer a method name for {fn!r}: pass name=")
        if _private(name):
            raise ValueError(f"method name {name!r} has a part starting with '_' (or empty): never callable")
        if name.startswith(BUILTIN_PREFIX):
            raise ValueError(f"method names starting with {BUILTIN_PREFIX!r} are reserved for zcall")
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        checked = self.validate if validate is None else validate
        m = Method(name, fn, inline=inline, idempotent=idempotent, validate=checked)
        m.stats = self.metrics.stats(name)
        self._methods[name] = m
        return m

    def register(self, obj: Any, prefix: str = "", *, inline: bool = False) -> list[str]:
        """Register every public routine of ``obj`` (an instance, class or module) as ``prefix.name``."""
        if prefix and not prefix.endswith("."):
            prefix += "."
        module_name = obj.__name__ if inspect.ismodule(obj) else None
        added = []
        for attr in dir(obj):
            if attr.startswith("_"):
                continue
            try:
                static = inspect.getattr_static(obj, attr)
            except AttributeError:
                continue
            if not (callable(static) or isinstance(static, (staticmethod, classmethod))):
                continue  # data and properties: never evaluated (a property may do anything)
            if module_name is None and _inherited_from_python(obj, attr):
                continue  # dict's pop, Thread's start: what a class inherits from Python is not its API
            value = getattr(obj, attr)
            if not inspect.isroutine(value):
                continue
            if module_name is not None and getattr(value, "__module__", None) != module_name:
                continue  # a module's imports are not its API
            if inspect.isclass(obj) and inspect.isfunction(inspect.getattr_static(obj, attr)):
                continue  # an instance method of a class needs a ``self``: register an instance for those
            self.add(value, name=prefix + attr, inline=inline)
            added.append(prefix + attr)
        if not added:
            raise ValueError(f"{obj!r} has no public methods to register")
        return added

    def add_interceptor(self, interceptor: ServerInterceptor) -> None:
        """Apply ``interceptor`` to every call of this service, after the ones already added (it is inner
        to them: its ``on_call`` runs later, its ``on_reply``/``on_error`` earlier)."""
        if not isinstance(interceptor, ServerInterceptor):
            raise TypeError(
                f"{interceptor!r} is not a zcall.ServerInterceptor: subclass it and override on_call, "
                "on_reply or on_error"
            )
        self.interceptors = (*self.interceptors, interceptor)

    def _add_builtin(
        self, short: str, fn: Callable[..., Any], *, inline: bool = True, while_stopping: bool = False
    ) -> None:
        """Add a built-in (server-provided) method under the reserved prefix; ``while_stopping``: a
        stopping server still answers it (health and liveness probes must see the stop, not an error)."""
        name = BUILTIN_PREFIX + short
        m = self._methods[name] = Method(name, fn, inline=inline, idempotent=True)
        m.stats = self.metrics.stats(name)
        m.while_stopping = while_stopping

    # -- lookup -----------------------------------------------------------------------------------

    def lookup(self, name: str) -> Method:
        """The method called ``name``, or ``Rejected(METHOD_NOT_FOUND)`` naming close matches (in the
        message, and as ``data["close"]`` for programs)."""
        m = self._methods.get(name)
        if m is not None:
            return m
        if type(name) is str and len(name) <= MAX_HINTED_NAME and not _private(name):
            close = difflib.get_close_matches(name, list(self._methods), n=3, cutoff=0.6)
        else:
            close = []
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        shown = name if len(name) <= MAX_HINTED_NAME else name[:MAX_HINTED_NAME] + "..."
        raise Rejected(
            StatusCode.METHOD_NOT_FOUND,
            f"no method {shown!r} on service {self.name!r}{hint}",
            data={"close": close},
        )

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def __iter__(self) -> Iterator[Method]:
        return iter(list(self._methods.values()))

    def __len__(self) -> int:
        return len(self._methods)

    # -- built-ins --------------------------------------------------------------------------------

    def _ping(self) -> dict[str, Any]:
        """Liveness check: the service name, its pid and uptime (only the name without introspection)."""
        if not self.introspection:
            return {"service": self.name}
        return {"service": self.name, "pid": os.getpid(), "uptime": time.time() - self._started}

    def _health(self, service: str | None = None) -> dict[str, Any]:
        """SERVING or NOT_SERVING, for this server (no argument) or for the service named (gRPC health
        v1's answers: an unknown service name is SERVICE_UNKNOWN)."""
        if service not in (None, "", self.name):
            return {"status": "SERVICE_UNKNOWN", "service": service}
        from .context import current_call

        call = current_call()
        stopping = call is not None and call._stopping()
        status = "SERVING" if self.serving and not stopping else "NOT_SERVING"
        return {"status": status, "service": self.name}

    def _stats(self) -> dict[str, Any]:
        """Call metrics per method (calls, errors, latency, throughput, availability) and server counters."""
        counters: dict[str, int] = {}
        for server in list(self._servers):
            for k, v in server.counters.items():
                counters[k] = counters.get(k, 0) + v
        snap = self.metrics.snapshot()
        return {"service": self.name, "pid": os.getpid(), **snap, "counters": counters}

    def _list_methods(self) -> list[dict[str, Any]]:
        """Every callable method with its signature and the first line of its docstring."""
        return [m.describe() for m in sorted(self._methods.values(), key=lambda m: m.name)]


def _inherited_from_python(obj: Any, attr: str) -> bool:
    """Whether ``attr`` of ``obj`` (an instance or a class) is defined by a builtin or standard-library
    class in its MRO rather than by the application's own code."""
    if attr in getattr(obj, "__dict__", {}) and not inspect.isclass(obj):
        return False  # set on the instance itself
    for klass in (obj if inspect.isclass(obj) else type(obj)).__mro__:
        if attr in klass.__dict__:
            top = (klass.__module__ or "").split(".")[0]
            return top == "builtins" or top in sys.stdlib_module_names
    return False
