"""Test doubles: a fake server a test scripts and inspects, and a recorder that waits for calls.

``FakeServer`` is a real zcall server (``AsyncServer`` on a ROUTER by default, ``SyncServer`` with
``kind="sync"``) whose methods are scripted, so the code under test talks to it over a real socket with
the real protocol and needs no change: sync, asyncio and callback clients, and peers that know it by
name, alike::

    with FakeServer("billing") as fake:
        fake.on("charge").returns({"ok": True})                       # every call
        fake.on("refund").raises(ValueError("closed"), times=1).returns("done")   # first, then later
        fake.on("quote").after(0.2).calls(lambda amount: amount * 2)   # computed, 200 ms late
        fake.on("admin.reset").rejects(zcall.StatusCode.PERMISSION_DENIED, "no")
        app = MyApp(billing=fake.endpoint)
        app.checkout()
        (call,) = fake.wait_for("charge", 1)                          # blocks until it arrived
        assert call.kwargs == {"amount": 5} and call.headers["tenant"] == "t1"

``CallRecorder`` is the inspection half on its own: a server interceptor for a *real* service that
records every call reaching it and lets a test wait until a method was called N times (nameko's
``entrypoint_waiter``): ``wait_for(method, n)`` from threads, ``await wait_for_async(...)`` from
asyncio, or ``with recorder.waiter(method, n):`` around the code that causes the calls.

What a scripted answer does is a ``Behaviour``; subclass it (override ``run``) for answers the built-in
ones do not give. Streams will be one such behaviour: ``MethodScript.streams`` is their placeholder.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

from ..errors import Rejected
from ..protocol.status import StatusCode
from ..server.asynchronous import AsyncServer
from ..server.sync import SyncServer
from ..service.context import CallContext
from ..service.interceptors import ServerInterceptor
from ..service.registry import Service

__all__ = [
    "Behaviour",
    "CallRecorder",
    "Calls",
    "FakeServer",
    "MethodScript",
    "NotScripted",
    "Raises",
    "RecordedCall",
    "Rejects",
    "Returns",
]

_PENDING = object()


class NotScripted(Exception):
    """A fake server got a call for a method the test declared (``spec=``) but did not script."""


@dataclass
class RecordedCall:
    """One call as it reached the server: what was asked, by whom, and (once done) how it ended."""

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    headers: dict[str, Any]
    caller: str
    id: int
    notify: bool
    at: float = field(default_factory=time.monotonic)
    result: Any = _PENDING
    error: BaseException | None = None
    finished: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def done(self) -> bool:
        return self.finished.is_set()


class CallRecorder(ServerInterceptor):
    """Records the calls a service runs and wakes waiters; attach it before its server is made
    (``CallRecorder.on(service)``): a server takes the service's interceptors when it is built."""

    def __init__(self) -> None:
        self._calls: list[RecordedCall] = []
        self._cond = threading.Condition()

    @classmethod
    def on(cls, service: Service) -> CallRecorder:
        """A recorder added to ``service`` as its outermost-so-far interceptor."""
        recorder = cls()
        service.add_interceptor(recorder)
        return recorder

    def detach(self, service: Service) -> None:
        """Take this recorder off ``service`` (for servers made from now on)."""
        service.interceptors = tuple(i for i in service.interceptors if i is not self)

    # -- the interceptor ---------------------------------------------------------------------------

    def on_call(self, call: CallContext) -> None:
        rec = RecordedCall(
            method=call.method,
            args=tuple(call._args),
            kwargs=dict(call._kwargs or {}),
            headers=dict(call.headers),
            caller=call.caller,
            id=call.id,
            notify=call.notify,
        )
        call.state["zcall.testing.recorded"] = rec
        with self._cond:
            self._calls.append(rec)
            self._cond.notify_all()

    def on_reply(self, call: CallContext, result: Any) -> Any:
        self._done(call, result, None)
        return result

    def on_error(self, call: CallContext, error: BaseException) -> BaseException:
        self._done(call, _PENDING, error)
        return error

    def _done(self, call: CallContext, result: Any, error: BaseException | None) -> None:
        rec = call.state.get("zcall.testing.recorded")
        if rec is not None:
            rec.result, rec.error = result, error
            with self._cond:
                rec.finished.set()
                self._cond.notify_all()

    # -- inspection --------------------------------------------------------------------------------

    @property
    def calls(self) -> list[RecordedCall]:
        """Every call recorded so far, in arrival order."""
        with self._cond:
            return list(self._calls)

    def calls_to(self, method: str) -> list[RecordedCall]:
        """The recorded calls of ``method``."""
        with self._cond:
            return [c for c in self._calls if c.method == method]

    def clear(self) -> None:
        with self._cond:
            self._calls.clear()

    def wait_for(
        self, method: str, n: int = 1, timeout: float = 5.0, *, finished: bool = False, since: int = 0
    ) -> list[RecordedCall]:
        """Block until ``method`` was called ``n`` times (after the first ``since`` of them; with
        ``finished=True``, until those calls have also been answered); returns them. ``TimeoutError``
        says how many came."""

        def ready() -> list[RecordedCall] | None:
            got = [c for c in self._calls if c.method == method][since:]
            if len(got) < n or (finished and not all(c.done for c in got[:n])):
                return None
            return got[:n]

        with self._cond:
            out = self._cond.wait_for(ready, timeout)
            if out is None:
                count = len([c for c in self._calls if c.method == method]) - since
                raise TimeoutError(f"{method!r} was called {count} time(s) within {timeout:g}s, not {n}")
            return out

    async def wait_for_async(
        self, method: str, n: int = 1, timeout: float = 5.0, *, finished: bool = False
    ) -> list[RecordedCall]:
        """``wait_for`` for asyncio code (the loop keeps running meanwhile)."""
        return await asyncio.to_thread(self.wait_for, method, n, timeout, finished=finished)

    @contextlib.contextmanager
    def waiter(
        self, method: str, n: int = 1, timeout: float = 5.0, *, finished: bool = True
    ) -> Iterator[list[RecordedCall]]:
        """Around the code that causes the calls: on exit, wait until ``method`` was called ``n`` more
        times than on entry and those calls were answered (nameko's ``entrypoint_waiter``). The list it
        yields holds them after the block."""
        since = len(self.calls_to(method))
        out: list[RecordedCall] = []
        yield out
        out.extend(self.wait_for(method, n, timeout, finished=finished, since=since))


# -- behaviours --------------------------------------------------------------------------------------


class Behaviour:
    """How a scripted method answers one call. ``run`` gets the call's arguments and returns the result
    (or raises); ``delay`` seconds pass first; ``times`` is how many calls it answers (None: all)."""

    def __init__(self, *, delay: float = 0.0, times: int | None = None) -> None:
        self.delay = delay
        self.times = times

    async def answer(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        result = self.run(args, kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any | Awaitable[Any]:
        raise NotImplementedError


class Returns(Behaviour):
    """Answer with ``value``."""

    def __init__(self, value: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.value = value

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.value


class Raises(Behaviour):
    """Raise ``error`` in the handler: the caller gets a ``RemoteError`` of its type (HANDLER_ERROR)."""

    def __init__(self, error: BaseException, **kw: Any) -> None:
        super().__init__(**kw)
        self.error = error

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise self.error


class Rejects(Behaviour):
    """Answer with a status code of the protocol (``PERMISSION_DENIED``, ``OVERLOADED``...)."""

    def __init__(self, code: StatusCode | int, message: str = "", data: Any = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.code, self.message, self.data = code, message, data

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise Rejected(self.code, self.message or StatusCode(self.code).name, data=self.data)


class Calls(Behaviour):
    """Answer with ``fn(*args, **kwargs)`` (a plain function or a coroutine function)."""

    def __init__(self, fn: Callable[..., Any], **kw: Any) -> None:
        super().__init__(**kw)
        self.fn = fn

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.fn(*args, **kwargs)


class MethodScript:
    """What one method of a fake answers, in order: each behaviour answers its ``times`` calls, then the
    next takes over; the last one without ``times`` answers forever. Methods return the script, so
    ``fake.on("m").returns(1, times=2).raises(ValueError())`` reads as it behaves."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: list[Behaviour] = []
        self._lock = threading.Lock()
        self._delay = 0.0

    def add(self, behaviour: Behaviour) -> MethodScript:
        """Append any ``Behaviour`` (your own subclass included)."""
        if self._delay and not behaviour.delay:
            behaviour.delay, self._delay = self._delay, 0.0
        with self._lock:
            self._queue.append(behaviour)
        return self

    def after(self, seconds: float) -> MethodScript:
        """The next behaviour added waits ``seconds`` before it answers (on the fake's loop: other calls
        go on meanwhile)."""
        self._delay = seconds
        return self

    def returns(self, value: Any = None, *, times: int | None = None, delay: float = 0.0) -> MethodScript:
        return self.add(Returns(value, times=times, delay=delay))

    def raises(self, error: BaseException, *, times: int | None = None, delay: float = 0.0) -> MethodScript:
        return self.add(Raises(error, times=times, delay=delay))

    def rejects(
        self,
        code: StatusCode | int,
        message: str = "",
        *,
        data: Any = None,
        times: int | None = None,
        delay: float = 0.0,
    ) -> MethodScript:
        return self.add(Rejects(code, message, data, times=times, delay=delay))

    def calls(self, fn: Callable[..., Any], *, times: int | None = None, delay: float = 0.0) -> MethodScript:
        return self.add(Calls(fn, times=times, delay=delay))

    def streams(self, items: Any) -> MethodScript:
        """Placeholder for streamed answers: zcall has no streams yet. When it does, a stream behaviour
        (a ``Behaviour`` subclass) plugs in here; until then this raises."""
        raise NotImplementedError("zcall has no streams yet: script a Behaviour of your own meanwhile")

    def reset(self) -> MethodScript:
        """Forget every behaviour (the method then answers NotScripted)."""
        with self._lock:
            self._queue.clear()
        return self

    def next_behaviour(self) -> Behaviour | None:
        with self._lock:
            while self._queue:
                b = self._queue[0]
                if b.times is None:
                    return b
                if b.times > 0:
                    b.times -= 1
                    if b.times == 0:
                        self._queue.pop(0)
                    return b
                self._queue.pop(0)
            return None


class FakeServer:
    """A real zcall server whose methods a test scripts (``on(method)``) and whose calls it inspects.

    ``spec``: a real ``Service`` (or a class/object with the methods) whose method names and signatures
    the fake takes on, so calls with the wrong arguments are refused as the real server would
    (INVALID_ARGUMENTS) and unscripted methods answer ``NotScripted``; without ``spec``, a scripted
    method takes any arguments and an unscripted name is ``METHOD_NOT_FOUND``, as on any server.
    """

    def __init__(
        self,
        name: str = "fake",
        endpoint: str = "tcp://127.0.0.1:*",
        *,
        kind: Literal["sync", "async"] = "async",
        spec: Any = None,
        **server_kwargs: Any,
    ) -> None:
        if kind not in ("sync", "async"):
            raise ValueError(f"kind must be 'sync' or 'async', got {kind!r}")
        self.service = Service(name)
        self.recorder = CallRecorder.on(self.service)
        self._scripts: dict[str, MethodScript] = {}
        self._kind = kind
        self._endpoint = endpoint
        self._server_kwargs = server_kwargs
        self._server: AsyncServer | SyncServer | None = None
        for method_name, signature in _spec_methods(spec):
            self._declare(method_name, signature)

    # -- scripting ---------------------------------------------------------------------------------

    def on(self, method: str) -> MethodScript:
        """The script of ``method`` (declared on first use): chain ``returns``, ``raises``, ``rejects``,
        ``calls``, ``after``."""
        script = self._scripts.get(method)
        if script is None:
            script = self._declare(method, None)
        return script

    def _declare(self, method: str, signature: inspect.Signature | None) -> MethodScript:
        script = self._scripts[method] = MethodScript(method)

        async def handler(*args: Any, **kwargs: Any) -> Any:
            behaviour = script.next_behaviour()
            if behaviour is None:
                raise NotScripted(f"{self.service.name}: no answer scripted for {method!r} (fake.on(...))")
            return await behaviour.answer(args, kwargs)

        if signature is not None:
            handler.__signature__ = signature  # type: ignore[attr-defined]
        handler.__doc__ = f"Scripted by the test (zcall.testing.FakeServer {self.service.name!r})."
        self.service.add(handler, name=method)
        return script

    def publish(self, topic: str, payload: Any = None) -> None:
        """Push an event to subscribed clients (``kind="async"`` only: REP cannot push)."""
        if not isinstance(self._server, AsyncServer):
            raise RuntimeError("events need kind='async' (a ROUTER server); start() it first")
        self._server.publish(topic, payload)

    # -- inspection (the recorder's) ---------------------------------------------------------------

    @property
    def calls(self) -> list[RecordedCall]:
        """Every call that reached a scripted method, in arrival order."""
        return self.recorder.calls

    def calls_to(self, method: str) -> list[RecordedCall]:
        return self.recorder.calls_to(method)

    def wait_for(
        self, method: str, n: int = 1, timeout: float = 5.0, *, finished: bool = False
    ) -> list[RecordedCall]:
        """Block until ``method`` was called ``n`` times; returns those calls."""
        return self.recorder.wait_for(method, n, timeout, finished=finished)

    async def wait_for_async(
        self, method: str, n: int = 1, timeout: float = 5.0, *, finished: bool = False
    ) -> list[RecordedCall]:
        return await self.recorder.wait_for_async(method, n, timeout, finished=finished)

    def waiter(self, method: str, n: int = 1, timeout: float = 5.0) -> contextlib.AbstractContextManager[Any]:
        """``with fake.waiter("charge", 2):`` ... on exit, two more calls to charge arrived and ended."""
        return self.recorder.waiter(method, n, timeout)

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake server is not started: call start() or use it in a with block")
        return self._server.endpoint

    def start(self) -> FakeServer:
        if self._server is not None:
            raise RuntimeError("fake server already started")
        cls = AsyncServer if self._kind == "async" else SyncServer
        self._server = cls(self.service, self._endpoint, **self._server_kwargs)
        self._server.start()
        return self

    def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            self._server.stop(grace)

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _spec_methods(spec: Any) -> list[tuple[str, inspect.Signature | None]]:
    """(name, signature) of the public methods ``spec`` describes: a Service's, or an object's."""
    if spec is None:
        return []
    if isinstance(spec, Service):
        return [(m.name, m.signature) for m in spec if not m.name.startswith("zcall.")]
    out: list[tuple[str, inspect.Signature | None]] = []
    for attr in dir(spec):
        if attr.startswith("_"):
            continue
        value = inspect.getattr_static(spec, attr)
        fn = value.__func__ if isinstance(value, staticmethod | classmethod) else value
        if inspect.isfunction(fn):
            try:  # resolve postponed annotations, as the real service's zcall.methods would show them
                sig = inspect.signature(fn, eval_str=True)
            except Exception:
                sig = inspect.signature(fn)
            if inspect.isclass(spec) and not isinstance(value, staticmethod | classmethod):
                sig = sig.replace(parameters=list(sig.parameters.values())[1:])  # drop self
            out.append((attr, sig))
    return out
