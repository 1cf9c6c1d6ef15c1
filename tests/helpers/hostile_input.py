"""Malformed zcall requests for fuzzing servers over real sockets, with what a server must answer to each.

A ``Case`` is the frames a raw client sends and the one answer ``expected`` of a server by the rules of
docs/protocol.md (section 1 for framing, section 10 for bad input). ``classify`` is this test suite's own
reading of those rules, written against msgpack directly (not zcall's decoder), so the server's answers
are checked against the spec rather than against itself. Families come two ways: hypothesis strategies
(structure, shrinkable) and a seeded ``random`` generator (bulk, cheap), both producing ``Case``s.
"""

from __future__ import annotations

import collections
import random
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq
from hypothesis import strategies as st

CALL, REPLY, ERROR, NOTIFY, EVENT, PING, PONG, CANCEL, BATCH = range(1, 10)
STREAM, ITEM, CREDIT, END = range(10, 14)  # answered by section 7 "Streams" (tests/test_streams.py)
MAX_BATCH_ITEMS = 256
MAX_ID = 2**64 - 1
PROTOCOL_ERROR, UNSUPPORTED_VERSION, MESSAGE_TOO_LARGE = 4, 5, 9
DECODE_CODES = {PROTOCOL_ERROR, UNSUPPORTED_VERSION, MESSAGE_TOO_LARGE}
MAX_DEPTH = 1024  # msgpack-python's nesting limit: 1024 containers decode, 1025 do not

Expect = tuple[str, int, int]
"""("error", status code, id) | ("pong", 0, id) | ("reply", 0, id) | ("none", 0, 0) for valid one-ways."""


@dataclass(frozen=True)
class Case:
    """One hostile request: ``parts`` are the frames after the delimiter (``delim=False``: none sent)."""

    family: str
    parts: tuple[bytes, ...]
    delim: bool = True
    intended: int | None = None  # the status code the family means to provoke (a generator self-check)


@dataclass
class Tally:
    """What was sent and answered: per family, per answer, and the mismatches (kept to a few)."""

    sent: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)
    skipped_valid: int = 0
    received: int = 0  # answers actually read off the socket (``answers`` also counts "no answer")

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def miss(self, text: str) -> None:
        if len(self.mismatches) < 20:
            self.mismatches.append(text)
        else:
            self.mismatches[-1] = f"... and more; last: {text}"


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj)


# -- the rules (docs/protocol.md sections 1 and 10) --------------------------------------------------


def _is_id(x: Any) -> bool:
    return type(x) is int and 0 <= x <= MAX_ID


def _call_fields_ok(m: list[Any]) -> bool:
    if len(m) < 7:
        return False
    method, args, kwargs, meta = m[3], m[4], m[5], m[6]
    if type(method) is not str or type(args) is not list:
        return False
    if kwargs is not None and (type(kwargs) is not dict or any(type(k) is not str for k in kwargs)):
        return False
    if meta is None:
        return True
    if type(meta) is not dict:
        return False
    deadline, headers = meta.get("deadline"), meta.get("headers")
    if deadline is not None and (type(deadline) is not int or deadline < 0):
        return False
    return headers is None or type(headers) is dict


def classify(body: bytes, limit: int, server: str = "router") -> Expect:
    """The answer a server owes to one body frame, by section 10 (``none``: a valid NOTIFY/CANCEL/CALL
    that is not an echo call, which the fuzz does not send)."""
    if len(body) > limit:
        return ("error", MESSAGE_TOO_LARGE, 0)
    try:
        m = msgpack.unpackb(body, raw=False, timestamp=3, strict_map_key=True)
    except Exception:
        return ("error", PROTOCOL_ERROR, 0)
    return _classify_value(m, server, in_batch=False)


def _classify_value(m: Any, server: str, *, in_batch: bool) -> Expect:
    if type(m) is not list or len(m) < 3:
        return ("error", PROTOCOL_ERROR, 0)
    version, kind, rid = m[0], m[1], m[2]
    if not (type(version) is int and version == 1):
        return ("error", UNSUPPORTED_VERSION, rid if _is_id(rid) else 0)
    if not _is_id(rid):
        return ("error", PROTOCOL_ERROR, 0)
    if type(kind) is int and STREAM <= kind <= END:
        return ("none", 0, 0)  # a stream's message: its own rules (an unknown stream's is dropped); not sent
    if type(kind) is not int or not CALL <= kind <= BATCH:
        return ("error", PROTOCOL_ERROR, rid)
    if kind == BATCH:
        return _classify_batch(m, server, in_batch=in_batch)
    if kind in (CALL, NOTIFY):
        if not _call_fields_ok(m):
            return ("error", PROTOCOL_ERROR, rid)
        if kind == CALL and m[3] == "echo" and len(m[4]) == 1 and not m[5]:
            return ("reply", 0, rid)
        return ("none", 0, 0)
    if kind == PING:
        return ("pong", 0, rid)
    if kind == CANCEL:
        return ("none", 0, 0)
    return ("error", PROTOCOL_ERROR, rid)  # REPLY, ERROR, EVENT, PONG: not taken by a server


def _classify_batch(m: list[Any], server: str, *, in_batch: bool) -> Expect:
    """Section 11: a BATCH is ``[1, 9, 0, [message, ...]]`` with 1 to 256 messages, never nested; a
    server that does not advertise BATCH refuses a well-formed one with PROTOCOL_ERROR id 0. Each item
    is answered as if it came alone; the fuzz sends batches of one message (``("batch", 1, 0)`` is
    resolved by ``expected``), so each case still has at most one answer."""
    rid = m[2]
    if in_batch or rid != 0:
        return ("error", PROTOCOL_ERROR, rid)
    if len(m) < 4 or type(m[3]) is not list or not 1 <= len(m[3]) <= MAX_BATCH_ITEMS:
        return ("error", PROTOCOL_ERROR, 0)
    if server == "rep":
        return ("error", PROTOCOL_ERROR, 0)
    if len(m[3]) != 1:
        raise ValueError("the fuzz sends batches of one message")
    answer = _classify_value(m[3][0], server, in_batch=True)
    if answer[0] == "reply":
        raise ValueError("the fuzz sends no batch holding a call of echo (its reply may leave later)")
    return answer


def expected(case: Case, server: str, limit: int) -> Expect:
    """What ``server`` ("router" or "rep") answers to ``case`` sent by a DEALER (router) or REQ (rep)."""
    if server == "router":
        wire = [b"<identity>"] + ([b""] if case.delim else []) + list(case.parts)
        if len(wire) < 3 or wire[-2] != b"":
            return ("error", PROTOCOL_ERROR, 0)
        return classify(wire[-1], limit, server)
    if not case.delim:
        raise ValueError("a REQ socket always sends the delimiter")
    if len(case.parts) != 1:
        return ("error", PROTOCOL_ERROR, 0)
    return classify(case.parts[0], limit, server)


def read_answer(frames: list[bytes]) -> Expect:
    """The answer a server sent (the last frame), in ``Expect`` form; ("garbled", 0, 0) if unreadable."""
    answers = read_answers(frames)
    return answers[0] if len(answers) == 1 else ("garbled", 0, 0)


def read_answers(frames: list[bytes]) -> list[Expect]:
    """The answers in one message: one, or each item of a BATCH (a server may coalesce the answers to
    consecutive batched requests of one connection into one BATCH, in their order)."""
    try:
        m = msgpack.unpackb(frames[-1], raw=False, strict_map_key=False)
        if m[0] == 1 and m[1] == BATCH and m[2] == 0 and type(m[3]) is list:
            return [_answer_of(x) for x in m[3]]
    except Exception:
        return [("garbled", 0, 0)]
    return [_answer_of(m)]


def _answer_of(m: Any) -> Expect:
    try:
        version, kind, rid = m[0], m[1], m[2]
        if version != 1:
            return ("garbled", 0, 0)
        if kind == ERROR:
            return ("error", int(m[3]["code"]), rid)
        if kind == PONG:
            return ("pong", 0, rid)
        if kind == REPLY:
            return ("reply", 0, rid)
    except Exception:
        pass
    return ("garbled", 0, 0)


def answer_name(a: Expect) -> str:
    names = {PROTOCOL_ERROR: "PROTOCOL_ERROR", UNSUPPORTED_VERSION: "UNSUPPORTED_VERSION"}
    names[MESSAGE_TOO_LARGE] = "MESSAGE_TOO_LARGE"
    return names.get(a[1], f"code {a[1]}") if a[0] == "error" else a[0].upper()


# -- building blocks ---------------------------------------------------------------------------------


def call_body(
    rid: int,
    *,
    method: str = "nosuch",
    args: Any = None,
    kwargs: Any = None,
    meta: Any = None,
    kind: int = CALL,
    version: Any = 1,
) -> list[Any]:
    return [
        version,
        kind,
        rid,
        method,
        [] if args is None else args,
        {} if kwargs is None else kwargs,
        {} if meta is None else meta,
    ]


def nested(depth: int, leaf: Any = None, as_map: bool = False) -> bytes:
    """``depth`` nested one-item arrays (or one-key maps) around ``leaf``, built as bytes (no recursion)."""
    head = b"\x81\xa1k" if as_map else b"\x91"
    return head * depth + pack(leaf)


def echo_deep(rid: int, depth: int, version: int = 1) -> bytes:
    """A CALL of ``echo`` whose body nests ``depth`` containers in all (2 are the body and args arrays)."""
    head = b"\x97" + pack(version) + pack(CALL) + pack(rid) + pack("echo") + b"\x91"
    return head + nested(depth - 2) + b"\x80\x80"


HUGE_HEADERS = {
    "array32": (b"\xdd", ">I"),
    "map32": (b"\xdf", ">I"),
    "str32": (b"\xdb", ">I"),
    "bin32": (b"\xc6", ">I"),
    "ext32": (b"\xc9", ">I"),
    "array16": (b"\xdc", ">H"),
    "map16": (b"\xde", ">H"),
    "str16": (b"\xda", ">H"),
}


def huge_length(name: str, claimed: int, tail: bytes, rid: int | None) -> bytes:
    """A header declaring ``claimed`` items/bytes with only ``tail`` behind it; inside a call's args when
    ``rid`` is given (the id is then readable only if the decoder reads past the lie, which it must not)."""
    prefix, fmt = HUGE_HEADERS[name]
    claimed = min(claimed, 0xFFFF if fmt == ">H" else 0xFFFFFFFF)
    header = prefix + struct.pack(fmt, claimed) + (b"\x05" if name == "ext32" else b"")
    if rid is None:
        return header + tail
    return b"\x97\x01\x01" + pack(rid) + pack("echo") + b"\x91" + header + tail


# -- hypothesis strategies ---------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), MAX_ID),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=4,
)
ids = st.integers(1, MAX_ID)

WRONG: dict[str, Any] = {
    "version": values.filter(lambda v: not (type(v) is int and v == 1)),
    "id": values.filter(lambda v: not _is_id(v)),
    "kind": values.filter(lambda v: type(v) is not int),
    "method": values.filter(lambda v: type(v) is not str),
    "args": values.filter(lambda v: type(v) is not list),
    "kwargs": values.filter(lambda v: v is not None and type(v) is not dict)
    | st.dictionaries(st.binary(max_size=4), scalars, min_size=1, max_size=2),
    "meta": values.filter(lambda v: v is not None and type(v) is not dict),
    "meta.deadline": values.filter(lambda v: v is not None and not (type(v) is int and v >= 0)),
    "meta.headers": values.filter(lambda v: v is not None and type(v) is not dict),
}


def wrong_field_body(where: str, bad: Any, rid: int, kind: int) -> tuple[bytes, int]:
    """A CALL/NOTIFY that is fine but for ``where``; returns the body and the status it must provoke."""
    body = call_body(rid, kind=kind)
    slot = {"version": 0, "kind": 1, "id": 2, "method": 3, "args": 4, "kwargs": 5, "meta": 6}
    if where in slot:
        body[slot[where]] = bad
    else:
        body[6] = {where.split(".")[1]: bad}
    return pack(body), UNSUPPORTED_VERSION if where == "version" else PROTOCOL_ERROR


@st.composite
def wrong_type_cases(draw: st.DrawFn) -> Case:
    where = draw(st.sampled_from(sorted(WRONG)))
    body, code = wrong_field_body(where, draw(WRONG[where]), draw(ids), draw(st.sampled_from([CALL, NOTIFY])))
    return Case(f"wrong-type:{where}", (body,), intended=code)


@st.composite
def kind_version_cases(draw: st.DrawFn) -> Case:
    rid = draw(ids)
    which = draw(st.sampled_from(["kind", "version", "server-kind"]))
    if which == "kind":
        kind = draw(st.integers(-(2**63), 0) | st.integers(END + 1, MAX_ID))
        return Case("unknown-kind", (pack([1, kind, rid, *draw(st.lists(values, max_size=3))]),), intended=4)
    if which == "version":
        v = draw(st.integers(-(2**63), 0) | st.integers(2, MAX_ID))
        return Case("unknown-version", (pack(call_body(rid, version=v)),), intended=UNSUPPORTED_VERSION)
    kind = draw(st.sampled_from([REPLY, ERROR, EVENT, PONG]))
    return Case("server-kind", (pack([1, kind, rid, *draw(st.lists(values, max_size=3))]),), intended=4)


@st.composite
def cut_cases(draw: st.DrawFn) -> Case:
    which = draw(st.sampled_from(["call", "wrong", "ping"]))
    if which == "call":
        whole = pack(call_body(draw(ids), method=draw(st.text(max_size=8)), args=[draw(values)]))
    elif which == "wrong":
        whole, _ = wrong_field_body("meta.headers", draw(values), draw(ids), CALL)
    else:
        whole = pack([1, PING, draw(ids)])
    return Case("cut", (whole[: draw(st.integers(0, len(whole) - 1))],), intended=PROTOCOL_ERROR)


@st.composite
def frame_cases(draw: st.DrawFn) -> Case:
    body = pack([1, PING, draw(ids)])
    extra = draw(st.lists(st.binary(max_size=8), min_size=1, max_size=3))
    which = draw(st.sampled_from(["split", "empty", "no-delimiter"]))
    if which == "split":
        return Case("frames:multi", (body, *extra), intended=PROTOCOL_ERROR)
    if which == "empty":
        return Case("frames:empty", (b"",), intended=PROTOCOL_ERROR)
    return Case("frames:no-delimiter", (body, *extra[:1]), delim=False, intended=PROTOCOL_ERROR)


def hypothesis_cases() -> st.SearchStrategy[Case]:
    """Every family hypothesis builds: random bytes, cut msgpack, wrong types, kinds/versions, frames."""
    return st.one_of(
        st.builds(lambda b: Case("random-bytes", (b,)), st.binary(max_size=48)),
        cut_cases(),
        wrong_type_cases(),
        kind_version_cases(),
        frame_cases(),
        st.builds(lambda seed, rid: batch_case(random.Random(seed), rid), st.integers(0, 2**32), ids),
    )


def batch_case(r: random.Random, rid: int) -> Case:
    """A BATCH of a wrong shape (id, items, count, nesting) or holding one bad or odd message."""
    ping = [1, PING, rid]
    which = r.choice(["id", "not-a-list", "empty", "too-many", "nested", "ping", "bad-item", "bad-call"])
    if which == "id":
        body, code = [1, BATCH, rid or 1, [ping]], PROTOCOL_ERROR
    elif which == "not-a-list":
        body, code = r.choice([[1, BATCH, 0], [1, BATCH, 0, "x"], [1, BATCH, 0, {"a": 1}]]), PROTOCOL_ERROR
    elif which == "empty":
        body, code = [1, BATCH, 0, []], PROTOCOL_ERROR
    elif which == "too-many":
        body, code = [1, BATCH, 0, [[1, PING, i] for i in range(MAX_BATCH_ITEMS + 1)]], PROTOCOL_ERROR
    elif which == "nested":
        body, code = [1, BATCH, 0, [[1, BATCH, 0, [ping]]]], None
    elif which == "ping":
        body, code = [1, BATCH, 0, [ping]], None
    elif which == "bad-item":
        body, code = [1, BATCH, 0, [r.choice(_POOL)]], None
    else:
        body, code = [1, BATCH, 0, [call_body(rid, args="not a list")]], None
    return Case(f"batch:{which}", (pack(body),), intended=code)


# -- the seeded bulk generator -----------------------------------------------------------------------

_POOL: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    -(2**63),
    MAX_ID,
    1.5,
    float("nan"),
    "",
    "x",
    b"",
    b"\x00",
    [],
    [1],
    {},
    {"a": 1},
    [[[]]],
    {"k": [None]},
]
_WRONG_POOL = {
    where: [v for v in _POOL if pred(v)]
    for where, pred in {
        "version": lambda v: not (type(v) is int and v == 1),
        "id": lambda v: not _is_id(v),
        "kind": lambda v: type(v) is not int,
        "method": lambda v: type(v) is not str,
        "args": lambda v: type(v) is not list,
        "kwargs": lambda v: v is not None and type(v) is not dict,
        "meta": lambda v: v is not None and type(v) is not dict,
        "meta.deadline": lambda v: v is not None and not (type(v) is int and v >= 0),
        "meta.headers": lambda v: v is not None and type(v) is not dict,
    }.items()
}


def _valid_frame(r: random.Random) -> bytes:
    rid = r.randrange(1, MAX_ID)
    return r.choice(
        [
            pack(call_body(rid, method="m" * r.randrange(1, 40), args=[r.randbytes(r.randrange(50))])),
            pack([1, PING, rid]),
            pack([1, NOTIFY, rid, "x", [1, 2.5, "s"], {"k": None}, {"deadline": 5}]),
        ]
    )


def bulk_cases(seed: int, n: int, limit: int, *, no_delimiter: bool = True) -> list[Case]:
    """``n`` cases over every family, reproducible from ``seed``."""
    r = random.Random(seed)
    out: list[Case] = []
    families = [
        "random-bytes",
        "cut",
        "bitflip",
        "deep",
        "huge-length",
        "wrong-type",
        "unknown-kind",
        "unknown-version",
        "server-kind",
        "frames",
        "oversized",
        "not-a-call",
        "batch",
    ]
    while len(out) < n:
        fam = families[len(out) % len(families)]
        rid = r.randrange(1, MAX_ID)
        if fam == "random-bytes":
            out.append(Case(fam, (r.randbytes(r.randrange(0, 200)),)))
        elif fam == "cut":
            whole = _valid_frame(r)
            out.append(Case(fam, (whole[: r.randrange(len(whole))],), intended=PROTOCOL_ERROR))
        elif fam == "bitflip":
            b = bytearray(_valid_frame(r))
            for _ in range(r.randrange(1, 4)):
                b[r.randrange(len(b))] ^= 1 << r.randrange(8)
            out.append(Case(fam, (bytes(b),)))
        elif fam == "deep":
            d = r.choice([MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, r.randrange(MAX_DEPTH + 1, 5000)])
            sub = r.randrange(4)
            if sub == 0:
                out.append(Case("deep:echo", (echo_deep(rid, d),)))  # reply at <= 1024, error beyond
            elif sub == 1:
                out.append(Case("deep:bare", (nested(d, as_map=r.random() < 0.5),)))
            elif sub == 2:  # just below the limit, with a wrong version: must still read the id
                out.append(Case("deep:bad-version", (echo_deep(rid, MAX_DEPTH - 1, version=2),), intended=5))
            else:
                out.append(
                    Case("deep:beyond", (echo_deep(rid, d if d > MAX_DEPTH else MAX_DEPTH + 1),), intended=4)
                )
        elif fam == "huge-length":
            name = r.choice(sorted(HUGE_HEADERS))
            claimed = r.choice([2**31, 2**32 - 1, r.randrange(2**20, 2**32), 0xFFFF])
            tail = r.randbytes(r.randrange(0, 16))
            body = huge_length(name, claimed, tail, r.choice([None, rid]))
            out.append(Case(f"huge-length:{name}", (body,), intended=PROTOCOL_ERROR))
        elif fam == "wrong-type":
            where = r.choice(sorted(_WRONG_POOL))
            body, code = wrong_field_body(where, r.choice(_WRONG_POOL[where]), rid, r.choice([CALL, NOTIFY]))
            out.append(Case(f"wrong-type:{where}", (body,), intended=code))
        elif fam == "unknown-kind":
            kind = r.choice([0, END + 1, 255, -1, MAX_ID, r.randrange(END + 1, 2**32)])
            out.append(Case(fam, (pack([1, kind, rid]),), intended=PROTOCOL_ERROR))
        elif fam == "unknown-version":
            v = r.choice([0, 2, 99, -1, MAX_ID, r.randrange(2, 2**40)])
            out.append(Case(fam, (pack(call_body(rid, version=v)),), intended=UNSUPPORTED_VERSION))
        elif fam == "server-kind":
            kind = r.choice([REPLY, ERROR, EVENT, PONG])
            body = pack([1, kind, rid, {"code": 1, "type": "x", "message": "y"}, None][: r.randrange(3, 6)])
            out.append(Case(fam, (body,), intended=PROTOCOL_ERROR))
        elif fam == "frames":
            parts = [r.randbytes(r.randrange(0, 20)) for _ in range(r.randrange(2, 5))]
            which = r.choice(
                ["multi", "empty", "empty-parts", "many"] + (["no-delimiter"] if no_delimiter else [])
            )
            if which == "multi":
                out.append(Case("frames:multi", (pack([1, PING, rid]), *parts[1:])))
            elif which == "empty":
                out.append(Case("frames:empty", (b"",), intended=PROTOCOL_ERROR))
            elif which == "empty-parts":
                out.append(Case("frames:empty-parts", (b"", *parts)))
            elif which == "many":  # hundreds of frames in one message
                out.append(Case("frames:many", (b"x",) * r.randrange(100, 1000), intended=PROTOCOL_ERROR))
            else:
                out.append(Case("frames:no-delimiter", tuple(parts[: r.randrange(1, 3)]), delim=False))
        elif fam == "batch":
            out.append(batch_case(r, rid))
        elif fam == "oversized":
            size = r.randrange(limit + 1, 2 * limit + 1)
            body = r.choice([r.randbytes(size), pack(call_body(rid, method="echo", args=["x" * size]))])
            if len(body) <= 2 * limit:
                out.append(Case(fam, (body,), intended=MESSAGE_TOO_LARGE))
        else:  # valid msgpack, not a zcall message
            v = r.choice([pack(r.choice(_POOL)), pack([1, CALL]), pack([]), pack({"version": 1})])
            out.append(Case(fam, (v,), intended=PROTOCOL_ERROR))
    assert all(len(p) <= 2 * limit for c in out for p in c.parts), "a case would cut the connection"
    return out


# -- sending -----------------------------------------------------------------------------------------


def check(case: Case, want: Expect, got: Expect, tally: Tally) -> None:
    tally.sent[case.family] += 1
    tally.answers[answer_name(got) if got[0] != "garbled" else "GARBLED"] += 1
    if case.intended is not None and want != ("error", case.intended, want[2]):
        tally.miss(f"generator: {case.family} meant code {case.intended}, the rules say {want}: {case}")
    if got != want:
        tally.miss(f"{case.family}: expected {want}, got {got}: {case.parts!r:.300}")


def send_router(sock: zmq.Socket, cases: list[Case], limit: int, tally: Tally) -> None:
    """Pipeline ``cases`` from a DEALER to a ROUTER server, then read one answer per case, in order
    (a BATCH answer counts as its items)."""
    wants = []
    for case in cases:
        want = expected(case, "router", limit)
        if want[0] == "none":
            tally.skipped_valid += 1
            continue
        sock.send_multipart(([b""] if case.delim else []) + list(case.parts))
        wants.append((case, want))
    got_queue: collections.deque[Expect] = collections.deque()
    for case, want in wants:
        if not got_queue:
            try:
                got_queue.extend(read_answers(sock.recv_multipart()))
            except zmq.Again:
                got_queue.append(("no answer", 0, 0))
        got = got_queue.popleft()
        if got[0] != "no answer":
            tally.received += 1
        check(case, want, got, tally)
        if got[0] == "no answer":
            return


def send_rep(sock: zmq.Socket, cases: list[Case], limit: int, tally: Tally) -> zmq.Socket:
    """Send ``cases`` one by one from a REQ to a REP server; returns the socket (a new one after a loss)."""
    for case in cases:
        want = expected(case, "rep", limit)
        if want[0] == "none":
            tally.skipped_valid += 1
            continue
        sock.send_multipart(list(case.parts))
        try:
            got = read_answer(sock.recv_multipart())
            tally.received += 1
        except zmq.Again:
            check(case, want, ("no answer", 0, 0), tally)
            return sock
        check(case, want, got, tally)
    return sock
