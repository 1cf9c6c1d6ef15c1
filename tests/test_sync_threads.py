"""One SyncClient shared by many threads over a real socket: every caller gets its own result."""

from __future__ import annotations

import threading

import zcall
from zcall.testing import running_server

THREADS = 8
CALLS = 200


def test_one_client_many_threads(test_service: zcall.Service) -> None:
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []
    wrong: list[tuple[object, object]] = []
    done = [0] * THREADS

    with running_server(test_service) as server, zcall.SyncClient(server.endpoint, timeout=10.0) as client:

        def worker(n: int) -> None:
            try:
                barrier.wait(5)
                for i in range(CALLS):
                    value = n * 100_000 + i
                    if i % 2:
                        got = client.call("double", value)
                        expected: object = 2 * value
                    else:
                        got = client.call("echo", [n, i, str(value)])
                        expected = [n, i, str(value)]
                    if got != expected:
                        wrong.append((expected, got))
                    done[n] += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a caller hung"
        assert not errors, errors[:3]
        assert not wrong, wrong[:3]
        assert done == [CALLS] * THREADS
        assert client.counters["timeouts"] == 0
        assert client.counters["sockets_opened"] <= THREADS  # sockets are pooled, one per concurrent caller
        assert server.counters["calls"] == THREADS * CALLS
