"""Events between peers: publish/subscribe with callbacks (``peer.on``), exact and prefix topics.

A "shop" peer (its own process) publishes what happens to it: ``orders.new`` when it sells something,
``billing.charge`` for the money, ``stock.low`` now and then. Two peers in this process subscribe with
``peer.on(topic, callback)``: the warehouse to every ``orders.*`` topic (a prefix), accounting to exactly
``billing.charge``. A subscription travels to the publisher on the subscriber's own connection; the
publisher pushes each event once to each subscriber connected *now* whose topic matches.

Delivery is at most once, and this demo shows it rather than hiding it: an event published before a
subscriber has subscribed, or while it is down, is gone. Nothing is queued for it and nothing is
replayed; a restarted subscriber gets only later events. Use calls (with replies) for anything that
must not be lost.

Run alone (starts the shop process, cleans it up):  python patterns/events.py
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

import zcall
from zcall.testing import SpawnError, spawn
from zcall.tools.serving import serve_until_stopped

# -- the publisher: a shop peer in its own process ---------------------------------------------------------

shop_service = zcall.Service("shop")
shop: zcall.Peer


@shop_service.method
def sell(item: str, price: int) -> None:
    """Sell ``item``: publish ``orders.new`` and ``billing.charge`` (and ``stock.low``, no one listens)."""
    shop.publish("orders.new", {"item": item})
    shop.publish("billing.charge", {"item": item, "price": price})
    shop.publish("stock.low", {"item": item})


@shop_service.method
def cancel(item: str) -> None:
    """Cancel an order: publish ``orders.cancelled`` (a second topic under the ``orders.`` prefix)."""
    shop.publish("orders.cancelled", {"item": item})


@shop_service.method
def subscribers() -> int:
    """How many subscriber connections the shop has right now."""
    return shop.statistics()["server"]["subscribers"]


def serve_shop(bind: str) -> None:
    """Run the shop peer until SIGTERM/SIGINT; print ``READY <endpoint>`` once bound."""
    global shop
    shop = zcall.Peer("shop", shop_service, bind=bind)
    serve_until_stopped(shop)  # the READY line (the parent waits for it, not a sleep), then the signal


# -- the subscribers: two peers in this process ----------------------------------------------------------


class Inbox:
    """What one subscriber received, in order; ``wait_for`` blocks until a given event has arrived."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[tuple[str, Any]] = []
        self._cond = threading.Condition()

    def __call__(self, topic: str, payload: Any) -> None:  # the callback: runs on zcall's engine thread
        print(f"   [{self.name}] got {topic}: {payload}", flush=True)
        with self._cond:
            self.events.append((topic, payload))
            self._cond.notify_all()

    def wait_for(self, topic: str, item: str, timeout: float = 5.0) -> bool:
        """Block until an event on ``topic`` about ``item`` has arrived; False after ``timeout``."""
        with self._cond:
            return self._cond.wait_for(lambda: item in self._items(topic), timeout)

    def items(self, topic: str) -> list[str]:
        """The items of the events received on ``topic``, in arrival order."""
        with self._cond:
            return self._items(topic)

    def _items(self, topic: str) -> list[str]:
        return [p["item"] for t, p in self.events if t == topic]


def subscriber(name: str, shop_endpoint: str, topic: str, inbox: Inbox) -> zcall.Peer:
    """A started peer that knows the shop and runs ``inbox`` for every event on ``topic`` from it.

    Returns once the shop has the subscription: ``on()`` returns a handle that settles when the shop
    answered it (an event published from then on is delivered)."""
    peer = zcall.Peer(name, peers={"shop": shop_endpoint}, timeout=5.0).start()
    if not peer.on(topic, inbox, peer="shop").wait(5):
        raise TimeoutError(f"the shop never acknowledged {name}'s subscription to {topic!r}")
    return peer


def demo(shop_endpoint: str) -> int:
    """Subscribe, publish, drop a subscriber, bring it back; check who got what. Returns an exit code."""
    warehouse_inbox, accounting_inbox = Inbox("warehouse"), Inbox("accounting")
    with zcall.Peer("front-desk", peers={"shop": shop_endpoint}) as desk:  # makes the shop publish
        print("1. the shop sells 'early bird' before anyone has subscribed:")
        desk.call("shop", "sell", "early bird", 5)
        print("   (published to nobody: nothing is kept for subscribers that come later)")

        print("\n2. warehouse subscribes to the prefix 'orders.*', accounting to exactly 'billing.charge':")
        warehouse = subscriber("warehouse", shop_endpoint, "orders.*", warehouse_inbox)
        accounting = subscriber("accounting", shop_endpoint, "billing.charge", accounting_inbox)
        desk.call("shop", "sell", "teapot", 30)
        desk.call("shop", "cancel", "teapot")
        ok = warehouse_inbox.wait_for("orders.cancelled", "teapot")
        ok &= accounting_inbox.wait_for("billing.charge", "teapot")
        print("   (stock.low matched nobody's topic: no one got it)")

        print("\n3. the warehouse goes down; the shop sells 'kettle' meanwhile:")
        warehouse.stop()
        desk.call("shop", "sell", "kettle", 20)
        ok &= accounting_inbox.wait_for("billing.charge", "kettle")

        print("\n4. a new warehouse peer subscribes again; the shop sells 'mug':")
        warehouse = subscriber("warehouse", shop_endpoint, "orders.*", warehouse_inbox)
        desk.call("shop", "sell", "mug", 8)
        ok &= warehouse_inbox.wait_for("orders.new", "mug")
        ok &= accounting_inbox.wait_for("billing.charge", "mug")
        print("   (no 'kettle' for the warehouse: it was down when that was published, and nothing replays)")
        warehouse.stop()
        accounting.stop()

    got_orders = warehouse_inbox.items("orders.new")
    got_bills = accounting_inbox.items("billing.charge")
    print("\ntally (at most once):")
    print(f"   published orders.new for : {['early bird', 'teapot', 'kettle', 'mug']}")
    print(f"   warehouse received       : {got_orders}  (missed 'early bird' and 'kettle': not subscribed)")
    print(f"   accounting received      : {got_bills}  (missed 'early bird': not subscribed yet)")
    print(f"   warehouse cancellations  : {warehouse_inbox.items('orders.cancelled')}  (prefix match)")
    stock_low = [i.name for i in (warehouse_inbox, accounting_inbox) if i.items("stock.low")]
    print(f"   stock.low received by    : {stock_low}  (no subscriber's topic matches)")
    ok &= got_orders == ["teapot", "mug"] and got_bills == ["teapot", "kettle", "mug"]
    ok &= warehouse_inbox.items("orders.cancelled") == ["teapot"]
    ok &= not stock_low
    if ok:
        print("events: each subscriber got each event it was subscribed and connected for, once")
    else:
        print("events: UNEXPECTED deliveries (see the tally)")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shop", metavar="ENDPOINT", help="only run the shop (publisher) peer, on ENDPOINT")
    args = parser.parse_args()
    if args.shop:
        serve_shop(args.shop)
        return 0
    try:  # start the shop in a child process; returns once it has printed READY <endpoint>
        shop_process = spawn([__file__, "--shop", "tcp://127.0.0.1:*"])
    except SpawnError as exc:
        raise SystemExit(f"the shop failed to start: {exc}") from None
    try:
        print(f"shop: pid {shop_process.pid}, publishing from {shop_process.endpoint}\n")
        return demo(shop_process.endpoint)
    finally:
        shop_process.stop()  # SIGTERM, then SIGKILL; reaped by pid
        sys.stderr.write(shop_process.stderr)  # what it logged (its stderr was captured, not our terminal)


if __name__ == "__main__":
    sys.exit(main())
