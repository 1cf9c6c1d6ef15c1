"""The client core: what every client face shares, so each face is only its I/O (httpx's BaseClient).

``ClientCore`` holds the configuration and its checks, the per-call options, the call spec
(``OutgoingCall``), the retry and failover policy, the mapping from a reply to a result or an exception,
the client interceptors and the statistics. ``SyncClient`` (REQ) and ``AsyncClient`` (DEALER; asyncio and
callback faces) subclass it and add how a call travels.

One meaning for each knob, on every face:

- ``timeout`` is the budget of the *whole* call: every attempt shares it, and each attempt's
  ``meta.deadline`` is what is left of it when that attempt is sent;
- ``retries`` is how many times a call may be resent after an attempt got no answer (timed out, or its
  connection dropped); ``None`` (the default) means once per further endpoint, so a client of several
  servers fails over and a client of one does not resend. Attempts share the budget: each gets what is
  left divided by the attempts left. A resend reuses the id and says ``retry`` on the wire, so a zcall
  server runs the call at most once (its reply cache); another server may run it again;
- ``idempotent=True`` says the method may run twice: a call whose connection dropped is then resent
  (within its budget) without using up an attempt;
- a call made inside a handler inherits what is left of that handler's deadline (the smaller of its own
  timeout and the time left) unless ``inherit_deadline=False``; an already expired one is not sent;
- a stream is a call: the same budget (it covers the whole stream), headers, interceptors and metrics,
  with one attempt (its items cannot be resent); ``window`` is how many items it takes before it grants
  the server more.
- a call the server would refuse for its size is not sent: ``MessageTooLarge`` at once, with both sizes
  (the server's limit once its handshake said it, ``X-Zcall-Max-Message-Size``, else this client's own).

And one mapping from an error record to the exception raised (``errors.error_for_record``), with two
cases only the sender can explain: a ``PROTOCOL_ERROR`` for a request this client's own decoder cannot
read either (a map key that is not a str, nesting too deep) becomes a local ``SerializationError`` that
says what and how to fix it; an ERROR with id 0 on a connection with several calls pending is matched to
the call it concerns by what it says (its size, or being unreadable) instead of being dropped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import zmq

from ..engine.sockets import default_context, normalize_endpoints
from ..engine.streams import check_window
from ..errors import CallTimeout, MessageTooLarge, ProtocolError, RemoteError, SerializationError, ZcallError
from ..protocol.codec import Codec, default_codec, find_bad_key, map_key_refusal
from ..protocol.ids import IdSource
from ..protocol.status import StatusCode
from ..protocol.wire import call_frame, check_readable, stream_frame
from ..service.context import _current
from ..service.metrics import Metrics, Outcome, outcome_for_exception
from .failover import Failover
from .interceptors import ClientInterceptor

if TYPE_CHECKING:
    from ..protocol.wire import ErrorRecord
    from ..security import ClientSecurity

__all__ = ["DEFAULT_TIMEOUT", "CallOptions", "ClientCore", "OutgoingCall"]

DEFAULT_TIMEOUT = 5.0
"""Seconds a call may take, all attempts together, unless the client or the call says otherwise."""

_current_get = _current.get  # current_call(), without the call: the client's hot path reads it
_OK = int(Outcome.OK)
_REJECTED = int(Outcome.REJECTED)
_monotonic = time.monotonic
_RETRYABLE_REFUSALS = frozenset((StatusCode.OVERLOADED,))
"""Refusals that guarantee the call did not run, so another attempt is safe for any method."""


def _check_timeout(timeout: float) -> float:
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
    return float(timeout)


def _check_retries(retries: int | None) -> int | None:
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
        raise ValueError(f"retries must be None (one attempt per endpoint) or an int >= 0, got {retries!r}")
    return retries


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Per-call settings; a client's defaults, or a view's (``client.options(...)``)."""

    timeout: float = DEFAULT_TIMEOUT
    retries: int | None = None
    idempotent: bool = False
    headers: Mapping[str, Any] | None = None
    inherit_deadline: bool = True
    window: int | None = None
    """Streams: items taken before the server is granted more (None: ``engine.streams.DEFAULT_WINDOW``)."""

    def __post_init__(self) -> None:
        _check_timeout(self.timeout)
        _check_retries(self.retries)
        if self.window is not None:
            check_window(self.window)
        if self.headers is not None and not isinstance(self.headers, Mapping):
            raise TypeError(f"headers must be a mapping of str to values, got {type(self.headers).__name__}")

    def with_changes(self, **changes: Any) -> CallOptions:
        """These options with the given fields replaced (``None`` keeps a field as it is)."""
        kept = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **kept) if kept else self


class OutgoingCall:
    """One call on its way: what a client interceptor sees, and the faces' bookkeeping for it.

    ``headers`` is this call's own dict when interceptors run (they may add to it). ``deadline`` is on
    the ``time.monotonic()`` clock; ``attempts`` is how many sends the call may make, ``attempt`` how many
    it made; ``endpoint`` is where the latest attempt went.
    """

    __slots__ = (
        "method",
        "args",
        "kwargs",
        "id",
        "headers",
        "deadline",
        "attempts",
        "attempt",
        "idempotent",
        "started",
        "endpoint",
        "tried",
        "token",
        "due",
        "sched",
        "fut",
        "callback",
        "errback",
        "channel",
        "frame",
        "stream",
        "_state",
    )

    def __init__(
        self,
        method: str,
        args: Any,
        kwargs: dict[str, Any],
        rid: int,
        headers: Mapping[str, Any] | None,
        timeout: float,
        attempts: int,
        idempotent: bool,
        now: float,
    ) -> None:
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.id = rid
        self.headers = headers
        self.deadline = now + timeout
        self.attempts = attempts
        self.attempt = 0
        self.idempotent = idempotent
        self.started = now
        self.endpoint: str | None = None
        self.tried: list[str] | None = None
        self.token: Any = None
        # the async faces' bookkeeping (one object per call on the hot path, not a subclass's second init)
        self.due = self.deadline
        self.sched = 0  # the in-flight table's filing number
        self.fut: Any = None
        self.callback: Any = None
        self.errback: Any = None
        self.channel: Any = None
        self.frame = b""
        self.stream: Any = None  # a stream's client side (client.streams.ClientStream), else None
        self._state: dict[str, Any] | None = None

    @property
    def timeout(self) -> float:
        """This call's whole budget in seconds (its own timeout, or less when inherited)."""
        return self.deadline - self.started

    @property
    def time_remaining(self) -> float:
        """Seconds left of this call's budget (negative once passed)."""
        return self.deadline - _monotonic()

    @property
    def state(self) -> dict[str, Any]:
        """A per-call dict for interceptors (made on first use)."""
        if self._state is None:
            self._state = {}
        return self._state

    def tried_endpoints(self) -> Sequence[str]:
        """Where this call's attempts went so far, first to last, each once."""
        if self.tried is not None:
            return self.tried
        return (self.endpoint,) if self.endpoint is not None else ()

    def attempt_budget(self, now: float) -> float:
        """What the next attempt may take: the time left, shared by the attempts left."""
        left = self.attempts - self.attempt
        return (self.deadline - now) / (left if left > 1 else 1)

    def __repr__(self) -> str:
        return f"<OutgoingCall {self.method!r} id={self.id:#x} attempt {self.attempt}/{self.attempts}>"


class ClientCore:
    """Configuration and the pure half of every call, shared by every client face."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int | None = None,
        idempotent: bool = False,
        headers: Mapping[str, Any] | None = None,
        context: zmq.Context | None = None,
        codec: Codec = default_codec,
        security: ClientSecurity | None = None,
        interceptors: Sequence[ClientInterceptor] = (),
    ) -> None:
        self.endpoints = normalize_endpoints(endpoints)
        self._defaults = CallOptions(_check_timeout(timeout), _check_retries(retries), idempotent, headers)
        for i in interceptors:
            if not isinstance(i, ClientInterceptor):
                raise TypeError(
                    f"{i!r} is not a zcall.ClientInterceptor: subclass it and override on_call, on_reply or "
                    "on_error"
                )
        self._interceptors: tuple[ClientInterceptor, ...] = tuple(interceptors)
        self._ctx = context or default_context()
        self._codec = codec
        self._security = security
        self._ids = IdSource()
        self._server_limits: dict[str, int] = {}  # endpoint -> the limit its handshake advertised
        self._send_limit = codec.max_message_size
        """The largest body a call may have: the smallest limit the servers advertised, else our own."""
        self._failover = Failover(self.endpoints)
        self._per_endpoint_retries = len(self.endpoints) - 1  # what retries=None means here
        self.metrics = Metrics()
        """Per remote method: calls, outcomes, latency, throughput, availability (``statistics()``)."""
        self.counters: dict[str, int] = {
            "calls": 0,
            "attempts": 0,
            "retries": 0,
            "replies": 0,
            "errors": 0,
            "timeouts": 0,
            "stale_replies": 0,
            "bad_replies": 0,
            "cancelled": 0,
            "connection_lost": 0,
            "streams": 0,
        }
        self._setup()

    def _setup(self) -> None:
        """What a face adds to the shared configuration (its sockets, pools, tables)."""

    # -- configuration ------------------------------------------------------------------------------

    @property
    def timeout(self) -> float:
        """The default budget of a whole call, in seconds."""
        return self._defaults.timeout

    @property
    def retries(self) -> int | None:
        return self._defaults.retries

    @property
    def headers(self) -> Mapping[str, Any] | None:
        return self._defaults.headers

    def _options(
        self,
        timeout: float | None,
        retries: int | None,
        idempotent: bool | None,
        headers: Mapping[str, Any] | None,
        inherit_deadline: bool | None,
        window: int | None = None,
    ) -> CallOptions:
        return self._defaults.with_changes(
            timeout=timeout,
            retries=retries,
            idempotent=idempotent,
            headers=headers,
            inherit_deadline=inherit_deadline,
            window=window,
        )

    # -- the pure half of a call --------------------------------------------------------------------

    def _begin(
        self,
        method: str,
        args: Any,
        kwargs: dict[str, Any],
        opts: CallOptions,
        stream: tuple[int, int | str | None, bool, bool] | None = None,
    ) -> OutgoingCall:
        """Check and describe a new call: budget (inherited deadline), attempts, interceptors, the first
        attempt's body (``call.frame``: raises ``SerializationError`` for arguments msgpack cannot carry),
        metrics. ``stream``: ``(credit, input, pull, batch)`` to open a stream instead (one attempt)."""
        if type(method) is not str or not method:
            raise TypeError(f"method must be a non-empty str, got {method!r}")
        now = _monotonic()
        timeout = opts.timeout
        if opts.inherit_deadline:
            caller = _current_get()
            if caller is not None and caller.deadline is not None:
                left = caller.deadline - now
                if left < timeout:
                    if left <= 0:
                        raise CallTimeout(
                            method,
                            self.endpoints,
                            0,
                            0.0,
                            f"not sent: the deadline of the calling handler ({caller.method!r}) has passed",
                        )
                    timeout = left
        retries = opts.retries
        if retries is None:
            retries = self._per_endpoint_retries
        if stream is not None:
            retries = 0  # a stream is never resent: the items it already moved cannot be
        interceptors = self._interceptors
        headers = opts.headers
        if interceptors:
            headers = dict(headers) if headers else {}
        rid = self._ids.next()
        attempts = retries + 1
        idempotent = opts.idempotent and stream is None
        call = OutgoingCall(method, args, kwargs, rid, headers, timeout, attempts, idempotent, now)
        if interceptors:
            for i in interceptors:
                i.on_call(call)  # may raise: nothing was sent, nothing counted
            headers = call.headers
        try:  # _frame(call, now), inlined: the first attempt sends the whole budget
            if stream is None:
                frame = call.frame = call_frame(
                    rid, method, args, kwargs, max(1, int(timeout * 1000)), headers, self._codec, attempts > 1
                )
            else:
                credit, where, pull, batch = stream
                deadline_ms = max(1, int(timeout * 1000))
                frame = call.frame = stream_frame(
                    rid, method, args, kwargs, credit, where, pull, deadline_ms, headers, self._codec, batch
                )
        except SerializationError:
            self.metrics.record(method, _REJECTED)  # refused here, before anything was sent
            raise
        if len(frame) > self._send_limit:  # the server would refuse it unread: say so now, send nothing
            self.metrics.record(method, _REJECTED)
            raise self._too_large(f"call {method!r}", len(frame))
        if stream is not None:
            self.counters["streams"] += 1
        self.counters["calls"] += 1
        call.token = self.metrics.started(method)
        return call

    # -- limits: what a server would refuse, refused here ------------------------------------------

    def _learned_limit(self, endpoint: str, limit: int | None) -> None:
        """A server said (its handshake, or a MESSAGE_TOO_LARGE) how large a body it reads."""
        if limit is None or limit <= 0 or self._server_limits.get(endpoint) == limit:
            return
        self._server_limits[endpoint] = limit
        self._send_limit = min(self._server_limits.values())

    def _too_large(self, what: str, size: int) -> MessageTooLarge:
        limit = self._send_limit
        if self._server_limits:
            known = [ep for ep, n in self._server_limits.items() if n == limit]
            whose = f"{', '.join(known)} reads (its handshake says)"
        else:
            whose = "this client's codec allows (no server has said its own yet)"
        return MessageTooLarge(
            f"{what} not sent: its message is {size} bytes, over the {limit} bytes {whose}; send less, or "
            "raise Codec(max_message_size=...) on both sides",
            size=size,
            limit=limit,
        )

    def _check_size(self, what: str, frame: bytes) -> None:
        if len(frame) > self._send_limit:
            raise self._too_large(what, len(frame))

    def _unreadable(self, call: OutgoingCall) -> SerializationError | None:
        """Why a server could not read ``call``'s body, when this client's own decoder cannot either: a
        ``SerializationError`` naming what and how to fix it (None when the body reads fine here)."""
        try:
            check_readable(call.frame, self._codec)
        except MessageTooLarge:
            return None  # that is MESSAGE_TOO_LARGE's business, not this
        except ProtocolError as exc:
            found = find_bad_key({"args": list(call.args), "kwargs": call.kwargs})
            why = map_key_refusal(type(found[1]).__name__, found[0]) if found is not None else str(exc)
            return SerializationError(f"call {call.method!r} was refused by the server, unread: {why}")
        return None

    def _culprits(
        self, record: ErrorRecord, calls: Sequence[OutgoingCall], endpoint: str
    ) -> list[tuple[OutgoingCall, BaseException]]:
        """The calls (of ``calls``, pending on the connection it came on) that an ERROR with id 0 is about:
        the server could not read their id. ``MESSAGE_TOO_LARGE`` names the size of the body it refused
        (``data.size``) or its limit; ``PROTOCOL_ERROR`` concerns a body this client cannot read either."""
        code = record.code
        found: list[tuple[OutgoingCall, BaseException]] = []
        if code == StatusCode.MESSAGE_TOO_LARGE:
            data = record.data if isinstance(record.data, dict) else {}
            size, limit = data.get("size"), data.get("limit")
            if type(limit) is int:
                self._learned_limit(endpoint, limit)
            for c in calls:
                n = len(c.frame)
                if (n == size) if type(size) is int else (type(limit) is int and n > limit):
                    found.append((c, self._remote_error(c, record, endpoint)))
        elif code == StatusCode.PROTOCOL_ERROR:
            for c in calls:
                local = self._unreadable(c)
                if local is not None:
                    found.append((c, local))
        return found

    def _frame(self, call: OutgoingCall, now: float) -> bytes:
        """The CALL body for the next attempt: what is left of the budget goes as meta.deadline."""
        left_ms = max(1, int((call.deadline - now) * 1000))  # 0 would mean "already expired"
        c = call
        return call_frame(c.id, c.method, c.args, c.kwargs, left_ms, c.headers, self._codec, c.attempts > 1)

    def _ok(self, call: OutgoingCall, result: Any) -> Any:
        """A result came back: reply hooks, metrics, failover health; returns what the caller gets."""
        failover = self._failover
        if failover.degraded and call.endpoint is not None:
            failover.answered(call.endpoint)
        interceptors = self._interceptors
        if interceptors:
            try:
                for i in reversed(interceptors):
                    result = i.on_reply(call, result)
            except BaseException as exc:  # a hook that raises makes the call fail
                raise self._failed(call, exc, hooks=False) from None
        self.counters["replies"] += 1
        st, t0 = call.token
        st.finished(t0, _OK)
        return result

    def _failed(self, call: OutgoingCall, error: BaseException, *, hooks: bool = True) -> BaseException:
        """The call failed: error hooks and metrics; returns the exception the caller gets."""
        if hooks and self._interceptors:
            for i in reversed(self._interceptors):
                try:
                    error = i.on_error(call, error)
                except BaseException as exc:  # a hook that raises replaces the error
                    error = exc
        if isinstance(error, RemoteError):
            self.counters["errors"] += 1
        if call.token is not None:
            self.metrics.finished(call.token, outcome_for_exception(error))
            call.token = None
        return error

    def _remote_error(self, call: OutgoingCall, record: ErrorRecord, endpoint: str | None) -> ZcallError:
        """The exception for an error record, one mapping for every face (``errors.error_for_record``);
        a request the server could not read, and this client cannot either, is explained locally."""
        if endpoint is not None:
            self._failover.answered(endpoint)  # it answered, even if with an error
        code = record.code
        if code == StatusCode.PROTOCOL_ERROR:
            local = self._unreadable(call)
            if local is not None:
                return local
        elif code == StatusCode.MESSAGE_TOO_LARGE and endpoint is not None and isinstance(record.data, dict):
            limit = record.data.get("limit")
            self._learned_limit(endpoint, limit if type(limit) is int else None)
        return record.to_exception(
            call.method, endpoint=endpoint, attempts=call.attempt, elapsed=_monotonic() - call.started
        )

    @staticmethod
    def _may_retry_refusal(code: int) -> bool:
        """Whether a refusal means the call certainly did not run (so any method may be retried)."""
        return code in _RETRYABLE_REFUSALS

    def _timed_out(self, call: OutgoingCall, detail: str = "") -> CallTimeout:
        tried = list(call.tried_endpoints()) or list(self.endpoints)
        return CallTimeout(call.method, tried, call.attempt, _monotonic() - call.started, detail)

    def _note_attempt(self, call: OutgoingCall, endpoint: str) -> None:
        """Book one more send of ``call`` to ``endpoint`` (``tried`` is kept from the second on)."""
        counters = self.counters
        counters["attempts"] += 1
        n = call.attempt = call.attempt + 1
        if n > 1:
            counters["retries"] += 1
            tried = call.tried
            if tried is None:
                call.tried = tried = [call.endpoint]  # type: ignore[list-item]
            if endpoint not in tried:
                tried.append(endpoint)
        call.endpoint = endpoint

    # -- introspection ------------------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """Counters and per-method metrics; each face adds what only it knows.

        ``calls`` made, ``attempts`` sent (``retries`` of them resends), ``replies`` (results),
        ``errors`` (error replies raised), ``timeouts`` (attempts that got no answer within their share
        of the budget), ``stale_replies`` (late or duplicate, dropped), ``bad_replies`` (undecodable),
        ``cancelled``, ``connection_lost``. How each call ended, per method: ``methods``."""
        return {**self.counters, "methods": self.metrics.snapshot()["methods"]}
