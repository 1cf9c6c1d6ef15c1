"""Test doubles: FakeServer (a real server whose methods are scripted) and CallRecorder (waits for calls),
driven from every client face, a peer, and the pytest fixtures."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import zcall
from zcall.testing import CallRecorder, FakeServer, running_server
from zcall.testing.doubles import Behaviour


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_scripted_answers_in_order_on_the_sync_face(kind: str) -> None:
    with FakeServer("billing", kind=kind) as fake:  # type: ignore[arg-type]
        fake.on("charge").returns({"ok": True})
        fake.on("refund").raises(ValueError("closed"), times=1).returns("done")
        fake.on("quote").calls(lambda amount, *, rate=2: amount * rate)
        fake.on("admin.reset").rejects(zcall.StatusCode.PERMISSION_DENIED, "admins only")
        with zcall.SyncClient(fake.endpoint, timeout=5, headers={"tenant": "t1"}) as c:
            assert c.call("charge", amount=5) == {"ok": True}
            with pytest.raises(zcall.RemoteError) as info:
                c.call("refund", 1)
            assert info.value.type == "ValueError" and "closed" in info.value.message
            assert c.call("refund", 1) == "done"
            assert c.call("refund", 2) == "done"
            assert c.call("quote", 10, rate=3) == 30
            with pytest.raises(zcall.PermissionDenied):
                c.call("admin.reset")
            with pytest.raises(zcall.MethodNotFound):  # never scripted: as on any server
                c.call("chrage")
        (charge,) = fake.calls_to("charge")
        assert charge.kwargs == {"amount": 5} and charge.args == ()
        assert charge.headers == {"tenant": "t1"}
        assert charge.result == {"ok": True} and charge.done
        methods = [c.method for c in fake.calls]
        assert methods == ["charge", "refund", "refund", "refund", "quote", "admin.reset"]
        assert isinstance(fake.calls_to("refund")[0].error, ValueError)


@pytest.mark.timeout(30)
def test_the_asyncio_and_callback_faces_and_a_delay_that_blocks_nothing() -> None:
    with FakeServer("slowpoke") as fake:
        fake.on("slow").after(0.3).returns("late")
        fake.on("fast").returns("now")

        async def main() -> tuple[Any, Any, float]:
            async with zcall.AsyncClient(fake.endpoint, timeout=5) as c:
                slow = asyncio.ensure_future(c.call("slow"))
                t0 = time.monotonic()
                fast = await c.call("fast")
                fast_in = time.monotonic() - t0
                return await slow, fast, fast_in

        slow, fast, fast_in = asyncio.run(main())
        assert (slow, fast) == ("late", "now")
        assert fast_in < 0.25  # the delayed answer did not hold the other call back
        got: list[Any] = []
        done = threading.Event()
        with zcall.AsyncClient(fake.endpoint, timeout=5) as c:
            c.call_async("fast", callback=lambda r: (got.append(r), done.set()))
            assert done.wait(5)
        assert got == ["now"]


@pytest.mark.timeout(30)
def test_wait_for_blocks_until_the_nth_call_arrives_from_code_running_elsewhere() -> None:
    with FakeServer() as fake:
        fake.on("log").returns(None)
        gate = threading.Event()

        def app() -> None:  # the code under test, on its own thread
            with zcall.AsyncClient(fake.endpoint, timeout=5) as c:
                c.notify("log", "first")
                gate.wait(5)
                c.notify("log", "second", level="warn")

        t = threading.Thread(target=app)
        t.start()
        (first,) = fake.wait_for("log", 1)
        assert first.args == ("first",) and first.notify
        with pytest.raises(TimeoutError, match="called 1 time"):
            fake.wait_for("log", 2, timeout=0.2)
        gate.set()
        calls = fake.wait_for("log", 2, finished=True)
        assert calls[1].kwargs == {"level": "warn"}
        t.join(5)


@pytest.mark.timeout(30)
def test_a_peer_calls_the_fake_by_name_and_gets_its_events() -> None:
    with FakeServer("rates") as fake:
        fake.on("lookup").calls(lambda account: {"acme": 3}.get(account, 1))
        peer = zcall.Peer("billing", peers={"rates": fake.endpoint}).start()
        try:
            got: list[Any] = []
            arrived = threading.Event()
            peer.on("rates.changed", lambda topic, payload: (got.append(payload), arrived.set()))
            assert peer.call("rates", "lookup", "acme") == 3  # the subscription went out before this
            with fake.waiter("lookup", 2) as calls:
                assert peer.call_async("rates", "lookup", "x").result(5) == 1
                assert peer.call("rates", "lookup", "y") == 1
            assert [c.args for c in calls] == [("x",), ("y",)]
            fake.publish("rates.changed", {"acme": 4})
            assert arrived.wait(5) and got == [{"acme": 4}]
        finally:
            peer.stop()


class RealBilling:
    def charge(self, account: str, amount: int) -> dict[str, Any]:
        raise AssertionError("the real one is never called")

    def refund(self, account: str) -> None:
        raise AssertionError("the real one is never called")


@pytest.mark.timeout(30)
def test_a_spec_makes_the_fake_refuse_arguments_the_real_one_would() -> None:
    with FakeServer("billing", spec=RealBilling) as fake:
        fake.on("charge").returns("charged")
        with zcall.SyncClient(fake.endpoint, timeout=5) as c:
            assert c.call("charge", "acme", 5) == "charged"
            with pytest.raises(zcall.InvalidArguments):
                c.call("charge", "acme")  # the real signature says amount is required
            with pytest.raises(zcall.RemoteError, match="no answer scripted for 'refund'"):
                c.call("refund", "acme")
            methods = {m["name"]: m["signature"] for m in c.call("zcall.methods")}
        assert methods["charge"].startswith("(account: str, amount: int) -> dict")
        assert len(fake.calls_to("charge")) == 1  # the refused call never reached the script


class Countdown(Behaviour):
    """A behaviour of the test's own: the extension point (streams will be one)."""

    def __init__(self) -> None:
        super().__init__()
        self.left = 3

    def run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.left -= 1
        return self.left


@pytest.mark.timeout(30)
def test_behaviours_are_the_extension_point() -> None:
    with FakeServer() as fake:
        fake.on("tick").add(Countdown())
        with pytest.raises(NotImplementedError, match="no streams yet"):
            fake.on("feed").streams([1, 2, 3])
        with zcall.SyncClient(fake.endpoint, timeout=5) as c:
            assert [c.call("tick") for _ in range(3)] == [2, 1, 0]


@pytest.mark.timeout(30)
def test_the_fixtures_fake_server_and_call_recorder(zcall_fake_server: Any, zcall_call_recorder: Any) -> None:
    fake = zcall_fake_server("inventory", kind="sync")
    fake.on("reserve").returns(True)
    real = zcall.Service("orders")
    recorder: CallRecorder = zcall_call_recorder(real)  # before the server is made

    @real.method
    def place(item: str) -> bool:
        with zcall.SyncClient(fake.endpoint, timeout=5) as inventory:
            return bool(inventory.call("reserve", item))

    with running_server(real, kind="async") as server, zcall.AsyncClient(server.endpoint, timeout=5) as c:
        with recorder.waiter("place", 2) as placed:
            c.call_async("place", "tea")
            c.call_async("place", "cake")
        assert sorted(p.args[0] for p in placed) == ["cake", "tea"]
        assert all(p.result is True for p in placed)
    assert sorted(r.args[0] for r in fake.wait_for("reserve", 2)) == ["cake", "tea"]
