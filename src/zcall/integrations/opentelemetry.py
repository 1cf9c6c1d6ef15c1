"""OpenTelemetry tracing for zcall: client and server interceptors that make a span per call, with the
RPC semantic-convention attributes, and carry W3C trace context in the call headers.

Needs the extra: ``pip install 'zcall[opentelemetry]'``. ::

    from zcall.integrations.opentelemetry import TracingClientInterceptor, instrument

    instrument(service)                                   # server spans for every call it serves
    client = zcall.SyncClient(ep, interceptors=[TracingClientInterceptor()])   # client spans
    peer = zcall.Peer("a", service, interceptors=[TracingClientInterceptor()])  # a peer: both

- A **client span** (kind CLIENT) per call, child of the current OpenTelemetry span; inside a handler,
  child of that call's server span (or of the caller's own span there, when it belongs to the same
  trace), so a nested call continues the trace. Its context goes out as ``traceparent`` (and
  ``tracestate``) in the call's headers, through a W3C ``TraceContextTextMapPropagator`` unless another
  propagator is given. Retries are one span: the call, not each attempt.
- A **server span** (kind SERVER) per call that reaches the service's interceptors, child of the
  caller's span read from the headers. Calls refused before the interceptors run (unknown method, bad
  arguments, deadline passed, stopping, overloaded) get no server span; the client span records them.
  ``handler_context()`` gives the server span's context to a handler that opens spans of its own.
- Attributes: ``rpc.system = "zcall"``, ``rpc.method`` (the name called, e.g. ``"billing.charge"``),
  ``rpc.service`` (the service's name on server spans; on client spans when given), ``rpc.zcall.status_code``
  (the wire status code, 0 for OK); on failure ``error.type`` and span status ERROR, with the
  exception recorded. ``server.address`` is the endpoint a client call went to.
- A **stream** is one span (client and server), from its open to its end, with
  ``rpc.zcall.stream = true``; a client span also counts the items it moved
  (``rpc.zcall.stream.items_received`` / ``items_sent``). No span per item: that would cost more
  than the item.

Spans end where the call ends (the client's loop thread on the async faces): OpenTelemetry spans may be
ended from any thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - exercised by the core-only test
    raise ImportError(
        "zcall.integrations.opentelemetry needs opentelemetry-api and opentelemetry-sdk: "
        "pip install 'zcall[opentelemetry]'"
    ) from exc

from ..client.core import OutgoingCall
from ..client.interceptors import ClientInterceptor
from ..errors import RemoteError
from ..service.context import CallContext, current_call
from ..service.interceptors import ServerInterceptor
from ..service.registry import Service

__all__ = [
    "RPC_SYSTEM",
    "TracingClientInterceptor",
    "TracingServerInterceptor",
    "handler_context",
    "instrument",
]

RPC_SYSTEM = "zcall"
_SPAN = "otel.span"  # where each interceptor keeps its span, in the call's ``state``
_TRACER_NAME = "zcall"


def _tracer(provider: trace.TracerProvider | None) -> trace.Tracer:
    from .. import __version__

    return trace.get_tracer(_TRACER_NAME, __version__, tracer_provider=provider)


def _fail(span: Span, error: BaseException) -> None:
    code = error.remote.code if isinstance(error, RemoteError) else None
    kind = error.remote.type if isinstance(error, RemoteError) else type(error).__qualname__
    span.set_attribute("error.type", kind)
    if code is not None:
        span.set_attribute("rpc.zcall.status_code", int(code))
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
    span.end()


def _ok(span: Span) -> None:
    span.set_attribute("rpc.zcall.status_code", 0)
    span.set_status(Status(StatusCode.OK))
    span.end()


def handler_context(call: CallContext | None = None) -> otel_context.Context:
    """The OpenTelemetry context of the server span of ``call`` (default: the call being handled), to
    parent a handler's own spans: ``tracer.start_as_current_span("step", context=handler_context())``."""
    call = call if call is not None else current_call()
    span = call.state.get(_SPAN) if call is not None else None
    return trace.set_span_in_context(span) if span is not None else otel_context.get_current()


class TracingClientInterceptor(ClientInterceptor):
    """A CLIENT span per call, its context sent in the headers (W3C ``traceparent``)."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
        service: str | None = None,
    ) -> None:
        """``service``: the remote service's name for ``rpc.service`` (a client knows only endpoints, so
        without it client spans carry ``rpc.method`` and ``server.address``, and the server span the
        service's name)."""
        self._tracer = _tracer(tracer_provider)
        self._propagator = propagator or TraceContextTextMapPropagator()
        self._service = service

    def _parent(self) -> otel_context.Context:
        ctx = otel_context.get_current()
        handler = current_call()
        server_span = handler.state.get(_SPAN) if handler is not None else None
        if server_span is None:
            return ctx
        mine = trace.get_current_span(ctx).get_span_context()
        if mine.is_valid and mine.trace_id == server_span.get_span_context().trace_id:
            return ctx  # the handler's own span, itself inside the call's trace
        return trace.set_span_in_context(server_span)

    def on_call(self, call: OutgoingCall) -> None:
        parent = self._parent()
        service = self._service
        attributes: dict[str, Any] = {"rpc.system": RPC_SYSTEM, "rpc.method": call.method}
        if service:
            attributes["rpc.service"] = service
        name = f"{service}/{call.method}" if service else call.method
        span = self._tracer.start_span(name, context=parent, kind=SpanKind.CLIENT, attributes=attributes)
        call.state[_SPAN] = span
        if call.headers is not None:
            self._propagator.inject(call.headers, context=trace.set_span_in_context(span, parent))

    def _span(self, call: OutgoingCall) -> Span | None:
        span = call.state.pop(_SPAN, None) if call._state is not None else None
        if span is not None and call.endpoint:
            span.set_attribute("server.address", str(call.endpoint))
        stream = call.stream
        if span is not None and stream is not None:
            span.set_attribute("rpc.zcall.stream", True)
            tally = getattr(stream, "tally", None) or getattr(stream, "_tally", None)
            if tally is not None:
                span.set_attribute("rpc.zcall.stream.items_received", tally.items_in)
                span.set_attribute("rpc.zcall.stream.items_sent", tally.items_out)
        return span

    def on_reply(self, call: OutgoingCall, result: Any) -> Any:
        span = self._span(call)
        if span is not None:
            _ok(span)
        return result

    def on_error(self, call: OutgoingCall, error: BaseException) -> BaseException:
        span = self._span(call)
        if span is not None:
            _fail(span, error)
        return error


class TracingServerInterceptor(ServerInterceptor):
    """A SERVER span per call, child of the caller's span carried in the headers."""

    def __init__(
        self,
        service: str | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        """``service``: the name for ``rpc.service`` (``instrument(service)`` passes the service's)."""
        self._tracer = _tracer(tracer_provider)
        self._propagator = propagator or TraceContextTextMapPropagator()
        self._service = service

    def on_call(self, call: CallContext) -> None:
        headers: Mapping[str, Any] = call.headers
        carrier = {k: v for k, v in headers.items() if isinstance(k, str) and isinstance(v, str)}
        parent = self._propagator.extract(carrier) if carrier else otel_context.Context()
        attributes: dict[str, Any] = {"rpc.system": RPC_SYSTEM, "rpc.method": call.method}
        if self._service:
            attributes["rpc.service"] = self._service
        if call.caller:
            attributes["client.address"] = str(call.caller)
        if call.is_stream:
            attributes["rpc.zcall.stream"] = True
        name = f"{self._service}/{call.method}" if self._service else call.method
        call.state[_SPAN] = self._tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )

    def on_reply(self, call: CallContext, result: Any) -> Any:
        span = call.state.get(_SPAN)
        if span is not None:
            _ok(span)
        return result

    def on_error(self, call: CallContext, error: BaseException) -> BaseException:
        span = call.state.get(_SPAN)
        if span is not None:
            _fail(span, error)
        return error


def instrument(
    service: Service,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    propagator: TextMapPropagator | None = None,
) -> TracingServerInterceptor:
    """Add a ``TracingServerInterceptor`` named after ``service`` to it (outermost of those added later),
    and return it."""
    interceptor = TracingServerInterceptor(
        service.name, tracer_provider=tracer_provider, propagator=propagator
    )
    service.add_interceptor(interceptor)
    return interceptor
