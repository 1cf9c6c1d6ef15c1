"""Prometheus: zcall's metrics in the text exposition format, read back with prometheus_client's own
parser: from a remote zcall.stats (``zcall stats --prometheus``), and over an HTTP scrape endpoint."""

from __future__ import annotations

import urllib.request
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

import zcall
from helpers.cli_support import zcall_cli
from zcall.integrations.prometheus import ZcallCollector, exposition, serve_metrics
from zcall.service.metrics import BOUNDS
from zcall.testing import running_server


def make_service() -> zcall.Service:
    svc = zcall.Service("shop")

    @svc.method
    def buy(item: str) -> str:
        if item == "nothing":
            raise ValueError("nothing to buy")
        return f"bought {item}"

    return svc


def parse(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted labels: value}}, through prometheus_client's parser."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    for key, v in samples[name].items():
        d = dict(key)
        if all(d.get(k) == w for k, w in labels.items()):
            return float(v)
    raise KeyError((name, labels))


def exercise(endpoint: str) -> None:
    with zcall.SyncClient(endpoint, timeout=5) as c:
        for i in range(5):
            assert c.call("buy", f"tea{i}").startswith("bought")
        with pytest.raises(zcall.RemoteError):
            c.call("buy", "nothing")
        with pytest.raises(zcall.InvalidArguments):
            c.call("buy")
        with pytest.raises(zcall.MethodNotFound):
            c.call("bye", "x")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_remote_stats_parse_as_prometheus_with_the_real_buckets(kind: str) -> None:
    svc = make_service()
    with running_server(svc, kind=kind) as server:  # type: ignore[arg-type]
        exercise(server.endpoint)
        with zcall.SyncClient(server.endpoint, timeout=5) as c:
            text = exposition(c.call("zcall.stats"))
    s = parse(text)
    assert value(s, "zcall_calls_total", method="buy", service="shop", role="server") == 7
    assert value(s, "zcall_call_errors_total", method="buy") == 1
    assert value(s, "zcall_call_rejections_total", method="buy") == 1  # bad arguments: the caller's fault
    assert value(s, "zcall_call_timeouts_total", method="buy") == 0
    assert value(s, "zcall_calls_in_flight", method="buy") == 0
    assert value(s, "zcall_call_rejections_total", method="<other>") == 1  # the unknown name
    # the histogram: every bound of zcall's layout, cumulative, +Inf == count == ok + errors
    buckets = {
        dict(k)["le"]: v
        for k, v in s["zcall_call_duration_seconds_bucket"].items()
        if dict(k)["method"] == "buy"
    }
    assert len(buckets) == len(BOUNDS) + 1
    assert [float(le) for le in buckets if le != "+Inf"] == pytest.approx(list(BOUNDS))
    counts = [buckets[le] for le in sorted(buckets, key=float)]
    assert counts == sorted(counts) and counts[-1] == 6
    assert value(s, "zcall_call_duration_seconds_count", method="buy") == 6
    assert 0 < value(s, "zcall_call_duration_seconds_sum", method="buy") < 5
    assert s["zcall_server_counter_total"]  # the server's own counters, one sample per name


@pytest.mark.timeout(30)
def test_a_coarser_layout_keeps_the_cumulative_counts_exact() -> None:
    svc = make_service()
    with running_server(svc) as server:
        exercise(server.endpoint)
    reg = prometheus_client.CollectorRegistry()
    reg.register(ZcallCollector(svc, every=20))  # one bound per decade: 10 us ... 100 s
    s = parse(prometheus_client.generate_latest(reg).decode())
    fine = parse(exposition(svc))
    coarse = {
        dict(k)["le"]: v
        for k, v in s["zcall_call_duration_seconds_bucket"].items()
        if dict(k)["method"] == "buy"
    }
    assert len(coarse) == 8 + 1
    for le, v in coarse.items():
        assert value(fine, "zcall_call_duration_seconds_bucket", method="buy", le=le) == v


@pytest.mark.timeout(30)
def test_an_http_scrape_endpoint_serves_the_local_service() -> None:
    svc = make_service()
    with running_server(svc, kind="async") as server, serve_metrics(svc) as scrape:
        exercise(server.endpoint)
        with urllib.request.urlopen(scrape.url, timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            body = response.read().decode()
    s = parse(body)
    assert value(s, "zcall_calls_total", method="buy") == 7
    assert value(s, "zcall_uptime_seconds", service="shop") > 0
    with pytest.raises(OSError):  # closed: the port no longer answers
        urllib.request.urlopen(scrape.url, timeout=2)


@pytest.mark.timeout(60)
def test_zcall_stats_prometheus_prints_parseable_text() -> None:
    svc = make_service()
    with running_server(svc, kind="async") as server:
        exercise(server.endpoint)
        r = zcall_cli("stats", "--prometheus", server.endpoint)
    assert r.returncode == 0, r.stderr
    s = parse(r.stdout)
    assert value(s, "zcall_calls_total", method="buy", service="shop") == 7
    assert "# TYPE zcall_call_duration_seconds histogram" in r.stdout
