"""Event topics: how a subscription pattern matches a topic, and the reserved subscribe method."""

from __future__ import annotations

from typing import Final

__all__ = ["SUBSCRIBE_METHOD", "topic_matches"]

SUBSCRIBE_METHOD: Final = "zcall.subscribe"
"""The NOTIFY a client sends to tell a ROUTER server which event topics it wants (protocol plumbing)."""


def topic_matches(pattern: str, topic: str) -> bool:
    """``orders.*`` matches ``orders.new``; ``*`` matches everything; anything else matches exactly."""
    if pattern.endswith("*"):
        return topic.startswith(pattern[:-1])
    return pattern == topic
