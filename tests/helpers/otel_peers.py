"""A traced peer for the OpenTelemetry tests: ``python tests/helpers/otel_peers.py --serve NAME [--next
ENDPOINT]`` serves ``work`` (which calls ``work`` on the next peer, if any) and ``spans`` (what this
process's in-memory exporter holds), and prints ``READY <endpoint>``."""

from __future__ import annotations

import argparse
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import zcall
from zcall.integrations.opentelemetry import TracingClientInterceptor, instrument
from zcall.tools.ready import announce


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as plain data (to send back over zcall)."""
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
    }


def make_peer(name: str, next_endpoint: str | None) -> zcall.Peer:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    service = zcall.Service(name)
    instrument(service, tracer_provider=provider)
    peers = {"next": next_endpoint} if next_endpoint else {}
    tracing = [TracingClientInterceptor(tracer_provider=provider)]
    peer = zcall.Peer(name, service, peers=peers, interceptors=tracing)

    @service.method
    def work(fail: bool = False) -> list[str]:
        """This hop's name, then the next hops'; the last hop raises when asked to."""
        if "next" in peers:
            return [name, *peer.call("next", "work", fail=fail)]
        if fail:
            raise ValueError(f"{name} failed on purpose")
        return [name]

    @service.method
    async def awork() -> list[str]:
        """``work`` from a coroutine handler: the nested call is awaited."""
        if "next" in peers:
            return [name, *await peer.acall("next", "awork")]
        return [name]

    @service.method
    def spans() -> list[dict[str, Any]]:
        """Every span this process finished so far (``work``/``awork`` ones)."""
        return [span_record(s) for s in exporter.get_finished_spans() if "work" in s.name]

    return peer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", required=True)
    parser.add_argument("--next", default=None)
    ns = parser.parse_args()
    make_peer(ns.serve, ns.next).serve_forever(on_ready=announce)


if __name__ == "__main__":
    main()
