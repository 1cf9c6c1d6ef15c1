"""Micro-benchmark of the per-call codec work: encode and decode a small CALL and its REPLY, and the
client's whole pure half of a call (``ClientCore._begin``), in microseconds (best of several repeats).

Run it before and after a change to the codec, the wire or the client core: a plain call with plain
values must not get slower. ``python scripts/codec_microbench.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import timeit

from zcall.client.sync import SyncClient
from zcall.protocol.wire import call_frame, decode_answer, decode_request, reply_frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=200_000)
    a = parser.parse_args()
    rid = 0x9E3779B900000001
    call = call_frame(rid, "double", (10,), {}, 5000)
    reply = reply_frame(rid, 20)
    client = SyncClient("tcp://127.0.0.1:1")  # no socket is made until a call is sent
    opts = client._defaults
    args: tuple[int, ...] = (10,)
    order = ({"sku": "widget", "qty": 2, "tags": ["a", "b"], "price": 9.95},)
    order_call = call_frame(rid, "place", order, {}, 5000)
    cases = {
        "encode CALL  (call_frame)": lambda: call_frame(rid, "double", args, {}, 5000),
        "encode CALL, a dict arg": lambda: call_frame(rid, "place", order, {}, 5000),
        "decode CALL, a dict arg": lambda: decode_request(order_call),
        "decode CALL  (decode_request)": lambda: decode_request(call),
        "encode REPLY (reply_frame)": lambda: reply_frame(rid, 20),
        "decode REPLY (decode_answer)": lambda: decode_answer(reply),
        "client _begin (checks + CALL frame)": lambda: client._begin("double", args, {}, opts),
    }
    for name, fn in cases.items():
        best = min(timeit.repeat(fn, number=a.number, repeat=a.repeat)) / a.number
        print(f"{name:40s} {best * 1e6:6.3f} us")
    client.close()


if __name__ == "__main__":
    main()
