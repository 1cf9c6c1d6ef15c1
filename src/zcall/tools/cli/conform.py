"""``zcall conform ENDPOINT``: run the protocol conformance checks of ``zcall.tools.conform`` against a
server and print a pass/fail table; exit 0 all passed (or skipped), 1 a check failed, 3 no answer."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import EXIT_ERROR, EXIT_OK, EXIT_TIMEOUT, endpoints


def cmd_conform(ns: argparse.Namespace) -> int:
    from ..conform import load_vectors, main_table, run

    (endpoint,) = endpoints(ns.endpoint)[:1]
    results, kind = run(
        endpoint,
        timeout=ns.timeout,
        vectors=load_vectors(ns.vectors),
        retry_method=ns.retry_method,
        slow_method=ns.slow,
        stop=ns.stop,
        seed=ns.seed,
    )
    if ns.json:
        print(json.dumps([r.__dict__ for r in results], indent=2), flush=True)
    else:
        print(main_table(results, endpoint, kind), flush=True)
    if results and results[0].status == "fail":
        return EXIT_TIMEOUT if "no answer" in results[0].detail else EXIT_ERROR
    return EXIT_ERROR if any(r.status == "fail" for r in results) else EXIT_OK


def add_parsers(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    p = sub.add_parser(
        "conform",
        help="check a server (any language) against docs/protocol.md: a pass/fail table",
        description=(
            "Send ENDPOINT the requests docs/protocol.md prescribes answers for (its test vectors, every\n"
            "refusal of section 10, framing, deadlines, notify, ping, cancel, subscribe) and check each\n"
            "answer. Exit 0: all passed; 1: a check failed; 3: nothing answered. zcall.tools.conform\n"
            "lists the checks."
        ),
        formatter_class=fmt,
    )
    p.add_argument("endpoint", metavar="ENDPOINT")
    p.add_argument("--timeout", type=float, default=3.0, metavar="S", help="seconds per answer (default 3)")
    p.add_argument("--vectors", default=None, metavar="FILE", help="test vectors (default: packaged copy)")
    p.add_argument(
        "--retry-method",
        default=None,
        metavar="M",
        help="a no-argument method whose answer changes each call (a counter): checks the retry cache",
    )
    p.add_argument(
        "--slow",
        default=None,
        metavar="M",
        help="a method taking seconds to sleep: checks cancel and, with --stop, a call in flight",
    )
    p.add_argument(
        "--stop",
        action="store_true",
        help="destructive: SIGTERM the server (the pid its zcall.ping reports), check the graceful stop",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random-bytes check (default 0)")
    p.add_argument("--json", action="store_true", help="the results as JSON")
    p.set_defaults(func=cmd_conform)
