"""Health pushed as events: the watch form of ``zcall.health`` (gRPC health v1's ``Watch``).

A ROUTER server publishes ``{"status": "SERVING" | "NOT_SERVING", "service": name}`` on the topic
``zcall.health`` whenever what ``zcall.health`` answers changes: when ``service.serving`` is set to a
new value, and (NOT_SERVING) the moment a graceful stop begins. Like every event it is at most once and
only reaches clients whose subscription has arrived, so a watcher subscribes first, then calls
``zcall.health`` once for the current status, then follows the events (``zcall.tools.health`` does).
A REP-style ``SyncServer`` cannot push: a watcher of one polls ``zcall.health``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..service.registry import Service

__all__ = ["HEALTH_TOPIC", "HealthEvents", "health_payload"]

HEALTH_TOPIC = "zcall.health"
"""The event topic a ROUTER server publishes its health changes on."""


def health_payload(service: Service, serving: bool) -> dict[str, Any]:
    """What a ``zcall.health`` event carries (the same fields as the call's answer)."""
    return {"status": "SERVING" if serving else "NOT_SERVING", "service": service.name}


class HealthEvents:
    """One server's health publisher: follows ``service.serving``, announces the stop; the one place the
    server's health events are decided."""

    def __init__(self, service: Service, publish: Callable[[str, Any], Any]) -> None:
        self._service = service
        self._publish = publish
        self._stopping = False
        service._on_serving_changed.append(self._changed)

    def _changed(self, serving: bool) -> None:
        if not self._stopping:
            self._publish(HEALTH_TOPIC, health_payload(self._service, serving))

    def stopping(self) -> None:
        """A graceful stop begins: NOT_SERVING from now on (announced if it was SERVING)."""
        if self._stopping:
            return
        was_serving = self._service.serving
        self._stopping = True
        self.close()
        if was_serving:
            self._publish(HEALTH_TOPIC, health_payload(self._service, False))

    def close(self) -> None:
        """Stop following the service (the server is gone)."""
        try:
            self._service._on_serving_changed.remove(self._changed)
        except ValueError:
            pass
