"""Trace-id propagation: one W3C ``traceparent`` followed across a chain of peers, by interceptors only.

Three peers in three processes, ``a`` → ``b`` → ``c``: a caller asks ``a`` for ``work``, whose handler
asks ``b``, whose handler asks ``c``. No handler mentions tracing. A server interceptor (``TraceServer``)
reads the ``traceparent`` header of each incoming call and opens a server span (kept in the call's
``state``); a client interceptor (``TraceClient``) gives every outgoing call its own span, child of the
handler's span when the call is made inside a handler (``zcall.current_call()``), and sends it as
``traceparent``. Each hop reports what it saw: the same trace id everywhere, and each span's parent
is the span of the call that caused it.

Run alone (starts the three peers, calls, stops them):   python patterns/trace_propagation.py
"""

from __future__ import annotations

import argparse
import re
import secrets
import sys
from typing import Any

import zcall
from zcall.testing import SpawnError, spawn, stop_all

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def _span_id() -> str:
    return secrets.token_hex(8)


class TraceServer(zcall.ServerInterceptor):
    """Opens a server span per call: parent and trace from ``traceparent``, or a new trace."""

    def on_call(self, call: zcall.CallContext) -> None:
        m = _TRACEPARENT.match(str(call.headers.get("traceparent", "")))
        trace_id, parent = (m.group(1), m.group(2)) if m else (secrets.token_hex(16), None)
        call.state["trace"] = {"trace_id": trace_id, "span_id": _span_id(), "parent_id": parent}


class TraceClient(zcall.ClientInterceptor):
    """Gives every call a client span, child of the handler's span when made inside a handler."""

    def on_call(self, call: zcall.OutgoingCall) -> None:
        handler = zcall.current_call()
        outer = handler.state.get("trace") if handler is not None else None
        trace_id = outer["trace_id"] if outer else secrets.token_hex(16)
        span = _span_id()
        call.state["trace"] = {"trace_id": trace_id, "span_id": span}
        assert call.headers is not None  # a dict of this call's own when interceptors run
        call.headers["traceparent"] = f"00-{trace_id}-{span}-01"


def make_peer(name: str, peers: dict[str, str]) -> zcall.Peer:
    service = zcall.Service(name, interceptors=[TraceServer()])
    peer = zcall.Peer(name, service, peers=peers, interceptors=[TraceClient()])

    @service.method
    def work() -> list[dict[str, Any]]:
        """What this hop saw of its trace, then what the hops after it saw."""
        call = zcall.current_call()
        assert call is not None
        mine = {"peer": name, **call.state["trace"]}
        rest = peer.call("next", "work") if "next" in peers else []
        return [mine, *rest]

    return peer


def serve(name: str, next_endpoint: str | None) -> None:
    peer = make_peer(name, {"next": next_endpoint} if next_endpoint else {})
    peer.serve_forever(on_ready=lambda ep: print(f"READY {ep}", flush=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="NAME", help="serve one hop (used by the standalone run)")
    parser.add_argument("--next", metavar="ENDPOINT", default=None, help="the hop after this one")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.next)
        return 0
    started = []
    try:
        c = spawn([__file__, "--serve", "c"])
        started.append(c)
        b = spawn([__file__, "--serve", "b", "--next", c.endpoint])
        started.append(b)
        a = spawn([__file__, "--serve", "a", "--next", b.endpoint])
        started.append(a)
    except SpawnError as exc:
        stop_all(started)
        raise SystemExit(f"a peer failed to start: {exc}") from None
    try:
        tracer = TraceClient()
        with zcall.SyncClient(a.endpoint, timeout=10.0, interceptors=[tracer]) as client:
            hops = client.call("work")
        trace_ids = {h["trace_id"] for h in hops}
        print(f"trace {next(iter(trace_ids))} across {len(hops)} peers:")
        for h in hops:
            print(f"  {h['peer']}  span {h['span_id']}  parent {h['parent_id']}")
        same = len(trace_ids) == 1
        # each server span's parent is a client span made by the hop before (by the caller for a)
        linked = all(h["parent_id"] is not None for h in hops)
        print(f"one trace id at every hop: {'yes' if same else 'NO'}")
        print(f"every hop has a parent span: {'yes' if linked else 'NO'}")
        return 0 if same and linked and len(hops) == 3 else 1
    finally:
        stop_all(started)
        for h in started:
            sys.stderr.write(h.stderr)


if __name__ == "__main__":
    sys.exit(main())
