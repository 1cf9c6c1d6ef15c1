"""Server interceptors: hooks around every call a service runs, on both server kinds and every handler kind.

Register them once on the ``Service`` (``Service(..., interceptors=[...])`` or ``service.add_interceptor``);
every server and peer that serves it applies them, in order for ``on_call`` and in reverse order for
``on_reply``/``on_error`` (the first one registered is the outermost). They run where the handler runs:
in the pool thread for a plain handler, on the loop for inline and coroutine handlers, so they must be
quick and must not block there.

- ``on_call(call)``: before the handler; read ``call.headers``, ``call.caller_key`` ...; refuse with
  ``raise zcall.Rejected(code, message)`` (or ``call.abort(...)``); the handler then never runs.
- ``on_reply(call, result)``: return the result to send (the same one, or another).
- ``on_error(call, error)``: return the exception to report (the same, or a translation; a
  ``zcall.Rejected`` sets the status code).

Built-in methods (``zcall.ping`` ...) are intercepted too, so an allow-list covers introspection.
"""

from __future__ import annotations

from typing import Any

from .context import CallContext

__all__ = ["ServerInterceptor"]


class ServerInterceptor:
    """Base class: override the hooks you need; the others pass the call through unchanged."""

    def on_call(self, call: CallContext) -> None:
        """Before the handler runs; raise ``zcall.Rejected`` to refuse the call."""

    def on_reply(self, call: CallContext, result: Any) -> Any:
        """After the handler returned; returns the result to send."""
        return result

    def on_error(self, call: CallContext, error: BaseException) -> BaseException:
        """After the handler (or an ``on_call``) raised; returns the exception to report."""
        return error
