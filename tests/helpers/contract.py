"""The contract suite's pieces: one service, every server kind, and every client face behind one shape.

A ``Caller`` makes a blocking call whatever the face underneath (``SyncClient``, ``AsyncClient``'s
asyncio face driven from a test loop thread, its callback face, a ``Peer``'s blocking and awaited
calls), so one test body runs on every face x every server kind (tests/test_contract.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import decimal
import enum
import queue
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import zcall

SERVER_KINDS = ["rep", "router", "peer"]
FACES = ["sync", "asyncio", "callback", "peer", "peer-async"]
CANCELLABLE_FACES = {"asyncio", "callback", "peer-async"}
ASYNC_FACES = {"asyncio", "callback", "peer-async"}


# -- exceptions that cross the wire as themselves --------------------------------------------------------


@zcall.register_error(name="contract.OutOfStock")
class OutOfStock(Exception):
    """A registered exception whose constructor takes what its message does not hold."""

    def __init__(self, sku: str, available: int) -> None:
        super().__init__(f"{sku}: only {available} left")
        self.sku = sku
        self.available = available
        self.code = "E-STOCK"  # the same name as RemoteError's field: the class's own value wins


class BackOrdered(OutOfStock):
    """Not registered: its nearest registered base (OutOfStock) comes back."""


@zcall.register_error
@dataclasses.dataclass
class Declined(Exception):
    """A dataclass exception, registered under its default name (module.qualname)."""

    reason: str
    amount: int


@zcall.register_error(name="contract.Fragile")
class Fragile(Exception):
    """Its data cannot be set back (a read-only property): the caller gets a plain RemoteError."""

    @property
    def level(self) -> int:
        return 1

    def __zcall_data__(self) -> dict[str, Any]:
        return {"level": 2}


class Unregistered(Exception):
    """Not registered, nor any base: a RemoteError with type, message, traceback and code."""


def raise_error(kind: str) -> None:
    """What the contract service's ``fail`` handler raises, by name."""
    if kind == "stock":
        raise OutOfStock("widget", 3)
    if kind == "backordered":
        raise BackOrdered("gadget", 0)
    if kind == "declined":
        raise Declined("card expired", 120)
    if kind == "fragile":
        raise Fragile("handle with care")
    if kind == "unregistered":
        raise Unregistered("nobody knows me")
    if kind == "key":
        raise KeyError("sku-9")
    if kind == "permission":
        raise PermissionError(13, "Permission denied", "/srv/stock")
    if kind == "timeout":
        raise TimeoutError("the warehouse is slow")
    if kind == "not-implemented":
        raise NotImplementedError("returns")
    if kind == "type":
        raise TypeError("expected a sku")
    if kind == "lookup":
        raise LookupError("no such aisle")
    raise ValueError(kind)


# -- types that cross the wire as themselves ------------------------------------------------------------


@zcall.register_type
class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@zcall.register_type(name="contract.Item")
@dataclasses.dataclass(frozen=True)
class Item:
    sku: str
    qty: int
    colour: Colour = Colour.RED
    level: Level = Level.LOW  # an IntEnum travels as its int: the annotation makes it a member again
    size: tuple[int, int] = (1, 1)  # a tuple travels as an array: the annotation makes it a tuple again


@zcall.register_type
@dataclasses.dataclass
class Basket:
    id: uuid.UUID
    items: list[Item]
    total: decimal.Decimal
    tags: frozenset[str] = frozenset()
    placed: dt.date | None = None


@dataclasses.dataclass
class Unknown:
    """Never registered: it travels (by name), and arrives as its fields."""

    a: int


# -- the service every server kind serves --------------------------------------------------------------


class State:
    """What the contract service's handlers saw, for the tests to read back in-process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.cancelled: set[str] = set()
        self.finished: set[str] = set()
        self.started: dict[str, threading.Event] = {}
        self.seen: list[dict[str, Any]] = []  # what the server interceptor recorded
        self.late: dict[str, str] = {}
        self.made: dict[str, int] = {}  # items a stream's handler has made so far, by tag
        self.closed: dict[str, threading.Event] = {}  # set when a stream handler's finally: ran

    def made_one(self, tag: str) -> None:
        with self.lock:
            self.made[tag] = self.made.get(tag, 0) + 1

    def closed_event(self, tag: str) -> threading.Event:
        with self.lock:
            return self.closed.setdefault(tag, threading.Event())

    def bump(self, key: str) -> int:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1
            return self.counts[key]

    def started_event(self, tag: str) -> threading.Event:
        with self.lock:
            return self.started.setdefault(tag, threading.Event())


class Recorder(zcall.ServerInterceptor):
    """A server interceptor steered by headers: refuses (x-deny), translates KeyError (x-translate),
    stamps results (x-stamp), and records every call's method, caller and duration."""

    def __init__(self, state: State) -> None:
        self.state = state

    def on_call(self, call: zcall.CallContext) -> None:
        call.state["t0"] = time.monotonic()
        if call.headers.get("x-deny"):
            raise zcall.Rejected(zcall.StatusCode.PERMISSION_DENIED, f"{call.method} denied by x-deny")

    def on_reply(self, call: zcall.CallContext, result: Any) -> Any:
        self._record(call, "ok")
        if call.headers.get("x-stamp"):
            return {"stamped": result, "by": "server"}
        return result

    def on_error(self, call: zcall.CallContext, error: BaseException) -> BaseException:
        self._record(call, type(error).__name__)
        if call.headers.get("x-translate") and isinstance(error, KeyError):
            return zcall.Rejected(zcall.StatusCode.INVALID_ARGUMENTS, f"no such key: {error}")
        return error

    def _record(self, call: zcall.CallContext, outcome: str) -> None:
        with self.state.lock:
            self.state.seen.append(
                {
                    "method": call.method,
                    "outcome": outcome,
                    "caller": call.caller,
                    "took": time.monotonic() - call.state["t0"],
                    "headers": dict(call.headers),
                }
            )


def make_service(state: State) -> zcall.Service:
    svc = zcall.Service("contract", interceptors=[Recorder(state)])

    @svc.method(inline=True)
    def double(x: int) -> int:
        return 2 * x

    @svc.method
    def echo(value: Any = None, **extra: Any) -> Any:
        return [value, extra] if extra else value

    @svc.method
    async def adouble(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    @svc.method
    def boom(message: str) -> None:
        raise ValueError(message)

    @svc.method
    def lookup(key: str) -> Any:
        return {"a": 1}[key]

    @svc.method
    def fail(kind: str) -> None:
        raise_error(kind)

    @svc.method(validate=True)
    def checkout(basket: Basket, *, coupons: tuple[str, ...] = (), **extra: int) -> dict[str, Any]:
        """Checked against its annotations: maps become the dataclasses they name, arrays tuples."""
        return {
            "basket": basket,
            "kinds": [type(basket).__name__, type(basket.items[0]).__name__ if basket.items else None],
            "coupons": coupons,
            "coupons_type": type(coupons).__name__,
            "extra": extra,
        }

    @svc.method
    async def afail(kind: str) -> None:
        raise_error(kind)

    @svc.method
    def relay_fail(kind: str, hop: str) -> None:
        """Call ``fail`` on another server and let its exception through (a nested call)."""
        with zcall.SyncClient(hop, timeout=5.0) as c:
            c.call("fail", kind)

    @svc.method(inline=True)
    def refuse(code: int, message: str = "refused") -> None:
        raise zcall.Rejected(code, message, data={"code": code})

    @svc.method
    def sleep(seconds: float, tag: str = "") -> str:
        state.started_event(tag).set()
        time.sleep(seconds)
        with state.lock:
            state.finished.add(tag)
        return tag

    @svc.method
    async def asleep(seconds: float, tag: str = "") -> str:
        state.started_event(tag).set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            with state.lock:
                state.cancelled.add(tag)
            raise
        with state.lock:
            state.finished.add(tag)
        return tag

    @svc.method
    def bump(key: str) -> int:
        """Not idempotent: counts its runs, so at-most-once is visible."""
        return state.bump(key)

    @svc.method(inline=True)
    def context() -> dict[str, Any]:
        c = zcall.current_call()
        assert c is not None
        return {
            "method": c.method,
            "id": c.id,
            "headers": dict(c.headers),
            "left": c.time_remaining,
            "caller": c.caller,
            "address": c.caller_address,
            "retry": c.retry,
        }

    @svc.method
    def pool_context() -> dict[str, Any]:
        return context()

    @svc.method
    async def coro_context() -> dict[str, Any]:
        return context()

    @svc.method(inline=True)
    def time_left() -> float | None:
        c = zcall.current_call()
        return None if c is None else c.time_remaining

    @svc.method
    def relay(face: str, hops: list[str], inherit: bool = True) -> Any:
        """Call ``time_left`` at the end of the chain ``hops`` (each hop relays on), with ``face``."""
        if not hops:
            return time_left()
        method, args = ("relay", [face, hops[1:], inherit]) if len(hops) > 1 else ("time_left", [])
        if face == "sync":
            with zcall.SyncClient(hops[0], timeout=30.0) as c:
                return c.options(inherit_deadline=inherit).call(method, *args)
        with zcall.AsyncClient(hops[0], timeout=30.0) as c:
            return c.options(inherit_deadline=inherit).call_async(method, *args).result(35)

    @svc.method
    async def arelay(hops: list[str], inherit: bool = True) -> Any:
        """``relay`` from a coroutine handler, with the asyncio face."""
        if not hops:
            return time_left()
        method, args = ("arelay", [hops[1:], inherit]) if len(hops) > 1 else ("time_left", [])
        async with zcall.AsyncClient(hops[0], timeout=30.0) as c:
            return await c.options(inherit_deadline=inherit).call(method, *args)

    @svc.method
    def late_relay(delay: float, target: str, tag: str) -> str:
        """Outlive the caller's deadline, then try a nested call: it must not be sent."""
        time.sleep(delay)
        try:
            with zcall.SyncClient(target, timeout=30.0) as c:
                c.call("bump", tag)
            outcome = "sent"
        except zcall.CallTimeout as exc:
            outcome = f"not sent: {exc}"
        with state.lock:
            state.late[tag] = outcome
        return outcome

    # -- streams --------------------------------------------------------------------------------------

    @svc.method
    def count(n: int, tag: str = "") -> Iterator[int]:
        """A plain generator (the server's pool): 0 ... n-1, then its return value."""
        try:
            for i in range(n):
                state.made_one(tag)
                yield i
        finally:
            state.closed_event(tag).set()
        return n  # type: ignore[return-value]

    @svc.method(inline=True)
    def icount(n: int) -> Iterator[int]:
        """An inline generator (the server's loop)."""
        yield from range(n)
        return n  # type: ignore[return-value]

    @svc.method
    async def acount(n: int, tag: str = "") -> AsyncIterator[int]:
        """An async generator (a task on the server's loop)."""
        try:
            for i in range(n):
                state.made_one(tag)
                await asyncio.sleep(0)
                yield i
        finally:
            state.closed_event(tag).set()

    @svc.method
    def forever(tag: str, size: int = 0) -> Iterator[Any]:
        """An infinite stream: counts what it made, and says when its finally: ran."""
        state.started_event(tag).set()
        payload = b"x" * size
        i = 0
        try:
            while True:
                state.made_one(tag)
                yield [i, payload] if size else i
                i += 1
        finally:
            state.closed_event(tag).set()

    @svc.method
    async def aforever(tag: str) -> AsyncIterator[int]:
        state.started_event(tag).set()
        i = 0
        try:
            while True:
                state.made_one(tag)
                yield i
                i += 1
                await asyncio.sleep(0)
        finally:
            state.closed_event(tag).set()

    @svc.method
    def fail_after(n: int, message: str) -> Iterator[int]:
        yield from range(n)
        raise ValueError(message)

    @svc.method
    def ticks(n: int, interval: float, tag: str = "") -> Iterator[int]:
        """A slow producer: one item every ``interval`` seconds."""
        try:
            for i in range(n):
                time.sleep(interval)
                yield i
        finally:
            state.closed_event(tag).set()

    @svc.method
    def total(numbers: Iterator[int]) -> int:
        """A client stream into a plain handler (a pool thread blocks on the caller's items)."""
        return sum(numbers)

    @svc.method
    async def atotal(numbers: AsyncIterator[int]) -> int:
        return sum([x async for x in numbers])

    @svc.method
    def double_each(numbers: Iterator[int]) -> Iterator[int]:
        """Bidirectional: each of the caller's items, doubled, as it comes."""
        for x in numbers:
            yield 2 * x
        return "done"  # type: ignore[return-value]

    @svc.method
    async def adouble_each(numbers: AsyncIterator[int]) -> AsyncIterator[int]:
        async for x in numbers:
            yield 2 * x

    @svc.method
    def stream_context() -> Iterator[dict[str, Any]]:
        yield context()

    return svc


# -- servers ---------------------------------------------------------------------------------------------


def start_server(kind: str, service: zcall.Service, endpoint: str = "tcp://127.0.0.1:*", **kw: Any) -> Any:
    """A started server of ``kind`` (``rep``, ``router``, ``peer``) for ``service``, bound to ``endpoint``
    (tcp on a free port by default); ``.stop(grace)`` it."""
    if kind == "rep":
        return zcall.SyncServer(service, endpoint, **kw).start()
    if kind == "router":
        return zcall.AsyncServer(service, endpoint, workers=8, **kw).start()
    if kind == "peer":
        return zcall.Peer("server", service, bind=endpoint, workers=8, **kw).start()
    raise ValueError(kind)


# -- faces ---------------------------------------------------------------------------------------------


class LoopThread:
    """An asyncio loop on a thread of its own: the asyncio face's callers run their coroutines here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="contract-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Caller:
    """One client face behind a blocking ``call``; ``start`` returns a cancellable handle where the
    face has one."""

    def __init__(self, face: str, endpoint: str, loop: LoopThread, **client_kw: Any) -> None:
        self.face = face
        self._loop = loop
        self._peer: zcall.Peer | None = None
        if face == "sync":
            self._client: Any = zcall.SyncClient(endpoint, **client_kw)
        elif face == "callback":
            self._client = zcall.AsyncClient(endpoint, **client_kw)
        elif face == "asyncio":

            async def make() -> zcall.AsyncClient:
                return zcall.AsyncClient(endpoint, **client_kw)

            self._client = loop.run(make())  # lives on the test loop: the asyncio face's home
        elif face in ("peer", "peer-async"):
            timeout = client_kw.pop("timeout", 5.0)
            self._peer = zcall.Peer("caller", peers={"server": endpoint}, timeout=timeout, **client_kw)
            self._client = None
        else:
            raise ValueError(face)

    def _target(self, opts: dict[str, Any]) -> Any:
        """The object whose call() makes the call: the client, or a view of it with ``opts``."""
        if self._peer is not None:
            base = self._peer.sync_client("server") if self.face == "peer" else self._peer.client("server")
        else:
            base = self._client
        return base.options(**opts) if opts else base

    def call(self, method: str, *args: Any, _opts: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        opts = _opts or {}
        face = self.face
        if face == "peer" and not opts:
            return self._peer.call("server", method, *args, **kwargs)  # type: ignore[union-attr]
        if face == "peer-async" and not opts:
            return self._loop.run(self._peer.acall("server", method, *args, **kwargs))  # type: ignore[union-attr]
        target = self._target(opts)
        if face in ("sync", "peer"):
            return target.call(method, *args, **kwargs)
        if face == "callback":
            return target.call_async(method, *args, **kwargs).result(60)
        return self._loop.run(target.call(method, *args, **kwargs))

    def options(self, **opts: Any) -> Callable[..., Any]:
        """``caller.options(timeout=...)("method", args...)``: one call with those per-call settings."""

        def call(method: str, *args: Any, **kwargs: Any) -> Any:
            return self.call(method, *args, _opts=opts, **kwargs)

        return call

    def start(self, method: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Begin a call without waiting: a future whose ``cancel()`` cancels the call (async faces)."""
        if self.face == "callback":
            return self._client.call_async(method, *args, **kwargs)  # type: ignore[no-any-return]
        if self.face == "asyncio":
            return self._loop.submit(self._client.call(method, *args, **kwargs))
        if self.face == "peer-async":
            return self._loop.submit(self._peer.acall("server", method, *args, **kwargs))  # type: ignore[union-attr]
        raise NotImplementedError(f"the {self.face} face blocks: it has no call to cancel")

    def stream(self, method: str, *args: Any, _opts: dict[str, Any] | None = None, **kwargs: Any) -> Consumer:
        """A stream through this face, consumed by blocking (``Consumer``) whatever the face is."""
        opts = _opts or {}
        face = self.face
        if face == "sync":
            return Consumer(iter(self._target(opts).stream(method, *args, **kwargs)))
        if face == "peer":
            if not opts:
                return Consumer(self._peer.stream("server", method, *args, **kwargs))  # type: ignore[union-attr]
            target = self._peer.client("server").options(**opts)  # type: ignore[union-attr]
            return Consumer(target.stream_blocking(method, *args, **kwargs))
        if face == "callback":
            return CallbackConsumer(self._target(opts), method, args, kwargs)
        if face == "peer-async" and not opts:
            it = self._peer.astream("server", method, *args, **kwargs)  # type: ignore[union-attr]
        else:
            it = self._target(opts).stream(method, *args, **kwargs)
        return AsyncConsumer(it, self._loop)

    def stream_client(self) -> Any:
        """The zcall client a stream of this face goes through (a Peer streams over its DEALER)."""
        if self._peer is not None:
            return self._peer.client("server")
        return self._client

    def client(self) -> Any:
        """The zcall client underneath (for statistics)."""
        if self._peer is not None:
            return self._peer.sync_client("server") if self.face == "peer" else self._peer.client("server")
        return self._client

    def close(self) -> None:
        if self._peer is not None:
            self._peer.stop(0.5)
        elif self.face == "asyncio":
            self._loop.run(self._client.aclose())
        else:
            self._client.close()


class Consumer:
    """A stream consumed by blocking: ``next(c)``, ``list(c)``, ``c.close()``, ``c.result`` after the end.
    ``take(n)`` returns the next n items (fewer at the end)."""

    def __init__(self, it: Any) -> None:
        self._it = it
        self.result: Any = None

    def __iter__(self) -> Consumer:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._it)
        except StopIteration:
            self.result = getattr(self._it, "result", None)
            raise

    def take(self, n: int) -> list[Any]:
        out = []
        for item in self:
            out.append(item)
            if len(out) == n:
                break
        return out

    def close(self) -> None:
        self._it.close()


class AsyncConsumer(Consumer):
    """The asyncio face's stream, each ``__anext__`` run on the test loop."""

    def __init__(self, it: Any, loop: LoopThread) -> None:
        super().__init__(it)
        self._loop = loop

    def __next__(self) -> Any:
        try:
            return self._loop.run(self._it.__anext__(), timeout=60)
        except StopAsyncIteration:
            self.result = self._it.result
            raise StopIteration from None

    def close(self) -> None:
        self._loop.run(self._it.aclose())


_END = object()


class CallbackConsumer(Consumer):
    """The callback face's stream: ``on_item`` hands each item to this thread and returns a future that
    completes when the test takes it, so the producer waits for the test (flow control), as a slow
    callback-face consumer would do it."""

    def __init__(self, target: Any, method: str, args: Any, kwargs: dict[str, Any]) -> None:
        super().__init__(None)
        self._q: queue.Queue[Any] = queue.Queue()
        self._taken: concurrent.futures.Future[None] | None = None
        me = weakref.ref(self)  # the stream must not keep its consumer alive: dropping it closes it

        def on_item(item: Any) -> Any:
            c = me()
            return c._on_item(item) if c is not None else None

        def on_done(result: Any) -> None:
            c = me()
            if c is not None:
                c._on_done(result)

        def on_error(exc: BaseException) -> None:
            c = me()
            if c is not None:
                c._on_error(exc)

        self.future = target.stream_async(
            method, *args, on_item=on_item, on_done=on_done, on_error=on_error, **kwargs
        )

    def _on_item(self, item: Any) -> concurrent.futures.Future[None]:
        taken: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._q.put((item, taken))
        return taken

    def _on_done(self, result: Any) -> None:
        self._q.put((_END, result))

    def _on_error(self, exc: BaseException) -> None:
        self._q.put((_END, exc))

    def __next__(self) -> Any:
        if self._taken is not None:
            self._taken.set_result(None)
            self._taken = None
        item, extra = self._q.get(timeout=60)
        if item is _END:
            self._q.put((_END, extra))  # a second next() ends the same way
            if isinstance(extra, BaseException):
                raise extra
            self.result = extra
            raise StopIteration
        self._taken = extra
        return item

    def close(self) -> None:
        self.future.cancel()

    def __del__(self) -> None:
        fut = getattr(self, "future", None)  # absent when stream_async itself refused
        if fut is not None:
            fut.cancel()


@contextmanager
def caller(face: str, endpoint: str, loop: LoopThread, **client_kw: Any) -> Iterator[Caller]:
    c = Caller(face, endpoint, loop, **client_kw)
    try:
        yield c
    finally:
        c.close()
