"""A server stream pulled over REQ: ``for item in sync_client.stream("tail", path)``.

REQ is strictly one request, one reply, so the sync face pulls: the STREAM asks for up to ``window``
items, the server answers with up to that many in one body (a BATCH of ITEMs, with its REPLY or ERROR
last once the handler is done), and the next pull (a CREDIT) goes out once every item of that answer
was taken. The server keeps the handler's generator between pulls; at most one answer is ever on its
way, so memory on both ends holds one window. What REQ cannot do: send the caller's items (there is no
request to carry them while the handler runs, and no answer to each), so an iterator argument is refused
here; use ``AsyncClient.stream`` or ``Peer.stream`` (DEALER) for client and bidirectional streams.

Each stream has its own REQ socket with ZMTP heartbeats and a connection monitor, so a server that dies
or freezes mid-stream ends the iteration with ``ConnectionLost`` within its liveness window, not at the
deadline. The deadline covers the whole stream; ``close()`` (or dropping the iterator after a
``break``) sends the server a CANCEL, so its generator stops and its ``finally:`` runs.
"""

from __future__ import annotations

import collections
import concurrent.futures
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import zmq

from ..engine.liveness import DEFAULT_HEARTBEAT
from ..engine.sockets import apply_size_limit, close_quietly, new_socket
from ..engine.streams import DEFAULT_WINDOW, StreamViolation, Tally, Window
from ..errors import ClientClosed, ConnectionLost, ProtocolError, StreamsUnsupported
from ..protocol.status import StatusCode
from ..protocol.wire import Batch, ErrorReply, Item, Reply, cancel_frame, credit_frame, decode, from_array
from .streams import split_input

if TYPE_CHECKING:
    from .core import CallOptions
    from .sync import SyncClient

__all__ = ["SyncStream"]

_monotonic = time.monotonic
_MONITORED = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
_CANCEL_LINGER_MS = 200  # how long a closed stream's socket may take to get its CANCEL out


class SyncStream(Iterator[Any]):
    """A server stream consumed by pulling over a REQ socket of its own (see the module docstring).
    Opens on the first ``next()``; ``result`` holds the handler's return value after the end."""

    def __init__(
        self, client: SyncClient, method: str, args: Any, kwargs: dict[str, Any], opts: CallOptions
    ) -> None:
        _, _, where, _ = split_input(args, kwargs)
        if where is not None:
            raise TypeError(
                "a SyncClient (REQ: one request, one reply) cannot send a stream's items: use "
                "AsyncClient.stream or Peer.stream (DEALER) for client and bidirectional streams"
            )
        self._client = client
        self._spec: tuple[str, Any, dict[str, Any], CallOptions] | None = (method, args, kwargs, opts)
        self._call: Any = None
        self._sock: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._connected = False
        self._awaiting = False
        self._items: collections.deque[Any] = collections.deque()
        self._window: Window | None = None
        self._over = False
        self._error: BaseException | None = None  # the end, raised once the items before it are taken
        self._result: Any = None
        self._tally: Tally | None = None
        self._stats: Any = None

    @property
    def result(self) -> Any:
        """The handler's return value, once the stream has ended."""
        return self._result

    def __iter__(self) -> SyncStream:
        return self

    # -- the iteration --------------------------------------------------------------------------------

    def __next__(self) -> Any:
        if self._call is None:
            self._open()
        window = self._window
        assert window is not None
        while True:
            if self._items:
                window.taken()
                return self._items.popleft()
            if self._over:
                error, self._error = self._error, None
                if error is not None:
                    raise error
                raise StopIteration
            n = window.next_pull()
            if n:
                self._send(credit_frame(self._call.id, n))
            self._receive()

    def close(self) -> None:
        """Stop the stream: the server is sent a CANCEL (its generator stops, its ``finally:`` runs)."""
        self._spec = None
        if self._call is None or self._over:
            self._release()
            return
        self._over = True
        sock = self._sock
        if sock is not None and not self._awaiting:
            try:
                sock.send(cancel_frame(self._call.id), zmq.NOBLOCK)  # the ACK is not waited for
            except zmq.ZMQError:
                pass
        self._end()
        self._client._failed(self._call, concurrent.futures.CancelledError())
        self._release(_CANCEL_LINGER_MS)

    def __enter__(self) -> SyncStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- the socket -----------------------------------------------------------------------------------

    def _open(self) -> None:
        spec, self._spec = self._spec, None
        if spec is None:
            raise RuntimeError("this stream is closed")
        client = self._client
        if client.closed:
            raise ClientClosed("SyncClient is closed")
        method, args, kwargs, opts = spec
        window = opts.window or DEFAULT_WINDOW
        call = client._begin(method, args, kwargs, opts, stream=(window, None, True, False))
        self._call = call
        self._window = Window(window, pull=True)
        self._stats = client.metrics.stats(method).streams()
        self._stats.started()
        self._tally = Tally(self._stats)
        # what interceptors see of it (the OpenTelemetry span counts its items); not the stream itself,
        # so the call does not keep it alive: a `for` loop left by `break` frees it, and that closes it
        call.stream = _Counted(self._tally)
        ep = client._failover.order(())[0]
        client._note_attempt(call, ep)
        sock = new_socket(client._ctx, zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        apply_size_limit(sock, client._codec.max_message_size)
        DEFAULT_HEARTBEAT.apply(sock)
        if client._security is not None:
            client._security.apply(sock)
        self._monitor = sock.get_monitor_socket(_MONITORED)
        sock.connect(ep)
        self._sock = sock
        self._send(call.frame)

    def _send(self, body: bytes) -> None:
        assert self._sock is not None
        self._sock.send(body)
        self._awaiting = True

    def _receive(self) -> None:
        """Wait for the answer to the last pull (within the stream's budget) and take it in."""
        call, sock, monitor = self._call, self._sock, self._monitor
        assert sock is not None and monitor is not None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        while True:
            left = call.deadline - _monotonic()
            if left <= 0:
                self._fail(self._client._timed_out(call, "the stream's budget ran out"))
            ready = dict(poller.poll(max(1, int(left * 1000))))
            if sock in ready:
                body = sock.recv()
                self._awaiting = False
                self._take_in(body)
                return
            if monitor in ready:
                event = _event(monitor)
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self._connected = True
                elif event == zmq.EVENT_DISCONNECTED and self._connected:
                    if sock.poll(0):  # the answer came just before the connection dropped
                        continue
                    self._client.counters["connection_lost"] += 1
                    self._fail(ConnectionLost(call.method, call.endpoint or "?"))

    def _take_in(self, body: bytes) -> None:
        """One answer: items (a BATCH of them, maybe with the end last), or the end alone."""
        call, window, tally = self._call, self._window, self._tally
        assert window is not None and tally is not None
        try:
            msg = decode(body, self._client._codec)
            messages = [from_array(m, in_batch=True) for m in msg.items] if type(msg) is Batch else [msg]
        except ProtocolError as bad:
            self._client.counters["bad_replies"] += 1
            self._fail(ProtocolError(f"an answer of stream {call.method!r} cannot be read: {bad}"))
        share = len(body) // max(1, len(messages))
        for m in messages:
            if m.id != call.id and not (m.id == 0 and isinstance(m, ErrorReply)):
                self._client.counters["stale_replies"] += 1
                self._fail(ProtocolError(f"an answer for id {m.id} in stream {call.id}"))
            if isinstance(m, Item):
                try:
                    window.arrived()
                except StreamViolation as broke:
                    self._fail(ProtocolError(f"the server broke the stream rules: {broke}"))
                self._items.append(m.item)
                tally.received(share)
            elif isinstance(m, Reply):
                self._end()
                self._release()
                try:
                    self._result = self._client._ok(call, m.result)
                except BaseException as hooked:  # a client interceptor turned the end into a failure
                    self._error = hooked
                return
            elif isinstance(m, ErrorReply):
                err = m.error
                exc: BaseException
                if err.code == StatusCode.PROTOCOL_ERROR and not window.received:
                    exc = StreamsUnsupported(
                        f"{call.endpoint} cannot open stream {call.method!r}: {err.message}",
                        code=err.code,
                        type=err.type,
                        traceback=err.traceback,
                        data=err.data,
                        method=call.method,
                    )
                else:
                    exc = self._client._remote_error(call, err, call.endpoint)
                self._end()  # the server ended it: its items come first, then this error
                self._release()
                self._error = self._client._failed(call, exc)
                return
            else:
                self._fail(ProtocolError(f"unexpected {type(m).__name__} in stream {call.method!r}"))

    def _fail(self, exc: BaseException) -> NoReturn:
        """End the stream here with ``exc`` and raise it (nothing is held then: a pull is made only when
        every item of the last answer was taken). The server is told (CANCEL) when the socket can."""
        self._end()
        if self._sock is not None and not self._awaiting:
            try:
                self._sock.send(cancel_frame(self._call.id), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        self._release(_CANCEL_LINGER_MS)
        self._items.clear()
        raise self._client._failed(self._call, exc) from None

    def _end(self) -> None:
        self._over = True
        if self._tally is not None:
            self._tally.close()
        if self._stats is not None:
            self._stats.ended()
            self._stats = None

    def _release(self, linger_ms: int = 0) -> None:
        """Close the stream's sockets (never reused: a REQ that did not get its answer cannot send)."""
        sock, self._sock = self._sock, None
        monitor, self._monitor = self._monitor, None
        if sock is not None:
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
            close_quietly(sock, linger_ms)
        close_quietly(monitor)


class _Counted:
    """A pulled stream's face for interceptors: its item tally, without a reference back to it."""

    __slots__ = ("tally",)

    def __init__(self, tally: Tally) -> None:
        self.tally = tally


def _event(monitor: zmq.Socket) -> int:
    """The event number of one monitor message (its first frame starts with it, little-endian)."""
    frames = monitor.recv_multipart()
    return int.from_bytes(frames[0][:2], "little")
