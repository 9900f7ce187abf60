"""Every type and byte order decoded against known register contents, through the real planner.

The expected register words are written out by hand from datasheet conventions (ABCD = high word
first, big-endian bytes), not produced by the code under test.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.address import Address, parse_address
from drivers.modbus.config import ModbusDevice
from drivers.modbus.decode import decode_bits, decode_registers
from drivers.modbus.plan import poll_groups


def device(tags: list[dict], **kw: object) -> ModbusDevice:
    return ModbusDevice.model_validate({"name": "d", "protocol": "modbus", "endpoint": "tcp://127.0.0.1:502",
                                        "tags": tags, **kw})


def decode(dev: ModbusDevice, words: list[int]) -> tuple[np.ndarray, dict[int, str]]:
    """Serve `words` as hr:0.. and decode every request of the device's plan from them."""
    [group] = poll_groups(dev)
    out = np.full(len(dev.tags), np.nan)
    text: dict[int, str] = {}
    data = struct.pack(f">{len(words)}H", *words)
    for req in group.requests:
        decode_registers(req, data[2 * req.start : 2 * (req.start + req.count)], out, text)
    if group.scale is not None:
        out = out * group.scale + group.offset
    return out, text


# float32 1.0 = 0x3F800000, -2.5 = 0xC0200000; int32 -2 = 0xFFFFFFFE; uint32 0x12345678
KNOWN = [
    ("float32", "ABCD", [0x3F80, 0x0000], 1.0),
    ("float32", "CDAB", [0x0000, 0x3F80], 1.0),
    ("float32", "BADC", [0x803F, 0x0000], 1.0),
    ("float32", "DCBA", [0x0000, 0x803F], 1.0),
    ("float32", "ABCD", [0xC020, 0x0000], -2.5),
    ("uint32", "ABCD", [0x1234, 0x5678], 0x12345678),
    ("uint32", "CDAB", [0x5678, 0x1234], 0x12345678),
    ("uint32", "BADC", [0x3412, 0x7856], 0x12345678),
    ("uint32", "DCBA", [0x7856, 0x3412], 0x12345678),
    ("int32", "ABCD", [0xFFFF, 0xFFFE], -2),
    ("int32", "CDAB", [0xFFFE, 0xFFFF], -2),
    ("int16", "ABCD", [0xFF85], -123),
    ("int16", "CDAB", [0xFF85], -123),  # word order does not apply to one register
    ("int16", "BADC", [0x85FF], -123),
    ("int16", "DCBA", [0x85FF], -123),
    ("uint16", "ABCD", [0xBEEF], 0xBEEF),
    ("uint16", "BADC", [0xEFBE], 0xBEEF),
    ("uint64", "ABCD", [0x0001, 0x0203, 0x0405, 0x0607], 0x0001020304050607),
    ("uint64", "CDAB", [0x0607, 0x0405, 0x0203, 0x0001], 0x0001020304050607),
    ("uint64", "BADC", [0x0100, 0x0302, 0x0504, 0x0706], 0x0001020304050607),
    ("uint64", "DCBA", [0x0706, 0x0504, 0x0302, 0x0100], 0x0001020304050607),
    ("int64", "ABCD", [0xFFFF, 0xFFFF, 0xFFFF, 0xFF9C], -100),
    ("int64", "CDAB", [0xFF9C, 0xFFFF, 0xFFFF, 0xFFFF], -100),
    ("float64", "ABCD", [0x4009, 0x21FB, 0x5444, 0x2D18], math.pi),
    ("float64", "CDAB", [0x2D18, 0x5444, 0x21FB, 0x4009], math.pi),
    ("float64", "BADC", [0x0940, 0xFB21, 0x4454, 0x182D], math.pi),
    ("float64", "DCBA", [0x182D, 0x4454, 0xFB21, 0x0940], math.pi),
]


@pytest.mark.parametrize(("type_", "order", "words", "expected"), KNOWN)
@pytest.mark.parametrize("where", ["device", "tag"])
def test_known_register_contents(type_: str, order: str, words: list[int], expected: float, where: str) -> None:
    tag = {"name": "x", "address": "hr:0", "type": type_}
    if where == "tag":  # the per-tag override beats a device default that would decode differently
        dev = device([{**tag, "byte_order": order}], byte_order="DCBA" if order == "ABCD" else "ABCD")
    else:
        dev = device([tag], byte_order=order)
    values, _ = decode(dev, words)
    assert values[0] == expected


def test_mixed_orders_and_types_in_one_request() -> None:
    tags = [
        {"name": "a", "address": "hr:0", "type": "float32"},
        {"name": "b", "address": "hr:2", "type": "float32", "byte_order": "CDAB"},
        {"name": "c", "address": "hr:4", "type": "int16"},
        {"name": "d", "address": "hr:4.0", "type": "bool"},
        {"name": "e", "address": "hr:4.15", "type": "bool"},
        {"name": "f", "address": "40006.3", "type": "bool"},  # Modicon 40006 = hr:5
        {"name": "g", "address": "hr:6", "type": "string", "length": 3},
        {"name": "h", "address": "hr:9", "type": "uint16", "scale": 0.1, "offset": -40.0},
    ]
    dev = device(tags)
    assert len(poll_groups(dev)[0].requests) == 1
    words = [0x3F80, 0x0000, 0x0000, 0xC020, 0x8001, 0x0008, *struct.unpack(">3H", b"AB\0\0\0\0"), 650]
    values, text = decode(dev, words)
    assert values[:6].tolist() == [1.0, -2.5, -32767.0, 1.0, 1.0, 1.0]
    assert math.isnan(values[6]) and text == {6: "AB"}
    assert values[7] == pytest.approx(25.0)


def test_strings_byte_order_nul_and_padding() -> None:
    words = list(struct.unpack(">4H", b"PUMP 7  "))
    dev = device([{"name": "s", "address": "hr:0", "type": "string", "length": 4}])
    assert decode(dev, words)[1] == {0: "PUMP 7"}
    swapped = list(struct.unpack(">4H", b"UPPM7    "[:8]))
    dev = device([{"name": "s", "address": "hr:0", "type": "string", "length": 4, "byte_order": "BADC"}])
    assert decode(dev, swapped)[1][0].startswith("PUMP")
    dev = device([{"name": "s", "address": "hr:0", "type": "string", "length": 2}])
    assert decode(dev, list(struct.unpack(">2H", b"OK\0X")))[1] == {0: "OK"}  # stops at NUL
    assert decode(dev, list(struct.unpack(">2H", b"\xb0C\0\0")))[1] == {0: "°C"}  # Latin-1, never an error


def test_bits_of_a_bit_table() -> None:
    dev = device([{"name": "a", "address": "coil:0", "type": "bool"},
                  {"name": "b", "address": "coil:9", "type": "bool"},
                  {"name": "c", "address": "00011", "type": "bool"}])
    [req] = poll_groups(dev)[0].requests
    out = np.full(3, np.nan)
    decode_bits(req, bytes((0b0000_0001, 0b0000_0110)), out)  # coil 0, 9 and 10 set
    assert out.tolist() == [1.0, 1.0, 1.0]
    decode_bits(req, bytes((0b1111_1110, 0b0000_0001)), out)
    assert out.tolist() == [0.0, 0.0, 0.0]


FORMATS = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f",
           "int64": ">q", "uint64": ">Q", "float64": ">d"}


def reorder(raw: bytes, order: str) -> list[int]:
    """Big-endian value bytes -> register words as a device with this order sends them."""
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


@given(st.sampled_from(sorted(FORMATS)), st.sampled_from(["ABCD", "CDAB", "BADC", "DCBA"]), st.data())
def test_every_type_and_order_round_trips(type_: str, order: str, data: st.DataObject) -> None:
    fmt = FORMATS[type_]
    if type_.startswith("float"):
        value = data.draw(st.floats(allow_nan=False, width=32 if type_ == "float32" else 64))
    else:
        bits = struct.calcsize(fmt) * 8
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if type_.startswith("int") else (0, (1 << bits) - 1)
        value = data.draw(st.integers(lo, hi))
    start = data.draw(st.integers(0, 5))
    words = [0xAAAA] * start + reorder(struct.pack(fmt, value), order) + [0x5555]
    dev = device([{"name": "x", "address": f"hr:{start}", "type": type_, "byte_order": order}])
    got, _ = decode(dev, words)
    assert got[0] == float(value)  # int64/uint64 beyond 2**53 round like float(value) does


@pytest.mark.parametrize(("text", "expected"), [
    ("hr:0", Address("hr", 0)), ("HR : 7", Address("hr", 7)), ("ir:65535", Address("ir", 65535)),
    ("40001", Address("hr", 0)), ("49999", Address("hr", 9998)), ("400001", Address("hr", 0)),
    ("465536", Address("hr", 65535)), ("30001", Address("ir", 0)), ("10017", Address("di", 16)),
    ("00001", Address("coil", 0)), ("000001", Address("coil", 0)), ("hr:100.3", Address("hr", 100, 3)),
    ("40101.15", Address("hr", 100, 15)), ("ir:2.0", Address("ir", 2, 0)),
])
def test_addresses(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("40000", "'40000' is not an address: Modicon numbers count from 1 (40001 is hr:0) up to 49999"),
    ("400000", "Modicon numbers count from 1 (400001 is hr:0) up to 465536"),
    ("465537", "up to 465536"),
    ("20001", "is not an address: use coil:N"),
    ("4001", "is not an address"),
    ("4000001", "is not an address"),
    ("hr:1.16", "the bit after '.' must be 0..15"),
    ("coil:1.2", "coil addresses are single bits already"),
    ("hx:1", "is not an address"),
    ("hr:-1", "address out of range"),
])
def test_bad_addresses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_address(text)
