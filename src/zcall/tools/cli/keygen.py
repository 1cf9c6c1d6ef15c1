"""``zcall keygen``: write a CURVE key pair."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from .common import EXIT_ERROR, EXIT_OK, err


def cmd_keygen(ns: argparse.Namespace) -> int:
    directory = Path(ns.dir)
    public, secret = directory / f"{ns.name}.key", directory / f"{ns.name}.key_secret"
    if not ns.force and (public.exists() or secret.exists()):
        err(f"error: {public} or {secret} exists already; pick another NAME or pass --force to overwrite")
        return EXIT_ERROR
    if not zmq.has("curve"):
        err("error: this libzmq was built without CURVE support; install a pyzmq wheel (they include it)")
        return EXIT_ERROR
    directory.mkdir(parents=True, exist_ok=True)
    pub_file, secret_file = zmq.auth.create_certificates(str(directory), ns.name)
    os.chmod(secret_file, 0o600)
    print(f"public key:  {pub_file}")
    print(f"secret key:  {secret_file}  (keep it private: mode 600)", flush=True)
    return EXIT_OK


def add_parsers(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser("keygen", help="write a CURVE key pair: NAME.key and NAME.key_secret")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--dir", default=".", metavar="D", help="where to write the files (default: .)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=cmd_keygen)
