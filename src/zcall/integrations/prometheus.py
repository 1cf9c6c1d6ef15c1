"""Prometheus metrics for zcall: per-method calls, errors, timeouts, rejections, in flight and the
latency histogram with zcall's own buckets, in the text exposition format (``prometheus_client``).

Needs the extra: ``pip install 'zcall[prometheus]'``. Three ways in::

    from zcall.integrations.prometheus import ZcallCollector, serve_metrics, exposition

    prometheus_client.REGISTRY.register(ZcallCollector(service))   # beside your own metrics
    scrape = serve_metrics(service, port=9464)                      # GET http://127.0.0.1:9464/metrics
    text = exposition(client.call("zcall.stats"))                   # what `zcall stats --prometheus` prints

Families (``service`` and ``method`` labels on each; ``role`` is ``server`` or ``client``):

- ``zcall_calls_total``: calls attempted; ``zcall_call_errors_total`` (the callee failed),
  ``zcall_call_timeouts_total``, ``zcall_call_rejections_total`` (the caller's fault: no such method,
  bad arguments, refused), ``zcall_call_cancellations_total``: how finished calls ended
  (``zcall.service.metrics`` defines each outcome);
- ``zcall_calls_in_flight``: a gauge;
- ``zcall_call_duration_seconds``: a histogram of the calls that got a response (OK and errors), with
  zcall's fixed log-spaced bounds (20 per decade, 10 µs to 100 s) as its ``le`` buckets. zcall's buckets
  are closed below and open above, so a sample exactly on a bound counts in the next ``le`` up;
- ``zcall_server_counter_total{counter=...}``: the server's own counters (bad messages, undeliverable
  replies, events sent ...), and ``zcall_uptime_seconds``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

try:
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised by the core-only test
    raise ImportError(
        "zcall.integrations.prometheus needs prometheus_client: pip install 'zcall[prometheus]'"
    ) from exc

from ..service.metrics import BOUNDS, LatencyHistogram
from ..service.registry import Service

__all__ = ["MetricsServer", "ZcallCollector", "exposition", "serve_metrics"]

StatsSource = Service | Callable[[], Mapping[str, Any]] | Mapping[str, Any]

_OUTCOMES = (
    ("calls", "zcall_calls", "Calls attempted (started or refused on arrival)."),
    ("errors", "zcall_call_errors", "Finished calls the callee failed (handler error, overloaded...)."),
    ("timeouts", "zcall_call_timeouts", "Finished calls that ran out of time."),
    ("rejected", "zcall_call_rejections", "Calls refused as the caller's fault (unknown method, bad args)."),
    ("cancelled", "zcall_call_cancellations", "Calls the caller gave up on."),
)
_LE = [repr(b) for b in BOUNDS]  # the label text of each bucket bound, computed once


def _stats_of(source: StatsSource) -> Mapping[str, Any]:
    """A ``zcall.stats``-shaped mapping from a service (local), a callable, or an answer already had."""
    if isinstance(source, Service):
        return source._stats()
    if callable(source):
        return source()
    return source


def _buckets(row: Mapping[str, Any], every: int = 1) -> tuple[list[tuple[str, float]], float] | None:
    """Cumulative ``(le, count)`` pairs and the sum, from a row's histogram (None if it has none);
    ``every``: keep every n-th bound only (still exact: the cumulative count at a kept bound is the same)."""
    try:
        h = LatencyHistogram.from_dict(row["histogram"])
    except (KeyError, TypeError, ValueError):
        return None
    out: list[tuple[str, float]] = []
    cum = 0
    for i, (le, c) in enumerate(zip(_LE, h.counts, strict=False)):
        cum += c
        if i % every == every - 1 or i == len(_LE) - 1:
            out.append((le, float(cum)))
    out.append(("+Inf", float(h.count)))
    return out, h.total


class ZcallCollector(Collector):
    """A ``prometheus_client`` collector reading zcall metrics at each scrape (nothing kept in between).

    ``source``: a ``Service`` (the metrics its servers record, in this process), a callable returning a
    ``zcall.stats`` answer (e.g. a remote server's: ``lambda: client.call("zcall.stats")``), or such an
    answer itself. ``role`` labels which side recorded the metrics (``client`` for
    ``client.statistics()``, whose ``methods`` have the same rows). ``every=n`` keeps every n-th of the
    141 bucket bounds (``every=20``: one per decade) for a lighter scrape; the default keeps them all."""

    def __init__(
        self, source: StatsSource, *, role: str = "server", service: str | None = None, every: int = 1
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every!r}")
        self._source = source
        self._role = role
        self._service = service
        self._every = every

    def collect(self) -> Iterator[Any]:
        stats = _stats_of(self._source)
        service = self._service or str(stats.get("service", "zcall"))
        methods = stats.get("methods", {})
        if isinstance(methods, Mapping) and isinstance(methods.get("methods"), Mapping):
            methods = methods["methods"]  # a nested snapshot
        rows = (
            {str(k): v for k, v in methods.items() if isinstance(v, Mapping)}
            if isinstance(methods, Mapping)
            else {}
        )
        labels = ["service", "method", "role"]
        for key, name, doc in _OUTCOMES:
            fam = CounterMetricFamily(name, doc, labels=labels)
            for method, row in sorted(rows.items()):
                fam.add_metric([service, method, self._role], float(row.get(key, 0) or 0))
            yield fam
        gauge = GaugeMetricFamily(
            "zcall_calls_in_flight", "Calls received and not yet answered.", labels=labels
        )
        for method, row in sorted(rows.items()):
            gauge.add_metric([service, method, self._role], float(row.get("in_flight", 0) or 0))
        yield gauge
        hist = HistogramMetricFamily(
            "zcall_call_duration_seconds",
            "Time to a response (OK or error), in zcall's fixed log-spaced buckets.",
            labels=labels,
        )
        for method, row in sorted(rows.items()):
            b = _buckets(row, self._every)
            if b is not None:
                hist.add_metric([service, method, self._role], b[0], b[1])
        yield hist
        counters = stats.get("counters")
        if isinstance(counters, Mapping) and counters:
            fam = CounterMetricFamily(
                "zcall_server_counter", "The server's own counters, by name.", labels=["service", "counter"]
            )
            for counter, value in sorted(counters.items()):
                if isinstance(value, int | float) and not isinstance(value, bool):
                    fam.add_metric([service, str(counter)], float(value))
            yield fam
        uptime = stats.get("uptime_s")
        if isinstance(uptime, int | float):
            g = GaugeMetricFamily(
                "zcall_uptime_seconds", "Seconds since the metrics began.", labels=["service"]
            )
            g.add_metric([service], float(uptime))
            yield g


def exposition(source: StatsSource, *, role: str = "server") -> str:
    """The Prometheus text exposition of one ``zcall.stats`` answer (or a service, or a callable)."""
    registry = CollectorRegistry()
    registry.register(ZcallCollector(source, role=role))
    return generate_latest(registry).decode("utf-8")


class MetricsServer:
    """An HTTP scrape endpoint (``GET /metrics``) on a thread; ``close()`` stops it and frees the port."""

    def __init__(self, httpd: Any, thread: threading.Thread, registry: CollectorRegistry) -> None:
        self._httpd = httpd
        self._thread = thread
        self.registry = registry
        host, port = httpd.server_address[:2]
        self.port: int = port
        self.url = f"http://{host}:{port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_metrics(source: StatsSource, port: int = 0, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve ``source``'s metrics for Prometheus to scrape at ``http://addr:port/metrics`` (``port=0``:
    a free one, in ``.port``). Loopback by default, like zcall's servers: pass ``addr="0.0.0.0"`` in a
    container whose scraper comes from outside."""
    registry = CollectorRegistry()
    registry.register(ZcallCollector(source))
    httpd, thread = start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(httpd, thread, registry)
