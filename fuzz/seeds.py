#!/usr/bin/env python3
"""Writes seed inputs for the fuzz targets into fuzz/corpus/<target>/: valid
envelopes and requests, hand-encoded in protobuf wire format, so libFuzzer
starts from inputs that get past the UUID and decimal checks and mutates
from there. Generated at run time rather than committed as binary files."""
import pathlib
import uuid

def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)

def field(num, value):
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value

def msg(*fields):
    return b"".join(field(n, v) for n, v in fields)

def money(amount, code="USD"):
    return msg((1, code), (2, amount))

def envelope(account, version, payload_field, payload):
    return msg((1, str(uuid.uuid4())), (2, account), (3, version), (4, str(uuid.uuid4())),
               (5, msg((1, 1_700_000_000))), (6, str(uuid.uuid4())), (payload_field, payload))

root = pathlib.Path(__file__).parent / "corpus"
account, other = str(uuid.uuid4()), str(uuid.uuid4())
events = {
    "opened": envelope(account, 1, 20, msg((1, str(uuid.uuid4())), (2, 1), (3, "USD"))),
    "deposited": envelope(account, 2, 21, msg((1, money("5.00")), (2, money("0.00")), (3, money("5.00")), (4, "pay"))),
    "withdrawn": envelope(account, 3, 22, msg((1, money("1.00")), (2, money("5.00")), (3, money("4.00")))),
    "debited": envelope(account, 4, 23, msg((1, money("1.00")), (2, money("4.00")), (3, money("3.00")), (4, other))),
    "credited": envelope(account, 5, 24, msg((1, money("1.00")), (2, money("3.00")), (3, money("4.00")), (4, other))),
    "frozen": envelope(account, 6, 25, msg((1, "fraud"))),
    "closed": envelope(account, 7, 27, b""),
}
# One stream message carrying several events (an EventBatch: field 1 repeated).
events["batch"] = msg(*((1, events[k]) for k in ("opened", "deposited", "withdrawn")))
requests = {
    "transfer": b"\x00" + msg((1, account), (2, other), (3, money("10.50")), (4, "key-1"), (5, "rent")),
    "deposit": b"\x01" + msg((1, account), (2, money("1000", "JPY")), (3, "key-2")),
    "balance": b"\x02" + msg((1, account), (2, f"ct1.{account}:3")),
    "amount": b"\x03" + b"12.345",
}
for target, seeds in (("events", events), ("requests", requests)):
    d = root / target
    d.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (d / f"seed-{name}").write_bytes(data)
