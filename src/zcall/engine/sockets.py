"""Small socket helpers every face shares: binding to free ports, closing with LINGER, option defaults."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import zmq

__all__ = [
    "DEFAULT_BIND",
    "apply_size_limit",
    "bind",
    "close_quietly",
    "fast_send",
    "normalize_endpoints",
    "release_endpoint",
]

DEFAULT_BIND = "tcp://127.0.0.1:*"
"""Where servers bind unless told otherwise: loopback only, on a port the OS picks."""

DEFAULT_LINGER_MS = 0


def bind(sock: zmq.Socket, endpoint: str) -> str:
    """Bind ``sock`` (``tcp://host:*`` picks a free port) and return the endpoint actually bound."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise OSError(exc.errno, f"cannot bind {endpoint!r}: {exc}") from None
    bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    # LAST_ENDPOINT reports tcp://0.0.0.0:port for wildcard binds; keep what the user asked for then.
    return bound or endpoint


def apply_size_limit(sock: zmq.Socket, max_message_size: int) -> None:
    """The hard wall behind the codec's limit: libzmq drops a connection that sends a frame over twice it.

    Frames up to ``max_message_size`` are decoded; larger ones up to twice that are read and answered
    with MESSAGE_TOO_LARGE (the sender learns why); beyond, libzmq never buffers them at all.
    """
    sock.setsockopt(zmq.MAXMSGSIZE, 2 * max_message_size)


def fast_send(sock: zmq.Socket) -> Callable[[bytes, int], Any]:
    """``sock.send`` without pyzmq's Python-level wrapper, whose routing-id and group handling zcall
    never uses (about 0.2 us per frame on the hot path); plain ``sock.send`` where there is no backend
    class to call."""
    base = getattr(getattr(zmq, "backend", None), "Socket", None)
    send = getattr(base, "send", None)
    if send is None or not isinstance(sock, base):  # type: ignore[arg-type]
        return sock.send
    return send.__get__(sock)  # type: ignore[no-any-return]


def release_endpoint(sock: zmq.Socket, endpoint: str, timeout_ms: int = 1000) -> None:
    """Unbind ``endpoint`` and wait until libzmq has closed the listener, so the port is free on return.

    ``close()`` frees a bound port later, in libzmq's reaper thread: a server restarted on the same port
    right after ``stop()`` could fail with EADDRINUSE. The monitor's CLOSED event says when it is free.
    """
    if endpoint.startswith("inproc://"):
        return
    monitor = sock.get_monitor_socket(zmq.EVENT_CLOSED)
    try:
        sock.unbind(endpoint)
        if monitor.poll(timeout_ms):
            monitor.recv_multipart()
    except zmq.ZMQError:
        pass
    finally:
        try:
            sock.disable_monitor()
        except zmq.ZMQError:
            pass
        monitor.close(linger=0)


def close_quietly(sock: zmq.Socket | None, linger_ms: int = DEFAULT_LINGER_MS) -> None:
    """Close with a bounded LINGER so ``Context.term`` can never hang on this socket."""
    if sock is not None and not sock.closed:
        sock.close(linger=linger_ms)


def normalize_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    """Accept one endpoint or several; refuse an empty list with a message that says what to pass."""
    eps = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    if not eps or not all(isinstance(e, str) and "://" in e for e in eps):
        raise ValueError(
            f"expected an endpoint like 'tcp://127.0.0.1:5555' or a list of them, got {endpoints!r}"
        )
    return eps
