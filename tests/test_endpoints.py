"""A malformed endpoint is one clear ``EndpointError`` (a ``ValueError``) naming it, on every API.

The check lives in ``zcall.engine.sockets`` (``normalize_endpoints``/``check_endpoint``), so clients,
peers and both servers' binds reach it; before it, ``tcp://localhost:x`` was a raw ``ZMQError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import zcall
from zcall.engine.sockets import EndpointError, check_endpoint, normalize_endpoints

pytestmark = pytest.mark.timeout(30)

BAD = {
    "tcp://localhost:x": "the port 'x' is not a number",
    "tcp://127.0.0.1:99999": "the port '99999' is not a number from 1 to 65535",
    "tcp://127.0.0.1": "needs a host and a port",
    "tcp://:5555": "needs a host and a port",
    "tpc://127.0.0.1:5555": "unknown transport 'tpc'",
    "127.0.0.1:5555": "there is no '://'",
    "tcp:// 127.0.0.1:5555": "white space",
    "ipc://": "nothing after 'ipc://'",
    "ipc:///tmp/" + "x" * 120: "unix sockets allow 107",
    "tcp://[::1:5555": "unbalanced brackets",
}


def _svc() -> zcall.Service:
    return zcall.Service("endpoints")


async def _serve_async(endpoint: str) -> None:
    await zcall.AsyncServer(_svc(), endpoint).serve()


async def _async_client_in_loop(endpoint: str) -> None:
    zcall.AsyncClient(endpoint).close()


def _apis() -> dict[str, Callable[[str], Any]]:
    return {
        "SyncClient": lambda ep: zcall.SyncClient(ep),
        "SyncClient list": lambda ep: zcall.SyncClient(["tcp://127.0.0.1:5555", ep]),
        "AsyncClient": lambda ep: zcall.AsyncClient(ep),
        "AsyncClient in asyncio": lambda ep: asyncio.run(_async_client_in_loop(ep)),
        "Peer.connect": lambda ep: zcall.Peer("p").connect("other", ep),
        "Peer(peers=)": lambda ep: zcall.Peer("p", peers={"other": ep}),
        "SyncServer.start": lambda ep: zcall.SyncServer(_svc(), ep).start(),
        "AsyncServer.start": lambda ep: zcall.AsyncServer(_svc(), ep).start(),
        "AsyncServer.serve": lambda ep: asyncio.run(_serve_async(ep)),
        "Peer.start": lambda ep: zcall.Peer("p", bind=ep).start(),
    }


@pytest.mark.parametrize("api", list(_apis()))
@pytest.mark.parametrize("endpoint", list(BAD))
def test_every_api_names_a_malformed_endpoint(api: str, endpoint: str) -> None:
    with pytest.raises(EndpointError) as info:
        _apis()[api](endpoint)
    assert isinstance(info.value, ValueError)
    assert repr(endpoint) in str(info.value) and BAD[endpoint] in str(info.value)


def test_wildcards_bind_but_do_not_connect() -> None:
    for ep in ("tcp://127.0.0.1:*", "tcp://*:5555", "ipc://*"):
        assert check_endpoint(ep, bind=True) == ep
        with pytest.raises(EndpointError, match="when binding"):
            check_endpoint(ep)
    with zcall.SyncServer(_svc(), "tcp://127.0.0.1:*") as server:  # still binds, on a free port
        assert not server.endpoint.endswith(":*")
    with pytest.raises(EndpointError, match=r"connect to the port the server bound"):
        zcall.SyncClient("tcp://127.0.0.1:*")


def test_good_endpoints_pass_unchanged() -> None:
    good = [
        "tcp://127.0.0.1:5555",
        "tcp://localhost:5555",
        "tcp://[::1]:5555",
        "tcp://eth0:5555",
        "tcp://192.168.1.17:5555;192.168.1.1:5556",
        "ipc:///tmp/zcall.sock",
        "ipc://@abstract",
        "inproc://workers",
        "ws://127.0.0.1:8080",
    ]
    assert normalize_endpoints(good) == good
    assert normalize_endpoints("tcp://127.0.0.1:1") == ["tcp://127.0.0.1:1"]
    with pytest.raises(EndpointError, match="or a list of them"):
        normalize_endpoints([])
    with pytest.raises(EndpointError, match="got int 5"):
        normalize_endpoints(5)  # type: ignore[arg-type]
