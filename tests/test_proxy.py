"""Attribute-style calls (``client.proxy.double(21)``) on every client face x every server kind.

Proxy faces: ``SyncClient.proxy``, ``AsyncClient.proxy`` (awaited on a loop thread of its own),
``AsyncClient.proxy_async`` (a future), ``Peer.proxy(name)``, ``Peer.aproxy(name)`` and
``Peer.proxy_async(name)``. Server kinds: SyncServer (REP), AsyncServer (ROUTER), Peer. Real sockets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import zcall
from helpers.contract import SERVER_KINDS, LoopThread, start_server
from zcall.client.proxy import UnknownMethod

pytestmark = pytest.mark.timeout(60)

PROXY_FACES = ["sync", "asyncio", "callback", "peer", "peer-async", "peer-callback"]


class Inventory:
    """Registered under the prefix ``inventory``: dotted names."""

    def __init__(self) -> None:
        self.stock = {"widget": 3}

    def count(self, sku: str) -> int:
        return self.stock.get(sku, 0)

    def reserve(self, sku: str, n: int = 1) -> int:
        self.stock[sku] = self.stock.get(sku, 0) - n
        return self.stock[sku]


def make_service() -> zcall.Service:
    svc = zcall.Service("proxied")

    @svc.method(inline=True)
    def double(x: int) -> int:
        return 2 * x

    @svc.method(name="options")
    def remote_options(level: int = 0, **extra: Any) -> dict[str, Any]:
        """A remote method named like a client method: the proxy must reach it."""
        return {"level": level, **extra}

    @svc.method
    def slow(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @svc.method(inline=True)
    def headers() -> dict[str, Any]:
        call = zcall.current_call()
        assert call is not None
        return dict(call.headers)

    svc.register(Inventory(), prefix="inventory")
    return svc


@pytest.fixture(scope="module")
def loop() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def service() -> zcall.Service:
    return make_service()


@pytest.fixture(scope="module", params=SERVER_KINDS)
def server(request: pytest.FixtureRequest, service: zcall.Service) -> Iterator[Any]:
    s = start_server(str(request.param), service)
    yield s
    s.stop(1.0)


class ProxyCaller:
    """One proxy face behind a blocking ``call("dotted.name", ...)``, and the client underneath."""

    def __init__(self, face: str, endpoint: str, loop: LoopThread, timeout: float = 5.0) -> None:
        self.face = face
        self.loop = loop
        self.peer: zcall.Peer | None = None
        self.client: Any = None
        if face == "sync":
            self.client = zcall.SyncClient(endpoint, timeout=timeout)
        elif face == "callback":
            self.client = zcall.AsyncClient(endpoint, timeout=timeout)
        elif face == "asyncio":

            async def make() -> zcall.AsyncClient:
                return zcall.AsyncClient(endpoint, timeout=timeout)

            self.client = loop.run(make())
        else:
            self.peer = zcall.Peer("caller", peers={"server": endpoint}, timeout=timeout)
            self.client = self.peer.sync_client("server") if face == "peer" else self.peer.client("server")

    def root(self, **opts: Any) -> Any:
        """The proxy's root (through a view when ``opts`` are given)."""
        if self.peer is not None and not opts:
            if self.face == "peer":
                return self.peer.proxy("server")
            if self.face == "peer-async":
                return self.peer.aproxy("server")
            return self.peer.proxy_async("server")
        base = self.client.options(**opts) if opts else self.client
        return base.proxy_async if self.face in ("callback", "peer-callback") else base.proxy

    def call(self, dotted: str, *args: Any, _opts: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        node = self.root(**(_opts or {}))
        for part in dotted.split("."):
            node = getattr(node, part)
        if self.face in ("sync", "peer"):
            return node(*args, **kwargs)
        if self.face in ("callback", "peer-callback"):
            fut = node(*args, **kwargs)
            assert isinstance(fut, concurrent.futures.Future)
            return fut.result(30)

        async def go() -> Any:
            return await node(*args, **kwargs)

        return self.loop.run(go())

    def sent(self) -> dict[str, int]:
        """Calls this face's client made, per method (what went on the wire)."""
        return {m: row["calls"] for m, row in self.client.statistics()["methods"].items()}

    def close(self) -> None:
        if self.peer is not None:
            self.peer.stop(0.5)
        elif self.face == "asyncio":
            self.loop.run(self.client.aclose())
        else:
            self.client.close()


@pytest.fixture(params=PROXY_FACES)
def pc(request: pytest.FixtureRequest, server: Any, loop: LoopThread) -> Iterator[ProxyCaller]:
    made = ProxyCaller(str(request.param), server.endpoint, loop)
    yield made
    made.close()


def test_attribute_calls_dotted_names_and_keywords(pc: ProxyCaller) -> None:
    assert pc.call("double", 21) == 42
    assert pc.call("inventory.count", "widget") == 3
    assert pc.call("inventory.count", sku="nothing") == 0
    # a remote method called "options" is reachable: the proxy has no public attributes of its own
    assert pc.call("options", 2, colour="red") == {"level": 2, "colour": "red"}
    assert pc.sent()["zcall.methods"] == 1  # looked up once, for every name after it


def test_an_unknown_name_is_refused_locally_naming_close_matches(pc: ProxyCaller) -> None:
    assert pc.call("double", 1) == 2
    with pytest.raises(UnknownMethod) as info:
        pc.call("doubel", 1)
    err = info.value
    assert isinstance(err, zcall.MethodNotFound)  # one except for this and the server's own answer
    assert err.data["close"] == ["double"] and "did you mean 'double'?" in str(err)
    assert pc.client.endpoints[0] in str(err) and "not sent" in str(err)
    with pytest.raises(UnknownMethod, match=r"'inventory' is a prefix: call one of 'inventory\.count'"):
        pc.call("inventory", "widget")
    sent = pc.sent()
    assert "doubel" not in sent and "inventory" not in sent  # never on the wire
    assert sent["zcall.methods"] == 3  # the first lookup, then one fresh look per unknown name


def test_views_carry_their_settings(pc: ProxyCaller) -> None:
    assert pc.call("headers", _opts={"headers": {"trace": "t1"}}) == {"trace": "t1"}
    with pytest.raises(zcall.CallTimeout) as info:  # slow(0.6) would answer within the default 5 s
        pc.call("slow", 0.6, _opts={"timeout": 0.3})
    assert info.value.method == "slow"


@pytest.mark.parametrize("face", PROXY_FACES)
def test_private_names_are_attribute_errors_without_io(face: str, loop: LoopThread) -> None:
    """Nothing listens at this endpoint: a private name fails at once, before any lookup."""
    pc = ProxyCaller(face, "tcp://127.0.0.1:1", loop, timeout=0.2)
    try:
        root = pc.root()
        for get in (lambda: root._secret, lambda: root.inventory._stock, lambda: root.__wrapped__):
            with pytest.raises(AttributeError, match="private"):
                get()
        assert not hasattr(root.inventory, "_x")
        with pytest.raises(TypeError, match="call a method"):
            root(1)
        assert pc.sent() == {}
    finally:
        pc.close()


def test_asyncio_first_calls_share_one_lookup(server: Any, loop: LoopThread) -> None:
    async def go() -> tuple[list[int], dict[str, Any]]:
        async with zcall.AsyncClient(server.endpoint, timeout=5) as client:
            results = await asyncio.gather(*(client.proxy.double(i) for i in range(50)))
            return list(results), client.statistics()["methods"]

    results, methods = loop.run(go())
    assert results == [2 * i for i in range(50)]
    assert methods["zcall.methods"]["calls"] == 1


def test_callback_face_runs_callback_and_errback(server: Any) -> None:
    got: list[Any] = []
    done = threading.Event()
    with zcall.AsyncClient(server.endpoint, timeout=5) as client:
        fut = client.proxy_async.double(4, callback=lambda r: (got.append(r), done.set()))
        assert fut.result(10) == 8 and done.wait(10) and got == [8]
        failed = threading.Event()
        errors: list[BaseException] = []
        fut = client.proxy_async.dubble(4, errback=lambda e: (errors.append(e), failed.set()))
        assert isinstance(fut.exception(10), UnknownMethod)
        assert failed.wait(10) and isinstance(errors[0], UnknownMethod)


def test_a_method_added_after_the_lookup_is_found(loop: LoopThread) -> None:
    """A name the cached list lacks is looked up once more before it is refused (a restarted server may
    have gained it)."""
    svc = make_service()
    with zcall.AsyncServer(svc) as server, zcall.SyncClient(server.endpoint, timeout=5) as client:
        assert client.proxy.double(1) == 2
        with pytest.raises(UnknownMethod):
            client.proxy.triple(1)
        svc.add(lambda x: 3 * x, name="triple")
        assert client.proxy.triple(2) == 6


class RefuseListing(zcall.ServerInterceptor):
    def on_call(self, call: zcall.CallContext) -> None:
        if call.method == "zcall.methods":
            raise zcall.Rejected(zcall.StatusCode.PERMISSION_DENIED, "no listing for you")


class SlowListing(zcall.ServerInterceptor):
    def on_call(self, call: zcall.CallContext) -> None:
        if call.method == "zcall.methods":
            time.sleep(0.3)


def test_a_server_that_will_not_list_its_methods_gets_unchecked_calls() -> None:
    svc = make_service()
    svc.add_interceptor(RefuseListing())
    with zcall.SyncServer(svc) as server, zcall.SyncClient(server.endpoint, timeout=5) as client:
        assert client.proxy.double(5) == 10
        with pytest.raises(zcall.MethodNotFound) as info:
            client.proxy.doubel(5)  # sent: the server answers for itself
        assert not isinstance(info.value, UnknownMethod)
        assert "did you mean 'double'" in str(info.value)


def test_the_lookup_and_the_call_share_one_budget() -> None:
    """zcall.methods takes 0.3 s here; ``slow(0.4)`` alone fits a 0.5 s budget, after the lookup it cannot."""
    svc = make_service()
    svc.add_interceptor(SlowListing())
    with zcall.SyncServer(svc) as server, zcall.SyncClient(server.endpoint, timeout=5) as client:
        t0 = time.monotonic()
        with pytest.raises(zcall.CallTimeout) as info:
            client.options(timeout=0.5).proxy.slow(0.4)
        took = time.monotonic() - t0
        assert info.value.method == "slow"
        assert 0.45 < took < 0.9, took
        assert client.proxy.slow(0.01) == 0.01  # the list is cached now: no lookup, the whole budget


@pytest.mark.parametrize("face", ["sync", "asyncio", "callback"])
def test_no_server_is_a_timeout_naming_the_method(face: str, loop: LoopThread) -> None:
    pc = ProxyCaller(face, "tcp://127.0.0.1:1", loop, timeout=0.3)
    try:
        with pytest.raises(zcall.CallTimeout) as info:
            pc.call("double", 1)
        assert info.value.method == "double" and "zcall.methods lookup" in str(info.value)
        assert "double" not in pc.sent()
    finally:
        pc.close()


def test_cancelling_a_future_during_the_lookup_sends_nothing() -> None:
    svc = make_service()
    svc.add_interceptor(SlowListing())
    with zcall.AsyncServer(svc, workers=2) as server, zcall.AsyncClient(server.endpoint, timeout=5) as client:
        fut = client.proxy_async.double(3)
        assert fut.cancel()
        assert client.proxy_async.double(4).result(10) == 8  # waits for the same lookup
        methods = client.statistics()["methods"]
        assert methods["zcall.methods"]["calls"] == 1 and methods["double"]["calls"] == 1
