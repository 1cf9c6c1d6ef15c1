"""``zcall stats --prometheus ENDPOINT``: a server's ``zcall.stats`` in the Prometheus text format
(needs the ``prometheus`` extra; ``zcall.integrations.prometheus`` says what each family means)."""

from __future__ import annotations

import argparse
import sys

from .common import EXIT_OK, UsageError, endpoints, one_shot


def cmd_stats_prometheus(ns: argparse.Namespace, security: object = None) -> int:
    """Print one scrape's worth of text exposition for the server at ``ns.endpoint``."""
    try:
        from ...integrations.prometheus import exposition
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    from .calls import fetch_stats

    eps = endpoints(ns.endpoint, getattr(ns, "mesh", None))

    def go() -> int:
        sys.stdout.write(exposition(fetch_stats(eps, ns.timeout, security)))
        sys.stdout.flush()
        return EXIT_OK

    return one_shot(go)
