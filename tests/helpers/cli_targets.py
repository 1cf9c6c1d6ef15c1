"""Targets for the ``zcall serve`` tests: an application module's own code beside what it imported.

``zcall serve`` must serve ``hello``, ``Api`` and ``quiet``, and refuse ``system``, ``subprocess`` and
``loads``: they are the standard library's, whatever module they are reached through.
"""

from __future__ import annotations

import json
import subprocess
from os import system

import zcall

__all__ = ["Api", "hello", "loads", "quiet", "subprocess", "system"]

loads = json.loads


def hello() -> str:
    """The application's own function."""
    return "hello"


class Api(dict):  # type: ignore[type-arg]
    """The application's own class, built on a builtin one: only ``hello`` is its own."""

    def hello(self) -> str:
        return "hello from Api"


quiet = zcall.Service("quiet", introspection=False)


@quiet.method
def answer() -> int:
    return 42
