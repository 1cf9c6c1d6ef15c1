"""``zcall ping --wait SECONDS ENDPOINT``: exit 0 once the server answers SERVING (scripts, container
readiness and liveness probes, the launcher); 3 when nothing answered in time, 1 when it answered but
never SERVING. ``--service NAME`` asks for one service's health instead of the whole server's."""

from __future__ import annotations

import argparse
import time

from ...errors import CallTimeout
from ..health import NotServing, wait_serving
from .common import EXIT_ERROR, EXIT_OK, EXIT_TIMEOUT, UsageError, endpoints, err, one_shot


def cmd_ping_wait(ns: argparse.Namespace, security: object = None) -> int:
    """``zcall ping --wait``: block until SERVING or ``ns.wait`` seconds have passed."""
    if ns.wait <= 0:
        raise UsageError("--wait takes a positive number of seconds")
    eps = endpoints(ns.endpoint, getattr(ns, "mesh", None))
    service = getattr(ns, "service", None)

    def go() -> int:
        t0 = time.monotonic()
        try:
            answer = wait_serving(eps, ns.wait, service=service, security=security)  # type: ignore[arg-type]
        except NotServing as exc:
            err(f"not serving: {exc}")
            return EXIT_ERROR
        except CallTimeout:
            err(f"timeout: nothing answered at {','.join(eps)} within {ns.wait:g}s")
            return EXIT_TIMEOUT
        print(
            f"{answer.get('service')} at {','.join(eps)}: {answer.get('status')} "
            f"after {time.monotonic() - t0:.3f}s",
            flush=True,
        )
        return EXIT_OK

    return one_shot(go)
