"""One DEALER connection to one endpoint: its socket, reader, connection monitor and liveness.

The monitor tells when the connection is up (handshake done), down (disconnected), or refused by the
security handshake; ``diagnose_handshake`` turns libzmq's events into a reason a user can act on. The
channel owns nothing about calls: it hands frames and connection changes to its client.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from ..protocol.wire import BATCH_CAPABILITY, DELIMITER, MAX_MESSAGE_PROPERTY, batch_frame, read_handshake
from .liveness import Heartbeat, Liveness
from .reader import Reader
from .sockets import apply_size_limit, close_quietly, fast_send, monitor_socket, new_socket

if TYPE_CHECKING:
    from ..security import ClientSecurity

__all__ = ["Channel", "ChannelEvents", "diagnose_handshake"]

log = logging.getLogger("zcall.client")

_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_SNDMORE = _NOBLOCK | int(zmq.SNDMORE)
MONITORED = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_PROTOCOL_ERRORS = {getattr(zmq, n): n for n in dir(zmq) if n.startswith("PROTOCOL_ERROR_")}


def diagnose_handshake(event: int, value: int, curve: bool, closed_in_handshake: int) -> str | None:
    """Why a security handshake failed for good, in words; None when it may still succeed (retry).

    libzmq does not retry after an AUTH or PROTOCOL failure, so calls waiting for that endpoint would
    only time out. NO_DETAIL (the server hung up mid-handshake, as it does on a wrong server key) is
    retried by libzmq and may be a server going down, so it counts after two in a row, with CURVE on.
    """
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            f"the server refused this client (ZAP status {value}): its public key is not in the "
            "server's allow-list, or its address is not allowed"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return (
                "the server does not use CURVE: drop security= or secure the server"
                if curve
                else "the server requires CURVE: pass security=ClientSecurity(secret, server key)"
            )
        return f"protocol error {_PROTOCOL_ERRORS.get(value, value)}"
    if not curve or closed_in_handshake < 2:
        return None
    return (
        "the server closed the connection during the CURVE handshake: most likely the server "
        "public key given to security= is not this server's"
    )


class ChannelEvents:
    """What a channel tells its client (the async client implements these)."""

    def _on_frames(self, ch: Channel, frames: list[bytes]) -> None: ...
    def _on_up(self, ch: Channel) -> None: ...
    def _on_down(self, ch: Channel) -> None: ...
    def _on_refused(self, ch: Channel) -> None: ...
    def _on_writable(self) -> None: ...


class Channel:
    """A DEALER connected to one endpoint, with its reader, its connection monitor and its liveness."""

    __slots__ = (
        "endpoint",
        "sock",
        "reader",
        "monitor",
        "monitor_reader",
        "liveness",
        "last_seq",
        "refused",
        "closed_in_handshake",
        "handshake_failures",
        "batch_ok",
        "batch_target",
        "server_limit",
        "_send",
        "_loop",
        "_events",
        "_curve",
        "_outq",
        "_outq_bytes",
        "_max_batch_bytes",
        "_own_max_batch_bytes",
        "_stalled",
    )

    def __init__(
        self,
        events: ChannelEvents,
        loop: asyncio.AbstractEventLoop,
        ctx: zmq.Context,
        endpoint: str,
        *,
        max_message_size: int,
        heartbeat: Heartbeat | None,
        security: ClientSecurity | None,
    ) -> None:
        self.endpoint = endpoint
        self._loop = loop
        self._events = events
        self._curve = security is not None
        sock = new_socket(ctx, zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 0)  # 1 would drop replies still unread when the server hangs up
        apply_size_limit(sock, max_message_size)
        if heartbeat is not None:
            heartbeat.apply(sock)
        if security is not None:
            security.apply(sock)
        try:
            self.monitor = monitor_socket(ctx, sock, MONITORED)
        except BaseException:
            sock.close(linger=0)
            raise
        try:
            sock.connect(endpoint)
        except BaseException:  # nothing of a channel that never opened is left behind
            close_quietly(self.monitor)
            sock.close(linger=0)
            raise
        self.sock = sock
        self._send = fast_send(sock)
        self.liveness = Liveness()
        self.last_seq = 0
        """Sequence number of the last event from this connection (0: none since it connected)."""
        self.refused: str | None = None
        """Why the last handshake failed for good (no service here), or None."""
        self.closed_in_handshake = 0  # CURVE handshakes the server cut short in a row (wrong server key?)
        self.handshake_failures = 0
        self.batch_ok: bool | None = None
        """Whether the server takes BATCH messages (its handshake metadata), once a first message said."""
        self.server_limit: int | None = None
        """The largest body the server reads (its handshake metadata), once a first message said."""
        self.batch_target = 8
        """Send a batch as soon as it holds this many bodies (the client keeps it near half the calls in
        flight: two batches on the way at once keep both ends busy, one would make them take turns)."""
        self._outq: list[bytes] = []  # bodies to send at the end of this loop pass, as one BATCH
        self._outq_bytes = 0
        self._own_max_batch_bytes = self._max_batch_bytes = max_message_size // 2
        self._stalled: bytes | None = None  # a batch that met a full queue: sent first when writable
        # Frames (not bytes) until the first message tells what the server speaks (BATCH or not)
        self.reader = Reader(
            loop, sock, functools.partial(events._on_frames, self), self._writable, keep_frames=True
        )
        self.monitor_reader = Reader(loop, self.monitor, self._on_monitor)
        self.reader.start()
        self.monitor_reader.start()

    @property
    def connected(self) -> bool:
        return self.liveness.connected

    def learn(self, frame: Any) -> None:
        """From the first message of a connection: whether the server takes BATCH, and how large a
        message it reads (its handshake metadata), so a batch never exceeds its limit."""
        self.batch_ok, limit = read_handshake(
            _property(frame, BATCH_CAPABILITY[0]), _property(frame, MAX_MESSAGE_PROPERTY)
        )
        self.server_limit = limit
        self._max_batch_bytes = (
            min(self._own_max_batch_bytes, limit // 2) if limit else self._own_max_batch_bytes
        )
        self.reader.keep_frames(False)

    def reset(self) -> None:
        """A new connection (after a reconnect, maybe to another server): forget what the last one said."""
        self.batch_ok = None
        self._outq.clear()
        self._outq_bytes = 0
        self._stalled = None
        self.reader.keep_frames(True)

    def send(self, body: bytes) -> bool:
        """Send one body (after the delimiter) without blocking; False when the queue is full.

        To a server that takes BATCH, the body is queued instead and every body queued in this loop
        pass leaves as one message at its end (``flush``): many calls, one zmq message."""
        if self.batch_ok:
            if self._stalled is not None:
                return False  # the queue is full: the caller waits for writable, in order
            n = len(body)
            if self._outq and self._outq_bytes + n > self._max_batch_bytes:
                self.flush()  # this body would make the batch too large for the server: send it first
                if self._stalled is not None:
                    return False
            if n > self._max_batch_bytes:
                self._push(body)  # too large to share a message: alone, now
                return True
            q = self._outq
            q.append(body)
            self._outq_bytes += n
            if len(q) == 1:
                self._loop.call_soon(self.flush)
            elif len(q) >= self.batch_target:
                self.flush()
            return True
        send = self._send
        try:
            send(DELIMITER, _NOBLOCK_SNDMORE)
            send(body, _NOBLOCK)
        except zmq.Again:
            self.reader.want_writable()
            return False
        self.reader.check()
        return True

    def send_alone(self, body: bytes) -> bool:
        """Send ``body`` now as a message of its own (never joined into a BATCH: a large stream item
        would only be copied again), after anything queued before it; False when the queue is full."""
        if self._stalled is not None:
            return False
        self.flush()
        if self._stalled is not None:
            return False
        try:
            self.sock.send_multipart([DELIMITER, body], _NOBLOCK, copy=False)  # zero-copy: it is large
        except zmq.Again:
            self._stalled = body  # it counts as sent: it goes first once writable
            self.reader.want_writable()
            return True
        except zmq.ZMQError:
            return True  # closed: the stream is failed by the disconnect or the close
        self.reader.check()
        return True

    def flush(self) -> None:
        """Send what ``send`` queued in this pass: one body alone, several as one BATCH."""
        q = self._outq
        if not q or self._stalled is not None:
            return  # a stalled batch goes first; these follow once the socket is writable
        body = q[0] if len(q) == 1 else batch_frame(q)
        self._outq = []
        self._outq_bytes = 0
        self._push(body)

    def _push(self, body: bytes) -> None:
        send = self._send
        try:
            send(DELIMITER, _NOBLOCK_SNDMORE)
            send(body, _NOBLOCK)
        except zmq.Again:
            self._stalled = body  # the calls in it count as sent: it goes first once writable
            self.reader.want_writable()
            return
        except zmq.ZMQError:
            return  # closed: the calls in it are failed by the disconnect or the close
        self.reader.check()

    def _writable(self) -> None:
        stalled, self._stalled = self._stalled, None
        if stalled is not None:
            self._push(stalled)
            if self._stalled is not None:
                return
            self.flush()
            if self._stalled is not None:
                return
        self._events._on_writable()

    def send_quietly(self, body: bytes) -> None:
        """Best-effort send (a cancel, a ping, a subscription), after what is queued: dropped if it
        cannot go now."""
        self.flush()  # a cancel must not overtake the call it cancels
        if self._stalled is not None:
            return
        send = self._send
        try:
            send(DELIMITER, _NOBLOCK_SNDMORE)
            send(body, _NOBLOCK)
            self.reader.check()
        except zmq.ZMQError:
            pass

    def drain(self) -> list[list[bytes]]:
        """Whatever is still queued on the socket (read before a disconnect is acted on)."""
        out = []
        while True:
            try:
                out.append(self.sock.recv_multipart(_NOBLOCK))
            except zmq.ZMQError:
                return out

    def _on_monitor(self, frames: list[bytes]) -> None:
        try:
            parsed = parse_monitor_message(frames)
        except Exception:  # a truncated monitor message: nothing to learn from it
            return
        event = parsed["event"]
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.refused, self.closed_in_handshake = None, 0
            self.last_seq = 0
            self._events._on_up(self)
        elif event == zmq.EVENT_DISCONNECTED:
            self._events._on_down(self)
        else:
            self.handshake_failures += 1
            if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                self.closed_in_handshake += 1
            reason = diagnose_handshake(event, int(parsed["value"]), self._curve, self.closed_in_handshake)
            if reason is None:
                return
            if self.refused is None:
                log.info("%s: security handshake failed: %s", self.endpoint, reason)
            self.refused = reason
            self._events._on_refused(self)

    def close(self) -> None:
        self.reader.stop()
        self.monitor_reader.stop()
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        close_quietly(self.monitor)
        close_quietly(self.sock)


def _property(frame: Any, name: str) -> str | None:
    """A ZMTP handshake property of the connection ``frame`` came on, or None if it has none."""
    try:
        value = frame.get(name)
    except (zmq.ZMQError, AttributeError):
        return None
    return value if isinstance(value, str) else None
