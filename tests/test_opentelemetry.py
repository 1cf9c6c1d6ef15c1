"""OpenTelemetry: spans from zcall's tracing interceptors, read back from the SDK's in-memory exporter;
one trace across a nested call through three peer processes, W3C trace context in the headers."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import zcall
from helpers.cli_support import REPO_ROOT
from helpers.otel_peers import span_record
from zcall.integrations.opentelemetry import (
    TracingClientInterceptor,
    handler_context,
    instrument,
)
from zcall.testing import ProcessHandle, running_server, spawn, stop_all

PEERS = str(REPO_ROOT / "tests" / "helpers" / "otel_peers.py")


@pytest.fixture
def traced() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def chain() -> Iterator[list[ProcessHandle]]:
    """Three traced peer processes a -> b -> c."""
    started: list[ProcessHandle] = []
    try:
        started.append(spawn([PEERS, "--serve", "c"], cwd=REPO_ROOT, pythonpath=[REPO_ROOT / "tests"]))
        started.append(
            spawn(
                [PEERS, "--serve", "b", "--next", started[-1].endpoint],
                cwd=REPO_ROOT,
                pythonpath=[REPO_ROOT / "tests"],
            )
        )
        started.append(
            spawn(
                [PEERS, "--serve", "a", "--next", started[-1].endpoint],
                cwd=REPO_ROOT,
                pythonpath=[REPO_ROOT / "tests"],
            )
        )
        yield started[::-1]  # a, b, c
    finally:
        stop_all(started, timeout=3.0)


def spans_of(handles: list[ProcessHandle]) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name, h in zip("abc", handles, strict=True):
        with zcall.SyncClient(h.endpoint, timeout=5) as c:
            out[name] = c.call("spans")
    return out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["work", "awork"])
def test_one_trace_follows_a_nested_call_across_three_peer_processes(
    traced: Any, chain: list[ProcessHandle], method: str
) -> None:
    provider, exporter = traced
    with zcall.SyncClient(
        chain[0].endpoint, timeout=10, interceptors=[TracingClientInterceptor(tracer_provider=provider)]
    ) as client:
        assert client.call(method) == ["a", "b", "c"]
    (root,) = [span_record(s) for s in exporter.get_finished_spans()]
    remote = spans_of(chain)
    assert root["kind"] == "CLIENT" and root["parent_id"] is None
    # a: SERVER (child of the test's client span) + CLIENT (its call to b); b likewise; c: SERVER only
    a_server, a_client = (next(s for s in remote["a"] if s["kind"] == k) for k in ("SERVER", "CLIENT"))
    b_server, b_client = (next(s for s in remote["b"] if s["kind"] == k) for k in ("SERVER", "CLIENT"))
    (c_server,) = remote["c"]
    chain_of_spans = [root, a_server, a_client, b_server, b_client, c_server]
    assert {s["trace_id"] for s in chain_of_spans} == {root["trace_id"]}  # one trace, three processes
    for parent, child in itertools.pairwise(chain_of_spans):
        assert child["parent_id"] == parent["span_id"], (parent, child)
    for s in (a_server, b_server, c_server):
        assert s["attributes"]["rpc.system"] == "zcall"
        assert s["attributes"]["rpc.method"] == method
        assert s["attributes"]["rpc.zcall.status_code"] == 0 and s["status"] == "OK"
    assert [s["attributes"]["rpc.service"] for s in (a_server, b_server, c_server)] == ["a", "b", "c"]
    assert a_client["attributes"]["server.address"] == chain[1].endpoint


@pytest.mark.timeout(60)
def test_a_failure_at_the_end_of_the_chain_marks_every_span_on_the_way_back(
    traced: Any, chain: list[ProcessHandle]
) -> None:
    provider, exporter = traced
    tracing = [TracingClientInterceptor(tracer_provider=provider)]
    with (
        zcall.SyncClient(chain[0].endpoint, timeout=10, interceptors=tracing) as client,
        pytest.raises(zcall.RemoteError),
    ):
        client.call("work", fail=True)
    (root,) = [span_record(s) for s in exporter.get_finished_spans()]
    remote = spans_of(chain)
    assert root["status"] == "ERROR" and root["attributes"]["rpc.zcall.status_code"] == 1
    (c_server,) = remote["c"]
    assert c_server["status"] == "ERROR" and c_server["attributes"]["error.type"] == "ValueError"
    assert all(s["status"] == "ERROR" for spans in remote.values() for s in spans)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_every_client_face_sends_traceparent_and_gets_a_client_span(traced: Any, kind: str) -> None:
    provider, exporter = traced
    svc = zcall.Service("echoer")
    instrument(svc, tracer_provider=provider)
    seen: list[str] = []

    @svc.method
    def headers() -> str:
        call = zcall.current_call()
        assert call is not None
        # the handler's own span, parented by the call's server span
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("handler-step", context=handler_context()):
            pass
        seen.append(call.headers["traceparent"])
        return str(call.headers["traceparent"])

    tracing = [TracingClientInterceptor(tracer_provider=provider, service="echoer")]
    with running_server(svc, kind=kind) as server:  # type: ignore[arg-type]
        with zcall.SyncClient(server.endpoint, timeout=5, interceptors=tracing) as sync:
            sync.call("headers")
        with zcall.AsyncClient(server.endpoint, timeout=5, interceptors=tracing) as ac:
            ac.call_async("headers").result(5)  # the callback face

            async def via_asyncio() -> None:
                await ac.call("headers")

            asyncio.run(via_asyncio())
    spans = [span_record(s) for s in exporter.get_finished_spans()]
    clients = [s for s in spans if s["kind"] == "CLIENT"]
    servers = [s for s in spans if s["kind"] == "SERVER"]
    steps = [s for s in spans if s["name"] == "handler-step"]
    assert len(clients) == len(servers) == len(steps) == 3
    for tp, client_span in zip(seen, clients, strict=True):
        version, trace_id, span_id, flags = tp.split("-")  # W3C traceparent
        assert (version, trace_id, span_id) == ("00", client_span["trace_id"], client_span["span_id"])
        assert int(flags, 16) & 1  # sampled
    assert {s["parent_id"] for s in servers} == {s["span_id"] for s in clients}
    assert {s["parent_id"] for s in steps} == {s["span_id"] for s in servers}
    assert all(s["name"] == "echoer/headers" and s["attributes"]["rpc.service"] == "echoer" for s in clients)
