"""Synchronous calls over REQ sockets, with the Lazy Pirate and Freelance recipes built in.

Each attempt goes out on a REQ socket. When no reply comes within ``timeout``, that socket is closed with
LINGER 0 (a REQ socket that sent and got nothing can never send again: EFSM) and the next attempt opens
a fresh one (the ZeroMQ Guide's Lazy Pirate). With several endpoints each attempt goes to the next one,
and an endpoint that timed out moves to the back of the line (the Guide's Freelance, model one).

A retry resends the *same request id*, marked ``retry`` on the wire: a zcall server keeps the reply of
such a call for a while (``replycache``) and answers a resend from it, so the handler runs at most once
per server even when a reply is lost. Failover to *another* server has no such memory: there, a
non-idempotent method may run on both (``retries=0`` and a single endpoint is the default).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import zmq

from ..engine.sockets import apply_size_limit, close_quietly, fast_send, normalize_endpoints
from ..errors import CallTimeout, ClientClosed, RemoteError
from ..protocol.codec import Codec, default_codec
from ..protocol.ids import IdSource
from ..protocol.status import StatusCode
from ..protocol.wire import ErrorReply, Reply, call_frame, decode
from ..service.metrics import Metrics, Outcome, outcome_for_exception

if TYPE_CHECKING:
    from ..security import ClientSecurity

__all__ = ["CallOptions", "SyncClient"]

DEFAULT_TIMEOUT = 5.0
_RCVTIMEO = zmq.RCVTIMEO
_OK = int(Outcome.OK)
_CURVE_HINT = (
    "with CURVE, a client key the server does not allow or a wrong server key also ends here: "
    "check both, or call with AsyncClient, which reports the failed handshake"
)


class SyncClient:
    """Blocking calls to one endpoint or several (failover). Safe to share between threads."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 0,
        headers: dict[str, Any] | None = None,
        context: zmq.Context | None = None,
        codec: Codec = default_codec,
        security: ClientSecurity | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        self._security = security
        self.endpoints = normalize_endpoints(endpoints)
        self.timeout = timeout
        self.retries = retries
        self.headers = headers
        self._ctx = context or zmq.Context.instance()
        self._codec = codec
        self._ids = IdSource()
        self._lock = threading.Lock()
        self._idle: dict[str, list[_Req]] = {ep: [] for ep in self.endpoints}
        self._order = list(self.endpoints)  # healthiest first
        self._closed = False
        self.counters = {"calls": 0, "attempts": 0, "timeouts": 0, "stale_replies": 0, "sockets_opened": 0}
        self.metrics = Metrics()
        """Per remote method: calls, outcomes, latency, throughput, availability (``statistics()``)."""

    # -- public API --------------------------------------------------------------------------------

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` remotely and block for its result; every keyword goes to the remote method.

        Per-call settings (timeout, retries, headers) go through ``client.options(...)``.
        """
        return self._call(method, args, kwargs, self.timeout, self.retries, self.headers)

    def options(
        self,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        headers: dict[str, Any] | None = None,
    ) -> CallOptions:
        """A view of this client with other per-call settings: ``client.options(timeout=1).call(...)``."""
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        if retries is not None and retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        return CallOptions(
            self,
            self.timeout if timeout is None else timeout,
            self.retries if retries is None else retries,
            self.headers if headers is None else headers,
        )

    def close(self) -> None:
        """Close every idle socket; sockets in use by other threads close when their call ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for reqs in idle.values():
            for req in reqs:
                close_quietly(req.sock)

    def statistics(self) -> dict[str, Any]:
        """Counters (calls, attempts, timeouts, stale replies, sockets opened) and per-method metrics."""
        return {**self.counters, "methods": self.metrics.snapshot()["methods"]}

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------------

    def _acquire(self, ep: str) -> _Req:
        if self._closed:
            raise ClientClosed("SyncClient is closed")
        try:
            return self._idle[ep].pop()  # list.pop is atomic: no lock on the hot path
        except (IndexError, KeyError):
            pass
        with self._lock:
            if self._closed:
                raise ClientClosed("SyncClient is closed")
            self.counters["sockets_opened"] += 1
        s = self._ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        apply_size_limit(s, self._codec.max_message_size)
        if self._security is not None:
            self._security.apply(s)
        s.connect(ep)
        return _Req(s)

    def _release(self, ep: str, req: _Req) -> None:
        idle = self._idle.get(ep)
        if idle is not None and not self._closed:
            idle.append(req)  # atomic; a close() racing with us is caught just below
            if not self._closed:
                return
            try:
                idle.remove(req)
            except ValueError:
                return  # close() took it and closes it
        close_quietly(req.sock)

    def _demote(self, ep: str) -> None:
        with self._lock:
            if len(self._order) > 1 and ep in self._order:
                self._order.remove(ep)
                self._order.append(ep)

    def _call(
        self,
        method: str,
        args: Any,
        kwargs: dict[str, Any],
        timeout: float,
        retries: int,
        headers: dict[str, Any] | None,
    ) -> Any:
        if self._closed:
            raise ClientClosed("SyncClient is closed")
        token = self.metrics.started(method)
        try:
            result = self._attempts(method, args, kwargs, timeout, retries, headers)
        except BaseException as exc:
            self.metrics.finished(token, outcome_for_exception(exc))
            raise
        self.metrics.finished(token, _OK)
        return result

    def _attempts(
        self,
        method: str,
        args: Any,
        kwargs: dict[str, Any],
        timeout: float,
        retries: int,
        headers: dict[str, Any] | None,
    ) -> Any:
        rid = self._ids.next()
        order = self._order if len(self._order) == 1 else list(self._order)  # a snapshot: we demote
        n = len(order)
        attempts = max(retries + 1, n)
        # 0 would mean "already expired"; the same number bounds our wait for the reply
        timeout_ms = max(1, int(timeout * 1000))
        # retry=True asks the server to keep the reply, so a resend is answered without running twice
        frame = call_frame(rid, method, args, kwargs, timeout_ms, headers, self._codec, attempts > 1)
        counters = self.counters
        counters["calls"] += 1
        start = time.monotonic()
        for attempt in range(attempts):
            ep = order[attempt % n]
            counters["attempts"] += 1
            req = self._acquire(ep)
            sock = req.sock
            ok = False
            try:
                if req.timeout_ms != timeout_ms:  # pyzmq's sock.rcvtimeo getter costs microseconds
                    sock.setsockopt(_RCVTIMEO, timeout_ms)
                    req.timeout_ms = timeout_ms
                req.send(frame, 0)
                try:
                    data = sock.recv()
                except zmq.Again:
                    data = None
                if data is not None:
                    msg = decode(data, self._codec)
                    # id 0: the server could not read our id (e.g. request over its size limit); a REQ
                    # socket only ever receives the answer to its own request, so it is ours.
                    if msg.id == rid or (msg.id == 0 and type(msg) is ErrorReply):
                        ok = True
                    else:
                        # A REQ socket only sees the reply to its own request, so another id means a
                        # buggy or hostile server: drop it, count it, and treat the attempt as failed.
                        counters["stale_replies"] += 1
            finally:
                if ok:
                    self._release(ep, req)
                else:
                    close_quietly(sock)  # Lazy Pirate: never reuse a REQ socket that missed a reply
            if ok:
                if type(msg) is Reply:
                    return msg.result
                if type(msg) is ErrorReply:
                    if msg.error.code == StatusCode.DEADLINE_EXCEEDED:  # as the async client: a timeout
                        detail = "server dropped it: deadline passed"
                        tried = order[: min(attempt + 1, n)]
                        raise CallTimeout(method, tried, attempt + 1, time.monotonic() - start, detail)
                    raise msg.error.to_exception(method)
                raise RemoteError(f"unexpected {type(msg).__name__} in reply to a call", method=method)
            counters["timeouts"] += 1
            self._demote(ep)
            if self._closed:
                raise ClientClosed("SyncClient was closed during the call")
        # A REQ socket cannot see handshake events: a refused key looks like a silent server.
        detail = "" if self._security is None else _CURVE_HINT
        raise CallTimeout(method, order[: min(attempts, n)], attempts, time.monotonic() - start, detail)


class _Req:
    """A pooled REQ socket, its fast send, and the receive timeout last set on it (reading it is slow)."""

    __slots__ = ("sock", "send", "timeout_ms")

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self.send = fast_send(sock)
        self.timeout_ms = -1


class CallOptions:
    """A ``SyncClient`` with different per-call settings; shares the client's sockets."""

    __slots__ = ("_client", "timeout", "retries", "headers")

    def __init__(
        self, client: SyncClient, timeout: float, retries: int, headers: dict[str, Any] | None
    ) -> None:
        self._client = client
        self.timeout = timeout
        self.retries = retries
        self.headers = headers

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Like ``SyncClient.call`` with these settings."""
        return self._client._call(method, args, kwargs, self.timeout, self.retries, self.headers)
