"""Many clients in one process: a thousand AsyncClients work, and closing them gives their fds back.

The issue's run stopped at 341 AsyncClients with a raw ``zmq.ZMQError: Too many open files``: three
sockets each on a context that allows 1,023. zcall now raises the default context's MAX_SOCKETS to
what the open-file limit allows (``engine.sockets.default_context``), and when a context is out of
sockets says so in an ``OSError`` that names the way out. Each client program runs in a child process,
so it makes the process-wide context itself, as an application does.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from helpers.hardening import REPO_ROOT, TESTS_DIR, spawn_hostile
from zcall.tools.process import child_env

pytestmark = pytest.mark.timeout(120)

FDS_PER_CLIENT = 4  # a DEALER's TCP connection and mailbox, its monitor pair's mailboxes (measured)

THOUSAND_CLIENTS = """
import json, os, resource, sys, time
import zcall

endpoint, n = sys.argv[1], int(sys.argv[2])
def fds():
    return len(os.listdir("/proc/self/fd"))
before = fds()
t0 = time.monotonic()
clients = [zcall.AsyncClient(endpoint, timeout=30.0) for _ in range(n)]
made = time.monotonic() - t0
futures = [c.call_async("echo", i) for i, c in enumerate(clients)]
results = [f.result(60) for f in futures]
called = time.monotonic() - t0 - made
during = fds()
for c in clients:
    c.close()
closed = time.monotonic() - t0 - made - called
deadline = time.monotonic() + 10  # libzmq's reaper thread closes the sockets' fds soon after close()
while fds() > before + 10 and time.monotonic() < deadline:
    time.sleep(0.01)
released = time.monotonic() - t0 - made - called - closed
after = fds()
print(json.dumps({"ok": results == list(range(n)), "before": before, "during": during, "after": after,
                  "made": made, "called": called, "closed": closed, "released": released,
                  "max_sockets": zcall.engine.sockets.default_context().get(__import__("zmq").MAX_SOCKETS)}))
"""

OUT_OF_SOCKETS = """
import json, sys, traceback, zmq, zcall
out = []
for limit in [int(x) for x in sys.argv[1].split(",")]:
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, limit)  # before its first socket: this context holds that many
    made, error = [], None
    try:
        while len(made) < limit:
            made.append(zcall.AsyncClient("tcp://127.0.0.1:1", context=ctx, timeout=1.0))
    except Exception as exc:
        where = traceback.extract_tb(exc.__traceback__)[-3:]
        text = str(exc) if isinstance(exc, OSError) and type(exc) is not zmq.ZMQError else (
            f"{exc} at " + " <- ".join(f"{f.name}:{f.lineno}" for f in reversed(where))
        )
        error = (type(exc).__name__, getattr(exc, "errno", None), text)
    for c in made:
        c.close()
    ctx.term()
    out.append({"limit": limit, "made": len(made), "error": error})
print(json.dumps(out))
"""


def run_child(program: str, *args: str, timeout: float = 90.0) -> Any:
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(program), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env=child_env(pythonpath=[TESTS_DIR]),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1000 * FDS_PER_CLIENT + 200,
    reason="a thousand clients need ~4,200 open files (ulimit -n); this machine allows fewer",
)
def test_a_thousand_async_clients_in_one_process_work_and_give_their_fds_back() -> None:
    with spawn_hostile("async") as server:
        out = run_child(THOUSAND_CLIENTS, server.endpoint, "1000")
    print(
        f"\n1000 AsyncClients: made in {out['made']:.2f}s, 1000 calls in {out['called']:.2f}s, closed "
        f"in {out['closed']:.2f}s, fds back {out['released']:.2f}s later: {out['before']} -> "
        f"{out['during']} -> {out['after']}; "
        f"MAX_SOCKETS {out['max_sockets']}"
    )
    assert out["ok"]
    assert out["max_sockets"] >= 3000  # raised from libzmq's 1,023: three sockets a client
    assert out["during"] - out["before"] <= 1000 * FDS_PER_CLIENT + 50
    assert out["after"] - out["before"] <= 10  # all given back
    assert out["released"] < 5.0  # promptly (measured ~0.3 s)


def out_of_sockets(*limits: int) -> list[dict[str, Any]]:
    """For each limit, a fresh context holding that many sockets, filled with AsyncClients until one
    fails: how many were made and what the failure was (type, errno, text)."""
    return run_child(OUT_OF_SOCKETS, ",".join(map(str, limits)))


def test_a_context_out_of_sockets_raises_an_os_error_that_says_what_to_do() -> None:
    """9 sockets: three clients fit, the fourth's DEALER is refused."""
    (out,) = out_of_sockets(9)
    assert out["made"] == 3
    name, errno_, text = out["error"]
    assert name == "OSError" and errno_ == 24, out  # EMFILE
    assert "this context allows 9 sockets" in text and "each AsyncClient uses 3" in text, text
    assert "ulimit -n" in text and "MAX_SOCKETS" in text


def test_the_os_error_comes_whichever_of_a_clients_sockets_is_refused() -> None:
    outs = out_of_sockets(*[10, 11] * 15)
    others = [o for o in outs if o["error"][0] != "OSError"]
    assert not others, "\n".join(f"limit {o['limit']}: {o['error']}" for o in others)


TWO_ENDPOINTS_OUT_OF_SOCKETS = """
import json, sys, threading, zmq, zcall
out = []
for limit in [int(x) for x in sys.argv[1].split(",")]:
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, limit)
    made, error = [], None
    try:
        while len(made) < limit:
            made.append(zcall.AsyncClient(["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"], context=ctx))
    except OSError as exc:
        error = exc.errno
    for c in made:
        c.close()
    done = threading.Thread(target=ctx.term, daemon=True)  # waits for every socket of the context
    done.start()
    done.join(10)
    out.append({"limit": limit, "made": len(made), "error": error, "terminated": not done.is_alive()})
print(json.dumps(out))
"""


def test_a_client_whose_second_endpoint_cannot_open_gives_back_the_first_ones_sockets() -> None:
    """Each limit runs out at a different socket of a two-endpoint client: whichever it is, nothing of
    the client that failed is left open (a leaked socket would keep ``ctx.term()`` waiting forever)."""
    outs = run_child(TWO_ENDPOINTS_OUT_OF_SOCKETS, ",".join(str(n) for n in range(3, 12)))
    assert all(o["error"] == 24 for o in outs), outs  # EMFILE, as an OSError that says what to do
    stuck = [o for o in outs if not o["terminated"]]
    assert not stuck, f"sockets left open by a client that failed to open: {stuck}"
