"""The peers of ``scripts/mesh.toml`` and ``scripts/launch_peers.py``: a tiny bank in three processes.

``rates`` converts currencies, ``ledger`` keeps balances and publishes ``ledger.changed`` events, and
``api`` takes deposits in any currency: it asks ``rates`` and then ``ledger`` (a nested call across
peers). Each is a ``zcall.Peer``; ``zcall serve mesh_peers:api --peer rates=... --peer ledger=...`` runs one.
"""

from __future__ import annotations

import threading

import zcall

rates = zcall.Peer("rates")
ledger = zcall.Peer("ledger")
api = zcall.Peer("api")

_RATES_TO_EUR = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17, "CHF": 1.04}
_balances: dict[str, float] = {}
_lock = threading.Lock()


@rates.method(inline=True)
def convert(amount: float, currency: str, to: str = "EUR") -> float:
    """amount in currency, expressed in currency ``to``."""
    try:
        return round(amount * _RATES_TO_EUR[currency] / _RATES_TO_EUR[to], 2)
    except KeyError as exc:
        raise ValueError(f"unknown currency {exc.args[0]!r}; known: {', '.join(_RATES_TO_EUR)}") from None


@ledger.method
def add(account: str, amount_eur: float) -> float:
    """Add amount_eur to account; publish 'ledger.changed'; return the new balance."""
    with _lock:
        _balances[account] = round(_balances.get(account, 0.0) + amount_eur, 2)
        balance = _balances[account]
    ledger.publish("ledger.changed", {"account": account, "balance": balance})
    return balance


@ledger.method(inline=True)
def balance(account: str) -> float:
    """The balance of account in EUR (0 for a new account)."""
    with _lock:
        return _balances.get(account, 0.0)


@api.method
async def deposit(account: str, amount: float, currency: str = "EUR") -> dict[str, float | str]:
    """Deposit amount in currency: rates.convert, then ledger.add (two peers, one call each)."""
    eur = await api.acall("rates", "convert", amount, currency)
    new_balance = await api.acall("ledger", "add", account, eur)
    return {"account": account, "credited_eur": eur, "balance_eur": new_balance}
