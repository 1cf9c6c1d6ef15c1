"""Attribute-style calls: ``client.proxy.double(21)`` is ``client.call("double", 21)``, on every face.

- ``SyncClient.proxy`` (and ``Peer.proxy(name)``): blocks and returns the result;
- ``AsyncClient.proxy`` (and ``Peer.aproxy(name)``): ``await client.proxy.double(21)``;
- ``AsyncClient.proxy_async`` (and ``Peer.proxy_async(name)``): returns a ``concurrent.futures.Future`` at
  once and takes ``callback=``/``errback=``, like ``call_async``, whose name it mirrors.

Dotted names are attribute chains (``client.proxy.inventory.count("widget")`` calls
``"inventory.count"``), views work (``client.options(timeout=1).proxy.double(2)``), and a name starting
with ``_`` is an ``AttributeError`` at once: it could never be called remotely.

Names are checked against what the server lists in ``zcall.methods``, fetched on the first call through
any proxy of a client and cached with that client (its views share it). A name the list lacks is looked
up once more (the server may have been restarted with new methods), then refused locally with
``UnknownMethod`` (a ``MethodNotFound`` naming close matches; nothing is sent). The lookup and the call
share the call's timeout. A server that will not list its methods (no ``zcall.methods``, or an
interceptor refusing it) gets unchecked calls; one that is busy or silent fails the call with that error
(a silent one with a ``CallTimeout`` naming the method), and the next call looks up again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import difflib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import CallTimeout, MethodNotFound, RemoteError
from ..protocol.status import StatusCode
from .futures import CallFuture

__all__ = ["AsyncProxy", "FutureProxy", "SyncProxy", "UnknownMethod"]

log = logging.getLogger("zcall.client")

METHODS = "zcall.methods"
"""The built-in that lists a server's methods (``Service`` answers it on every server kind)."""

_TRANSIENT = frozenset((StatusCode.OVERLOADED, StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED))
"""Refusals of the lookup that say nothing of the server's methods: the call fails, the next looks again."""

_OK, _FETCH, _MISS = 0, 1, 2
_monotonic = time.monotonic


class UnknownMethod(MethodNotFound):
    """A proxy refused a name the server does not list in ``zcall.methods``; nothing was sent.

    A ``MethodNotFound`` (``.data["close"]`` lists close matches), so one ``except`` covers it and the
    server's own answer; ``.endpoints`` says which server's list was used."""

    def __init__(self, name: str, endpoints: Iterable[str], known: Iterable[str]) -> None:
        endpoints = list(endpoints)
        names = sorted(known)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        under = [n for n in names if n.startswith(name + ".")]
        where = ", ".join(endpoints)
        text = f"no method {name!r} at {where} (not sent: the server's zcall.methods does not list it)"
        if under:
            shown = ", ".join(map(repr, under[:5])) + (", ..." if len(under) > 5 else "")
            text += f"; {name!r} is a prefix: call one of {shown}"
        elif close:
            text += f"; did you mean {', '.join(map(repr, close))}?"
        super().__init__(
            text,
            code=StatusCode.METHOD_NOT_FOUND,
            type="zcall.MethodNotFound",
            data={"close": close or under[:3]},
            method=name,
        )
        self.endpoints = endpoints


# -- the cache of names, one per client ------------------------------------------------------------


class _Catalog:
    """The method names one client's server listed; ``pending`` is the lookup in flight (async faces)."""

    __slots__ = ("names", "unchecked", "pending", "lock", "__weakref__")

    def __init__(self) -> None:
        self.names: frozenset[str] | None = None
        self.unchecked = False  # the server will not list its methods: calls go out unchecked
        self.pending: concurrent.futures.Future[None] | None = None
        self.lock = threading.Lock()

    def verdict(self, name: str) -> int:
        if self.unchecked:
            return _OK
        names = self.names
        if names is None:
            return _FETCH
        return _OK if name in names else _MISS

    def store(self, listing: Any) -> None:
        """Keep the names of a ``zcall.methods`` answer (anything else: calls go unchecked)."""
        if isinstance(listing, list | tuple):
            names = [m.get("name") for m in listing if isinstance(m, dict)]
            if names and all(isinstance(n, str) for n in names):
                self.names = frozenset(names)  # type: ignore[arg-type]
                return
        self.unchecked = True

    def refused(self, exc: BaseException) -> bool:
        """Whether a failed lookup means "no list here" (calls then go unchecked) rather than "try later"."""
        if (
            isinstance(exc, RemoteError)
            and not isinstance(exc, CallTimeout)
            and exc.remote.code not in _TRANSIENT
        ):
            self.unchecked = True
            return True
        return False

    def finish(self, done: concurrent.futures.Future[None], listing: Any = None, exc: Any = None) -> None:
        """End the lookup in flight: store what came, wake who waits on it."""
        with self.lock:
            if self.pending is done:
                self.pending = None
        if exc is None:
            self.store(listing)
            done.set_result(None)
        elif self.refused(exc):
            done.set_result(None)
        else:
            done.set_exception(exc)


_catalogs: weakref.WeakKeyDictionary[Any, _Catalog] = weakref.WeakKeyDictionary()
_catalogs_lock = threading.Lock()


def _catalog(target: Any) -> tuple[Any, _Catalog]:
    """The client behind ``target`` (a client, a view, a peer's target) and that client's catalog."""
    client = getattr(target, "_client", target)
    cat = _catalogs.get(client)
    if cat is None:
        with _catalogs_lock:
            cat = _catalogs.get(client)
            if cat is None:
                cat = _catalogs[client] = _Catalog()
    return client, cat


def _unknown(client: Any, cat: _Catalog, name: str) -> UnknownMethod:
    return UnknownMethod(name, client.endpoints, cat.names or ())


def _lookup_timeout(name: str, exc: CallTimeout, t0: float) -> CallTimeout:
    """The call's own ``CallTimeout`` when the lookup before it got no answer."""
    return CallTimeout(
        name, exc.endpoints, 0, _monotonic() - t0, "not sent: the proxy's zcall.methods lookup got no answer"
    )


def _within(target: Any, client: Any, name: str, t0: float) -> Any:
    """``target`` with what is left of the call's budget after the lookup (one budget for both)."""
    left = target.timeout - (_monotonic() - t0)
    if left <= 0:
        raise CallTimeout(
            name, client.endpoints, 0, _monotonic() - t0, "not sent: the zcall.methods lookup used the budget"
        )
    return target.options(timeout=left)


# -- the nodes ---------------------------------------------------------------------------------------


class _Node:
    """A (possibly dotted) name on a target; attributes extend the name, calling it calls the method."""

    __slots__ = ("_target", "_name")

    def __init__(self, target: Any, name: str = "") -> None:
        self._target = target
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(
                f"{type(self).__name__} has no attribute {attr!r}: names starting with '_' are private "
                "and never callable remotely"
            )
        return type(self)(self._target, f"{self._name}.{attr}" if self._name else attr)

    def __dir__(self) -> list[str]:
        """The next name parts under this one, once the server's list is known (no I/O here)."""
        _, cat = _catalog(self._target)
        prefix = f"{self._name}." if self._name else ""
        parts = {n[len(prefix) :].split(".")[0] for n in cat.names or () if n.startswith(prefix)}
        return sorted(p for p in parts if p.isidentifier())

    def _method(self) -> str:
        if not self._name:
            raise TypeError(f"call a method, not the proxy itself: {type(self).__name__}.NAME(...)")
        return self._name

    def __repr__(self) -> str:
        client, _ = _catalog(self._target)
        where = ",".join(getattr(client, "endpoints", ()) or ())
        return f"<{type(self).__name__} {self._name or '*'!r} at {where}>"


class SyncProxy(_Node):
    """Blocking attribute-style calls: ``client.proxy.double(21)`` returns 42 (``SyncClient.call``)."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self._method()
        target = self._target
        client, cat = _catalog(target)
        if cat.verdict(name) == _OK:
            return target.call(name, *args, **kwargs)
        t0 = _monotonic()
        try:
            cat.store(target.call(METHODS))
        except CallTimeout as exc:
            raise _lookup_timeout(name, exc, t0) from exc
        except RemoteError as exc:
            if not cat.refused(exc):
                raise
        if cat.verdict(name) != _OK:
            raise _unknown(client, cat, name)
        return _within(target, client, name, t0).call(name, *args, **kwargs)


def _lookup(cat: _Catalog, target: Any) -> concurrent.futures.Future[None]:
    """Start a ``zcall.methods`` lookup on the callback face, or join the one in flight."""
    with cat.lock:
        if cat.pending is not None:
            return cat.pending
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        cat.pending = done
    try:
        target.call_async(
            METHODS,
            callback=lambda listing: cat.finish(done, listing=listing),
            errback=lambda exc: cat.finish(done, exc=exc),
        )
    except BaseException as exc:  # refused at once (client closed, backpressure)
        cat.finish(done, exc=exc)
    return done


class AsyncProxy(_Node):
    """Awaitable attribute-style calls: ``await client.proxy.double(21)`` (``AsyncClient.call``)."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name = self._method()
        target = self._target
        client, cat = _catalog(target)
        if cat.verdict(name) == _OK:
            return target.call(name, *args, **kwargs)  # the client's own coroutine: nothing added
        return self._after_lookup(client, cat, name, args, kwargs)

    async def _after_lookup(
        self, client: Any, cat: _Catalog, name: str, args: Any, kwargs: dict[str, Any]
    ) -> Any:
        target = self._target
        t0 = _monotonic()
        try:  # shielded: cancelling this call must not cancel a lookup other calls wait for
            await asyncio.shield(asyncio.wrap_future(_lookup(cat, target)))
        except CallTimeout as exc:
            raise _lookup_timeout(name, exc, t0) from exc
        if cat.verdict(name) != _OK:
            raise _unknown(client, cat, name)
        return await _within(target, client, name, t0).call(name, *args, **kwargs)


class FutureProxy(_Node):
    """Attribute-style calls returning a future at once: ``client.proxy_async.double(21, callback=print)``
    (``AsyncClient.call_async``; ``callback``/``errback`` are zcall's, as there)."""

    __slots__ = ()

    def __call__(
        self,
        *args: Any,
        callback: Callable[[Any], Any] | None = None,
        errback: Callable[[BaseException], Any] | None = None,
        **kwargs: Any,
    ) -> concurrent.futures.Future[Any]:
        name = self._method()
        target = self._target
        client, cat = _catalog(target)
        if cat.verdict(name) == _OK:
            return target.call_async(  # type: ignore[no-any-return]
                name, *args, callback=callback, errback=errback, **kwargs
            )
        t0 = _monotonic()
        outer = CallFuture(client._thread_id)

        def settle(result: Any = None, exc: BaseException | None = None) -> None:
            try:
                if exc is None:
                    outer.set_result(result)
                else:
                    outer.set_exception(exc)
            except concurrent.futures.InvalidStateError:
                return  # cancelled meanwhile
            hook: Any = callback if exc is None else errback
            if hook is not None:
                try:
                    hook(result if exc is None else exc)
                except Exception:
                    log.exception("%s for call %r raised (the client keeps going)", hook, name)
            elif exc is not None and callback is not None:
                log.warning("call %r failed and has no errback: %s", name, exc)

        def relay(inner: concurrent.futures.Future[Any]) -> None:
            if inner.cancelled():
                outer.cancel()
            elif inner.exception() is not None:
                settle(exc=inner.exception())
            else:
                settle(inner.result())

        def looked_up(done: concurrent.futures.Future[None]) -> None:
            if outer.done():
                return  # cancelled while the lookup ran: nothing is sent
            exc = done.exception()
            if exc is not None:
                settle(exc=_lookup_timeout(name, exc, t0) if isinstance(exc, CallTimeout) else exc)
                return
            if cat.verdict(name) != _OK:
                settle(exc=_unknown(client, cat, name))
                return
            try:
                inner = _within(target, client, name, t0).call_async(name, *args, **kwargs)
            except BaseException as err:
                settle(exc=err)
                return
            outer._on_cancel = inner.cancel
            if outer.cancelled():
                inner.cancel()
            inner.add_done_callback(relay)

        _lookup(cat, target).add_done_callback(looked_up)
        return outer
