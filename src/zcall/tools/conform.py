"""``zcall conform ENDPOINT``: check a running server, zcall's or another language's, against what
docs/protocol.md prescribes, from outside, and print a pass/fail table (like h2spec or Autobahn).

It speaks raw ZeroMQ (a DEALER, and a REQ for one check) and sends hand-made bodies, so it assumes
nothing about the server beyond the protocol: the built-ins ``zcall.ping`` and ``zcall.methods`` that
section 7 reserves. What it checks, by section:

- **§1 framing**: a DEALER request without the empty delimiter, a body split over two frames, a REQ
  client; NOTIFY/CANCEL answered by an empty-body ACK on a REP-style server and by nothing on ROUTER
  (the server's kind is told from that: a NOTIFY, then a PING, whichever answer comes first);
- **§12 test vectors** (docs/protocol-vectors.json, shipped in the package): every refusal vector is sent
  as a request and must get ERROR with its status code and id (§10's order; a malformed zcall built-in
  ext type, ``"requires": "zcall-types"``, may instead be taken as an opaque ext value by a server that
  does not decode them); every positive vector must
  be taken as what it is: a CALL answered with its id (not PROTOCOL_ERROR), a PING by its PONG, a
  NOTIFY/CANCEL by nothing (or an ACK), a REPLY/ERROR/EVENT/PONG by PROTOCOL_ERROR with its id;
- **§9/§10 limits and bad input**: a body over 16 MiB (MESSAGE_TOO_LARGE, id 0, or the connection dropped
  by ZMQ_MAXMSGSIZE), seeded random bytes (each answered with an ERROR), and the server still answering;
- **§7 calls**: the built-ins' shapes, METHOD_NOT_FOUND with close matches, private names, a CALL of
  ``zcall.subscribe``, INVALID_ARGUMENTS, DEADLINE_EXCEEDED for deadline 0, the refusal order, unknown
  meta keys and nil values ignored, the largest id; NOTIFY, PING, CANCEL, ``zcall.subscribe``;
- **§6 retry cache** (``--retry-method M``: a method without arguments whose answer changes every call,
  e.g. a counter): a resend with ``retry = true`` gets the kept reply, even with deadline 0;
- **cancel** (``--slow M``: a method taking seconds to sleep): the CANCEL of a running call;
- **§7 streams** (optional: a server without them answers a STREAM with PROTOCOL_ERROR, which passes):
  the STREAM vectors are answered like a CALL (ITEMs, then REPLY or ERROR, or a refusal), an ITEM,
  CREDIT or END of no open stream is dropped (ROUTER) or answered PROTOCOL_ERROR (REP-style); with
  ``--stream-method M`` (a generator taking a count n and yielding n items): a pushed stream sends no
  item beyond its credit and the rest after a CREDIT, then its REPLY; a pulled stream (REQ) answers
  each pull once, with at most its credit; a CANCEL stops a stream; an item beyond the credit a server
  granted... needs a method with input, so it is not checked here (zcall's tests do);
- **graceful stop** (``--stop``, destructive: the server is sent SIGTERM through the pid its
  ``zcall.ping`` reports, so local servers only): a call in flight (with ``--slow``) is answered, a new
  one gets UNAVAILABLE or nothing, the process exits, the port is free again.

Checks that need an option not given are skipped, and say why. Exit code: 0 every check passed or was
skipped, 1 one failed, 3 nothing answered at the endpoint.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import zmq

from ..errors import ProtocolError
from ..protocol.raw import pack_raw, unpack_raw
from ..protocol.status import StatusCode
from ..protocol.wire import Kind

__all__ = ["Check", "Conformance", "Result", "load_vectors", "main_table", "run"]

MAX_ID = 2**64 - 1
DEFAULT_LIMIT = 16 * 1024 * 1024
ACK = b""


def load_vectors(path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The protocol's test vectors: ``path``, or the copy shipped in the package (docs/protocol-vectors.json
    as released; a test keeps the two identical)."""
    if path is not None:
        return json.loads(Path(path).read_text(encoding="utf-8"))  # type: ignore[no-any-return]
    text = resources.files("zcall.tools").joinpath("protocol-vectors.json").read_text(encoding="utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


@dataclass
class Result:
    """One check's outcome: ``status`` is "pass", "fail" or "skip"; ``detail`` says what was seen."""

    id: str
    section: str
    title: str
    status: str
    detail: str = ""


@dataclass
class Check:
    id: str
    section: str
    title: str
    fn: Callable[[Conformance], str | None]
    """Returns a detail (pass), raises ``Failed`` (fail) or ``Skipped`` (skip)."""


class Failed(Exception):
    """A check saw something the protocol does not allow (its text says what)."""


class Skipped(Exception):
    """A check cannot run against this server or without an option (its text says which)."""


@dataclass
class Answer:
    """One body a server sent back, read leniently: ``kind``/``id`` (None when unreadable), the record."""

    body: bytes
    value: Any = None
    error: str | None = None
    frames: int = 2

    @property
    def is_ack(self) -> bool:
        return self.body == ACK

    @property
    def kind(self) -> int | None:
        v = self.value
        return v[1] if isinstance(v, list) and len(v) >= 3 else None

    @property
    def id(self) -> int | None:
        v = self.value
        return v[2] if isinstance(v, list) and len(v) >= 3 else None

    @property
    def code(self) -> int | None:
        v = self.value
        if self.kind == 3 and len(v) >= 4 and isinstance(v[3], dict):
            c = v[3].get("code")
            return c if type(c) is int else None
        return None

    def describe(self) -> str:
        if self.is_ack:
            return "an empty-body ACK"
        if self.error is not None:
            return f"an unreadable body ({self.error})"
        kind = {2: "REPLY", 3: "ERROR", 7: "PONG", 11: "ITEM", 12: "CREDIT"}.get(
            self.kind or 0, f"kind {self.kind!r}"
        )
        extra = ""
        if self.kind == 3:
            try:
                extra = f" {StatusCode(self.code).name}"  # type: ignore[arg-type]
            except (ValueError, TypeError):
                extra = f" code {self.code!r}"
        return f"{kind}{extra} id={self.id}"


def _read(frames: list[bytes]) -> Answer:
    body = frames[-1]
    a = Answer(body, frames=len(frames))
    if body != ACK:
        try:
            a.value = unpack_raw(body)
        except ProtocolError as exc:
            a.error = str(exc)
    return a


class Probe:
    """A DEALER connection to the server under test; every request is ``["", body]`` unless told."""

    def __init__(self, ctx: zmq.Context, endpoint: str, timeout: float) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.timeout = timeout
        self._ids = iter(range(random.randrange(1, 2**31) << 32 | 1, MAX_ID))

    def next_id(self) -> int:
        return next(self._ids)

    def send(self, body: bytes, *, frames: list[bytes] | None = None) -> None:
        self.sock.send_multipart(frames if frames is not None else [b"", body])

    def recv(self, timeout: float | None = None) -> Answer | None:
        if not self.sock.poll(int(1000 * (self.timeout if timeout is None else timeout))):
            return None
        return _read(self.sock.recv_multipart())

    def fence(self) -> list[Answer]:
        """Send a PING and return every answer that came before its PONG (the server answers one
        connection's requests in order, so these are the answers to what was sent before)."""
        fid = self.next_id()
        self.send(pack_raw([1, 6, fid]))
        before: list[Answer] = []
        deadline = time.monotonic() + self.timeout
        while True:
            a = self.recv(max(0.0, deadline - time.monotonic()))
            if a is None:
                raise Failed(f"no PONG for the fence PING within {self.timeout:g}s")
            if a.kind == 7 and a.id == fid:
                return before
            before.append(a)

    def answer(self, rid: int | None, timeout: float | None = None) -> Answer:
        """The next answer with id ``rid`` (any answer when None); others before it are dropped."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            a = self.recv(max(0.0, deadline - time.monotonic()))
            if a is None:
                raise Failed(f"no answer{'' if rid is None else f' with id {rid}'} within {self.timeout:g}s")
            if rid is None or a.id == rid:
                return a

    def request(self, value: Any) -> Answer:
        """Send one hand-made request (a CALL/PING value) and return the answer carrying its id."""
        self.send(pack_raw(value))
        rid = value[2] if isinstance(value, list) and len(value) > 2 and type(value[2]) is int else None
        return self.answer(rid)

    def close(self) -> None:
        self.sock.close(linger=0)


def call(
    rid: int, method: str, args: list[Any] | None = None, kwargs: Any = None, meta: Any = None
) -> list[Any]:
    """A CALL as a plain list (what a hand-written client would pack)."""
    return [
        1,
        1,
        rid,
        method,
        [] if args is None else args,
        {} if kwargs is None else kwargs,
        {} if meta is None else meta,
    ]


def expect_error(a: Answer, code: StatusCode, rid: int) -> str:
    if a.kind != 3 or a.code != int(code) or a.id != rid:
        raise Failed(f"expected ERROR {code.name} id={rid}, got {a.describe()}")
    record = a.value[3]
    for key, typ in (("type", str), ("message", str)):
        if key in record and not isinstance(record[key], typ):
            raise Failed(f"ERROR record's {key!r} is not a str: {record[key]!r}")
    return f"ERROR {code.name} id={rid}"


def expect_reply(a: Answer, rid: int) -> Any:
    if a.kind != 2 or a.id != rid:
        raise Failed(f"expected REPLY id={rid}, got {a.describe()}")
    return a.value[3] if len(a.value) > 3 else None


@dataclass
class Conformance:
    """One run against one endpoint: the checks, their options, and what was learned (the server kind)."""

    endpoint: str
    timeout: float = 3.0
    vectors: list[dict[str, Any]] = field(default_factory=load_vectors)
    retry_method: str | None = None
    slow_method: str | None = None
    stream_method: str | None = None
    stop: bool = False
    seed: int = 0
    kind: str = "?"
    """"router" (sends nothing for NOTIFY) or "rep" (ACKs it), found by the first check."""

    def __post_init__(self) -> None:
        self.ctx = zmq.Context()
        self.probe = Probe(self.ctx, self.endpoint, self.timeout)

    def fresh(self) -> Probe:
        """A new connection (after a check that may have cost the old one its connection)."""
        self.probe.close()
        self.probe = Probe(self.ctx, self.endpoint, self.timeout)
        return self.probe

    def silent(self, body: bytes, what: str, frames: list[bytes] | None = None) -> str:
        """``body`` must get no answer on ROUTER and exactly an ACK on REP."""
        self.probe.send(body, frames=frames)
        got = self.probe.fence()
        want = [] if self.kind == "router" else ["an empty-body ACK"]
        seen = [a.describe() for a in got]
        if self.kind == "?" and seen in ([], ["an empty-body ACK"]):
            return f"{' '.join(seen) or 'no answer'} (server kind unknown: either is right)"
        if seen != want:
            expected = " ".join(want) or "no answer"
            raise Failed(f"{what}: expected {expected} on a {self.kind} server, got {seen}")
        return f"{' '.join(want) or 'no answer'} ({self.kind})"

    def close(self) -> None:
        self.probe.close()
        self.ctx.destroy(linger=0)

    def checks(self) -> Iterator[Check]:
        yield from _CHECKS
        for v in self.vectors:
            yield Check(f"vector:{v['name']}", "§12", v.get("description", v["name"])[:70], _vector_check(v))
        yield from _LATE_CHECKS

    def run(self) -> list[Result]:
        results: list[Result] = []
        for check in self.checks():
            if results and results[0].status == "fail" and check.id != "alive":
                results.append(Result(check.id, check.section, check.title, "skip", "no server answered"))
                continue
            try:
                detail = check.fn(self) or ""
                status = "pass"
            except Failed as exc:
                status, detail = "fail", str(exc)
                self.fresh()  # what it left unread must not confuse the next check
            except Skipped as exc:
                status, detail = "skip", str(exc)
            except zmq.ZMQError as exc:
                status, detail = "fail", f"socket error: {exc}"
                self.fresh()
            results.append(Result(check.id, check.section, check.title, status, detail))
        return results


# -- the checks ------------------------------------------------------------------------------------------

_CHECKS: list[Check] = []
_LATE_CHECKS: list[Check] = []


def check(id: str, section: str, title: str, late: bool = False) -> Callable[..., Any]:  # noqa: A002
    def deco(fn: Callable[[Conformance], str | None]) -> Callable[[Conformance], str | None]:
        (_LATE_CHECKS if late else _CHECKS).append(Check(id, section, title, fn))
        return fn

    return deco


@check("reachable", "§7", "zcall.ping answers: service (pid, uptime unless introspection is off)")
def _reachable(c: Conformance) -> str:
    rid = c.probe.next_id()
    r = expect_reply(c.probe.request(call(rid, "zcall.ping")), rid)
    if not isinstance(r, dict) or not isinstance(r.get("service"), str):
        raise Failed(f"zcall.ping returned {r!r}, not {{service: str, pid: int, uptime: number}}")
    if "pid" in r and type(r["pid"]) is not int:
        raise Failed(f"zcall.ping's pid is {r['pid']!r}")
    if "uptime" in r and not isinstance(r["uptime"], int | float):
        raise Failed(f"zcall.ping's uptime is {r['uptime']!r}")
    pid = f", pid {r['pid']}" if "pid" in r else " (no pid: introspection off)"
    return f"service {r['service']!r}{pid}"


@check("kind", "§1", "NOTIFY: an empty-body ACK (REP-style) or nothing (ROUTER)")
def _kind(c: Conformance) -> str:
    c.probe.send(pack_raw([1, 4, c.probe.next_id(), "zcall.conform.nothing", [], {}, {}]))
    got = c.probe.fence()
    if not got:
        c.kind = "router"
        return "no answer: a ROUTER server"
    if [a.is_ack for a in got] == [True]:
        c.kind = "rep"
        return "an ACK: a REP-style server"
    raise Failed(f"a NOTIFY was answered with {[a.describe() for a in got]}")


@check("framing:no-delimiter", "§1", "a DEALER request without the empty delimiter")
def _no_delimiter(c: Conformance) -> str:
    body = pack_raw([1, 6, c.probe.next_id()])
    if c.kind == "?":
        raise Skipped("the server's kind is unknown (see check 'kind'): REP drops this, ROUTER answers it")
    if c.kind == "router":
        c.probe.send(body, frames=[body])
        got = c.probe.fence()
        if len(got) != 1:
            raise Failed(f"expected one ERROR PROTOCOL_ERROR id=0, got {[a.describe() for a in got]}")
        if got[0].frames != 2:
            raise Failed(f"the ERROR came back as {got[0].frames} frames, not [identity, '', body]")
        return expect_error(got[0], StatusCode.PROTOCOL_ERROR, 0)
    c.probe.send(body, frames=[body])
    got = c.probe.fence()
    if got and not (len(got) == 1 and got[0].code == StatusCode.PROTOCOL_ERROR and got[0].id == 0):
        seen = [a.describe() for a in got]
        raise Failed(f"expected nothing (REP drops it) or PROTOCOL_ERROR id=0, got {seen}")
    return "dropped (REP)" if not got else "ERROR PROTOCOL_ERROR id=0"


@check("framing:split-body", "§1", "a body split over two frames")
def _split(c: Conformance) -> str:
    body = pack_raw([1, 6, c.probe.next_id()])
    c.probe.send(b"", frames=[b"", body[:2], body[2:]])
    got = c.probe.fence()
    if len(got) != 1:
        raise Failed(f"expected one ERROR PROTOCOL_ERROR id=0, got {[a.describe() for a in got]}")
    return expect_error(got[0], StatusCode.PROTOCOL_ERROR, 0)


@check("framing:req", "§1", "a REQ client's call is answered")
def _req(c: Conformance) -> str:
    sock = c.ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(c.endpoint)
        rid = c.probe.next_id()
        sock.send(pack_raw(call(rid, "zcall.ping")))
        if not sock.poll(int(c.timeout * 1000)):
            raise Failed("no answer to a REQ client")
        expect_reply(_read([sock.recv()]), rid)
    finally:
        sock.close(linger=0)
    return "REPLY"


@check("calls:methods", "§7", "zcall.methods: sorted [{name, signature, doc, coroutine, idempotent}]")
def _methods(c: Conformance) -> str:
    rid = c.probe.next_id()
    a = c.probe.request(call(rid, "zcall.methods"))
    if a.code == StatusCode.METHOD_NOT_FOUND:
        raise Skipped("the server leaves out zcall.methods (zcall: Service(introspection=False))")
    r = expect_reply(a, rid)
    if not isinstance(r, list) or not all(isinstance(m, dict) for m in r):
        raise Failed(f"zcall.methods returned {type(r).__name__}, not a list of maps")
    names = [m.get("name") for m in r]
    if names != sorted(names, key=str):
        raise Failed("zcall.methods is not sorted by name")
    for m in r:
        missing = {"name", "signature", "doc", "coroutine", "idempotent"} - set(m)
        if missing:
            raise Failed(f"{m.get('name')!r} lacks {sorted(missing)}")
    if "zcall.ping" not in names:
        raise Failed("zcall.methods does not list zcall.ping")
    return f"{len(r)} methods"


@check("calls:not-found", "§7a", "an unknown method: METHOD_NOT_FOUND, data.close a list")
def _not_found(c: Conformance) -> str:
    rid = c.probe.next_id()
    a = c.probe.request(call(rid, "zcall.pign"))
    out = expect_error(a, StatusCode.METHOD_NOT_FOUND, rid)
    data = a.value[3].get("data")
    if not isinstance(data, dict) or not isinstance(data.get("close"), list):
        raise Failed(f"data is {data!r}, not {{'close': [...]}}")
    return out + f", close={data['close']}"


@check("calls:private", "§7a", "names with an empty or '_' part are not found, with no close matches")
def _private(c: Conformance) -> str:
    for name in ("_ping", "zcall._ping", "a..b", "", "zcall."):
        rid = c.probe.next_id()
        a = c.probe.request(call(rid, name))
        expect_error(a, StatusCode.METHOD_NOT_FOUND, rid)
        data = a.value[3].get("data")
        if isinstance(data, dict) and data.get("close"):
            raise Failed(f"{name!r}: close matches {data['close']} offered for a private name")
    return "5 names"


@check("calls:subscribe-call", "§7", "a CALL of zcall.subscribe: REPLY with the patterns it keeps")
def _subscribe_call(c: Conformance) -> str:
    rid = c.probe.next_id()
    a = c.probe.request(call(rid, "zcall.subscribe", [["conform.*", 7]]))
    if a.kind == 3 and a.code == StatusCode.METHOD_NOT_FOUND and a.id == rid:
        return "METHOD_NOT_FOUND: a server from before the acknowledgement (allowed; clients fall back)"
    kept = expect_reply(a, rid)
    if not isinstance(kept, list) or any(p != "conform.*" for p in kept):
        raise Failed(f"expected REPLY ['conform.*'] (or [] from a server that cannot push), got {kept!r}")
    if c.kind == "router" and kept != ["conform.*"]:
        raise Failed(
            f"a ROUTER server keeps the str patterns it was asked: expected ['conform.*'], got {kept!r}"
        )
    rid = c.probe.next_id()
    gone = expect_reply(c.probe.request(call(rid, "zcall.subscribe", [[]])), rid)
    if gone != []:
        raise Failed(f"an empty list unsubscribes: expected REPLY [], got {gone!r}")
    return f"REPLY {kept!r}, then [] for []"


@check("calls:bad-args", "§7b", "arguments that do not bind: INVALID_ARGUMENTS")
def _bad_args(c: Conformance) -> str:
    rid = c.probe.next_id()
    a = c.probe.request(call(rid, "zcall.ping", [1, 2, 3]))
    return expect_error(a, StatusCode.INVALID_ARGUMENTS, rid)


@check("deadline:zero", "§4/§7e", "deadline 0 on arrival: DEADLINE_EXCEEDED, not run")
def _deadline_zero(c: Conformance) -> str:
    rid = c.probe.next_id()
    return expect_error(
        c.probe.request(call(rid, "zcall.ping", meta={"deadline": 0})), StatusCode.DEADLINE_EXCEEDED, rid
    )


@check("deadline:order", "§7", "refusal order: not found (a) and bad arguments (b) before deadline (e)")
def _order(c: Conformance) -> str:
    rid = c.probe.next_id()
    a = c.probe.request(call(rid, "zcall.nope", meta={"deadline": 0}))
    expect_error(a, StatusCode.METHOD_NOT_FOUND, rid)
    rid = c.probe.next_id()
    a = c.probe.request(call(rid, "zcall.ping", [1], meta={"deadline": 0}))
    expect_error(a, StatusCode.INVALID_ARGUMENTS, rid)
    return "a, b, then e"


@check("meta:forward", "§4/§11", "unknown meta keys, nil values and trailing items are ignored")
def _forward(c: Conformance) -> str:
    rid = c.probe.next_id()
    meta = {"x-future": {"a": 1}, "deadline": None, "headers": None, "retry": "yes"}
    expect_reply(c.probe.request([*call(rid, "zcall.ping", meta=meta), "extra", 7]), rid)
    rid = c.probe.next_id()
    expect_reply(c.probe.request([1, 1, rid, "zcall.ping", [], None, None]), rid)
    return "REPLY"


@check("ids:max", "§6", "the largest id (2**64-1) comes back unchanged (CALL and PING)")
def _max_id(c: Conformance) -> str:
    expect_reply(c.probe.request(call(MAX_ID, "zcall.ping")), MAX_ID)
    a = c.probe.request([1, 6, MAX_ID])
    if a.kind != 7 or a.id != MAX_ID:
        raise Failed(f"expected PONG id={MAX_ID}, got {a.describe()}")
    return "REPLY, PONG"


@check("notify", "§7", "a NOTIFY is run and not answered (ACK on REP)")
def _notify(c: Conformance) -> str:
    return c.silent(pack_raw([1, 4, c.probe.next_id(), "zcall.ping", [], {}, {}]), "NOTIFY zcall.ping")


@check("cancel:unknown", "§7", "a CANCEL of an id not in flight: nothing (ACK on REP)")
def _cancel_unknown(c: Conformance) -> str:
    return c.silent(pack_raw([1, 8, c.probe.next_id()]), "CANCEL")


@check("events:subscribe", "§7", "a zcall.subscribe NOTIFY is not answered (ACK on REP)")
def _subscribe(c: Conformance) -> str:
    out = c.silent(pack_raw([1, 4, c.probe.next_id(), "zcall.subscribe", [["zcall.*"]], {}, {}]), "subscribe")
    c.silent(pack_raw([1, 4, c.probe.next_id(), "zcall.subscribe", [[]], {}, {}]), "unsubscribe")
    return out


@check("limits:too-large", "§9", "a body over 16 MiB: MESSAGE_TOO_LARGE id 0, or the connection dropped")
def _too_large(c: Conformance) -> str:
    c.probe.send(b"\x00" * (DEFAULT_LIMIT + 1))
    try:
        got = c.probe.fence()
    except Failed:  # ZMQ_MAXMSGSIZE: libzmq dropped the connection before buffering it (allowed)
        c.fresh()
        rid = c.probe.next_id()
        expect_reply(c.probe.request(call(rid, "zcall.ping")), rid)
        return "connection dropped (ZMQ_MAXMSGSIZE); a new one is served"
    if len(got) != 1:
        raise Failed(f"expected one ERROR MESSAGE_TOO_LARGE id=0, got {[a.describe() for a in got]}")
    return expect_error(got[0], StatusCode.MESSAGE_TOO_LARGE, 0)


@check("bad-input:random", "§10", "random bytes: every body answered with an ERROR, the server keeps serving")
def _random(c: Conformance) -> str:
    rng = random.Random(c.seed)
    bodies = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) for _ in range(40)]
    for b in bodies:
        c.probe.send(b)
    got = c.probe.fence()
    if len(got) != len(bodies) or not all(a.kind == 3 for a in got):
        bad = [a.describe() for a in got if a.kind != 3][:3]
        raise Failed(f"{len(bodies)} random bodies got {len(got)} answers; not ERROR: {bad}")
    return f"{len(bodies)} ERRORs (seed {c.seed})"


@check("retry:cache", "§6/§7c", "a resend with retry=true gets the kept reply, even with deadline 0")
def _retry(c: Conformance) -> str:
    m = c.retry_method
    if m is None:
        raise Skipped("needs --retry-method M: a method without arguments whose answer changes each call")
    rid = c.probe.next_id()
    first = expect_reply(c.probe.request(call(rid, m, meta={"retry": True})), rid)
    again = expect_reply(c.probe.request(call(rid, m, meta={"retry": True})), rid)
    late = expect_reply(c.probe.request(call(rid, m, meta={"retry": True, "deadline": 0})), rid)
    other = c.probe.next_id()
    fresh = expect_reply(c.probe.request(call(other, m, meta={"retry": True})), other)
    if not first == again == late:
        raise Failed(f"the resends got {again!r} and {late!r}, not the kept {first!r}")
    if fresh == first:
        raise Failed(f"{m} answered {fresh!r} twice: it does not change per call, so the cache is not seen")
    return f"kept {first!r}, a new id got {fresh!r}"


@check("cancel:running", "§7", "a CANCEL of a running call: the call gets nothing, CANCELLED or its reply")
def _cancel_running(c: Conformance) -> str:
    if c.slow_method is None:
        raise Skipped("needs --slow M: a method taking the seconds to sleep")
    rid = c.probe.next_id()
    c.probe.send(pack_raw(call(rid, c.slow_method, [0.5])))
    c.probe.send(pack_raw([1, 8, rid]))
    got = c.probe.fence()  # a REP-style server runs the call to its end first, then ACKs the CANCEL
    late = c.probe.recv(1.0) if c.kind == "router" else None
    answers = [a for a in [*got, *([late] if late else [])] if a.id == rid]
    rest = [a.describe() for a in got if a.id != rid]
    want = [] if c.kind == "router" else ["an empty-body ACK"]
    if rest != want:
        raise Failed(f"the CANCEL: expected {' '.join(want) or 'no answer'}, got {rest}")
    for a in answers:
        if not (a.kind == 2 or a.code == StatusCode.CANCELLED):
            raise Failed(f"the cancelled call was answered {a.describe()}")
    return f"the call: {answers[0].describe() if answers else 'nothing'} ({c.kind})"


def _stream_body(rid: int, method: str, args: list[Any], credit: int, pull: bool = False) -> bytes:
    opts: dict[str, Any] = {"credit": credit}
    if pull:
        opts["pull"] = True
    return pack_raw([1, 10, rid, method, args, {}, {"deadline": 10000}, opts])


def _stream_until(c: Conformance, rid: int, items: list[Any], limit: int, what: str) -> Answer | None:
    """Take the ITEMs of stream ``rid`` until its end (returned) or until the fence (None); fail past
    ``limit`` items."""
    for a in c.probe.fence():
        if a.id != rid:
            continue
        if a.kind == 11:
            items.append(a.value[3] if len(a.value) > 3 else None)
            if len(items) > limit:
                raise Failed(f"{what}: {len(items)} items came, past the credit of {limit}")
        elif a.kind in (2, 3):
            return a
        else:
            raise Failed(f"{what}: got {a.describe()}")
    return None


@check("streams:push", "§7", "a pushed stream: no item past its credit, the rest after CREDIT, then REPLY")
def _stream_push(c: Conformance) -> str:
    m = c.stream_method
    if m is None:
        raise Skipped("needs --stream-method M: a generator taking a count n and yielding n items")
    rid = c.probe.next_id()
    c.probe.send(_stream_body(rid, m, [20], 3))
    items: list[Any] = []
    end = _stream_until(c, rid, items, 3, "credit 3")
    if end is not None:
        if end.code == StatusCode.PROTOCOL_ERROR:
            data = end.value[3].get("data") if isinstance(end.value[3], dict) else None
            if isinstance(data, dict) and data.get("pull") is True:
                return "refused: this server answers pulls only (data pull: true; allowed)"
            return "refused: the server takes no streams (allowed)"
        raise Failed(f"the stream ended with {end.describe()} after {len(items)} of 20 items")
    deadline = time.monotonic() + c.timeout
    while len(items) < 3 and time.monotonic() < deadline:  # a pool may make the first ones late
        end = _stream_until(c, rid, items, 3, "credit 3")
        if end is not None:
            raise Failed(f"the stream ended with {end.describe()} after {len(items)} items")
    if len(items) != 3:
        raise Failed(f"{len(items)} items within {c.timeout:g}s, not the 3 its credit allowed")
    c.probe.send(pack_raw([1, 12, rid, 18]))  # one more than it has items: its end may need it
    while end is None and time.monotonic() < deadline + c.timeout:
        end = _stream_until(c, rid, items, 20, "credit 21")
    if end is None or end.kind != 2:
        raise Failed(f"after CREDIT 18: {len(items)} items and {end.describe() if end else 'no end'}")
    if items != list(range(20)):
        raise Failed(f"items {items[:5]}... are not 0 ... 19 in order")
    return "3 items, then the other 17 after CREDIT 18, then REPLY"


@check("streams:pull", "§7", "a pulled stream (REQ): one answer per pull, at most its credit, then the end")
def _stream_pull(c: Conformance) -> str:
    m = c.stream_method
    if m is None:
        raise Skipped("needs --stream-method M: a generator taking a count n and yielding n items")
    sock = c.ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(c.endpoint)
        rid = c.probe.next_id()
        sock.send(_stream_body(rid, m, [10], 4, pull=True))
        items: list[Any] = []
        answers = 0
        while True:
            if not sock.poll(int(c.timeout * 1000)):
                raise Failed(f"no answer to pull {answers + 1}")
            got = _flat(_read([sock.recv()]))
            answers += 1
            news = [x for x in got if x.kind == 11]
            if len(news) > 4:
                raise Failed(f"an answer of {len(news)} items to a pull of 4")
            items += [x.value[3] for x in news]
            ends = [x for x in got if x.kind in (2, 3)]
            if ends:
                if ends[0].code == StatusCode.PROTOCOL_ERROR and not items:
                    return "refused: the server takes no streams (allowed)"
                if ends[0].kind != 2 or items != list(range(10)):
                    raise Failed(f"ended with {ends[0].describe()} after items {items}")
                return f"10 items in {answers} answers, then REPLY"
            if not news:
                raise Failed(f"an answer with no item and no end: {[x.describe() for x in got]}")
            if answers > 10:
                raise Failed("more than 10 answers for 10 items")
            sock.send(pack_raw([1, 12, rid, 4]))
    finally:
        sock.close(linger=0)


@check("streams:cancel", "§7", "a CANCEL stops a stream: no item after it, and the server goes on")
def _stream_cancel(c: Conformance) -> str:
    m = c.stream_method
    if m is None:
        raise Skipped("needs --stream-method M: a generator taking a count n and yielding n items")
    if c.kind == "rep":
        return _stream_cancel_pulled(c, m)
    rid = c.probe.next_id()
    c.probe.send(_stream_body(rid, m, [10**9], 2))
    items: list[Any] = []
    deadline = time.monotonic() + c.timeout
    while len(items) < 2 and time.monotonic() < deadline:
        end = _stream_until(c, rid, items, 2, "credit 2")
        if end is not None:
            return (
                "refused: the server takes no streams (allowed)" if not items else f"ended: {end.describe()}"
            )
    c.probe.send(pack_raw([1, 8, rid]))
    c.probe.send(pack_raw([1, 12, rid, 5]))  # credit for a cancelled stream: dropped
    late = [a.describe() for a in c.probe.fence() if a.id == rid]
    if late:
        raise Failed(f"after CANCEL the stream still sent {late}")
    return f"{len(items)} items, then nothing after CANCEL"


def _stream_cancel_pulled(c: Conformance, m: str) -> str:
    """A REP-style server: a pulled stream's CANCEL gets the ACK, and a pull after it PROTOCOL_ERROR."""
    sock = c.ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(c.endpoint)
        rid = c.probe.next_id()
        answers: list[Answer] = []
        for body in (
            _stream_body(rid, m, [10**9], 2, pull=True),
            pack_raw([1, 8, rid]),
            pack_raw([1, 12, rid, 2]),
        ):
            sock.send(body)
            if not sock.poll(int(c.timeout * 1000)):
                raise Failed(f"no answer to request {len(answers) + 1} of a pulled stream")
            answers.append(_read([sock.recv()]))
        first, ack, late = answers
        if first.code == StatusCode.PROTOCOL_ERROR:
            return "refused: the server takes no streams (allowed)"
        if not ack.is_ack:
            raise Failed(f"the CANCEL of a pulled stream was answered {ack.describe()}, not the ACK")
        if late.code != StatusCode.PROTOCOL_ERROR or late.id != rid:
            raise Failed(f"a pull after the CANCEL was answered {late.describe()}: the stream is still open")
        return "a pull, then CANCEL (ACK), then a pull: PROTOCOL_ERROR (no such stream)"
    finally:
        sock.close(linger=0)


@check("alive", "§10", "still serving after everything above", late=True)
def _alive(c: Conformance) -> str:
    c.fresh()
    rid = c.probe.next_id()
    expect_reply(c.probe.request(call(rid, "zcall.ping")), rid)
    return "REPLY"


@check("stop:graceful", "§7", "SIGTERM: in-flight answered, new calls UNAVAILABLE, port freed", late=True)
def _stop(c: Conformance) -> str:
    if not c.stop:
        raise Skipped("needs --stop (sends SIGTERM to the pid zcall.ping reports; local servers only)")
    rid = c.probe.next_id()
    pid = expect_reply(c.probe.request(call(rid, "zcall.ping")), rid).get("pid")
    if type(pid) is not int:
        raise Skipped("zcall.ping reports no pid (introspection off): nothing to send SIGTERM to")
    slow_id = None
    notes = []
    if c.slow_method is not None and c.kind == "router":
        slow_id = c.probe.next_id()
        c.probe.send(pack_raw(call(slow_id, c.slow_method, [0.5])))
        c.probe.fence()  # its PONG comes while the slow call runs: the server has taken the call in
    elif c.slow_method is not None:
        notes.append("in-flight part skipped (a REP-style server answers no fence while it runs a call)")
    os.kill(pid, signal.SIGTERM)
    if slow_id is not None:
        expect_reply(c.probe.answer(slow_id, 10), slow_id)
        notes.append("in-flight call answered")
    late = c.fresh()
    rid = late.next_id()
    late.send(pack_raw(call(rid, "zcall.ping")))
    a = late.recv(2.0)
    if a is not None and not (a.id == rid and (a.kind == 2 or a.code == StatusCode.UNAVAILABLE)):
        raise Failed(f"a call during the stop got {a.describe()}")
    notes.append("a new call: " + ("nothing" if a is None else a.describe()))
    deadline = time.monotonic() + 15
    while _alive_pid(pid):
        if time.monotonic() > deadline:
            raise Failed(f"pid {pid} still runs 15 s after SIGTERM")
        time.sleep(0.05)  # polling the process table: there is no exit event for a non-child
    if c.endpoint.startswith("tcp://"):
        host, port = c.endpoint[6:].rsplit(":", 1)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libzmq binds: TIME_WAIT is fine
            try:
                s.bind((host.strip("[]"), int(port)))
            except OSError as exc:
                raise Failed(f"the port is not free after the exit: {exc}") from None
        notes.append("port free")
    return ", ".join(notes)


def _alive_pid(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return True


# -- the vectors -----------------------------------------------------------------------------------------

_KINDS = {k.name: int(k) for k in Kind}  # the vectors name kinds; docs/protocol.md §3 numbers them


def _flat(a: Answer) -> list[Answer]:
    """An answer, or the items of a BATCH answer."""
    v = a.value
    if a.kind == 9 and isinstance(v, list) and len(v) >= 4 and isinstance(v[3], list):
        return [Answer(b"-", value=x) for x in v[3]]
    return [a]


def _batch_vector(c: Conformance, body: bytes, items: list[dict[str, Any]]) -> str:
    """A BATCH is optional: refused whole (one PROTOCOL_ERROR, id 0), or each item answered as if it
    had come alone (coalesced into BATCH answers or not; a call's answer may come after later items')."""
    c.probe.send(body)
    quiet = ("NOTIFY", "CANCEL", "ITEM", "CREDIT", "END")  # no answer (an ITEM of no open stream: dropped)
    want = {m["id"]: m for m in items if m["kind"] not in quiet}
    got: dict[int | None, Answer] = {}
    deadline = time.monotonic() + c.probe.timeout
    while len(got) < len(want):
        a = c.probe.recv(max(0.0, deadline - time.monotonic()))
        if a is None:
            break
        for x in _flat(a):
            if x.kind == 3 and x.id == 0 and x.code == StatusCode.PROTOCOL_ERROR and not got:
                if c.probe.fence():
                    raise Failed("a refused BATCH was answered more than once")
                return "refused whole: this server does not take BATCH (allowed)"
            if x.id not in want or x.id in got:
                raise Failed(f"an answer no item asked for: {x.describe()}")
            got[x.id] = x
    extra = [x.describe() for a in c.probe.fence() for x in _flat(a)]
    if len(got) != len(want) or extra:
        seen = [a.describe() for a in got.values()] + extra
        raise Failed(f"expected one answer per CALL/PING item (ids {sorted(want)}), got {seen}")
    for rid, m in want.items():
        a = got[rid]
        if m["kind"] == "PING" and a.kind != 7:
            raise Failed(f"a PING item was answered {a.describe()}")
        if m["kind"] == "CALL" and (
            a.kind not in (2, 3) or a.code in (StatusCode.PROTOCOL_ERROR, StatusCode.UNSUPPORTED_VERSION)
        ):
            raise Failed(f"a valid CALL item was answered {a.describe()}")
        if m["kind"] in ("REPLY", "ERROR", "EVENT", "PONG"):
            expect_error(a, StatusCode.PROTOCOL_ERROR, rid)
    return f"taken: one answer per item ({len(got)})"


def _stream_vector(c: Conformance, body: bytes, rid: int) -> str:
    """A valid STREAM is answered as a CALL would be (ITEMs first if it runs), or refused whole with
    PROTOCOL_ERROR by a server without streams (or without that kind); nothing is left open after."""
    c.probe.send(body)
    items = 0
    deadline = time.monotonic() + c.probe.timeout
    a = None
    while a is None:
        got = c.probe.recv(max(0.0, deadline - time.monotonic()))
        if got is None:
            raise Failed(f"no answer with id {rid} within {c.probe.timeout:g}s")
        for x in _flat(got):  # a pull is answered with one BATCH of items (and maybe the end)
            if x.id == rid and x.kind == 11:
                items += 1
            elif x.id == rid:
                a = x
        if a is None and got.kind == 9 and items:
            break  # a pull answered with items only: the stream stays open for the next pull
    if a is None:
        c.probe.send(pack_raw([1, 8, rid]))
        c.probe.fence()
        return f"answered with {items} items (a pull); cancelled"
    if a.kind not in (2, 3) or a.code == StatusCode.UNSUPPORTED_VERSION:
        raise Failed(f"a valid STREAM was answered {a.describe()}")
    if items:
        c.probe.send(pack_raw([1, 8, rid]))  # the method existed: leave nothing open
        c.probe.fence()
    if a.code == StatusCode.PROTOCOL_ERROR:
        return f"refused: {a.describe()} (no streams, or not this kind: allowed)"
    return a.describe() + (f" after {items} items" if items else "")


def _vector_check(v: dict[str, Any]) -> Callable[[Conformance], str | None]:
    def run_vector(c: Conformance) -> str:
        if "max_message_size" in v:
            raise Skipped(f"decoded under a {v['max_message_size']}-byte limit: limits:too-large checks it")
        body = bytes.fromhex(v["hex"])
        if "error" in v:
            code = StatusCode[v["error"]]
            c.probe.send(body)
            got = c.probe.fence()
            if len(got) != 1:
                raise Failed(f"expected one ERROR {code.name}, got {[a.describe() for a in got]}")
            a = got[0]
            opaque = a.kind == 2 or (a.kind == 3 and a.code not in (code, StatusCode.UNSUPPORTED_VERSION))
            if v.get("requires") == "zcall-types" and opaque:  # §8: a receiver that does not decode them
                return f"{a.describe()}: zcall's built-in types taken as opaque ext values (allowed)"
            return expect_error(got[0], code, v["error_id"])
        m = v["message"]
        kind, rid = _KINDS[m["kind"]], m["id"]
        if kind == 9:
            return _batch_vector(c, body, m["items"])
        if kind == 6:
            c.probe.send(body)
            a = c.probe.answer(rid)
            if a.kind != 7:
                raise Failed(f"expected PONG id={rid}, got {a.describe()}")
            return "PONG"
        if kind == 1:
            c.probe.send(body)
            a = c.probe.answer(rid)
            if a.kind not in (2, 3) or a.code in (StatusCode.PROTOCOL_ERROR, StatusCode.UNSUPPORTED_VERSION):
                raise Failed(f"a valid CALL was answered {a.describe()}")
            return a.describe()
        if kind in (4, 8):
            return c.silent(body, m["kind"])
        if kind == 10:
            return _stream_vector(c, body, rid)
        if kind in (11, 12, 13):
            c.probe.send(body)  # of no open stream: dropped (ROUTER), or PROTOCOL_ERROR (REP-style)
            got = c.probe.fence()
            if not got:
                return "dropped: no such stream"
            if len(got) == 1 and got[0].code == StatusCode.PROTOCOL_ERROR and got[0].id == rid:
                return "ERROR PROTOCOL_ERROR (no such stream here)"
            raise Failed(f"{m['kind']} of no open stream: expected nothing or one PROTOCOL_ERROR, got {got}")
        c.probe.send(body)  # a kind only servers send: rule 8
        got = c.probe.fence()
        if len(got) != 1:
            raise Failed(f"expected ERROR PROTOCOL_ERROR id={rid}, got {[a.describe() for a in got]}")
        return expect_error(got[0], StatusCode.PROTOCOL_ERROR, rid)

    return run_vector


# -- running and reporting -------------------------------------------------------------------------------


def main_table(results: list[Result], endpoint: str, kind: str) -> str:
    """The pass/fail table and a summary line."""
    width = max(len(r.id) for r in results)
    lines = [f"zcall conform {endpoint} ({kind} server)"]
    for r in results:
        mark = {"pass": "PASS", "fail": "FAIL", "skip": "skip"}[r.status]
        lines.append(f"{mark}  {r.id.ljust(width)}  {r.section:<14} {r.title}")
        if r.detail and r.status != "pass":
            lines.append(f"      {'':{width}}  {r.detail}")
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "skip")}
    lines.append(f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    return "\n".join(lines)


def run(endpoint: str, **options: Any) -> tuple[list[Result], str]:
    """Run every check against ``endpoint``; returns the results and the server kind found."""
    conf = Conformance(endpoint, **options)
    try:
        return conf.run(), conf.kind
    finally:
        conf.close()
