"""Synchronous calls over REQ sockets, with the Lazy Pirate and Freelance recipes built in.

Only the I/O lives here; what a call means (budget, retries, failover order, errors) is the client core's.
Each attempt goes out on a REQ socket from a pool. When no reply comes within the attempt's share of the
budget, that socket is closed with LINGER 0 (a REQ socket that sent and got nothing can never send
again: EFSM) and the next attempt opens a fresh one on the next endpoint (the ZeroMQ Guide's Lazy Pirate
and Freelance).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import zmq

from ..engine.sockets import apply_size_limit, close_quietly, fast_send, frame_property, new_socket
from ..errors import ClientClosed, ProtocolError, RemoteError
from ..protocol.wire import MAX_MESSAGE_PROPERTY, ErrorReply, Reply, decode_answer, read_handshake
from .core import CallOptions, ClientCore
from .proxy import SyncProxy
from .pull import SyncStream

if TYPE_CHECKING:
    pass

__all__ = ["SyncClient", "SyncClientView"]

_RCVTIMEO = zmq.RCVTIMEO
_SNDTIMEO = zmq.SNDTIMEO
_monotonic = time.monotonic
_CURVE_HINT = (
    "with CURVE, a client key the server does not allow or a wrong server key also ends here: "
    "check both, or call with AsyncClient, which reports the failed handshake"
)


class SyncClient(ClientCore):
    """Blocking calls to one endpoint or several (failover). Safe to share between threads."""

    # The constructor is ClientCore's (endpoints, timeout, retries, idempotent, headers, context, codec,
    # security, interceptors): a REQ pool needs nothing more.

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[str, list[_Req]] = {ep: [] for ep in self.endpoints}
        self._closed = False
        self.counters["sockets_opened"] = 0

    # -- public API --------------------------------------------------------------------------------

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` remotely and block for its result; every keyword goes to the remote method.

        Per-call settings (timeout, retries, idempotent, headers) go through ``client.options(...)``.
        """
        return self._call(method, args, kwargs, self._defaults)

    def stream(self, method: str, /, *args: Any, **kwargs: Any) -> SyncStream:
        """``for item in client.stream("tail", path)``: the items ``method`` yields, pulled over REQ a
        window at a time (``client.options(window=N)``; ``timeout`` covers the whole stream). REQ cannot
        send a stream's items: client streams need ``AsyncClient`` or ``Peer`` (client/pull.py)."""
        return SyncStream(self, method, args, kwargs, self._defaults)

    @property
    def proxy(self) -> SyncProxy:
        """Attribute-style calls, names checked against the server's list: ``client.proxy.double(21)``."""
        return SyncProxy(self)

    def options(
        self,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        idempotent: bool | None = None,
        headers: Mapping[str, Any] | None = None,
        inherit_deadline: bool | None = None,
        window: int | None = None,
    ) -> SyncClientView:
        """A view of this client with other per-call settings: ``client.options(timeout=1).call(...)``;
        ``window``: a stream's items per pull."""
        opts = self._options(timeout, retries, idempotent, headers, inherit_deadline, window)
        return SyncClientView(self, opts)

    def close(self) -> None:
        """Close every idle socket; sockets in use by other threads close when their call ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for reqs in idle.values():
            for req in reqs:
                close_quietly(req.sock)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the socket pool ---------------------------------------------------------------------------

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
        s = new_socket(self._ctx, zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        apply_size_limit(s, self._codec.max_message_size)
        if self._security is not None:
            self._security.apply(s)
        s.connect(ep)
        return _Req(s, ep, self._learned_limit)

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

    # -- one call: only its I/O --------------------------------------------------------------------

    def _call(self, method: str, args: Any, kwargs: dict[str, Any], opts: CallOptions) -> Any:
        if self._closed:
            raise ClientClosed("SyncClient is closed")
        call = self._begin(method, args, kwargs, opts)
        try:
            result = self._attempts(call)
        except BaseException as exc:
            raise self._failed(call, exc) from None
        return self._ok(call, result)

    def _attempts(self, call: Any) -> Any:
        codec, counters, failover = self._codec, self.counters, self._failover
        rid = call.id
        while True:
            now = _monotonic()
            if call.attempt >= call.attempts or now >= call.deadline:
                break
            ep = failover.order(call.tried_endpoints())[0]
            budget = call.attempt_budget(now)
            frame = call.frame if call.attempt == 0 else self._frame(call, now)
            self._note_attempt(call, ep)
            timeout_ms = max(1, int(budget * 1000))
            req = self._acquire(ep)
            sock = req.sock
            data = None
            try:
                if req.timeout_ms != timeout_ms:  # pyzmq's sock.rcvtimeo getter costs microseconds
                    sock.setsockopt(_RCVTIMEO, timeout_ms)
                    # a REQ send blocks while it has no connection (one refused on reconnect drops it):
                    # bounded by the attempt's budget too, never forever
                    sock.setsockopt(_SNDTIMEO, timeout_ms)
                    req.timeout_ms = timeout_ms
                try:
                    req.send(frame, 0)
                    data = req.recv()
                except zmq.Again:
                    data = None
            finally:
                if data is not None:
                    self._release(ep, req)
                else:
                    close_quietly(sock)  # Lazy Pirate: never reuse a REQ socket that missed a reply
            if data is None:
                counters["timeouts"] += 1
                failover.failed(ep)
                if self._closed:
                    raise ClientClosed("SyncClient was closed during the call")
                continue
            try:
                got = decode_answer(data, codec)  # read once: a REPLY's fields, else the message
            except ProtocolError:
                counters["bad_replies"] += 1
                raise
            if type(got) is tuple:  # the common case, a REPLY, without a message object
                if got[0] == rid:
                    return got[1]
                msg: Any = Reply(got[0], got[1])  # another id: dropped below
            else:
                msg = got
            # id 0: the server could not read our id (e.g. request over its size limit); a REQ socket only
            # ever receives the answer to its own request, so it is ours.
            if msg.id != rid and not (msg.id == 0 and type(msg) is ErrorReply):
                # Another id means a buggy or hostile server: drop it, count it, fail the attempt.
                counters["stale_replies"] += 1
                failover.failed(ep)
                continue
            if type(msg) is Reply:
                return msg.result
            if type(msg) is ErrorReply:
                if self._may_retry_refusal(msg.error.code) and call.attempt < call.attempts:
                    failover.failed(ep)
                    continue
                raise self._remote_error(call, msg.error, ep)
            raise RemoteError(f"unexpected {type(msg).__name__} in reply to a call", method=call.method)
        # A REQ socket cannot see handshake events: a refused key looks like a silent server.
        raise self._timed_out(call, "" if self._security is None else _CURVE_HINT)


class _Req:
    """A pooled REQ socket, its fast send, and the receive timeout last set on it (reading it is slow).

    Its first reply is received as a frame, to read the server's size limit from the connection's
    handshake (``X-Zcall-Max-Message-Size``); ``recv`` is the socket's plain one from then on."""

    __slots__ = ("sock", "send", "recv", "timeout_ms", "_endpoint", "_on_limit")

    def __init__(self, sock: zmq.Socket, endpoint: str, on_limit: Callable[[str, int | None], None]) -> None:
        self.sock = sock
        self.send = fast_send(sock)
        self.recv: Callable[[], bytes] = self._first_recv
        self.timeout_ms = -1
        self._endpoint = endpoint
        self._on_limit = on_limit

    def _first_recv(self) -> bytes:
        frame = self.sock.recv(copy=False)
        self.recv = self.sock.recv
        self._on_limit(self._endpoint, read_handshake(None, frame_property(frame, MAX_MESSAGE_PROPERTY))[1])
        return frame.bytes


class SyncClientView:
    """A ``SyncClient`` with other per-call settings; shares the client's sockets."""

    __slots__ = ("_client", "_opts")

    def __init__(self, client: SyncClient, opts: CallOptions) -> None:
        self._client = client
        self._opts = opts

    @property
    def timeout(self) -> float:
        return self._opts.timeout

    @property
    def retries(self) -> int | None:
        return self._opts.retries

    @property
    def headers(self) -> Mapping[str, Any] | None:
        return self._opts.headers

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Like ``SyncClient.call`` with these settings."""
        return self._client._call(method, args, kwargs, self._opts)

    def stream(self, method: str, /, *args: Any, **kwargs: Any) -> SyncStream:
        """Like ``SyncClient.stream`` with these settings."""
        return SyncStream(self._client, method, args, kwargs, self._opts)

    @property
    def proxy(self) -> SyncProxy:
        """``SyncClient.proxy`` with these settings."""
        return SyncProxy(self)

    def options(self, **changes: Any) -> SyncClientView:
        """These settings, changed again."""
        return SyncClientView(self._client, self._opts.with_changes(**changes))
