"""The one READY line: how a zcall program tells the process that started it where it listens.

The format::

    READY <endpoint>[ name=<name>]

``READY tcp://127.0.0.1:40123`` is the whole line for an unnamed server; ``zcall serve`` (a peer has a
name) prints ``READY tcp://127.0.0.1:40123 name=pricing``. The endpoint comes first because that is what
a parent needs, and what ``zcall.testing.spawn`` has always handed back as ``ProcessHandle.endpoint``
(the rest of the line): a user program that prints ``READY tcp://...`` keeps working unchanged. What
follows the endpoint is ``key=value`` fields (today only ``name``); a parser ignores fields it does not
know, so one can be added later without breaking older parents.

``format_ready`` writes the line, ``announce`` prints it (whole, flushed: the parent reads it the moment
it is written), ``parse_ready`` reads it. Every program zcall ships that announces readiness goes through
``announce``; the launcher, ``zcall.testing.spawn`` and the tests go through ``parse_ready``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import IO

__all__ = ["READY", "ReadyLine", "announce", "check_name", "format_ready", "parse_ready"]

READY = "READY"
"""The first word of the line."""

_FIELD = re.compile(r"\s+([A-Za-z_][A-Za-z0-9_]*)=(\S*)$")  # a trailing " key=value"


@dataclass(frozen=True)
class ReadyLine:
    """A parsed ready line: the endpoint, the optional name, and every ``key=value`` field."""

    endpoint: str
    name: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


def check_name(name: str) -> str:
    """Return ``name`` if it can stand in a ready line (non-empty, no white space), else ``ValueError``."""
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"a name must be non-empty and have no white space, got {name!r}")
    return name


def format_ready(endpoint: str, name: str | None = None) -> str:
    """``READY <endpoint>`` or ``READY <endpoint> name=<name>`` (no newline)."""
    if not endpoint or endpoint != endpoint.strip():
        raise ValueError(f"not an endpoint for a READY line: {endpoint!r}")
    line = f"{READY} {endpoint}"
    if name is not None:
        line += f" name={check_name(name)}"
    return line


def announce(endpoint: str, name: str | None = None, *, file: IO[str] | None = None) -> None:
    """Print the ready line on stdout (or ``file``) in one write, and flush.

    Fits ``serve_forever(on_ready=announce)`` as it is. One write, not ``print``: print writes the text
    and the newline separately, and a handler thread printing at the same moment could land between them.
    """
    out = sys.stdout if file is None else file
    out.write(format_ready(endpoint, name) + "\n")
    out.flush()


def parse_ready(line: str, prefix: str = READY) -> ReadyLine | None:
    """The ``ReadyLine`` in ``line`` if it starts with ``prefix``, else ``None``.

    The endpoint is the rest of the line after ``prefix`` without the trailing ``key=value`` fields (a
    field never comes first, so ``READY x=1`` has the endpoint ``x=1``). Lines from other programs parse
    too: ``READY 4242`` has the endpoint ``4242``, ``READY`` alone an empty one. With another ``prefix``
    (``"LAUNCHED"``, ``"-- "``) the same rule applies to what follows it.
    """
    if not line.startswith(prefix):
        return None
    rest = line[len(prefix) :].strip()
    found: list[tuple[str, str]] = []
    while m := _FIELD.search(rest):
        found.append((m[1], m[2]))
        rest = rest[: m.start()]
    fields = dict(reversed(found))
    return ReadyLine(rest, fields.get("name"), fields)
