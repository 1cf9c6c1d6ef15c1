"""Stream flow control, I/O-free: how much each direction of a stream may send, and when to grant more.

A stream has one or two directions of items (server to caller; caller to server when the caller sends
input), each with a sender and a receiver. The receiver grants credit (the STREAM's initial credit,
then CREDIT messages) and the sender sends an ITEM only while it holds credit, so a slow receiver slows
the sender and neither end ever holds more than the window (docs/protocol.md §7, "Streams"). Every face
and both servers use these classes for every direction; they differ only in how bytes move:

- ``Credit``, the sender's side: what it may still send. ``grant`` takes a CREDIT (a bad one is a
  ``StreamViolation``), ``take`` spends; in pull mode each pull *sets* the credit (``pulled``).
- ``Window``, the receiver's side: what it granted, holds and has freed. ``arrived`` checks an item
  against the credit (one beyond it is a ``StreamViolation``: the peer broke the rules, and nothing of
  it is kept); ``taken`` says when to grant more (push mode: once half the window is free, so credit
  travels in few messages); ``next_pull`` gives pull mode's rhythm (one request, one answer: a REQ
  socket pulls the next answer once it holds nothing).
- ``PullAnswer``, the sender's answer to one pull: when it should leave.
- ``Tally``, the items and bytes one stream moved, added to the method's metrics in slices.
"""

from __future__ import annotations

import time
from typing import Any, Final

__all__ = [
    "DEFAULT_WINDOW",
    "MAX_CREDIT",
    "PULL_LINGER",
    "Credit",
    "PullAnswer",
    "StreamViolation",
    "Tally",
    "Window",
    "check_window",
]

DEFAULT_WINDOW: Final = 16
"""Items a receiver grants at once unless told otherwise (``options(window=...)``, ``stream_window=``)."""

MAX_CREDIT: Final = 2**32 - 1
"""The most credit one grant carries, and the most a sender ever holds (protocol.wire.MAX_CREDIT)."""

PULL_LINGER: Final = 0.02
"""Seconds a pull answer waits for more items once it holds one (a fast producer fills its credit in
much less; a slow one answers with what it has, so its caller sees each item when it comes)."""

_monotonic = time.monotonic


class StreamViolation(Exception):
    """The other end broke the stream rules (an item beyond its credit, a bad CREDIT, an item after END):
    the stream ends with PROTOCOL_ERROR, and the offending message is not kept."""


def check_window(window: Any) -> int:
    """``window`` as a credit size, or ``ValueError`` saying what a window is."""
    if type(window) is not int or not 1 <= window <= MAX_CREDIT:
        raise ValueError(f"window must be an int from 1 to {MAX_CREDIT} (items in flight), got {window!r}")
    return window


class Credit:
    """The sending side of one direction: items it may still send (granted, not yet sent)."""

    __slots__ = ("available", "sent")

    def __init__(self, initial: int = 0) -> None:
        self.available = initial
        self.sent = 0

    def grant(self, n: Any) -> None:
        """A CREDIT of ``n`` came (push mode): that many more may go."""
        if type(n) is not int or not 1 <= n <= MAX_CREDIT:
            raise StreamViolation(f"a credit must be an integer from 1 to {MAX_CREDIT}, got {n!r}")
        self.available = min(self.available + n, MAX_CREDIT)

    def pulled(self, n: int) -> None:
        """A pull of up to ``n`` items came (pull mode): its answer holds at most n, whatever was left."""
        self.available = n

    def take(self, n: int = 1) -> int:
        """Spend up to ``n`` credits; returns how many may be sent now (0: wait for a grant)."""
        k = n if n <= self.available else self.available
        self.available -= k
        self.sent += k
        return k

    def __repr__(self) -> str:
        return f"<Credit available={self.available} sent={self.sent}>"


class Window:
    """The receiving side of one direction: credit granted and not used, items held, items freed.

    Push mode keeps ``outstanding + held + freed == size``: the receiver never holds more than it
    granted. Pull mode grants ``size`` per pull and pulls again when it holds nothing and the last pull
    was answered."""

    __slots__ = ("size", "pull", "outstanding", "held", "freed", "received", "_answered")

    def __init__(self, size: int, *, pull: bool = False) -> None:
        self.size = check_window(size)
        self.pull = pull
        self.outstanding = size
        """Credit granted and not used yet (the initial grant travels in the STREAM or first CREDIT)."""
        self.held = 0
        """Items received and not yet taken by the consumer."""
        self.freed = 0
        """Items taken since the last grant (push mode)."""
        self.received = 0
        self._answered = 0  # items received in the current pull (pull mode)

    def arrived(self) -> None:
        """An item came: account for it, or raise ``StreamViolation`` if it was beyond the credit."""
        if self.outstanding <= 0:
            raise StreamViolation(
                f"an item beyond the credit granted (window {self.size}, {self.received} received)"
            )
        self.outstanding -= 1
        self.held += 1
        self.received += 1
        self._answered += 1

    def taken(self) -> int:
        """The consumer took one item; returns the credit to grant now (0: not yet; always 0 in pull
        mode, which asks ``next_pull`` instead)."""
        self.held -= 1
        if self.pull:
            return 0
        freed = self.freed + 1
        if freed * 2 >= self.size:
            self.freed = 0
            self.outstanding += freed
            return freed
        self.freed = freed
        return 0

    def next_pull(self) -> int:
        """Pull mode: the size of the next pull when it is due (the last was answered and every item of
        it taken), else 0."""
        if self.held or not self._answered:
            return 0
        self._answered = 0
        self.outstanding = self.size
        return self.size

    def __repr__(self) -> str:
        mode = "pull" if self.pull else "push"
        return f"<Window {mode} size={self.size} outstanding={self.outstanding} held={self.held}>"


class PullAnswer:
    """The items a sender gathers to answer one pull, and when the answer should leave: its credit is
    used, its bytes reach ``max_bytes``, or it holds an item and ``PULL_LINGER`` has passed."""

    __slots__ = ("frames", "nbytes", "credit", "max_bytes", "started")

    def __init__(self, credit: int, max_bytes: int) -> None:
        self.frames: list[bytes] = []
        self.nbytes = 0
        self.credit = credit
        self.max_bytes = max_bytes
        self.started = _monotonic()

    def add(self, frame: bytes) -> None:
        self.frames.append(frame)
        self.nbytes += len(frame)

    def full(self) -> bool:
        """No room for another item: its credit is used, or its size is at the limit."""
        return len(self.frames) >= self.credit or self.nbytes >= self.max_bytes

    def lingered(self, now: float | None = None) -> bool:
        """It holds an item and has waited long enough for more."""
        return bool(self.frames) and (_monotonic() if now is None else now) - self.started >= PULL_LINGER


class Tally:
    """Items and bytes one stream moved each way, handed to its method's metrics every ``EVERY`` items
    and at the end (``flush``), so a long stream shows in ``zcall.stats`` while it runs. Kept by the one
    thread that moves the stream's items (the loop, or a sync face's thread): no lock per item."""

    __slots__ = ("items_out", "items_in", "bytes_out", "bytes_in", "_sink", "_unflushed", "_done")

    EVERY: Final = 64

    def __init__(self, sink: Any = None) -> None:
        self.items_out = self.items_in = self.bytes_out = self.bytes_in = 0
        self._sink = sink  # a service.metrics.StreamStats, or None
        self._unflushed = 0
        self._done = (0, 0, 0, 0)  # what the sink has already been given

    def sent(self, nbytes: int) -> None:
        self.items_out += 1
        self.bytes_out += nbytes
        self._unflushed += 1
        if self._unflushed >= Tally.EVERY:
            self.flush()

    def received(self, nbytes: int) -> None:
        self.items_in += 1
        self.bytes_in += nbytes
        self._unflushed += 1
        if self._unflushed >= Tally.EVERY:
            self.flush()

    def close(self) -> None:
        """The stream ended: a last flush, and no more reports (the totals stay readable)."""
        self.flush()
        self._sink = None

    def flush(self) -> None:
        """Hand what moved since the last flush to the sink."""
        self._unflushed = 0
        sink = self._sink
        if sink is None:
            return
        now = (self.items_out, self.items_in, self.bytes_out, self.bytes_in)
        before, self._done = self._done, now
        if now != before:
            sink.add(now[0] - before[0], now[1] - before[1], now[2] - before[2], now[3] - before[3])
