"""``zcall demo``: a three-peer mesh (``frontend``, ``pricing``, ``inventory``), one process each, and a tour.

The peers below are what ``demo.toml`` launches (``zcall serve zcall.tools.demo:pricing`` ...). ``run_demo``
launches them, joins the mesh as a fourth, unserved peer called ``you``, and shows: a sync call, an
async call with a callback, a pushed event, a nested call across peers, the sync-vs-async comparison
against a 10 ms callee, and each peer's ``zcall.stats`` table; then it stops every process.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import math
import sys
import tempfile
import threading
import time
import tomllib
from typing import Any

from ..peer import Peer

__all__ = ["SLOW_SECONDS", "frontend", "inventory", "pricing", "run_demo"]

SLOW_SECONDS = 0.010
"""How long ``inventory.slow_lookup`` takes: the slow callee of the sync-vs-async comparison."""

# -- the peers ----------------------------------------------------------------------------------------

pricing = Peer("pricing")
inventory = Peer("inventory")
frontend = Peer("frontend")

_PRICES = {"widget": 2.50, "gadget": 10.00, "gizmo": 7.25}
_stock = {"widget": 40, "gadget": 3, "gizmo": 7}
_stock_lock = threading.Lock()


@pricing.method(inline=True)
def double(x: int) -> int:
    """Return twice x."""
    return x * 2


@pricing.method(inline=True)
def price(item: str) -> float:
    """Unit price of item (KeyError for an unknown item)."""
    return _PRICES[item]


@inventory.method(inline=True)
def stock(item: str) -> int:
    """Units of item in stock."""
    with _stock_lock:
        return _stock.get(item, 0)


@inventory.method
def restock(item: str, qty: int) -> int:
    """Add qty units of item, publish a 'stock.changed' event, return the new count."""
    with _stock_lock:
        _stock[item] = _stock.get(item, 0) + qty
        level = _stock[item]
    inventory.publish("stock.changed", {"item": item, "stock": level})
    return level


@inventory.method
async def slow_lookup(item: str) -> int:
    """Like stock(item), after 10 ms of (non-blocking) work: the slow callee."""
    await asyncio.sleep(SLOW_SECONDS)
    with _stock_lock:
        return _stock.get(item, 0)


@frontend.method
async def quote(item: str, qty: int) -> dict[str, Any]:
    """Price qty units of item: asks pricing and inventory at the same time (a nested call)."""
    unit, available = await asyncio.gather(
        frontend.acall("pricing", "price", item), frontend.acall("inventory", "stock", item)
    )
    return {"item": item, "qty": qty, "unit": unit, "total": unit * qty, "in_stock": available >= qty}


@frontend.method
def double_via_pricing(x: int) -> int:
    """Ask pricing.double(x) with a blocking (REQ) call from this handler's worker thread."""
    return frontend.call("pricing", "double", x)


# -- the tour ----------------------------------------------------------------------------------------


def _p99(samples: list[float]) -> float:
    s = sorted(samples)
    return s[max(0, math.ceil(0.99 * len(s)) - 1)]


def _line(label: str, n: int, wall: float, lat: list[float]) -> str:
    return (
        f"   {label:<22} {n} calls in {wall:6.3f} s = {n / wall:8.0f} calls/s   "
        f"mean {sum(lat) / len(lat) * 1000:6.2f} ms   p99 {_p99(lat) * 1000:6.2f} ms"
    )


def _sync_run(you: Peer, calls: int) -> tuple[float, list[float]]:
    lat = []
    t_start = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        you.call("inventory", "slow_lookup", "widget")
        lat.append(time.perf_counter() - t0)
    return time.perf_counter() - t_start, lat


def _async_run(you: Peer, calls: int, in_flight: int) -> tuple[float, list[float]]:
    lat: list[float] = []
    errors: list[BaseException] = []
    window = threading.Semaphore(in_flight)
    done = threading.Event()
    lock = threading.Lock()
    remaining = [calls]

    def finished(t0: float, exc: BaseException | None) -> None:
        with lock:
            if exc is None:
                lat.append(time.perf_counter() - t0)
            else:
                errors.append(exc)
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()
        window.release()

    t_start = time.perf_counter()
    for _ in range(calls):
        window.acquire()
        t0 = time.perf_counter()
        you.call_async(
            "inventory",
            "slow_lookup",
            "widget",
            callback=lambda _r, t0=t0: finished(t0, None),  # type: ignore[misc]
            errback=lambda e, t0=t0: finished(t0, e),  # type: ignore[misc]
        )
    if not done.wait(30):
        raise TimeoutError(f"async comparison: {remaining[0]} calls never finished")
    wall = time.perf_counter() - t_start
    if errors:
        raise errors[0]
    return wall, lat


def _show_stats(endpoints: dict[str, str]) -> None:
    from ..errors import MethodNotFound, ZcallError
    from .cli import fetch_stats, render_stats

    for name, ep in endpoints.items():
        try:
            result = fetch_stats([ep], 3.0)
        except MethodNotFound:
            print(f"   {name}: no zcall.stats on this zcall yet (call metrics are not wired into servers)")
            continue
        except ZcallError as exc:
            print(f"   {name}: zcall.stats failed: {exc}")
            continue
        print("\n".join("   " + line for line in render_stats(result, ep).splitlines()))
        print()


def run_demo(*, calls: int = 200, in_flight: int = 100, show_output: bool = False) -> int:
    """Launch the demo mesh, run the tour, stop everything; returns the exit code (0 on success)."""
    from .launch import Launcher, LaunchError, Topology

    text = importlib.resources.files("zcall.tools").joinpath("demo.toml").read_text(encoding="utf-8")
    t_begin = time.perf_counter()
    print("zcall demo: three peers, each its own process, calling each other directly (no broker).\n")
    with tempfile.TemporaryDirectory(prefix="zcall-demo-") as workdir:
        # children run in an empty directory, so nothing in the user's cwd can shadow a module
        topology = Topology.from_dict(tomllib.loads(text), base_dir=workdir, source="zcall/tools/demo.toml")
        launcher = Launcher(topology, show_output=show_output)
        try:
            launcher.start()
        except LaunchError as exc:
            print(f"demo failed to launch: {exc}", file=sys.stderr)
            return 1
        you: Peer | None = None
        try:
            print(launcher.table() + "\n")
            eps = launcher.endpoints
            you = Peer("you", peers=eps, timeout=5.0)
            _tour(you, calls, in_flight)
            print("6) call metrics: zcall.stats of each peer")
            _show_stats(eps)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            if you is not None:
                you.stop()
            print(f"stopping {len(launcher.processes)} peers ...", flush=True)
            launcher.stop()
    print(f"done in {time.perf_counter() - t_begin:.1f} s: every peer process has exited.")
    return 0


def _tour(you: Peer, calls: int, in_flight: int) -> None:
    print("1) sync call (REQ/REP): the caller blocks until the reply comes")
    t0 = time.perf_counter()
    r = you.call("pricing", "double", 10)
    print(
        f"   you -> pricing.double(10)\n"
        f"   sync call result: {r}   ({(time.perf_counter() - t0) * 1000:.2f} ms)"
    )
    r = you.call("frontend", "double_via_pricing", 10)
    print(f"   between mesh peers: frontend.double_via_pricing(10) calls pricing.double(10) -> {r}\n")

    print(
        "2) async call with a callback (DEALER/ROUTER): call_async returns at once, "
        "the callback gets the result"
    )
    got = threading.Event()
    box: list[Any] = []

    def on_result(result: Any) -> None:
        box.append(result)
        got.set()

    def on_error(exc: BaseException) -> None:
        box.append(exc)
        got.set()

    t0 = time.perf_counter()
    you.call_async("pricing", "double", 10, callback=on_result, errback=on_error)
    returned = (time.perf_counter() - t0) * 1000
    print(
        f"   you -> pricing.double(10) with callback=on_result: call_async returned after {returned:.2f} ms"
    )
    if not got.wait(5):
        raise TimeoutError("the async call's callback never ran")
    if isinstance(box[0], BaseException):
        raise box[0]
    print(f"   async call result: {box[0]}   (printed by the callback, on zcall's engine thread)\n")

    print("3) pushed event: subscribe to 'stock.*' on inventory, then restock an item")
    seen = threading.Event()
    events: list[tuple[str, Any]] = []

    def on_event(topic: str, payload: Any) -> None:
        events.append((topic, payload))
        seen.set()

    you.on("stock.*", on_event, peer="inventory")
    level = you.client("inventory").call_async("restock", "gizmo", 5).result(5)
    if not seen.wait(5):
        raise TimeoutError("the stock.changed event never arrived")
    print(f"   you -> inventory.restock('gizmo', 5) -> {level}")
    print(f"   event received: {events[0][0]} {events[0][1]}\n")

    print("4) nested call across peers: frontend.quote asks pricing and inventory at the same time")
    q = you.call("frontend", "quote", "widget", 3)
    print("   you -> frontend.quote('widget', 3) -> [pricing.price, inventory.stock]")
    print(f"   nested call result: {q}\n")

    print(f"5) sync vs async: {calls} calls to inventory.slow_lookup, a {SLOW_SECONDS * 1000:.0f} ms callee")
    you.call("inventory", "slow_lookup", "widget")  # warm both paths: connections exist before timing
    you.client("inventory").call_async("slow_lookup", "widget").result(5)
    sync_wall, sync_lat = _sync_run(you, calls)
    print(_line("sync, one at a time:", calls, sync_wall, sync_lat))
    async_wall, async_lat = _async_run(you, calls, in_flight)
    print(_line(f"async, {in_flight} in flight:", calls, async_wall, async_lat))
    print(
        f"   speedup: {sync_wall / async_wall:.1f}x (async over sync wall time; each async call waits "
        "longer, but they overlap)\n"
    )


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(run_demo())
