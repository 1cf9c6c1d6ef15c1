"""Does msgspec earn a place in zcall? Its speed on zcall's real frames, its bytes, and the limits it keeps.

msgspec implements msgpack in C. This study swaps it in at the one place every zcall frame goes through,
``Codec.packb`` / ``Codec.unpackb`` (``MsgspecCodec`` below: the same size limit, zcall's ext registry
through msgspec's hooks), and runs zcall's own encoders and decoders on both codecs:
``wire.call_frame`` / ``wire.reply_frame`` and the hot-path decoders ``wire.decode_request`` (server) and
``wire.decode_answer`` (client), for a small call and reply, 64 KiB and 1 MiB bytes, and 1,000 small
records. Then:

1. speed: microseconds per operation (best of several ``timeit`` repeats), and the speedup;
2. bytes: every frame above, and every canonical positive vector of docs/protocol-vectors.json (loaded
   as tests/test_protocol_vectors.py loads them), encoded by both must be byte-for-byte identical; every
   vector decoded by both must read the same; every negative vector must be refused by both;
3. limits: what zcall's decoder refuses (docs/protocol.md) and whether msgspec can refuse it as strictly:
   message size, nesting depth (exactly 1,024 levels), str/bin map keys, UTF-8, Timestamp ext -1,
   application ext types, the container budget of large bodies, and reading [version, kind, id]
   positionally.

msgspec is not a zcall dependency: install it beside zcall to run this (``pip install msgspec``).

    .venv/bin/python scripts/msgspec_study.py           # about 10 s
    .venv/bin/python scripts/msgspec_study.py --quick   # fewer timing repeats
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import enum
import functools
import json
import reprlib
import resource
import struct
import subprocess
import sys
import threading
import timeit
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

try:
    import msgspec
except ImportError:  # pragma: no cover - what a user without it sees
    raise SystemExit(
        "msgspec is not installed: this study compares it with msgpack; pip install msgspec "
        "(only to run the study: zcall does not depend on it)"
    ) from None

from zcall.errors import MessageTooLarge, ProtocolError, SerializationError
from zcall.protocol import wire
from zcall.protocol.codec import COUNTED_ABOVE, Codec, default_codec
from zcall.protocol.status import StatusCode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import test_protocol_vectors as vectors  # noqa: E402  (the vectors, read the way the tests read them)

# -- msgspec as zcall's codec ---------------------------------------------------------------------------


class MsgspecCodec(Codec):
    """``Codec`` with msgspec underneath: what adopting it would change, at the one place it would go.

    Kept: the size limit (checked before decoding), zcall's ext registry (through msgspec's enc_hook and
    ext_hook), refusals as ``ProtocolError`` / ``SerializationError``. msgspec has no equivalent of
    msgpack's ``strict_map_key``, fixed nesting limit or ``list_hook``/``object_hook`` (the container
    budget), so those are not applied: section 3 shows what that lets through.
    """

    __slots__ = ("_enc", "_dec")

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._enc = msgspec.msgpack.Encoder(enc_hook=self._enc_hook)
        self._dec = msgspec.msgpack.Decoder(ext_hook=self._ms_ext_hook)

    def _enc_hook(self, obj: Any) -> Any:
        out = self._encode_other(obj)  # registered ext types, sets, the errors zcall raises
        return msgspec.msgpack.Ext(out.code, out.data) if isinstance(out, msgpack.ExtType) else out

    def packb(self, obj: Any) -> bytes:
        try:
            return self._enc.encode(obj)
        except SerializationError:
            raise
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise SerializationError(f"cannot encode value with msgpack: {exc!r}") from None

    def _ms_ext_hook(self, code: int, data: memoryview) -> Any:
        return self._ext_hook(code, bytes(data))

    def unpackb(self, data: bytes) -> Any:
        if len(data) > self.max_message_size:
            raise MessageTooLarge(
                f"message of {len(data)} bytes exceeds the limit of {self.max_message_size} bytes"
            )
        try:
            return self._dec.decode(data)
        except ProtocolError:
            raise
        except RecursionError:
            raise ProtocolError("msgpack value nested too deeply") from None
        except Exception as exc:
            raise ProtocolError(f"invalid msgpack: {type(exc).__name__}: {exc}") from None


MS = MsgspecCodec()
ZC = default_codec

# -- the frames -----------------------------------------------------------------------------------------

P64K = (bytes(range(256)) * 256)[: 64 * 1024]
P1M = P64K * 16
RECORDS = [{"id": i, "name": f"user-{i}", "score": i * 0.5, "active": i % 2 == 0} for i in range(1000)]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    method: str
    args: list[Any]
    result: Any


CASES = [
    Case("small: double(21) -> 42", "double", [21], 42),
    Case("64 KiB bytes (echo)", "echo", [P64K], P64K),
    Case("1 MiB bytes (echo)", "echo", [P1M], P1M),
    Case("1000 small records (dicts)", "store", [RECORDS], RECORDS),
]


def call_of(case: Case, codec: Codec) -> bytes:
    """The client's CALL, deadline in meta: for the small case exactly [1, 1, id, "double", [21], {},
    {"deadline": 5000}]."""
    return wire.call_frame(1, case.method, case.args, {}, 5000, codec=codec)


def reply_of(case: Case, codec: Codec) -> bytes:
    return wire.reply_frame(1, case.result, codec=codec)


def splice_reply(id_: int, data: bytes) -> bytes:
    """A REPLY whose result is bytes, built as msgpack's envelope head + bin header + the payload joined
    once (msgpack's Packer copies the payload into its buffer, then out again): the same bytes."""
    n = len(data)
    if n < 256:
        head = b"\xc4" + bytes([n])
    elif n < 65536:
        head = b"\xc5" + struct.pack(">H", n)
    else:
        head = b"\xc6" + struct.pack(">I", n)
    return b"".join((b"\x94\x01\x02", ZC.packb(id_), head, data))


# -- timing ---------------------------------------------------------------------------------------------


def best_us(fn: Callable[[], Any], repeat: int, target_s: float) -> float:
    """Best of ``repeat`` timeit runs, each about ``target_s`` long, in microseconds per call."""
    t = timeit.Timer(fn)
    n = 1
    while True:
        took = t.timeit(n)
        if took >= target_s / 4:
            break
        n *= 4
    n = max(1, int(n * target_s / took))
    return min(t.repeat(repeat, n)) / n * 1e6


def _operations(
    case: Case, call_z: bytes, reply_z: bytes
) -> list[tuple[str, Callable[[], Any], Callable[[], Any], Callable[[], Any] | None]]:
    """(operation, with zcall's codec, with msgspec's, with msgpack minus the budget or None) for a case."""

    def plain(frame: bytes) -> Callable[[], Any]:
        # msgpack with zcall's options and no container budget: what the budget itself costs
        return lambda: msgpack.unpackb(frame, raw=False, timestamp=3, strict_map_key=True)

    big = len(call_z) >= COUNTED_ABOVE
    return [
        ("encode CALL   (call_frame)", lambda: call_of(case, ZC), lambda: call_of(case, MS), None),
        (
            "decode CALL   (decode_request)",
            lambda: wire.decode_request(call_z, ZC),
            lambda: wire.decode_request(call_z, MS),
            plain(call_z) if big else None,
        ),
        ("encode REPLY  (reply_frame)", lambda: reply_of(case, ZC), lambda: reply_of(case, MS), None),
        (
            "decode REPLY  (decode_answer)",
            lambda: wire.decode_answer(reply_z, ZC),
            lambda: wire.decode_answer(reply_z, MS),
            plain(reply_z) if big else None,
        ),
    ]


def speed(repeat: int, target_s: float) -> list[tuple[str, str, float, float, float | None]]:
    """(case, operation, zcall us, msgspec us, msgpack-without-budget us or None) for every case."""
    rows = []
    for case in CASES:
        call_z, call_m = call_of(case, ZC), call_of(case, MS)
        reply_z, reply_m = reply_of(case, ZC), reply_of(case, MS)
        assert call_z == call_m and reply_z == reply_m, f"{case.name}: msgspec wrote other bytes"
        assert wire.decode_request(call_z, ZC) == wire.decode_request(call_z, MS), case.name
        assert wire.decode_answer(reply_z, ZC) == wire.decode_answer(reply_z, MS), case.name

        ops = _operations(case, call_z, reply_z)
        for op, z, m, p in ops:
            rows.append(
                (
                    case.name,
                    op,
                    best_us(z, repeat, target_s),
                    best_us(m, repeat, target_s),
                    None if p is None else best_us(p, repeat, target_s),
                )
            )
    return rows


def raw_serializer(repeat: int, target_s: float) -> list[tuple[str, float, float]]:
    """The serializers alone on the small envelope: a reused msgpack Packer (zcall's) vs msgspec."""
    env = [1, 1, 1, "double", [21], {}, {"deadline": 5000}]
    frame = msgpack.packb(env)
    packer = msgpack.Packer(autoreset=True, datetime=True)
    enc, dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
    return [
        (
            "pack envelope",
            best_us(lambda: packer.pack(env), repeat, target_s),
            best_us(lambda: enc.encode(env), repeat, target_s),
        ),
        (
            "unpack envelope",
            best_us(lambda: msgpack.unpackb(frame, raw=False, timestamp=3), repeat, target_s),
            best_us(lambda: dec.decode(frame), repeat, target_s),
        ),
    ]


# -- bytes: the protocol vectors ------------------------------------------------------------------------


def check_vectors() -> list[str]:
    lines = []
    canonical = [v for v in vectors.POSITIVE if v.get("canonical", True)]
    same = 0
    for v in canonical:
        msg = vectors.message_from_json(v["message"])
        assert wire.encode(msg, ZC).hex() == v["hex"], v["name"]  # as the tests check
        try:
            got = wire.encode(msg, MS).hex()
            if got == v["hex"]:
                same += 1
            else:
                lines.append(f"  DIFFERENT bytes: {v['name']}: msgpack {v['hex'][:48]}, msgspec {got[:48]}")
                if '"$ext"' in json.dumps(v["message"]):
                    lines.append(
                        "    (a msgpack.ExtType, what zcall decodes an unregistered ext type to, is a named "
                        "tuple to msgspec: written as an array, enc_hook never asked)"
                    )
        except SerializationError as exc:
            lines.append(f"  msgspec cannot encode {v['name']}: {exc}")
    lines.append(f"canonical positive vectors encoded byte-for-byte alike: {same} of {len(canonical)}")
    read_alike = 0
    for v in vectors.POSITIVE:
        frame = bytes.fromhex(v["hex"])
        try:
            got = vectors.message_to_json(wire.decode(frame, MS))
        except ProtocolError as exc:
            lines.append(f"  msgspec refuses positive vector {v['name']}: {exc}")
            continue
        if got == vectors.message_as_read(v["message"]):
            read_alike += 1
        else:
            lines.append(f"  msgspec reads positive vector {v['name']} differently")
    lines.append(f"positive vectors decoded to the same fields: {read_alike} of {len(vectors.POSITIVE)}")
    refused = 0
    for v in vectors.NEGATIVE:
        codec = MsgspecCodec(max_message_size=v["max_message_size"]) if "max_message_size" in v else MS
        try:
            wire.decode(bytes.fromhex(v["hex"]), codec)
        except ProtocolError as exc:
            if (
                wire.error_for(exc).code == StatusCode[v["error"]]
                and (wire.peek_id(exc) or 0) == v["error_id"]
            ):
                refused += 1
            else:
                lines.append(
                    f"  {v['name']}: refused, but as {wire.error_for(exc).code.name} id {wire.peek_id(exc)}"
                )
        else:
            lines.append(f"  ACCEPTED by msgspec: {v['name']} ({v['description'][:70]})")
    lines.append(f"negative vectors refused with the same code and id: {refused} of {len(vectors.NEGATIVE)}")
    return lines


# -- limits ---------------------------------------------------------------------------------------------


def outcome(fn: Callable[[], Any], width: int = 60) -> str:
    try:
        value = fn()
    except Exception as exc:
        return f"refused ({type(exc).__name__}: {str(exc)[:width]})"
    return "accepted -> " + reprlib.repr(value)  # bounded: a value may nest 1024 deep


def _nested_call(depth: int) -> bytes:
    return vectors._call_f(vectors._nested_args(depth))


def _deepest(decode: Callable[[bytes], Any], lo: int = 2, hi: int = 4096) -> int:
    """The deepest CALL ``decode`` accepts, by bisection (``hi`` if it accepts that)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            decode(_nested_call(mid))
            lo = mid
        except Exception:
            hi = mid - 1
    return lo


def _at_stack_depth(frames: int, fn: Callable[[], int]) -> int:
    """``fn()`` called ``frames`` Python frames deeper than here (as inside a framework's call stack)."""
    if frames <= 0:
        return fn()
    return _at_stack_depth(frames - 1, fn)


def _in_thread(fn: Callable[[], int]) -> int:
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


CRASH_PROBE = """
import sys, msgspec
sys.setrecursionlimit(1_000_000)   # some applications raise it
body = b"\\x91" * 200_000 + b"\\x90"   # 200 KB: an array nested 200,001 deep
msgspec.msgpack.Decoder().decode(body)
print("decoded")
"""


def limits() -> list[str]:
    lines: list[str] = []

    def row(what: str, zc: str, ms: str, verdict: str) -> None:
        lines.append(f"- {what}\n    zcall:   {zc}\n    msgspec: {ms}\n    => {verdict}")

    small = MsgspecCodec(max_message_size=16)
    row(
        "max message size (a limit of 16 bytes, a 32-byte body)",
        outcome(lambda: Codec(max_message_size=16).unpackb(wire.ping_frame(1) * 8)),
        outcome(lambda: small.unpackb(wire.ping_frame(1) * 8)),
        "the same: a length check before decoding, whatever the decoder",
    )

    d1024, d1025 = _nested_call(1024), _nested_call(1025)
    ms_dec = msgspec.msgpack.Decoder()
    zc_top = _deepest(ZC.unpackb)
    zc_deep = _at_stack_depth(300, lambda: _deepest(ZC.unpackb))
    ms_top = _deepest(ms_dec.decode)
    ms_thread = _in_thread(lambda: _deepest(ms_dec.decode))
    ms_deep = _at_stack_depth(300, lambda: _deepest(ms_dec.decode))
    crash = subprocess.run([sys.executable, "-c", CRASH_PROBE], capture_output=True, text=True)
    crash_text = (
        "decoded"
        if crash.returncode == 0
        else f"exit {crash.returncode}"
        + (" (killed by SIGSEGV: the C stack overflowed)" if crash.returncode == -11 else "")
    )
    row(
        "nesting depth: 1024 levels accepted, 1025 refused (nesting-1024 / nesting-1025 vectors)",
        f"1024: {outcome(lambda: ZC.unpackb(d1024))[:8]}, 1025: {outcome(lambda: ZC.unpackb(d1025))[:8]}; "
        f"deepest accepted: {zc_top} at the top, {zc_deep} from 300 frames down (msgpack's own fixed "
        "stack, whatever Python's state)",
        f"1024: {outcome(lambda: ms_dec.decode(d1024))[:8]}, "
        f"1025: {outcome(lambda: ms_dec.decode(d1025))[:8]} here; deepest accepted: {ms_top} at the top "
        f"of the main thread, {ms_thread} in a new thread, "
        f"{ms_deep} from 300 frames down (recursion limit {sys.getrecursionlimit()}: the limit is "
        f"Python's recursion limit less the caller's stack); with sys.setrecursionlimit(10**6), a 200 KB "
        f"body nested 200,001 deep: {crash_text}",
        "NO: msgspec has no depth limit of its own; it refuses valid 1024-deep frames (wire incompatibility)"
        " and, under a raised recursion limit, crashes on a small hostile frame",
    )

    int_key = msgpack.packb([1, 2, 9, {"ok": {1: "x"}}])
    keys = [("int", {1: "x"}), ("float", {1.5: "x"}), ("nil", {None: "x"}), ("array", None)]
    zc_keys, ms_keys = [], []
    for name, m in keys:
        body = b"\x81\x92\x01\x02\xa1x" if m is None else msgpack.packb(m)
        zc_keys.append(f"{name} key {outcome(functools.partial(ZC.unpackb, body)).split(' ')[0]}")
        ms_keys.append(f"{name} key {outcome(functools.partial(ms_dec.decode, body)).split(' ')[0]}")
    typed = msgspec.msgpack.Decoder(list[Any])
    row(
        "map keys: only str and bin (strict_map_key), anywhere in the body",
        ", ".join(zc_keys)
        + f"; a REPLY with an int key deep in its result: {outcome(lambda: ZC.unpackb(int_key))[:8]}",
        ", ".join(ms_keys) + "; a typed Decoder (dict[str, Any]) checks only the maps its type names, and "
        f"str | bytes keys cannot be one type (msgspec allows one str-like type per union); the deep int key "
        f"through Decoder(list[Any]): {outcome(lambda: typed.decode(int_key))[:8]}",
        "NO: keys of nested values cannot be restricted without walking the decoded value in Python",
    )

    bad_utf8 = b"\xa2\xff\xfe"
    row(
        "invalid UTF-8 in a str",
        outcome(lambda: ZC.unpackb(bad_utf8)),
        outcome(lambda: ms_dec.decode(bad_utf8)),
        "the same",
    )

    ts64_big = b"\xd7\xff" + struct.pack(">Q", 10**9 << 34)
    ts96_big = b"\xc7\x0c\xff" + struct.pack(">Iq", 10**9, 0)
    ts_ns = b"\xd7\xff" + struct.pack(">Q", (123_456_789 << 34) | 5)  # 5 s + 123,456,789 ns
    naive = dt.datetime(2024, 1, 2, 3, 4, 5)
    row(
        "Timestamp ext -1: nanoseconds >= 1e9 refused; sub-microsecond nanoseconds; naive datetimes",
        f"ns=1e9 (64-bit) {outcome(lambda: ZC.unpackb(ts64_big))[:8]}, (96-bit) "
        f"{outcome(lambda: ZC.unpackb(ts96_big))[:8]}; 5 s + 123,456,789 ns -> "
        f"{ZC.unpackb(ts_ns).microsecond} us (truncated); naive datetime: "
        f"{outcome(lambda: ZC.packb(naive)).split(':')[0]})",
        f"ns=1e9 (64-bit) {outcome(lambda: ms_dec.decode(ts64_big))[:8]}, (96-bit) "
        f"{outcome(lambda: ms_dec.decode(ts96_big))[:8]}; 5 s + 123,456,789 ns -> "
        f"{ms_dec.decode(ts_ns).microsecond} us (rounded); naive datetime: encoded as the str "
        f"{msgspec.msgpack.decode(msgspec.msgpack.encode(naive))!r}",
        "refusals the same; decoded values can differ by 1 us, and a naive datetime silently becomes a "
        "string where zcall refuses it (a pre-check would have to walk every argument)",
    )

    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    @dataclasses.dataclass
    class Order:
        n: int

    class Colour(enum.Enum):
        RED = "red"

    codec_z, codec_m = Codec(), MsgspecCodec()
    for c in (codec_z, codec_m):
        c.register(Point, 5, lambda p: struct.pack(">q", p.x), lambda b: Point(struct.unpack(">q", b)[0]))
        c.register(uuid.UUID, 6, lambda u: u.bytes, lambda b: uuid.UUID(bytes=b))
    p_z, p_m = codec_z.packb(Point(7)), codec_m.packb(Point(7))
    u = uuid.UUID(int=7)
    u_z, u_m = codec_z.packb(u), codec_m.packb(u)
    row(
        "application ext types (Codec.register) and types msgpack cannot send",
        f"Point as ext 5: {p_z.hex()}, decoded back {type(codec_z.unpackb(p_z)).__name__}; UUID as ext 6: "
        f"{u_z.hex()[:16]}...; a dataclass: {outcome(lambda: codec_z.packb(Order(1))).split(' ')[0]}; "
        f"an Enum: {outcome(lambda: codec_z.packb(Colour.RED)).split(' ')[0]}",
        f"Point as ext 5: {p_m.hex()}, decoded back {type(codec_m.unpackb(p_m)).__name__} (enc_hook, "
        f"ext_hook); UUID: {u_m.hex()[:16]}... (msgspec writes a UUID as a str: the registered hook is "
        f"never called); a dataclass: {codec_m.packb(Order(1)).hex()} (a map); an Enum: "
        f"{codec_m.packb(Colour.RED).hex()} (its value)",
        "PARTLY: hooks work for types msgspec does not know; for the types it encodes natively (UUID, "
        "Decimal, date/time, Enum, dataclasses, attrs, Struct) a registration is bypassed and values zcall "
        "refuses are sent",
    )

    n = 2 * 1024 * 1024
    flood = b"\xdd" + struct.pack(">I", n) + b"\x90" * n  # one array of 2 Mi empty arrays: 2 MiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    zc_flood = outcome(lambda: ZC.unpackb(flood), width=110)
    ms_value = ms_dec.decode(flood)
    ms_items = len(ms_value)
    del ms_value
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    row(
        f"container budget of large bodies (>= {COUNTED_ABOVE} B): a 2 MiB body of 2 Mi empty arrays",
        zc_flood[:150],
        f"decoded {ms_items:,} lists; this process's peak RSS grew {grown:.0f} MiB (x{grown / 2:.0f} the "
        "body); no list_hook/object_hook (dec_hook is for typed custom classes only)",
        "NO equivalent: a large body would have to go through msgpack to keep the budget",
    )

    class Head(msgspec.Struct, array_like=True):
        version: int
        kind: int
        id: int

    head = msgspec.msgpack.Decoder(Head)
    reply64 = reply_of(CASES[1], ZC)
    row(
        "reading [version, kind, id] positionally (e.g. to route or fail a reply without its payload)",
        f"peek_reply_id (an Unpacker on the first 64 bytes): {wire.peek_reply_id(reply64)}",
        f"Decoder(array_like Struct): {head.decode(reply64)}; bool kind "
        f"{outcome(lambda: head.decode(msgpack.packb([1, True, 3])))[:8]}, extra items ignored, the "
        "payload skipped but still parsed",
        "YES (types checked in C: int is not bool); timed in section 1",
    )
    return lines


# -- main -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter timing repeats")
    a = p.parse_args(argv)
    repeat, target = (3, 0.01) if a.quick else (7, 0.04)
    print(
        f"python {sys.version.split()[0]}, msgpack {'.'.join(map(str, msgpack.version))}, "
        f"msgspec {msgspec.__version__}; best of {repeat} timeit runs of ~{target * 1000:.0f} ms each "
        "(a shared, busy 2-core machine: compare rows, not machines)"
    )
    print("\n1. speed: zcall's encoders and hot-path decoders, msgpack codec vs msgspec codec (us per op)")
    head = f"{'case':28s} {'operation':32s} {'zcall':>9s} {'msgspec':>9s} {'speedup':>8s}  msgpack w/o budget"
    print(head)
    print("-" * len(head))
    for name, op, z, m, plain in speed(repeat, target):
        extra = "" if plain is None else f"  {plain:9.2f}"
        print(f"{name:28s} {op:32s} {z:9.2f} {m:9.2f} {z / m:7.1f}x{extra}")
    print("\nthe serializers alone on the small envelope (us per op):")
    for what, z, m in raw_serializer(repeat, target):
        print(f"  {what:16s} msgpack {z:6.3f}   msgspec {m:6.3f}   {z / m:4.1f}x")

    class Head(msgspec.Struct, array_like=True):
        version: int
        kind: int
        id: int

    print("\nbytes results without msgspec: msgpack for the envelope, the payload spliced in (same bytes):")
    for case in CASES[1:3]:
        assert splice_reply(1, case.result) == reply_of(case, ZC)
        z = best_us(functools.partial(reply_of, case, ZC), repeat, target)
        sp = best_us(functools.partial(splice_reply, 1, case.result), repeat, target)
        m = best_us(functools.partial(reply_of, case, MS), repeat, target)
        print(f"  {case.name:22s} reply_frame {z:7.2f}   splice {sp:7.2f} ({z / sp:.1f}x)   msgspec {m:7.2f}")
    reply64 = reply_of(CASES[1], ZC)
    hd = msgspec.msgpack.Decoder(Head)
    print(
        f"  read [version, kind, id] of a 64 KiB reply: peek_reply_id "
        f"{best_us(lambda: wire.peek_reply_id(reply64), repeat, target):.3f}, msgspec Struct "
        f"{best_us(lambda: hd.decode(reply64), repeat, target):.3f}"
    )
    print("\n2. bytes: msgspec's frames against msgpack's and the protocol vectors")
    print("every frame of section 1 encoded byte-for-byte alike: yes (checked before timing)")
    for line in check_vectors():
        print(line)
    print("\n3. limits zcall's decoder enforces, and msgspec")
    for line in limits():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
