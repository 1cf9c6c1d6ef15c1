"""Readiness from outside a server: wait until it answers SERVING (``zcall ping --wait``, the launcher,
container probes, tests), and follow its health as it changes.

``wait_serving`` makes one DEALER client and asks ``zcall.health``. A call waits for its connection
within its budget, so nothing is polled while the server is not up yet; while it answers NOT_SERVING,
the client follows the ``zcall.health`` events a ROUTER server pushes and asks again at most every
``poll`` seconds (a REP-style server cannot push). A server without ``zcall.health`` (an older zcall,
or another implementation) counts as SERVING once it answers ``zcall.ping``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import CallTimeout, ConnectionLost, MethodNotFound, ServerBusy, ZcallError
from ..server.health import HEALTH_TOPIC

if TYPE_CHECKING:
    from ..client.asynchronous import AsyncClient
    from ..security import ClientSecurity

__all__ = ["HEALTH_TOPIC", "NotServing", "health_of", "wait_serving", "watch_health"]

SERVING = "SERVING"


class NotServing(ZcallError):
    """The server answered, but not SERVING, until the wait ran out (``.status``: its last answer)."""

    def __init__(self, message: str, status: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status


def health_of(
    client: AsyncClient, service: str | None = None, timeout: float | None = None
) -> dict[str, Any]:
    """One ``zcall.health`` answer (``{"status", "service"}``); ``zcall.ping`` standing in for servers
    that have no health method."""
    view = client.options(timeout=timeout) if timeout is not None else client
    try:
        args = () if service is None else (service,)
        answer = view.call_async("zcall.health", *args).result()
    except MethodNotFound:
        pong = view.call_async("zcall.ping").result()
        return {"status": SERVING, "service": pong.get("service") if isinstance(pong, dict) else None}
    return answer if isinstance(answer, dict) else {"status": str(answer)}


def wait_serving(
    endpoints: str | Sequence[str],
    timeout: float,
    *,
    service: str | None = None,
    security: ClientSecurity | None = None,
    poll: float = 0.25,
) -> dict[str, Any]:
    """Block until the server at ``endpoints`` answers SERVING (for ``service``, or the whole server);
    returns that answer. Raises ``CallTimeout`` when nothing answered within ``timeout`` seconds, and
    ``NotServing`` when it answered, but never SERVING."""
    from ..client.asynchronous import AsyncClient

    deadline = time.monotonic() + timeout
    changed = threading.Event()
    last: dict[str, Any] | None = None
    client = AsyncClient(endpoints, timeout=timeout, security=security)
    try:
        client.on(HEALTH_TOPIC, lambda topic, payload: changed.set())
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            changed.clear()
            try:
                last = health_of(client, service, timeout=left)
            except (ConnectionLost, ServerBusy):  # restarting or stopping: ask again
                last = last or {"status": "UNAVAILABLE"}
            except CallTimeout:
                if last is None:
                    raise
                break
            if last.get("status") == SERVING:
                return last
            changed.wait(min(poll, max(0.0, deadline - time.monotonic())))  # an event, or the next poll
    finally:
        client.close()
    assert last is not None
    raise NotServing(
        f"{','.join([endpoints] if isinstance(endpoints, str) else endpoints)} answered "
        f"{last.get('status')} for {timeout:g}s, never SERVING",
        last,
    )


def watch_health(
    client: AsyncClient, callback: Callable[[dict[str, Any]], Any], service: str | None = None
) -> Callable[[], None]:
    """Call ``callback(status)`` with the current health, then on every change the server pushes (ROUTER
    servers). Returns a function that stops watching. The subscription is made before the first ask,
    so no change between the two is missed."""

    def on_event(topic: str, payload: Any) -> None:
        if isinstance(payload, dict) and (service in (None, "") or payload.get("service") == service):
            callback(payload)

    client.on(HEALTH_TOPIC, on_event)
    callback(health_of(client, service))
    return lambda: client.off(HEALTH_TOPIC, on_event)
