"""Subscription handles: what ``on()`` returns, to wait on until the publisher has the subscription.

A handle *settles* like a future, once the publisher answered: **active** (it keeps the topic's
pattern: events published from then on are delivered) or **refused** (it answered, but keeps none of
it: a sync server, which cannot push, or a server's limits). Waiting is on every face:

- ``sub.wait(timeout)`` blocks a plain thread and returns ``sub.active``;
- ``await sub`` (asyncio, from any loop) returns ``sub.active`` once settled (``asyncio.timeout`` or
  ``asyncio.wait_for`` bound it);
- ``sub.add_done_callback(fn)`` calls ``fn(sub)`` once settled, on the client's loop (at once, in the
  caller's thread, when it already is); an exception in ``fn`` is logged.

A handle that lost its publisher (the connection dropped) is unsettled again until the client has
subscribed anew on the next connection and that was answered: ``wait`` then waits for the new one.
``unsubscribe()`` (or leaving ``with client.on(...) as sub:``) removes the handler at once and tells the
publisher. The client decides when a handle settles (``_settle``/``_unsettle`` on its loop); this module
only keeps the state and wakes who waits, from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any

from ..protocol.status import StatusCode
from ..protocol.topics import SUBSCRIBE_METHOD
from ..protocol.wire import call_frame, ping_frame, subscribe_frame

__all__ = ["PeerSubscription", "Subscription"]

log = logging.getLogger("zcall.client")

Handler = Callable[[str, Any], Any]


class _Settling:
    """The waiting half shared by a client's handle and a peer's (which settles when all its parts do)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._settled = False
        self._active = False
        self._refused: str | None = None
        self._closed = False
        self._callbacks: list[Callable[[Any], Any]] = []
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[bool]]] = []
        self._listeners: list[Callable[[], None]] = []  # told of every change (a peer's handle)

    @property
    def active(self) -> bool:
        """Whether the publisher has the subscription now (as far as this client has been told)."""
        return self._active

    @property
    def refused(self) -> str | None:
        """Why the publisher keeps none of it (it answered so), or None."""
        return self._refused

    @property
    def settled(self) -> bool:
        """Whether the publisher has answered the latest subscription: active or refused."""
        return self._settled

    def _home(self) -> asyncio.AbstractEventLoop | None:
        """The loop a blocking ``wait`` must not be called on (the client's)."""
        return None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the publisher answered (or ``timeout`` seconds passed); return ``active``."""
        home = self._home()
        if home is not None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is home:
                raise RuntimeError("sub.wait() would block the client's own loop: 'await sub' there instead")
        with self._cond:
            self._cond.wait_for(lambda: self._settled or self._closed, timeout)
            return self._active

    def __await__(self) -> Generator[Any, None, bool]:
        return self._wait_async().__await__()

    async def _wait_async(self) -> bool:
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._settled or self._closed:
                return self._active
            fut: asyncio.Future[bool] = loop.create_future()
            self._waiters.append((loop, fut))
        return await fut

    def add_done_callback(self, fn: Callable[[Any], Any]) -> None:
        """Call ``fn(self)`` once the publisher answered (now, if it has)."""
        with self._cond:
            if not (self._settled or self._closed):
                self._callbacks.append(fn)
                return
        _run_callback(fn, self)

    # -- the owner's side (any thread) -----------------------------------------------------------------

    def _set(self, active: bool, refused: str | None) -> None:
        with self._cond:
            if self._closed:
                return
            was = (self._settled, self._active, self._refused)
            self._settled, self._active, self._refused = True, active, refused
            if was == (True, active, refused):
                return
            self._cond.notify_all()
            callbacks, self._callbacks = self._callbacks, []
            waiters, self._waiters = self._waiters, []
        _wake(waiters, active)
        for fn in callbacks:
            _run_callback(fn, self)
        self._tell()

    def _unset(self) -> None:
        with self._cond:
            changed = self._settled
            self._settled = self._active = False
            self._refused = None
        if changed:
            self._tell()

    def _tell(self) -> None:
        for listener in list(self._listeners):
            listener()

    def _close(self) -> None:
        with self._cond:
            self._closed = True
            self._settled = self._active = False
            self._cond.notify_all()
            callbacks, self._callbacks = self._callbacks, []
            waiters, self._waiters = self._waiters, []
        _wake(waiters, False)
        for fn in callbacks:
            _run_callback(fn, self)
        self._tell()


class Subscription(_Settling):
    """What ``AsyncClient.on(topic, handler)`` returns: ``topic``, ``handler``, and the waiting API."""

    def __init__(self, owner: Any, topic: str, handler: Handler) -> None:
        super().__init__()
        self._owner = owner
        self.topic = topic
        """The pattern subscribed to (``"orders.*"``: a prefix; anything else: that topic exactly)."""
        self.handler = handler

    def _home(self) -> asyncio.AbstractEventLoop | None:
        return self._owner._loop  # type: ignore[no-any-return]

    def unsubscribe(self) -> None:
        """Stop delivering to this handler now, and tell the publisher (when no other handler of this
        client wants the topic). The handle stays unsettled for good; a second call does nothing."""
        if self._closed:
            return
        self._close()
        self._owner._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unsubscribe()

    def __repr__(self) -> str:
        state = "active" if self._active else ("refused" if self._refused else "waiting")
        return f"<Subscription {self.topic!r} {state}>"


class PeerSubscription(_Settling):
    """What ``Peer.on(topic, handler)`` returns: one client subscription per peer it listens to
    (``peer=`` one of them, else every known peer, those connected later included). It settles when
    every part has: active when all of them are."""

    def __init__(self, topic: str, handler: Handler) -> None:
        super().__init__()
        self.topic = topic
        self.handler = handler
        self._parts: dict[str, Subscription] = {}
        self._lock = threading.Lock()
        self._on_unsubscribe: Callable[[PeerSubscription], None] | None = None

    def _add(self, peer: str, part: Subscription) -> None:
        """``part`` is this handle's subscription to ``peer`` now (a reconnected peer's new client)."""
        with self._lock:
            if self._closed:
                closed = True
            else:
                closed = False
                old = self._parts.get(peer)
                self._parts[peer] = part
        if closed:
            part.unsubscribe()
            return
        if old is not None and old is not part:
            old._listeners.clear()
        part._listeners.append(self._update)
        self._update()

    def _update(self) -> None:
        with self._lock:
            parts = dict(self._parts)
        if not parts or not all(p.settled for p in parts.values()):
            self._unset()
            return
        refused = [f"{name}: {p.refused}" for name, p in parts.items() if p.refused]
        self._set(all(p.active for p in parts.values()), "; ".join(refused) or None)

    def _home(self) -> asyncio.AbstractEventLoop | None:
        with self._lock:
            parts = list(self._parts.values())
        return parts[0]._home() if parts else None  # a peer's clients all live on one loop

    @property
    def parts(self) -> dict[str, Subscription]:
        """Peer name → that peer's subscription."""
        with self._lock:
            return dict(self._parts)

    def unsubscribe(self) -> None:
        """Unsubscribe from every peer, and from peers connected later."""
        if self._closed:
            return
        self._close()
        with self._lock:
            parts, self._parts = list(self._parts.values()), {}
        for p in parts:
            p.unsubscribe()
        if self._on_unsubscribe is not None:
            self._on_unsubscribe(self)

    def __enter__(self) -> PeerSubscription:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.unsubscribe()


def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[bool]]], value: bool) -> None:
    for loop, fut in waiters:
        try:
            loop.call_soon_threadsafe(_resolve, fut, value)
        except RuntimeError:  # that loop is closed: nobody waits there any more
            pass


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def _run_callback(fn: Callable[[Any], Any], sub: Any) -> None:
    try:
        fn(sub)
    except Exception:
        log.exception("subscription callback %r raised (the client keeps going)", fn)


# -- the client's side: acknowledged subscriptions ---------------------------------------------------------

MAX_PATTERNS = 64
"""Patterns a zcall server keeps per connection (docs/protocol.md §7); more are refused here, at ``on()``."""
MAX_PATTERN_LENGTH = 256


class Subscriber:
    """The subscribing half of ``AsyncClient`` (a mixin over its channels, on its loop).

    Every change of the client's set of patterns, and every new connection, sends the whole set as a
    CALL of ``zcall.subscribe``; its REPLY lists what that server keeps, which settles the handles. A
    server that answers ``METHOD_NOT_FOUND`` predates the acknowledgement: it gets the NOTIFY form and a
    PING, and its PONG (it takes a connection's requests in order) counts as the answer. An answer
    that does not come within the client's timeout is asked again."""

    # provided by AsyncClient
    _channels: dict[str, Any]
    _handlers: dict[str, list[Handler]]
    _loop: asyncio.AbstractEventLoop
    _ids: Any
    _codec: Any
    _closed: bool
    timeout: float
    _run_soon: Callable[[Any], None]

    def _setup_subscriptions(self) -> None:
        self._subs: list[Subscription] = []
        self._sub_sent: dict[int, tuple[Any, int, list[str]]] = {}  # request id -> (channel, gen, patterns)
        self._sub_gen: dict[Any, int] = {}  # channel -> the latest subscription sent on its connection
        self._sub_answered: dict[Any, int] = {}  # channel -> the latest one answered
        self._sub_kept: dict[Any, frozenset[str]] = {}  # channel -> what its server said it keeps
        self._sub_legacy: set[Any] = set()  # connections whose server answered METHOD_NOT_FOUND

    def on(self, topic: str, handler: Handler) -> Subscription:
        """Call ``handler(topic, payload)`` for each pushed event on ``topic`` (``"orders.*"``: a prefix);
        returns the ``Subscription`` to wait on (``sub.wait(5)``, ``await sub``) and to unsubscribe with.

        Delivery is at most once: an event published before the server has the subscription, or while
        this client is not connected, or dropped at a full queue, is gone (``statistics()["events_missed"]``
        counts the gaps it sees). Wait on the handle before relying on the first events."""
        if type(topic) is not str or not topic or len(topic) > MAX_PATTERN_LENGTH:
            raise ValueError(f"a topic pattern is a str of 1 to {MAX_PATTERN_LENGTH} characters: {topic!r}")
        if topic not in self._handlers and len(self._handlers) >= MAX_PATTERNS:
            raise ValueError(f"a server keeps at most {MAX_PATTERNS} patterns per connection: one more here")
        sub = Subscription(self, topic, handler)
        self._handlers.setdefault(topic, []).append(handler)
        self._run_soon(lambda: self._add_subscription(sub))
        return sub

    def off(self, topic: str, handler: Handler | None = None) -> None:
        """Remove one handler for ``topic``, or all of them (their handles settle no more)."""
        hs = self._handlers.get(topic, [])
        if handler is None:
            hs.clear()
        elif handler in hs:
            hs.remove(handler)
        if not hs:
            self._handlers.pop(topic, None)
        self._run_soon(lambda: self._drop_subscriptions(topic, handler))

    def _unsubscribe(self, sub: Subscription) -> None:
        """``sub.unsubscribe()``, from any thread: its handler goes now, the server is told on the loop."""
        hs = self._handlers.get(sub.topic, [])
        if sub.handler in hs:
            hs.remove(sub.handler)
        if not hs:
            self._handlers.pop(sub.topic, None)
        self._run_soon(lambda: self._forget(sub))

    # -- on the loop -------------------------------------------------------------------------------------

    def _add_subscription(self, sub: Subscription) -> None:
        if self._closed:
            sub._close()
            return
        self._subs.append(sub)
        self._resubscribe()
        self._sub_refresh()

    def _drop_subscriptions(self, topic: str, handler: Handler | None) -> None:
        for sub in [s for s in self._subs if s.topic == topic and (handler is None or s.handler == handler)]:
            sub._close()
            self._subs.remove(sub)
        self._resubscribe()

    def _forget(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        self._resubscribe()

    def _resubscribe(self) -> None:
        for ch in self._channels.values():
            if ch.connected:
                self._subscribe(ch)

    def _subscribe(self, ch: Any) -> None:
        """Send this client's patterns on ``ch``'s connection (the whole set: it replaces the last)."""
        if not self._handlers and not ch.last_seq and not self._sub_kept.get(ch):
            return  # nothing subscribed there, nothing to take back
        patterns = sorted(self._handlers)
        gen = self._sub_gen[ch] = self._sub_gen.get(ch, 0) + 1
        rid = self._ids.next()
        if ch in self._sub_legacy:
            ch.send_quietly(subscribe_frame(rid, patterns, self._codec))
            rid = self._ids.next()
            self._sub_sent[rid] = (ch, gen, patterns)
            ch.send_quietly(ping_frame(rid))  # its PONG says the NOTIFY before it was taken
        else:
            self._sub_sent[rid] = (ch, gen, patterns)
            deadline_ms = max(1, int(self.timeout * 1000))
            ch.send_quietly(call_frame(rid, SUBSCRIBE_METHOD, [patterns], {}, deadline_ms, None, self._codec))
        self._loop.call_later(self.timeout, self._sub_retry, ch, gen)

    def _sub_retry(self, ch: Any, gen: int) -> None:
        unanswered = self._sub_gen.get(ch) == gen and self._sub_answered.get(ch) != gen
        if unanswered and not self._closed and ch.connected:
            for rid in [r for r, s in self._sub_sent.items() if s[0] is ch]:
                del self._sub_sent[rid]
            self._subscribe(ch)

    def _sub_answer(self, rid: int, result: Any = None, error: Any = None) -> bool:
        """A REPLY, ERROR or PONG no call was waiting for: the answer to a subscription? (True if so.)"""
        sent = self._sub_sent.pop(rid, None)
        if sent is None:
            return False
        ch, gen, patterns = sent
        if self._sub_gen.get(ch) != gen:
            return True  # a later subscription is on its way: its answer is the one that counts
        if error is not None:
            if error.code == StatusCode.METHOD_NOT_FOUND and ch not in self._sub_legacy:
                self._sub_legacy.add(ch)  # a server from before the acknowledgement: the old form
                self._subscribe(ch)
                return True
            kept: frozenset[str] = frozenset()
            log.warning("%s refused the subscription: %s", ch.endpoint, getattr(error, "message", error))
        elif ch in self._sub_legacy:
            kept = frozenset(patterns)  # the PONG after the NOTIFY: it has them
        else:
            kept = frozenset(p for p in result if type(p) is str) if type(result) is list else frozenset()
        self._sub_kept[ch] = kept
        self._sub_answered[ch] = gen
        self._sub_refresh()
        return True

    def _sub_down(self, ch: Any) -> None:
        """``ch``'s connection dropped: its server's answers are void (the next connection is asked)."""
        self._sub_kept.pop(ch, None)
        self._sub_answered.pop(ch, None)
        self._sub_legacy.discard(ch)
        for rid in [r for r, s in self._sub_sent.items() if s[0] is ch]:
            del self._sub_sent[rid]
        self._sub_refresh()

    def _sub_refresh(self) -> None:
        """Settle each handle from what the connected servers answered (see ``Subscription``)."""
        if not self._subs:
            return
        connected = [ch for ch in self._channels.values() if ch.connected]
        answered = bool(connected) and all(
            self._sub_answered.get(ch) == self._sub_gen.get(ch) for ch in connected
        )
        for sub in self._subs:
            if any(sub.topic in self._sub_kept.get(ch, ()) for ch in connected):
                sub._set(True, None)
            elif answered:
                where = ", ".join(ch.endpoint for ch in connected)
                sub._set(
                    False,
                    f"{where} answered that it keeps none of {sub.topic!r} (a sync server cannot push "
                    f"events; a zcall ROUTER server keeps {MAX_PATTERNS} patterns of {MAX_PATTERN_LENGTH} "
                    "characters)",
                )
            else:
                sub._unset()

    def _close_subscriptions(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            sub._close()
