"""CURVE + ZAP over real tcp sockets: allowed clients are served, anyone else gets no service and a clear
error within its timeout, and the ZAP thread lives exactly as long as the secured servers need it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
import zmq.auth

import zcall
from helpers.cli_support import REPO_ROOT, TESTS_DIR, zcall_cli
from zcall.errors import AuthenticationFailed
from zcall.security import ClientSecurity, ServerSecurity
from zcall.testing import spawn
from zcall.tools.launch import Launcher, PeerSpec, Topology, TopologyError

pytestmark = pytest.mark.timeout(30)

FAST = 4.0  # an async client's refused call must fail well within this (its timeout is 10 s)


@dataclass
class Keys:
    """Key files in tmp_path: the server's pair, an allowed client, an intruder, an allow-list dir."""

    server_public: Path
    server_secret: Path
    client_secret: Path
    intruder_public: Path
    intruder_secret: Path
    allowed: Path

    def client(self) -> ClientSecurity:
        return ClientSecurity(self.client_secret, self.server_public)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    allowed.mkdir()
    other.mkdir()
    spub, ssec = zmq.auth.create_certificates(tmp_path, "server")
    _cpub, csec = zmq.auth.create_certificates(allowed, "client")
    ipub, isec = zmq.auth.create_certificates(other, "intruder")
    return Keys(Path(spub), Path(ssec), Path(csec), Path(ipub), Path(isec), allowed)


@pytest.fixture
def service() -> zcall.Service:
    svc = zcall.Service("secured")

    @svc.method
    def double(x: int) -> int:
        return 2 * x

    return svc


def zap_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "zcall-zap"]


SERVERS = {"async": zcall.AsyncServer, "sync": zcall.SyncServer}


@pytest.fixture(params=sorted(SERVERS))
def secured(
    request: pytest.FixtureRequest, service: zcall.Service, keys: Keys
) -> Iterator[zcall.AsyncServer | zcall.SyncServer]:
    """A secured server of each kind on tcp://127.0.0.1:*, allowing only the ``client`` key."""
    security = ServerSecurity(keys.server_secret, allow_keys_dir=keys.allowed)
    server = SERVERS[request.param](service, "tcp://127.0.0.1:*", security=security).start()
    try:
        yield server
    finally:
        server.stop()


def call_sync(ep: str, security: ClientSecurity | None, timeout: float = 2.0) -> int:
    with zcall.SyncClient(ep, timeout=timeout, security=security) as c:
        return c.call("double", 21)  # type: ignore[no-any-return]


def call_async(ep: str, security: ClientSecurity | None, timeout: float = 5.0) -> int:
    with zcall.AsyncClient(ep, timeout=timeout, security=security) as c:
        return c.call_async("double", 21).result(timeout + 5)  # type: ignore[no-any-return]


def refused_fast(ep: str, security: ClientSecurity | None, reason: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(AuthenticationFailed) as info:
        call_async(ep, security, timeout=10.0)
    assert time.monotonic() - t0 < FAST, "a refused handshake must fail the call, not wait for its timeout"
    assert info.value.endpoint == ep and reason in str(info.value), str(info.value)
    assert isinstance(info.value, zcall.ZcallError)


def refused_sync(ep: str, security: ClientSecurity | None) -> zcall.CallTimeout:
    t0 = time.monotonic()
    with pytest.raises(zcall.CallTimeout) as info:
        call_sync(ep, security, timeout=0.4)
    assert time.monotonic() - t0 < 3.0
    return info.value


@pytest.mark.parametrize("call", [call_sync, call_async], ids=["SyncClient", "AsyncClient"])
def test_allowed_client_is_served(
    secured: zcall.AsyncServer | zcall.SyncServer, keys: Keys, call: Callable
) -> None:
    assert secured.endpoint.startswith("tcp://127.0.0.1:")
    assert call(secured.endpoint, keys.client()) == 42


def test_unknown_client_key_gets_no_service_and_a_clear_error(
    secured: zcall.AsyncServer | zcall.SyncServer, keys: Keys
) -> None:
    intruder = ClientSecurity(keys.intruder_secret, keys.server_public)
    refused_fast(secured.endpoint, intruder, "refused this client")
    exc = refused_sync(secured.endpoint, intruder)
    assert "CURVE" in str(exc)  # the REQ client cannot see the handshake; its timeout says where to look
    assert call_async(secured.endpoint, keys.client()) == 42  # and the server keeps serving


def test_wrong_server_key_gets_no_service_and_a_clear_error(
    secured: zcall.AsyncServer | zcall.SyncServer, keys: Keys
) -> None:
    wrong = ClientSecurity(keys.client_secret, keys.intruder_public)
    refused_fast(secured.endpoint, wrong, "server public key")
    refused_sync(secured.endpoint, wrong)
    assert call_sync(secured.endpoint, keys.client()) == 42


def test_plain_client_gets_no_service(secured: zcall.AsyncServer | zcall.SyncServer, keys: Keys) -> None:
    refused_fast(secured.endpoint, None, "requires CURVE")
    refused_sync(secured.endpoint, None)
    assert call_async(secured.endpoint, keys.client()) == 42


def test_curve_client_of_a_plain_server_fails_fast(service: zcall.Service, keys: Keys) -> None:
    with zcall.AsyncServer(service) as plain:
        refused_fast(plain.endpoint, keys.client(), "does not use CURVE")


def test_any_key_without_an_allow_list(service: zcall.Service, keys: Keys) -> None:
    """No allow_keys_dir: any client key is served (encrypted), but the server key is still checked."""
    with zcall.AsyncServer(service, security=ServerSecurity(keys.server_secret)) as srv:
        assert call_async(srv.endpoint, ClientSecurity(keys.intruder_secret, keys.server_public)) == 42
        refused_fast(srv.endpoint, ClientSecurity(keys.intruder_secret, keys.intruder_public), "server")


def test_ip_allow_list(service: zcall.Service, keys: Keys) -> None:
    """Only 127.0.0.2 allowed: a client from 127.0.0.1 is refused, even with an allowed key. Linux routes all
    of 127/8 to loopback, so a client bound to source 127.0.0.2 (libzmq's 'src;dst' syntax) is let in."""
    sec = ServerSecurity(keys.server_secret, allow_keys_dir=keys.allowed, allow_ips=["127.0.0.2"])
    with zcall.AsyncServer(service, "tcp://127.0.0.1:*", security=sec) as srv:
        refused_fast(srv.endpoint, keys.client(), "refused this client")
        port = srv.endpoint.rsplit(":", 1)[1]
        assert call_async(f"tcp://127.0.0.2:0;127.0.0.1:{port}", keys.client()) == 42


def test_servers_in_one_context_keep_their_own_allow_lists(service: zcall.Service, keys: Keys) -> None:
    only_intruder = keys.allowed.parent / "only_intruder"
    only_intruder.mkdir()
    (only_intruder / "intruder.key").write_bytes(keys.intruder_public.read_bytes())
    a = zcall.AsyncServer(service, security=ServerSecurity(keys.server_secret, allow_keys_dir=keys.allowed))
    b = zcall.SyncServer(service, security=ServerSecurity(keys.server_secret, allow_keys_dir=only_intruder))
    with a, b:
        intruder = ClientSecurity(keys.intruder_secret, keys.server_public)
        assert call_async(a.endpoint, keys.client()) == 42
        refused_fast(b.endpoint, keys.client(), "refused")
        assert call_async(b.endpoint, intruder) == 42
        refused_fast(a.endpoint, intruder, "refused")


def test_a_key_added_to_the_directory_is_allowed_without_restart(service: zcall.Service, keys: Keys) -> None:
    sec = ServerSecurity(keys.server_secret, allow_keys_dir=keys.allowed)
    with zcall.AsyncServer(service, security=sec) as srv:
        intruder = ClientSecurity(keys.intruder_secret, keys.server_public)
        refused_fast(srv.endpoint, intruder, "refused")
        (keys.allowed / "intruder.key").write_bytes(keys.intruder_public.read_bytes())
        assert call_async(srv.endpoint, intruder) == 42


def test_zap_thread_stops_with_the_last_secured_server(service: zcall.Service, keys: Keys) -> None:
    assert zap_threads() == []
    sec = ServerSecurity(keys.server_secret, allow_keys_dir=keys.allowed)
    plain = zcall.AsyncServer(service).start()
    try:
        a = zcall.AsyncServer(service, security=sec).start()
        b = zcall.SyncServer(service, security=sec).start()
        assert len(zap_threads()) == 1  # one per context, shared
        assert call_sync(plain.endpoint, None) == 42  # a plain server beside a ZAP handler still serves
        a.stop()
        assert len(zap_threads()) == 1 and call_async(b.endpoint, keys.client()) == 42
        b.stop()
        assert zap_threads() == []
        assert call_async(plain.endpoint, None) == 42
        with zcall.AsyncServer(service, security=sec) as again:  # and it starts again on demand
            assert call_async(again.endpoint, keys.client()) == 42
        assert zap_threads() == []
    finally:
        plain.stop()


def test_asyncio_face_raises_authentication_failed(service: zcall.Service, keys: Keys) -> None:
    async def main() -> None:
        sec = ServerSecurity(keys.server_secret, allow_keys_dir=keys.allowed)
        async with zcall.AsyncServer(service, security=sec) as srv:
            async with zcall.AsyncClient(srv.endpoint, timeout=5, security=keys.client()) as good:
                assert await good.call("double", 4) == 8
            intruder = ClientSecurity(keys.intruder_secret, keys.server_public)
            async with zcall.AsyncClient(srv.endpoint, timeout=5, security=intruder) as bad:
                with pytest.raises(AuthenticationFailed):
                    await asyncio.wait_for(bad.call("double", 4), FAST)
                with pytest.raises(AuthenticationFailed):  # later calls fail at once too
                    await asyncio.wait_for(bad.call("double", 4), 0.5)
                assert bad.statistics()["handshake_failures"] >= 1

    asyncio.run(main())


def test_config_errors_say_what_to_pass(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="zcall keygen"):
        ServerSecurity(tmp_path / "missing.key_secret")
    with pytest.raises(ValueError, match="only a public key"):
        ServerSecurity(keys.server_public)
    with pytest.raises(ValueError, match="only a public key"):
        ClientSecurity(keys.server_public, keys.server_public)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ServerSecurity(keys.server_secret, allow_keys_dir=tmp_path / "nope")
    with pytest.raises(ValueError, match="not an IP"):
        ServerSecurity(keys.server_secret, allow_ips=["localhost"])
    (tmp_path / "junk.key").write_text("hello\n")
    with pytest.raises(ValueError, match="not a zmq certificate"):
        ClientSecurity(keys.client_secret, tmp_path / "junk.key")


def test_peers_call_each_other_over_curve(tmp_path: Path) -> None:
    shared = tmp_path / "keys"  # every peer's public key; each peer's secret beside it
    shared.mkdir()
    for name in ("a", "b"):
        zmq.auth.create_certificates(shared, name)
    a = zcall.Peer("a", security=ServerSecurity(shared / "a.key_secret", allow_keys_dir=shared))
    b = zcall.Peer("b", security=ServerSecurity(shared / "b.key_secret", allow_keys_dir=shared))

    @b.method
    def hello(who: str) -> str:
        return f"hello {who}"

    with a, b:
        a.connect("b", b.endpoint)  # b's public key found as keys/b.key
        assert a.call("b", "hello", "sync") == "hello sync"
        assert a.call_async("b", "hello", "async").result(5) == "hello async"
        with pytest.raises(FileNotFoundError, match="zcall keygen"):
            a.connect("c", b.endpoint)  # no keys/c.key: said at connect time
        _pub, secret = zmq.auth.create_certificates(tmp_path, "stranger")  # not in b's allow-list
        stranger = zcall.Peer("stranger", security=ServerSecurity(secret))
        try:
            stranger.connect("b", b.endpoint, server_key=shared / "b.key")
            with pytest.raises(AuthenticationFailed):
                stranger.call_async("b", "hello", "x").result(FAST)
        finally:
            stranger.stop()


def test_cli_serve_and_call_with_keys(keys: Keys) -> None:
    handle = spawn(
        [
            "-m",
            "zcall",
            "serve",
            "helpers.services:service",
            "--curve-secret",
            str(keys.server_secret),
            "--allow-keys",
            str(keys.allowed),
        ],
        cwd=REPO_ROOT,
        pythonpath=[TESTS_DIR],
        timeout=15,
    )
    try:
        ep = handle.endpoint
        good = ["--curve-secret", str(keys.client_secret), "--server-key", str(keys.server_public)]
        r = zcall_cli("call", ep, "double", "21", *good, "--timeout", "5")
        assert r.returncode == 0 and r.stdout.strip() == "42", r.stderr
        r = zcall_cli("ping", ep, *good)
        assert r.returncode == 0 and "pong" in r.stdout, r.stderr
        bad = ["--curve-secret", str(keys.intruder_secret), "--server-key", str(keys.server_public)]
        r = zcall_cli("call", ep, "double", "21", *bad, "--async", "--timeout", "5")
        assert r.returncode == 1 and "AuthenticationFailed" in r.stderr, r.stderr
        r = zcall_cli("call", ep, "double", "21", "--timeout", "0.3")
        assert r.returncode == 3 and "CURVE" in r.stderr
        r = zcall_cli("call", ep, "double", "21", "--curve-secret", str(keys.client_secret))
        assert r.returncode == 2 and "--server-key" in r.stderr
    finally:
        handle.stop(timeout=5)


def test_launch_a_secured_topology(tmp_path: Path) -> None:
    shared = tmp_path / "keys"
    shared.mkdir()
    for name in ("calc", "gateway", "me"):
        zmq.auth.create_certificates(shared, name)

    def spec(name: str, peers: list[str]) -> PeerSpec:
        return PeerSpec(
            name,
            f"helpers.mesh_services:{name}",
            peers=peers,
            curve_secret=str(shared / f"{name}.key_secret"),
            allow_keys=str(shared),
        )

    topo = Topology(
        [spec("calc", []), spec("gateway", ["calc"])], pythonpath=[str(TESTS_DIR)], stop_timeout=3
    )
    with Launcher(topo, show_output=False) as mesh:
        ep = mesh.processes["gateway"].endpoint
        me = ClientSecurity(shared / "me.key_secret", shared / "gateway.key")
        assert call_async_method(ep, me, "double_via_calc", 5) == 10
        assert call_async_method(ep, me, "double_via_calc_sync", 6) == 12
        refused_fast(ep, None, "requires CURVE")
    plain_gateway = PeerSpec("gateway", "helpers.mesh_services:gateway", peers=["calc"])
    with pytest.raises(TopologyError, match="uses CURVE"):
        Topology([spec("calc", []), plain_gateway])
    (shared / "calc.key").unlink()
    with pytest.raises(TopologyError, match=r"calc\.key"):
        Topology([spec("calc", []), spec("gateway", ["calc"])])


def call_async_method(ep: str, security: ClientSecurity, method: str, x: int) -> int:
    with zcall.AsyncClient(ep, timeout=10, security=security) as c:
        return c.call_async(method, x).result(15)  # type: ignore[no-any-return]
