"""Client interceptors: hooks around every call a client makes, on every face (sync, asyncio, callback).

Pass them as ``interceptors=[...]`` to ``SyncClient``, ``AsyncClient`` or ``Peer`` (for the calls it
makes). ``on_call`` runs in the caller's thread before anything is sent (so ``zcall.current_call()``
there is the handler making a nested call, if any); ``on_reply``/``on_error`` run when the call ends
(the caller's thread on the sync face, the client's loop on the async faces), innermost first.

- ``on_call(call)``: read or add ``call.headers`` (a dict of this call's own), refuse the call by
  raising (nothing is sent).
- ``on_reply(call, result)``: return the result to hand to the caller.
- ``on_error(call, error)``: return the exception to raise (the same, or a translation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import OutgoingCall

__all__ = ["ClientInterceptor"]


class ClientInterceptor:
    """Base class: override the hooks you need; the others pass the call through unchanged."""

    def on_call(self, call: OutgoingCall) -> None:
        """Before the call is sent; may change ``call.headers``; raise to refuse it."""

    def on_reply(self, call: OutgoingCall, result: Any) -> Any:
        """The call returned ``result``; returns what the caller gets."""
        return result

    def on_error(self, call: OutgoingCall, error: BaseException) -> BaseException:
        """The call failed with ``error``; returns what the caller gets raised."""
        return error
