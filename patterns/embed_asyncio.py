"""Embed zcall in an asyncio application you already have: its loop, its tasks, no zcall thread.

The application here is a small inventory service with work of its own (a task that restocks every
20 ms). It adds, on its own event loop:

- an ``AsyncServer`` started with ``await server.serve(on_ready=...)`` as one more task, so callers in
  other processes reach the inventory (a ``zcall call`` from a shell, here run as a subprocess);
- an ``AsyncClient`` made inside the loop, through which a handler awaits a pricing service in another
  process (a nested call that holds no thread);
- a graceful shutdown: ``await server.aclose(grace)`` refuses new calls, lets the call in flight finish
  within the grace period, answers it, and frees the port.

Objects made inside a running loop live on that loop: zcall's engine thread (the one it starts for
clients and servers made from plain threads) never starts, and with coroutine handlers no handler pool
starts either. The program prints the zcall threads it finds while serving: none.

Run it:  python patterns/embed_asyncio.py
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time

import zcall
from zcall.engine.loop import engine
from zcall.testing import spawn
from zcall.tools.ready import announce

GRACE = 2.0
"""Seconds the call in flight at shutdown may take to finish."""
AUDIT_SECONDS = 0.5
"""How long the call in flight at shutdown takes (had it blocked the loop, the ticks would show it)."""

# -- the pricing service, in a process of its own -----------------------------------------------------

pricing = zcall.Service("pricing")


@pricing.method(inline=True)
def price(sku: str) -> float:
    """The unit price of ``sku``."""
    return {"widget": 2.5, "gadget": 4.0}[sku]


def serve_pricing(endpoint: str) -> None:
    """The child process: serve pricing until SIGTERM, printing READY <endpoint> once bound."""
    zcall.AsyncServer(pricing, endpoint).serve_forever(on_ready=announce)


# -- the application ----------------------------------------------------------------------------------


class App:
    """The existing application: its state, its own task, and the zcall pieces it embeds."""

    def __init__(self) -> None:
        self.stock = {"widget": 10, "gadget": 3}
        self.ticks = 0
        self.longest_gap = 0.0  # the longest the loop took between two ticks: it would show a block
        self.prices: zcall.AsyncClient | None = None  # made on the loop, in run()
        self.audit_started = asyncio.Event()
        self.service = self._service()

    def _service(self) -> zcall.Service:
        service = zcall.Service("inventory")

        @service.method(name="inventory.count", inline=True)
        def count(sku: str) -> int:
            """How many of ``sku`` are in stock (runs on the loop: it never blocks)."""
            return self.stock.get(sku, 0)

        @service.method(name="inventory.quote")
        async def quote(sku: str, qty: int) -> float:
            """What ``qty`` of ``sku`` cost: a nested call to pricing, awaited on this loop."""
            assert self.prices is not None
            unit = await self.prices.call("price", sku)
            return float(unit * qty)

        @service.method(name="inventory.audit")
        async def audit() -> str:
            """A slow call (AUDIT_SECONDS), to be in flight when the application shuts down."""
            self.audit_started.set()
            await asyncio.sleep(AUDIT_SECONDS)
            return f"audited {len(self.stock)} skus"

        return service

    async def restock_forever(self) -> None:
        """The application's own work, which must keep running while zcall serves."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - last)
            last = now
            self.stock["gadget"] += 1
            self.ticks += 1

    async def run(self, bind: str) -> int:
        ticker = asyncio.create_task(self.restock_forever())
        # spawn waits for the child's READY line: off the loop, so the application's task keeps ticking
        pricing_proc = await asyncio.to_thread(spawn, [__file__, "--pricing", "tcp://127.0.0.1:*"])
        try:
            async with zcall.AsyncClient(pricing_proc.endpoint, timeout=5) as self.prices:
                return await self.serve(bind)
        finally:
            ticker.cancel()
            await asyncio.to_thread(pricing_proc.stop)  # SIGTERM, then SIGKILL; reaped by pid

    async def serve(self, bind: str) -> int:
        server = zcall.AsyncServer(self.service, bind)
        bound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        serving = asyncio.create_task(server.serve(grace=GRACE, on_ready=bound.set_result))
        endpoint = await bound
        say(f"app: serving inventory at {endpoint} on the application's own loop")
        threads = [t.name for t in threading.enumerate() if t.name.startswith("zcall")]
        say(f"zcall threads while serving: {', '.join(threads) or 'none'}; engine started: {engine.running}")

        code, out = await zcall_cli("call", endpoint, "inventory.quote", "widget", "3")
        say(f"outside caller got: {out} (exit {code})")
        code, out = await zcall_cli("call", endpoint, "inventory.count", "widget")
        say(f"outside caller got: {out} (exit {code})")

        audit = asyncio.create_task(zcall_cli("call", endpoint, "inventory.audit"))
        await asyncio.wait_for(self.audit_started.wait(), 20)  # the call is running in our handler
        say(f"app: shutting down with {server.in_flight} call in flight (grace {GRACE:.1f}s)")
        t0 = time.monotonic()
        await server.aclose(grace=GRACE)  # refuse new calls, finish the one in flight, free the port
        await serving
        say(f"app: server stopped after {time.monotonic() - t0:.1f}s, within the grace period")
        code, out = await audit
        say(f"outside caller got: {out} (exit {code})")
        gap = self.longest_gap * 1000
        say(f"app: its own task ticked {self.ticks} times meanwhile (longest gap between ticks {gap:.0f} ms)")
        return 0 if code == 0 and out.startswith("audited") else 1


async def zcall_cli(*args: str) -> tuple[int, str]:
    """Run ``zcall ARGS`` in a child process (a caller from outside), without blocking the loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "zcall", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode:
        sys.stderr.write(err.decode())
    return proc.returncode or 0, out.decode().strip()


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", default="tcp://127.0.0.1:*", help="where the inventory is served")
    parser.add_argument("--pricing", metavar="ENDPOINT", help="(child) only serve pricing, on ENDPOINT")
    args = parser.parse_args()
    if args.pricing:
        serve_pricing(args.pricing)
        return 0
    return asyncio.run(App().run(args.bind))


if __name__ == "__main__":
    sys.exit(main())
