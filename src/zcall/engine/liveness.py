"""Liveness: one heartbeat setting for every socket, and the alive / suspect / dead view of a remote.

Heartbeats are ZMTP's own (``HEARTBEAT_IVL``/``TIMEOUT``/``TTL``): libzmq's I/O thread sends and checks
them, so no handler, however slow, and not even a held GIL, can make a healthy peer look dead. A
connection silent for ``timeout`` is closed by libzmq; the client sees it drop, marks the remote
**dead** and fails the calls pending on it at once. On top, the client's loop pings a connection it has
not heard from for ``interval`` (one ping outstanding at most, so nothing piles up for a peer that comes
back) and marks it **suspect** after two intervals of silence; any message makes it **alive** again.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import zmq

__all__ = ["DEFAULT_HEARTBEAT", "Heartbeat", "Liveness", "State"]


class State(StrEnum):
    """What a client believes of one remote endpoint."""

    ALIVE = "alive"  # connected and heard from recently
    SUSPECT = "suspect"  # connected, but silent for more than two heartbeat intervals
    DEAD = "dead"  # not connected (never was, or the connection dropped / timed out)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Heartbeat period and the silence after which a connection is declared dead (seconds)."""

    interval: float = 1.0
    timeout: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.interval < self.timeout:
            raise ValueError(f"need 0 < interval < timeout, got {self.interval} and {self.timeout}")

    def apply(self, sock: zmq.Socket) -> None:
        """Set ZMTP heartbeats on ``sock`` (before connect/bind); the remote learns our TTL from them."""
        ivl = max(1, int(self.interval * 1000))
        timeout = max(ivl + 1, int(self.timeout * 1000))
        sock.setsockopt(zmq.HEARTBEAT_IVL, ivl)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout)
        sock.setsockopt(zmq.HEARTBEAT_TTL, max(100, timeout))


DEFAULT_HEARTBEAT = Heartbeat()
"""1 s heartbeats, dead after 3 s of silence."""


class Liveness:
    """What one client believes of one connection, from what it hears (pure: the caller supplies ``now``).

    Any message makes a connected remote ALIVE; silence for two heartbeat intervals makes it SUSPECT; a
    dropped connection makes it DEAD. ``tick`` also says when to ping: a connection quiet for one
    interval gets one ping, and no second one until something comes back (no backlog for a frozen peer).
    """

    __slots__ = ("state", "last_heard", "ping_out", "connected")

    def __init__(self) -> None:
        self.state = State.DEAD
        self.last_heard = 0.0
        self.ping_out = False
        self.connected = False

    def _to(self, state: State) -> State | None:
        if self.state is state:
            return None
        self.state = state
        return state

    def up(self, now: float) -> State | None:
        """The connection (re)opened; returns the new state if it changed."""
        self.connected = True
        self.last_heard = now
        self.ping_out = False
        return self._to(State.ALIVE)

    def down(self) -> State | None:
        """The connection dropped."""
        self.connected = False
        self.ping_out = False
        return self._to(State.DEAD)

    def heard(self, now: float) -> State | None:
        """A message arrived on the connection."""
        self.last_heard = now
        return self._to(State.ALIVE) if self.connected else None

    def pong(self) -> None:
        self.ping_out = False

    def tick(self, now: float, interval: float) -> tuple[State | None, bool]:
        """Once per heartbeat interval: (new state if it changed, whether to send a ping now)."""
        if not self.connected:
            return None, False
        quiet = now - self.last_heard
        changed = self._to(State.SUSPECT) if quiet > 2 * interval and self.state is State.ALIVE else None
        ping = quiet > interval and not self.ping_out
        if ping:
            self.ping_out = True
        return changed, ping
