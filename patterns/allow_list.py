"""A per-method allow-list keyed on the caller's CURVE key: who may call what, decided by one interceptor.

The server uses CURVE, and its ZAP allow-list admits two clients, ``alice`` and ``bob`` (anyone else gets
no connection at all). Which *methods* each may call is a second, finer rule: ``AllowList``, a server
interceptor, reads ``call.caller_key`` (the client's CURVE public key, which libzmq authenticated) and
refuses with PERMISSION_DENIED what the rule does not grant; the caller gets ``zcall.PermissionDenied``.
Built-in methods are covered too: here only ``alice`` may read ``zcall.stats``.

Run alone (makes keys in a temporary directory, starts the server, calls as both):
    python patterns/allow_list.py
"""

from __future__ import annotations

import argparse
import fnmatch
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import zmq.auth

import zcall
from zcall.testing import SpawnError, spawn

RULES: dict[str, list[str]] = {
    "status": ["alice", "bob"],
    "report": ["alice"],
    "zcall.ping": ["alice", "bob"],
    "zcall.stats": ["alice"],
}
"""Method (a glob) → the names of the keys that may call it; a method no rule names is refused."""


class AllowList(zcall.ServerInterceptor):
    """Refuse a call unless its caller's CURVE key is granted the method (deny by default)."""

    def __init__(self, rules: Mapping[str, Sequence[str]], keys: Mapping[str, str]) -> None:
        # keys: name -> z85 public key; the rules are kept by key, so a call costs one lookup
        self._rules = {pattern: {keys[name] for name in names} for pattern, names in rules.items()}
        self._names = {key: name for name, key in keys.items()}

    def on_call(self, call: zcall.CallContext) -> None:
        key = call.caller_key
        for pattern, allowed in self._rules.items():
            if fnmatch.fnmatchcase(call.method, pattern):
                if key in allowed:
                    return
                break
        who = self._names.get(key or "", "an unknown key")
        raise zcall.Rejected(zcall.StatusCode.PERMISSION_DENIED, f"{call.method} is not allowed for {who}")


def load_keys(directory: Path) -> dict[str, str]:
    """name -> z85 public key, from the ``NAME.key`` files ``zcall keygen`` writes."""
    return {p.stem: zmq.auth.load_certificate(p)[0].decode() for p in sorted(directory.glob("*.key"))}


def serve(keys_dir: Path) -> None:
    service = zcall.Service("reports", interceptors=[AllowList(RULES, load_keys(keys_dir / "clients"))])

    @service.method
    def status() -> str:
        return "all systems go"

    @service.method
    def report(quarter: str) -> dict[str, object]:
        return {"quarter": quarter, "revenue": 1234}

    security = zcall.ServerSecurity(keys_dir / "server.key_secret", allow_keys_dir=keys_dir / "clients")
    server = zcall.AsyncServer(service, security=security)
    server.serve_forever(on_ready=lambda ep: print(f"READY {ep}", flush=True))


def make_keys(directory: Path) -> None:
    (directory / "clients").mkdir()
    zmq.auth.create_certificates(directory, "server")
    for name in ("alice", "bob"):
        zmq.auth.create_certificates(directory, name)
        shutil.copy(directory / f"{name}.key", directory / "clients")


def call_as(name: str, keys_dir: Path, endpoint: str, method: str, *args: object) -> str:
    security = zcall.ClientSecurity(keys_dir / f"{name}.key_secret", keys_dir / "server.key")
    with zcall.SyncClient(endpoint, timeout=5.0, security=security) as client:
        try:
            result = client.call(method, *args)
        except zcall.PermissionDenied as exc:
            return f"PermissionDenied: {exc.message}"
    return f"ok {result!r}" if method != "zcall.stats" else "ok (stats)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="KEYS_DIR", help="serve with the keys in KEYS_DIR")
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve))
        return 0
    keys_dir = Path(tempfile.mkdtemp(prefix="zcall-allow-"))
    try:
        make_keys(keys_dir)
        try:
            server = spawn([__file__, "--serve", str(keys_dir)])
        except SpawnError as exc:
            raise SystemExit(f"server failed to start: {exc}") from None
        try:
            outcomes = {}
            for who, method, call_args in [
                ("alice", "status", ()),
                ("bob", "status", ()),
                ("alice", "report", ("Q3",)),
                ("bob", "report", ("Q3",)),
                ("alice", "zcall.stats", ()),
                ("bob", "zcall.stats", ()),
            ]:
                outcome = call_as(who, keys_dir, server.endpoint, method, *call_args)
                outcomes[(who, method)] = outcome
                print(f"{who:>5} -> {method:<11} {outcome}")
        finally:
            server.stop()
            sys.stderr.write(server.stderr)
    finally:
        shutil.rmtree(keys_dir, ignore_errors=True)
    denied = {k for k, v in outcomes.items() if v.startswith("PermissionDenied")}
    return 0 if denied == {("bob", "report"), ("bob", "zcall.stats")} else 1


if __name__ == "__main__":
    sys.exit(main())
