"""Metrics wired end to end: after a known sequence of calls and failures against a server in another
process, the server's ``zcall.stats`` and the clients' ``statistics()`` count exactly that."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import zcall
from zcall.service.metrics import OTHER
from zcall.testing import spawn_server

TESTS_DIR = Path(__file__).resolve().parent


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_counts_are_exact_after_a_known_sequence(kind: str) -> None:
    with (
        spawn_server("helpers.services:service", kind=kind, pythonpath=[TESTS_DIR]) as proc,  # type: ignore
        zcall.SyncClient(proc.endpoint, timeout=5.0) as sync,
        zcall.AsyncClient(proc.endpoint, timeout=5.0) as aclient,
    ):
        for i in range(4):
            assert sync.call("double", i) == 2 * i
        assert aclient.call_async("double", 10).result(5) == 20
        for _ in range(2):
            with pytest.raises(zcall.RemoteError):
                sync.call("boom", "x")
        with pytest.raises(zcall.MethodNotFound):
            sync.call("no_such_method")
        with pytest.raises(zcall.InvalidArguments):
            sync.call("double")  # missing x
        with pytest.raises(zcall.CallTimeout):
            aclient.options(timeout=0.05).call_async("slow", 0.3).result(5)
        # the REP server is busy with the slow call until it ends: wait for it through a call
        assert sync.options(timeout=5.0).call("double", 0) == 0

        # the async server hears the client's CANCEL on another connection: read until it has
        deadline = time.monotonic() + 5
        while True:
            server = sync.call("zcall.stats")["methods"]
            if kind == "sync" or server["slow"]["cancelled"] == 1 or time.monotonic() > deadline:
                break
        # attempted calls: 6 that ran, and the one with missing arguments, refused under its name
        assert (server["double"]["calls"], server["double"]["ok"], server["double"]["rejected"]) == (7, 6, 1)
        assert (server["boom"]["calls"], server["boom"]["errors"]) == (2, 2)
        assert server[OTHER]["rejected"] == 1  # unknown names never get a row of their own
        if kind == "sync":  # a REP server cannot be cancelled: it finished; only the client gave up
            assert (server["slow"]["ok"], server["slow"]["cancelled"]) == (1, 0)
        else:  # the ROUTER server took the client's cancel
            assert (server["slow"]["ok"], server["slow"]["cancelled"]) == (0, 1)
        assert server["boom"]["availability"] == 0.0
        assert server["double"]["availability"] == 1.0

        client = sync.statistics()["methods"]
        assert (client["double"]["ok"], client["double"]["rejected"]) == (5, 1)
        assert client["boom"]["errors"] == 2
        assert client["no_such_method"]["rejected"] == 1
        a = aclient.statistics()["methods"]
        assert a["double"]["ok"] == 1
        assert (a["slow"]["calls"], a["slow"]["timeouts"], a["slow"]["availability"]) == (1, 1, 0.0)
