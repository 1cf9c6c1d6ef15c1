"""What a handler may know about the call it is running: ``zcall.current_call()``.

The dispatcher makes one ``CallContext`` per admitted call and sets it (a ``contextvars`` value) around
the handler wherever it runs: inline on the server's loop or REP thread, in a pool thread, or in the
task of a coroutine handler. A client call made from inside a handler reads it to inherit what is left
of the deadline (and nothing else: headers are not forwarded unless an interceptor does it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ..protocol.status import StatusCode

if TYPE_CHECKING:
    from .registry import Method

__all__ = ["CallContext", "current_call"]

_EMPTY: Mapping[str, Any] = {}
_monotonic = time.monotonic


class CallContext:
    """One call as its handler sees it: method, id, headers, deadline, caller, retry.

    ``caller_key`` is the caller's CURVE public key (z85 text) when the server uses CURVE; otherwise
    ``caller_address`` (the peer's IP as libzmq reports it, for tcp) and, on a ROUTER server,
    ``routing_id`` identify the connection. ``caller`` is the best of these. Interceptors may add
    ``headers`` for later hooks and keep their own per-call data in ``state``.
    """

    __slots__ = (
        "method",
        "id",
        "headers",
        "deadline",
        "retry",
        "routing_id",
        "notify",
        "_frame",
        "_key",
        "_address",
        "_state",
        # the dispatcher's bookkeeping for this call (not for handlers)
        "_entry",
        "_args",
        "_kwargs",
        "_token",
        "_cache_key",
        "_reply_to",
        "_server",
        "_size",
        "_batched",
    )

    def __init__(
        self,
        method: str,
        id: int,  # noqa: A002
        headers: Mapping[str, Any] | None,
        deadline: float | None,
        retry: bool = False,
        notify: bool = False,
        routing_id: bytes | None = None,
        frame: Any = None,
        entry: Method | None = None,
        args: Any = (),
        kwargs: dict[str, Any] | None = None,
        cache_key: Any = None,
        reply_to: Any = None,
    ) -> None:
        # Positional and flat on purpose: one of these is made per call on the servers' hot path.
        self.method = method
        self.id = id
        self.headers: Mapping[str, Any] = _EMPTY if headers is None else headers
        self.deadline = deadline
        """When the caller stops waiting, on this process's ``time.monotonic()`` clock (None: no limit)."""
        self.retry = retry
        """True when the caller said it may resend this call (meta ``retry``)."""
        self.notify = notify
        """True for a one-way call (NOTIFY): nobody waits for the result."""
        self.routing_id = routing_id
        self._frame = frame
        self._key: Any = None
        self._address: Any = None
        self._state: dict[str, Any] | None = None
        self._entry = entry
        self._args = args
        self._kwargs = kwargs if kwargs is not None else {}
        self._token: Any = None
        self._cache_key = cache_key
        self._reply_to = reply_to
        self._server: Any = None  # the dispatcher that admitted the call (for the built-in probes)
        self._size = 0  # its request's bytes (the dispatcher's in-flight byte budget)
        self._batched = False  # it came in a BATCH: its answer may leave in one too

    # -- time ---------------------------------------------------------------------------------------

    @property
    def time_remaining(self) -> float | None:
        """Seconds left before the caller gives up (negative once passed); None without a deadline."""
        d = self.deadline
        return None if d is None else d - _monotonic()

    @property
    def expired(self) -> bool:
        d = self.deadline
        return d is not None and _monotonic() >= d

    # -- who calls ----------------------------------------------------------------------------------

    def _meta(self, name: str) -> str | None:
        f = self._frame
        if f is None or not hasattr(f, "get"):
            return None
        try:
            v = f.get(name)
        except Exception:
            return None
        return v if isinstance(v, str) and v else None

    @property
    def caller_key(self) -> str | None:
        """The caller's CURVE public key (z85), when the server authenticates with CURVE."""
        if self._key is None:
            self._key = self._meta("User-Id") or ""
        return self._key or None

    @property
    def caller_address(self) -> str | None:
        """The caller's address as libzmq reports it (tcp: its IP), or None where it tells nothing."""
        if self._address is None:
            self._address = self._meta("Peer-Address") or ""
        return self._address or None

    @property
    def caller(self) -> str:
        """The best identity zmq gives: CURVE key, else address, else routing id (hex), else "unknown"."""
        key = self.caller_key
        if key:
            return key
        address = self.caller_address
        if address:
            return address
        if self.routing_id:
            return self.routing_id.hex()
        return "unknown"

    def _stopping(self) -> bool:
        """Whether the server running this call has begun a graceful stop."""
        server = self._server
        return bool(server is not None and server.stopping)

    # -- for interceptors ----------------------------------------------------------------------------

    @property
    def state(self) -> dict[str, Any]:
        """A per-call dict for interceptors (made on first use)."""
        if self._state is None:
            self._state = {}
        return self._state

    def abort(self, code: StatusCode | int, message: str, *, data: Any = None) -> None:
        """Refuse or end the call now with ``code`` (raises ``zcall.Rejected``)."""
        from ..errors import Rejected

        raise Rejected(code, message, data=data)

    def __repr__(self) -> str:
        left = self.time_remaining
        budget = "no deadline" if left is None else f"{left:.3f}s left"
        return f"<CallContext {self.method!r} id={self.id:#x} {budget} caller={self.caller}>"


_current: ContextVar[CallContext | None] = ContextVar("zcall_current_call", default=None)


def current_call() -> CallContext | None:
    """The call the running handler serves (inside any zcall handler or interceptor), else None."""
    return _current.get()
