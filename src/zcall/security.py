"""CURVE encryption and ZAP client authentication, from key files ``zcall keygen`` writes.

``ServerSecurity`` makes a server socket a CURVE server: traffic is encrypted, clients must know the
server's public key, and (given ``allow_keys_dir``) only clients whose public key is in that directory get
a connection at all; ``allow_ips`` can restrict the source addresses further. ``ClientSecurity`` makes a
client socket a CURVE client of one server key. Pass either as ``security=`` to a server or client.

Client checks run in one ZAP authenticator thread per ``zmq.Context`` (pyzmq's ``ThreadAuthenticator``),
started by the first secured server of that context and stopped when the last one closes. Each server
socket gets its own ZAP domain, so servers sharing a context can have different allow-lists. The key
directory is re-read when it changes (its mtime), so adding or removing ``*.key`` files takes effect for
the next connection without a restart; connections already made are not dropped.

Without ``allow_keys_dir`` any client key is accepted: traffic is still encrypted and the client still
checks the server's key, but *who* may call is not checked (``CURVE_ALLOW_ANY``).
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

__all__ = ["ClientSecurity", "ServerSecurity"]

log = logging.getLogger("zcall.security")

_ZAP_VERSION = b"1.0"
_domains = itertools.count(1)


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise RuntimeError(
            "this libzmq was built without CURVE support: install pyzmq from its wheels (they bundle a "
            "libzmq with CURVE), or build libzmq with libsodium"
        )


def _read_key_file(path: str | os.PathLike[str], *, secret: bool, what: str) -> tuple[bytes, bytes | None]:
    """(public, secret) z85 keys from a certificate file, with errors that say which file to pass."""
    p = Path(path)
    if not p.is_file():
        hint = "a NAME.key_secret file" if secret else "a NAME.key (public key) file"
        raise FileNotFoundError(
            f"{what}: no such file {str(p)!r}; pass {hint} written by 'zcall keygen NAME'"
        )
    try:
        public, secret_key = zmq.auth.load_certificate(p)
    except ValueError as exc:
        raise ValueError(f"{what}: {str(p)!r} is not a zmq certificate ({exc}); use 'zcall keygen'") from None
    if secret and secret_key is None:
        raise ValueError(
            f"{what}: {str(p)!r} holds only a public key; pass the matching NAME.key_secret file "
            "(the public NAME.key goes to the other side)"
        )
    return public, secret_key


class ServerSecurity:
    """CURVE for a server: its secret key, and who may connect (client key directory, source IPs).

    ``allow_keys_dir``: a directory of clients' public ``*.key`` files; only those clients are served.
    ``None`` accepts any client key (encrypted, but callers are not authenticated). ``allow_ips``: if
    given, only connections from these addresses (tcp) are accepted, on top of the key check.
    """

    def __init__(
        self,
        secret_key_file: str | os.PathLike[str],
        *,
        allow_keys_dir: str | os.PathLike[str] | None = None,
        allow_ips: Iterable[str] | None = None,
    ) -> None:
        _require_curve()
        self.secret_key_file = Path(secret_key_file)
        self.public_key, secret = _read_key_file(secret_key_file, secret=True, what="server secret key")
        self._secret_key: bytes = secret  # type: ignore[assignment]
        self.allow_keys_dir = None if allow_keys_dir is None else Path(allow_keys_dir)
        if self.allow_keys_dir is not None:
            if not self.allow_keys_dir.is_dir():
                raise FileNotFoundError(
                    f"allow_keys_dir: {str(self.allow_keys_dir)!r} is not a directory; make one holding the "
                    "public NAME.key file of each client allowed to call"
                )
            if not any(self.allow_keys_dir.glob("*.key")):
                log.warning(
                    "allow_keys_dir %s holds no *.key file: no client is allowed until one is added",
                    self.allow_keys_dir,
                )
        ips = []
        for ip in allow_ips or ():
            try:
                ips.append(str(ipaddress.ip_address(ip)))
            except ValueError:
                raise ValueError(f"allow_ips: {ip!r} is not an IP address like '127.0.0.1'") from None
        self.allow_ips: frozenset[str] | None = frozenset(ips) if allow_ips is not None else None

    def __repr__(self) -> str:
        keys = "any client key" if self.allow_keys_dir is None else f"keys in {str(self.allow_keys_dir)!r}"
        ips = "" if self.allow_ips is None else f", from {sorted(self.allow_ips)}"
        return f"<ServerSecurity {str(self.secret_key_file)!r}: {keys}{ips}>"

    def apply(self, sock: zmq.Socket) -> Callable[[], None]:
        """Make ``sock`` a CURVE server with this policy; call before ``bind``.

        Starts (or shares) the context's ZAP authenticator. Returns ``release``: call it once, *after*
        closing the socket (a CURVE server with no ZAP handler would accept any client).
        """
        domain = f"zcall-{next(_domains)}"
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self._secret_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
        _registry.register(sock.context, domain, _Policy(self.allow_keys_dir, self.allow_ips))
        done = threading.Event()

        def release() -> None:
            if not done.is_set():
                done.set()
                _registry.unregister(sock.context, domain)

        return release


class ClientSecurity:
    """CURVE for a client: its own key pair and the public key of the server(s) it calls."""

    def __init__(
        self, secret_key_file: str | os.PathLike[str], server_key_file: str | os.PathLike[str]
    ) -> None:
        _require_curve()
        self.secret_key_file = Path(secret_key_file)
        self.server_key_file = Path(server_key_file)
        self.public_key, secret = _read_key_file(secret_key_file, secret=True, what="client secret key")
        self._secret_key: bytes = secret  # type: ignore[assignment]
        self.server_key, _ = _read_key_file(server_key_file, secret=False, what="server public key")

    def __repr__(self) -> str:
        return f"<ClientSecurity {str(self.secret_key_file)!r} -> server key {str(self.server_key_file)!r}>"

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the server key; call before ``connect``."""
        sock.setsockopt(zmq.CURVE_SECRETKEY, self._secret_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)


# -- the ZAP side -------------------------------------------------------------------------------------


class _Policy:
    """One server socket's rule: which client keys (re-read when the directory changes) and source IPs."""

    __slots__ = ("keys_dir", "ips", "_keys", "_stamp")

    def __init__(self, keys_dir: Path | None, ips: frozenset[str] | None) -> None:
        self.keys_dir = keys_dir
        self.ips = ips
        self._keys: dict[bytes, bool] = {}
        self._stamp: int | None = None
        self._refresh()

    def _refresh(self) -> None:
        if self.keys_dir is None:
            return
        try:
            stamp = self.keys_dir.stat().st_mtime_ns
        except OSError:
            stamp = -1
        if stamp == self._stamp:
            return
        try:
            self._keys = zmq.auth.load_certificates(self.keys_dir)
        except (OSError, ValueError) as exc:
            log.error("cannot read client keys from %s: %s (no client is allowed)", self.keys_dir, exc)
            self._keys = {}
        self._stamp = stamp

    def check(self, address: str, mechanism: bytes, credentials: list[bytes]) -> tuple[bool, bytes]:
        if self.ips is not None and address not in self.ips:
            return False, b"Address not allowed"
        if mechanism != b"CURVE" or len(credentials) != 1:
            return False, b"CURVE required"
        if self.keys_dir is None:
            return True, b"OK"
        self._refresh()
        if z85.encode(credentials[0]) in self._keys:
            return True, b"OK"
        return False, b"Unknown key"


class _Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread, answering each zcall server socket (its ZAP domain) by that socket's policy."""

    def __init__(self, context: zmq.Context) -> None:
        super().__init__(context, log=logging.getLogger("zcall.zap"))
        self.policies: dict[str, _Policy] = {}

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        policy = self.policies.get(msg[2].decode("utf-8", "replace")) if len(msg) >= 6 else None
        if policy is None:
            await super().handle_zap_message(msg)  # not ours: pyzmq's own rules
            return
        version, request_id, _domain, address, _identity, mechanism = msg[:6]
        if version != _ZAP_VERSION:
            allowed, reason = False, b"Invalid version"
        else:
            allowed, reason = policy.check(address.decode("utf-8", "replace"), mechanism, msg[6:])
        if not allowed:
            log.warning(
                "refused a %s connection from %s: %s",
                mechanism.decode("ascii", "replace"),
                address.decode("utf-8", "replace") or "<local>",
                reason.decode(),
            )
        status = b"200" if allowed else b"400"
        # The user id of an admitted CURVE client is its public key (z85): libzmq attaches it to every
        # message from that connection, and a handler reads it as zcall.current_call().caller_key.
        user = z85.encode(msg[6]) if allowed and mechanism == b"CURVE" and len(msg) > 6 else b""
        self.zap_socket.send_multipart([_ZAP_VERSION, request_id, status, reason, user, b""])


def _start_authenticator(ctx: zmq.Context) -> _Authenticator:
    """Start a ZAP thread; retry briefly while the last one's inproc names are still being released.

    libzmq closes sockets asynchronously, so ``inproc://zeromq.zap.01`` (and the pipe name, derived from
    an object id that may be reused) can still be taken for a moment after the previous thread stopped.
    """
    deadline = time.monotonic() + 2.0
    failed: list[_Authenticator] = []  # kept alive so a retry does not reuse the same id (pipe name)
    while True:
        auth = _Authenticator(ctx)
        try:
            auth.start()
            return auth
        except zmq.ZMQError as exc:
            auth.stop()
            failed.append(auth)
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise RuntimeError(
                    f"cannot start zcall's ZAP authenticator ({exc}): another ZAP handler runs on this "
                    "zmq.Context; give zcall servers their own context=zmq.Context()"
                ) from None
            time.sleep(0.005)  # waiting for libzmq's reaper to release the name: no event to wait on


class _Registry:
    """One authenticator per context, counted by the secured sockets that use it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._auths: dict[int, tuple[Any, _Authenticator]] = {}

    def register(self, ctx: zmq.Context, domain: str, policy: _Policy) -> None:
        with self._lock:
            entry = self._auths.get(id(ctx))
            if entry is None:
                auth = _start_authenticator(ctx)
                auth.thread.name = "zcall-zap"
                self._auths[id(ctx)] = (ctx, auth)
            else:
                auth = entry[1]
            auth.policies[domain] = policy

    def unregister(self, ctx: zmq.Context, domain: str) -> None:
        with self._lock:
            entry = self._auths.get(id(ctx))
            if entry is None:
                return
            auth = entry[1]
            auth.policies.pop(domain, None)
            if auth.policies:
                return
            del self._auths[id(ctx)]
            auth.stop()

    def running(self, ctx: zmq.Context) -> bool:
        with self._lock:
            entry = self._auths.get(id(ctx))
            return entry is not None and entry[1].is_alive()


_registry = _Registry()
