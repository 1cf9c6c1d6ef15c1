"""Small socket helpers every face shares: binding to free ports, closing with LINGER, option defaults."""

from __future__ import annotations

import errno
import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import zmq

__all__ = [
    "monitor_socket",
    "DEFAULT_BIND",
    "EndpointError",
    "apply_size_limit",
    "check_endpoint",
    "bind",
    "close_quietly",
    "default_context",
    "frame_limit",
    "frame_property",
    "new_socket",
    "fast_send",
    "normalize_endpoints",
    "close_bound",
]

DEFAULT_BIND = "tcp://127.0.0.1:*"
"""Where servers bind unless told otherwise: loopback only, on a port the OS picks."""

DEFAULT_LINGER_MS = 0


def bind(sock: zmq.Socket, endpoint: str) -> str:
    """Bind ``sock`` (``tcp://host:*`` picks a free port) and return the endpoint actually bound."""
    check_endpoint(endpoint, bind=True)
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise OSError(exc.errno, f"cannot bind {endpoint!r}: {exc}") from None
    bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    # LAST_ENDPOINT reports tcp://0.0.0.0:port for wildcard binds; keep what the user asked for then.
    return bound or endpoint


def frame_limit(max_message_size: int) -> int:
    """The per-frame wall libzmq enforces (``MAXMSGSIZE``): the message limit plus an eighth (at least
    64 KiB), so a body a little over the limit is still read and answered MESSAGE_TOO_LARGE (the sender
    learns why), and one far over it costs the sender its connection before libzmq buffers it."""
    return max_message_size + max(64 * 1024, max_message_size // 8)


def apply_size_limit(sock: zmq.Socket, max_message_size: int) -> None:
    """Set the per-frame wall behind the codec's limit (``frame_limit``) on ``sock``.

    libzmq's limit is per *frame*, and it hands a multipart message over only once all of it arrived:
    a peer may make libzmq hold one message of many frames of up to this size each. zcall refuses such
    a request (more than ``protocol.MAX_REQUEST_FRAMES`` frames) without copying any of it, so libzmq
    frees it at once; against untrusted networks use CURVE with an allow-list (docs/security.md).
    """
    sock.setsockopt(zmq.MAXMSGSIZE, frame_limit(max_message_size))


_context_lock = threading.Lock()
_context_ready = False
MAX_SOCKETS_WANTED = 65535


def default_context() -> zmq.Context:
    """The process-wide ``zmq.Context.instance()`` zcall objects use unless given one.

    When zcall creates it, it raises libzmq's socket limit (1,023 by default; an async client uses
    three sockets) to what the process's open-file limit allows, so a thousand clients fit. A context
    made earlier by the application keeps its own limit (libzmq fixes it at the first socket)."""
    global _context_ready
    if _context_ready:
        return zmq.Context.instance()
    with _context_lock:
        fresh = getattr(zmq.Context, "_instance", None) is None
        ctx: zmq.Context = zmq.Context.instance()
        if fresh:
            try:
                import resource

                soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                unlimited = soft == resource.RLIM_INFINITY
                wanted = MAX_SOCKETS_WANTED if unlimited else min(MAX_SOCKETS_WANTED, soft)
            except (ImportError, OSError, ValueError):
                wanted = 4096
            try:
                ctx.set(zmq.MAX_SOCKETS, max(1024, wanted))
            except zmq.ZMQError:
                pass
        _context_ready = True
        return ctx


def new_socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    """``ctx.socket(kind)``, with the error that says what to do when the process is out of sockets."""
    try:
        return ctx.socket(kind)
    except zmq.ZMQError as exc:
        _raise_if_out_of_sockets(ctx, exc)
        raise


def monitor_socket(ctx: zmq.Context, sock: zmq.Socket, events: int) -> zmq.Socket:
    """``sock.get_monitor_socket(events)`` on an inproc address never used before in this process
    (pyzmq's default names it after the socket's file descriptor, which the OS reuses: a new monitor
    could collide with one libzmq has not finished closing), with ``new_socket``'s clear error."""
    try:
        return sock.get_monitor_socket(events, addr=f"inproc://zcall-monitor-{next(_monitor_numbers)}")
    except zmq.ZMQError as exc:
        _raise_if_out_of_sockets(ctx, exc)
        raise


_monitor_numbers = itertools.count(1)


def _raise_if_out_of_sockets(ctx: zmq.Context, exc: zmq.ZMQError) -> None:
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        limit = ctx.get(zmq.MAX_SOCKETS)
        raise OSError(
            exc.errno,
            f"cannot open another zmq socket ({exc}): this context allows {limit} sockets and each "
            "AsyncClient uses 3 (a DEALER and its monitor pair) per endpoint; share clients, close "
            "unused ones, raise the open-file limit (ulimit -n), or pass context= a zmq.Context whose "
            "MAX_SOCKETS was raised before its first socket",
        ) from None


def fast_send(sock: zmq.Socket) -> Callable[[bytes, int], Any]:
    """``sock.send`` without pyzmq's Python-level wrapper, whose routing-id and group handling zcall
    never uses (about 0.2 us per frame on the hot path); plain ``sock.send`` where there is no backend
    class to call."""
    base = getattr(getattr(zmq, "backend", None), "Socket", None)
    send = getattr(base, "send", None)
    if send is None or not isinstance(sock, base):  # type: ignore[arg-type]
        return sock.send
    return send.__get__(sock)  # type: ignore[no-any-return]


def frame_property(frame: Any, name: str) -> str | None:
    """A ZMTP handshake property (``ZMQ_METADATA``) of the connection ``frame`` came on, or None."""
    try:
        value = frame.get(name)
    except (zmq.ZMQError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def close_bound(
    sock: zmq.Socket, endpoint: str | None, linger_ms: int = 1000, timeout_ms: int = 2000
) -> None:
    """Close a server socket so that its queued replies still go out (``linger_ms``), and return once
    libzmq has closed its listener, so the port is free for a restart.

    Not ``unbind`` first: for tcp, unbinding also drops the connections accepted on that endpoint, with
    the replies still queued to them. ``close()`` frees the port later, in libzmq's reaper thread, so
    a monitor made before the close reports the listener's CLOSED event.
    """
    if sock.closed:
        return
    if endpoint is None or endpoint.startswith("inproc://"):
        sock.close(linger=linger_ms)
        return
    try:
        monitor = monitor_socket(sock.context, sock, zmq.EVENT_CLOSED)
    except zmq.ZMQError:
        sock.close(linger=linger_ms)
        return
    try:
        sock.close(linger=linger_ms)
        if monitor.poll(timeout_ms):
            monitor.recv_multipart()
    except zmq.ZMQError:
        pass
    finally:
        monitor.close(linger=0)


def close_quietly(sock: zmq.Socket | None, linger_ms: int = DEFAULT_LINGER_MS) -> None:
    """Close with a bounded LINGER so ``Context.term`` can never hang on this socket."""
    if sock is not None and not sock.closed:
        sock.close(linger=linger_ms)


class EndpointError(ValueError):
    """An endpoint zcall cannot use as written; the message names it, says what is wrong and shows the
    right form (raised before any socket sees it, by every client, server and peer)."""

    def __init__(self, message: str, endpoint: object = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


_TRANSPORTS = ("tcp", "ipc", "inproc", "ws", "wss", "tipc", "vmci")
"""The transports libzmq knows for the socket types zcall uses; tcp, ipc and inproc are checked in full."""

_IPC_PATH_MAX = 107  # sun_path holds 108 bytes on Linux (104 on macOS), one for the terminating NUL


def _endpoint_problem(ep: str, bind: bool) -> str | None:
    """What is wrong with one endpoint (``None``: nothing zcall can see before libzmq tries it)."""
    if not ep or ep != ep.strip() or any(c.isspace() for c in ep):
        return "it is empty or has white space in it"
    scheme, sep, rest = ep.partition("://")
    if not sep:
        return "there is no '://': write TRANSPORT://ADDRESS, like tcp://127.0.0.1:5555"
    if scheme not in _TRANSPORTS:
        return f"unknown transport {scheme!r}: use tcp://HOST:PORT, ipc://PATH or inproc://NAME"
    if not rest:
        return f"nothing after '{scheme}://'"
    if scheme == "tcp":
        target = rest.rpartition(";")[2]  # "tcp://SOURCE;HOST:PORT" connects from a source address
        host, colon, port = target.rpartition(":")
        if not colon or not host:
            return "a tcp endpoint needs a host and a port: tcp://HOST:PORT, like tcp://127.0.0.1:5555"
        if host.startswith("[") != host.endswith("]"):
            return f"unbalanced brackets in the host {host!r} (an IPv6 host is written [::1])"
        wildcard = port in ("*", "0")
        if not wildcard and not (port.isdigit() and 0 < int(port) < 65536):
            return f"the port {port!r} is not a number from 1 to 65535" + (
                " (or '*' for a free one)" if bind else ""
            )
        if not bind and wildcard:
            return (
                f"port {port!r} picks a free port when binding; connect to the port the server bound "
                "(server.endpoint, or the READY line)"
            )
        if not bind and host == "*":
            return "host '*' means every interface when binding; connect to an address, like 127.0.0.1"
    elif scheme == "ipc":
        if rest == "*" and not bind:
            return "ipc://* picks a path when binding; connect to the path the server bound"
        if len(rest.encode()) > _IPC_PATH_MAX:
            return (
                f"the ipc path is {len(rest.encode())} bytes; unix sockets allow {_IPC_PATH_MAX}: "
                "use a shorter path (under /tmp, for instance)"
            )
    return None


def check_endpoint(endpoint: object, *, bind: bool = False) -> str:
    """``endpoint`` if zcall can bind (``bind=True``) or connect to it, else ``EndpointError`` naming it."""
    if not isinstance(endpoint, str):
        raise EndpointError(
            f"expected an endpoint like 'tcp://127.0.0.1:5555' (a str), got {type(endpoint).__name__} "
            f"{endpoint!r}",
            endpoint,
        )
    problem = _endpoint_problem(endpoint, bind)
    if problem is not None:
        raise EndpointError(f"bad endpoint {endpoint!r}: {problem}", endpoint)
    return endpoint


def normalize_endpoints(endpoints: str | Sequence[str], *, bind: bool = False) -> list[str]:
    """Accept one endpoint or several, each checked (``check_endpoint``), so a malformed one is an
    ``EndpointError`` (a ``ValueError``) naming it on every API rather than a raw ``ZMQError`` later."""
    try:
        eps = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    except TypeError:
        eps = [endpoints]  # type: ignore[list-item]  # check_endpoint says what it is instead
    if not eps:
        raise EndpointError(
            f"expected an endpoint like 'tcp://127.0.0.1:5555' or a list of them, got {endpoints!r}",
            endpoints,
        )
    return [check_endpoint(e, bind=bind) for e in eps]
