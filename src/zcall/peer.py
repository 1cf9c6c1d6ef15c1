"""A brokerless node: serves a ``Service`` and calls other peers by name, sync and async, both ways.

A peer binds a ROUTER (async callers; and optionally a REP for plain REQ callers) and connects out
directly to the peers it knows: a REQ pool for ``call`` (blocking), a DEALER for ``call_async``/``acall``
/``notify`` and for the events it subscribes to (the Guide's "Harmony" shape: ROUTER in, DEALER out). There
is no central process; zmq reconnects, so peers may start in any order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import zmq

from .client.asynchronous import AsyncClient
from .client.interceptors import ClientInterceptor
from .client.proxy import AsyncProxy, FutureProxy, SyncProxy
from .client.streams import AsyncStream, BlockingStream
from .client.subscriptions import PeerSubscription
from .client.sync import SyncClient
from .engine.loop import on_loop, run_on, running_loop
from .engine.sockets import DEFAULT_BIND, default_context, normalize_endpoints
from .protocol.codec import Codec, default_codec
from .security import ClientSecurity, ServerSecurity
from .server.asynchronous import AsyncServer
from .server.lifecycle import DEFAULT_GRACE, Lifecycle
from .server.sync import SyncServer
from .service.dispatch import DEFAULT_MAX_IN_FLIGHT_BYTES
from .service.registry import Service

__all__ = ["Peer"]


class Peer(Lifecycle):
    """A named node that serves ``service`` and calls the peers it knows (``connect(name, endpoint)``).

    Its lifecycle is every server's (``start``, ``stop(grace)``, ``serve_forever(grace=, on_ready=)``,
    ``await serve()``, ``aclose(grace)``); ``stop`` stops serving first (in-flight handlers keep their
    nested calls for the grace period), then closes its connections to other peers.
    """

    def __init__(
        self,
        name: str,
        service: Service | None = None,
        *,
        bind: str = DEFAULT_BIND,
        sync_bind: str | None = None,
        peers: Mapping[str, str | Sequence[str]] | None = None,
        timeout: float = 5.0,
        retries: int | None = None,
        max_in_flight: int = 1000,
        max_in_flight_bytes: int = DEFAULT_MAX_IN_FLIGHT_BYTES,
        workers: int | None = None,
        send_tracebacks: bool = True,
        context: zmq.Context | None = None,
        codec: Codec = default_codec,
        security: ServerSecurity | None = None,
        peer_keys: str | os.PathLike[str] | None = None,
        interceptors: Sequence[ClientInterceptor] = (),
    ) -> None:
        self.name = name
        self.service = service if service is not None else Service(name)
        self.workers = workers
        """Threads for blocking handlers; a blocking handler waiting on a nested call holds one."""
        self.send_tracebacks = send_tracebacks
        """Whether error replies carry the handler's traceback (turn off towards untrusted callers)."""
        self.interceptors = tuple(interceptors)
        """Client interceptors for every call this peer makes (server ones go on its ``service``)."""
        self.security = security
        """CURVE for this peer: its key pair serves callers and calls other peers (they must allow it)."""
        self.peer_keys = None if peer_keys is None else Path(peer_keys)
        """Where other peers' public keys are found as ``NAME.key`` (default: ``security.allow_keys_dir``)."""
        self._server_keys: dict[str, Path] = {}
        self.bind = bind
        self.sync_bind = sync_bind
        self.timeout = timeout
        self.retries = retries
        self._max_in_flight = max_in_flight
        self._max_in_flight_bytes = max_in_flight_bytes
        self._ctx = context or default_context()
        self._codec = codec
        self._directory: dict[str, list[str]] = {}
        self._sync_clients: dict[str, SyncClient] = {}
        self._async_clients: dict[str, AsyncClient] = {}
        self._subscriptions: list[tuple[str, Callable[[str, Any], Any], str | None, PeerSubscription]] = []
        self._lock = threading.RLock()
        self._server: AsyncServer | None = None
        self._sync_server: SyncServer | None = None
        self._done = threading.Event()
        for peer_name, eps in (peers or {}).items():
            self.connect(peer_name, eps)

    # -- serving -----------------------------------------------------------------------------------

    @property
    def method(self) -> Callable[..., Any]:
        """``@peer.method``: register a handler on this peer's service (options as ``Service.method``)."""
        return self.service.method

    @property
    def endpoint(self) -> str:
        """Where async callers (and REQ callers) reach this peer."""
        if self._server is None:
            raise RuntimeError(f"peer {self.name!r} is not started")
        return self._server.endpoint

    @property
    def sync_endpoint(self) -> str | None:
        """The REP endpoint, when the peer was given ``sync_bind``."""
        return self._sync_server.endpoint if self._sync_server is not None else None

    def _make_servers(self) -> AsyncServer:
        if self._server is not None:
            raise RuntimeError(f"peer {self.name!r} already started")
        self._server = AsyncServer(
            self.service,
            self.bind,
            max_in_flight=self._max_in_flight,
            max_in_flight_bytes=self._max_in_flight_bytes,
            workers=self.workers,
            send_tracebacks=self.send_tracebacks,
            context=self._ctx,
            codec=self._codec,
            security=self.security,
        )
        if self.sync_bind is not None:
            self._sync_server = SyncServer(
                self.service,
                self.sync_bind,
                context=self._ctx,
                codec=self._codec,
                security=self.security,
                send_tracebacks=self.send_tracebacks,
            )
        return self._server

    def start(self) -> Peer:
        """Bind and serve on zcall's engine thread (and a REP thread, with ``sync_bind``); returns once
        bound."""
        server = self._make_servers()
        server.start()
        if self._sync_server is not None:
            try:
                self._sync_server.start()
            except BaseException:
                server.stop(0)
                raise
        return self

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop serving (in-flight calls get ``grace`` seconds, on both sockets at once), then close every
        outgoing connection."""
        self._wake_forever()
        sync_stop = None
        if self._sync_server is not None:
            sync_stop = threading.Thread(target=self._sync_server.stop, args=(grace,), name="zcall-peer-stop")
            sync_stop.start()
        if self._server is not None:
            self._server.stop(grace)
        if sync_stop is not None:
            sync_stop.join()
        self._close_clients()
        self._done.set()

    def _hurry(self) -> None:
        for server in (self._server, self._sync_server):
            if server is not None:
                server._hurry()

    def _close_clients(self) -> None:
        with self._lock:
            sync_clients, self._sync_clients = self._sync_clients, {}
            async_clients, self._async_clients = self._async_clients, {}
        for c in sync_clients.values():
            c.close()
        for ac in async_clients.values():
            ac.close()

    async def serve(self, grace: float = DEFAULT_GRACE, on_ready: Callable[[str], Any] | None = None) -> None:
        """Serve on the running asyncio loop until ``aclose()`` or cancellation (then stop with ``grace``)."""
        server = self._make_servers()
        if self._sync_server is not None:
            await asyncio.to_thread(self._sync_server.start)
        try:
            await server.serve(grace, on_ready)
        finally:
            if self._sync_server is not None:
                await asyncio.shield(asyncio.to_thread(self._sync_server.stop, grace))
            self._close_clients()
            self._done.set()

    async def aclose(self, grace: float = DEFAULT_GRACE) -> None:
        """Graceful stop from asyncio code (see ``stop``)."""
        if self._server is not None and self._server._loop is running_loop():
            sync_stop = None
            if self._sync_server is not None:
                sync_stop = asyncio.ensure_future(asyncio.to_thread(self._sync_server.stop, grace))
            await self._server.aclose(grace)
            if sync_stop is not None:
                await sync_stop
            self._close_clients()
            self._done.set()
            return
        await asyncio.to_thread(self.stop, grace)

    # -- the directory -----------------------------------------------------------------------------

    def connect(
        self,
        name: str,
        endpoints: str | Sequence[str],
        *,
        server_key: str | os.PathLike[str] | None = None,
    ) -> None:
        """Know peer ``name`` at ``endpoints`` (one or several: failover). Replaces an earlier entry.

        With ``security``, calls to it use CURVE with its public key: ``server_key`` (a ``NAME.key``
        file), else ``NAME.key`` in ``peer_keys`` (or in ``security.allow_keys_dir``).
        """
        eps = normalize_endpoints(endpoints)
        if server_key is not None:
            if self.security is None:
                raise ValueError(
                    f"connect({name!r}, server_key=...) needs CURVE on this peer: pass "
                    "security=ServerSecurity(...) to Peer"
                )
            self._server_keys[name] = Path(server_key)
        self._client_security(name)  # a missing or bad key file is reported here, not at the first call
        with self._lock:
            self._directory[name] = eps
            old_sync = self._sync_clients.pop(name, None)
            old_async = self._async_clients.pop(name, None)
        if old_sync is not None:
            old_sync.close()
        if old_async is not None:
            old_async.close()
        if any(p in (None, name) for _, _, p, _ in self._subscriptions):
            self.client(name)  # subscriptions follow the peer to its (new) address, started or not

    @property
    def peers(self) -> dict[str, list[str]]:
        """Known peers: name → endpoints."""
        return {k: list(v) for k, v in self._directory.items()}

    def _endpoints(self, name: str) -> list[str]:
        try:
            return self._directory[name]
        except KeyError:
            known = ", ".join(sorted(self._directory)) or "none"
            raise LookupError(
                f"peer {self.name!r} knows no peer {name!r} (known: {known}); connect() it first"
            ) from None

    def _client_security(self, name: str) -> ClientSecurity | None:
        """CURVE settings for calls to peer ``name``: this peer's key pair, that peer's public key."""
        if self.security is None:
            return None
        key = self._server_keys.get(name)
        if key is None:
            keys_dir = self.peer_keys if self.peer_keys is not None else self.security.allow_keys_dir
            if keys_dir is None:
                raise ValueError(
                    f"peer {self.name!r} uses CURVE and needs peer {name!r}'s public key: pass "
                    f"connect({name!r}, ..., server_key='{name}.key') or Peer(peer_keys=DIR) with "
                    f"{name}.key in DIR"
                )
            key = Path(keys_dir) / f"{name}.key"
        return ClientSecurity(self.security.secret_key_file, key)

    def client(self, name: str) -> AsyncClient:
        """The async client (DEALER) to peer ``name``; for per-call ``options(...)``."""
        with self._lock:
            c = self._async_clients.get(name)
            if c is not None:
                return c
            eps = self._endpoints(name)
        # Made without holding the lock: run_on waits for the loop, and a coroutine handler on that loop
        # may be waiting for the lock in client() itself (the loop would freeze until run_on timed out).
        kwargs: dict[str, Any] = {
            "timeout": self.timeout,
            "retries": self.retries,
            "context": self._ctx,
            "codec": self._codec,
            "security": self._client_security(name),
            "interceptors": self.interceptors,
        }
        if self._server is not None and self._server._loop is not None:
            # live on the server's loop, so coroutine handlers can await calls to other peers
            c = run_on(self._server._loop, lambda: AsyncClient(eps, **kwargs))
        else:
            c = AsyncClient(eps, **kwargs)
        with self._lock:
            winner = self._async_clients.get(name)
            moved = self._directory.get(name) != eps
            if winner is None and not moved:
                self._async_clients[name] = c
                subs = [
                    (t, h, agg) for t, h, only, agg in self._subscriptions if only is None or only == name
                ]
        if winner is not None or moved:  # another thread made one, or connect() moved the peer meanwhile
            c.close()
            return winner if winner is not None else self.client(name)
        for topic, handler, agg in subs:
            agg._add(name, c.on(topic, handler))
        return c

    def sync_client(self, name: str) -> SyncClient:
        """The blocking client (REQ pool) to peer ``name``; for per-call ``options(...)``."""
        with self._lock:
            c = self._sync_clients.get(name)
            if c is None:
                c = SyncClient(
                    self._endpoints(name),
                    timeout=self.timeout,
                    retries=self.retries,
                    context=self._ctx,
                    codec=self._codec,
                    security=self._client_security(name),
                    interceptors=self.interceptors,
                )
                self._sync_clients[name] = c
            return c

    # -- calling -----------------------------------------------------------------------------------

    def call(self, peer: str, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` on ``peer`` and block for the result (REQ). Not from a coroutine: use ``acall``."""
        if self._server is not None and self._server._loop is not None and on_loop(self._server._loop):
            raise RuntimeError(
                "Peer.call() blocks, and this is the peer's event loop (a coroutine or inline handler): "
                "use 'await peer.acall(...)' here"
            )
        return self.sync_client(peer).call(method, *args, **kwargs)

    async def acall(self, peer: str, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` on ``peer`` and await the result (DEALER)."""
        return await self.client(peer).call(method, *args, **kwargs)

    def call_async(
        self,
        peer: str,
        method: str,
        /,
        *args: Any,
        callback: Callable[[Any], Any] | None = None,
        errback: Callable[[BaseException], Any] | None = None,
        **kwargs: Any,
    ) -> concurrent.futures.Future[Any]:
        """Send and return a future at once; ``callback``/``errback`` run when the reply comes."""
        return self.client(peer).call_async(method, *args, callback=callback, errback=errback, **kwargs)

    def notify(self, peer: str, method: str, /, *args: Any, **kwargs: Any) -> None:
        """One-way call to ``peer``: no reply."""
        self.client(peer).notify(method, *args, **kwargs)

    # -- streams -----------------------------------------------------------------------------------

    def stream(self, peer: str, method: str, /, *args: Any, **kwargs: Any) -> BlockingStream:
        """``for item in peer.stream("logs", "tail", path)``: the items ``method`` on ``peer`` yields, as
        they come (blocking; over the DEALER, so an iterator argument streams this peer's items to it).
        Not from a coroutine or inline handler on this peer's loop: use ``astream`` there."""
        if self._server is not None and self._server._loop is not None and on_loop(self._server._loop):
            raise RuntimeError(
                "Peer.stream() blocks, and this is the peer's event loop: use 'async for item in "
                "peer.astream(...)' here"
            )
        return self.client(peer).stream_blocking(method, *args, **kwargs)

    def astream(self, peer: str, method: str, /, *args: Any, **kwargs: Any) -> AsyncStream:
        """``async for item in peer.astream("logs", "tail", path)``: the asyncio face of ``stream``."""
        return self.client(peer).stream(method, *args, **kwargs)

    def stream_async(
        self,
        peer: str,
        method: str,
        /,
        *args: Any,
        on_item: Callable[[Any], Any],
        on_done: Callable[[Any], Any] | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
        **kwargs: Any,
    ) -> concurrent.futures.Future[Any]:
        """A stream with callbacks, returning a future for its end (``AsyncClient.stream_async``)."""
        return self.client(peer).stream_async(
            method, *args, on_item=on_item, on_done=on_done, on_error=on_error, **kwargs
        )

    def proxy(self, peer: str) -> SyncProxy:
        """Blocking attribute-style calls to ``peer`` (as ``call``): ``peer.proxy("pricing").price("x")``."""
        return peer_proxy(self, peer)

    def aproxy(self, peer: str) -> AsyncProxy:
        """Awaitable attribute-style calls to ``peer`` (as ``acall``): ``await peer.aproxy("b").f(1)``."""
        return self.client(peer).proxy

    def proxy_async(self, peer: str) -> FutureProxy:
        """Attribute-style calls to ``peer`` returning a future (as ``call_async``)."""
        return self.client(peer).proxy_async

    # -- events ------------------------------------------------------------------------------------

    def publish(self, topic: str, payload: Any = None) -> None:
        """Push an event to every peer subscribed to ``topic`` (at most once)."""
        if self._server is None:
            raise RuntimeError(f"peer {self.name!r} is not started")
        self._server.publish(topic, payload)

    def on(
        self, topic: str, handler: Callable[[str, Any], Any], *, peer: str | None = None
    ) -> PeerSubscription:
        """Run ``handler(topic, payload)`` for events on ``topic`` (``"orders.*"``) from one peer, or from
        every peer it knows (those connected later included); returns the handle to wait on until every
        one of them has the subscription (``sub.wait(5)``, ``await sub``) and to unsubscribe with."""
        agg = PeerSubscription(topic, handler)
        agg._on_unsubscribe = self._unsubscribed
        with self._lock:
            self._subscriptions.append((topic, handler, peer, agg))
            names = [peer] if peer is not None else list(self._directory)
            existing = [(n, self._async_clients[n]) for n in names if n in self._async_clients]
            missing = [n for n in names if n not in self._async_clients]
        for n, c in existing:
            agg._add(n, c.on(topic, handler))
        for n in missing:
            self.client(n)  # a new client takes every recorded subscription, this one included
        return agg

    def _unsubscribed(self, agg: PeerSubscription) -> None:
        with self._lock:
            self._subscriptions = [s for s in self._subscriptions if s[3] is not agg]

    # -- introspection -----------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """This peer's server counters and, per known peer, its client counters."""
        return {
            "name": self.name,
            "server": self._server.statistics() if self._server is not None else None,
            "clients": {n: c.statistics() for n, c in list(self._async_clients.items())},
            "sync_clients": {n: dict(c.counters) for n, c in list(self._sync_clients.items())},
        }


# -- attribute-style calls to a peer -----------------------------------------------------------------


class _PeerCalls:
    """A blocking target for one peer's calls: ``call`` goes through ``Peer.call`` (which refuses to block
    the peer's own loop); its client (``_client``) holds the cache and makes the budget-sharing view."""

    __slots__ = ("_peer", "_peer_name")

    def __init__(self, peer: Peer, name: str) -> None:
        self._peer = peer
        self._peer_name = name

    @property
    def _client(self) -> Any:
        return self._peer.sync_client(self._peer_name)

    @property
    def endpoints(self) -> list[str]:
        return list(self._client.endpoints)

    @property
    def timeout(self) -> float:
        return float(self._client.timeout)

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        return self._peer.call(self._peer_name, method, *args, **kwargs)

    def options(self, **changes: Any) -> Any:
        return self._client.options(**changes)


def peer_proxy(peer: Peer, name: str) -> SyncProxy:
    """``Peer.proxy(name)``: blocking attribute-style calls to the peer called ``name``."""
    peer._endpoints(name)  # an unknown peer is a LookupError now, not at the first call
    return SyncProxy(_PeerCalls(peer, name))
