"""What every ``zcall`` command shares: exit codes, the usage error, output helpers, error reporting."""

from __future__ import annotations

import base64
import datetime as _dt
import json
import pprint
import sys
from collections.abc import Callable
from typing import Any

from ...errors import CallTimeout, RemoteError, ZcallError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad input from the user (exit 2); the message says what to do instead."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    return repr(value)


def to_json(value: Any, *, indent: int | None = 2) -> str:
    """JSON for a result; bytes become ``{"$bytes": base64}``, datetimes ISO strings, the rest repr."""
    return json.dumps(value, indent=indent, default=_jsonable, ensure_ascii=False)


def readable(value: Any) -> str:
    if isinstance(value, str):
        return value
    return pprint.pformat(value, sort_dicts=False, width=100)


def endpoints(text: str) -> list[str]:
    eps = [e.strip() for e in text.split(",") if e.strip()]
    if not eps or not all("://" in e for e in eps):
        raise UsageError(
            f"{text!r} is not an endpoint: write it like tcp://127.0.0.1:5555 or ipc:///tmp/x.sock "
            "(several, comma-separated, for failover)"
        )
    return eps


def err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def report_remote(exc: RemoteError) -> None:
    err(f"error: {exc}")
    if exc.traceback:
        err("remote traceback:\n" + exc.traceback.rstrip())


def report_timeout(exc: CallTimeout) -> None:
    err(f"timeout: {exc}")
    err(
        "hint: is a zcall server running there? check the endpoint, raise --timeout, "
        f"or try: zcall ping {','.join(exc.endpoints)}; a server using CURVE does not answer a client "
        "without --curve-secret/--server-key, or with a key it does not allow (--async says which)"
    )


def one_shot(fn: Callable[[], int]) -> int:
    """Run a command that makes calls: map zcall's errors to exit codes and messages."""
    try:
        return fn()
    except CallTimeout as exc:
        report_timeout(exc)
        return EXIT_TIMEOUT
    except RemoteError as exc:
        report_remote(exc)
        return EXIT_ERROR
    except ZcallError as exc:
        err(f"error: {type(exc).__name__}: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        err("interrupted")
        return EXIT_INTERRUPTED
