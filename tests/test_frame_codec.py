"""Frame format v1 codec: exact round trips, size budget, and robustness against malformed bytes."""

from __future__ import annotations

import json
import pathlib
import re
import struct

import msgpack
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.frame.codec import MAX_INFLATED_BODY, FrameError, decode_frame, encode_frame
from edge_agent.frame.model import FORMAT_VERSION, VALUE_TYPES, Block, Frame
from edge_agent.samples import QUALITY_BAD_COMM, QUALITY_GOOD, QUALITY_UNCERTAIN, text_column

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
BOOT = bytes(range(16))


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def make_block(device, tags, types, ts, values, quality=None, flags=None) -> Block:
    values = np.asarray(values, dtype=np.float64).reshape(len(ts), len(tags))
    shape = values.shape
    return Block(
        device=device, tags=tuple(tags), types=tuple(types),
        ts=np.asarray(ts, dtype=np.int64),
        values=values,
        quality=np.zeros(shape, np.uint8) if quality is None else np.asarray(quality, np.uint8),
        flags=np.zeros(shape, np.uint32) if flags is None else np.asarray(flags, np.uint32),
    )


def assert_frames_identical(a: Frame, b: Frame) -> None:
    assert (a.agent, a.boot, a.seq, a.created_ns) == (b.agent, b.boot, b.seq, b.created_ns)
    assert len(a.blocks) == len(b.blocks)
    for x, y in zip(a.blocks, b.blocks, strict=True):
        assert x.device == y.device
        assert x.tags == y.tags and isinstance(y.tags, tuple)
        assert x.types == y.types and isinstance(y.types, tuple)
        assert y.ts.dtype == np.int64 and y.values.dtype == np.float64
        assert y.quality.dtype == np.uint8 and y.flags.dtype == np.uint32
        n, k = x.ts.shape[0], len(x.tags)
        assert y.ts.shape == (n,) and y.values.shape == (n, k)
        assert y.quality.shape == (n, k) and y.flags.shape == (n, k)
        np.testing.assert_array_equal(y.ts, x.ts)
        # Bit-exact: NaN payloads and the sign of zero must survive, which == cannot check.
        np.testing.assert_array_equal(y.values.view(np.uint64), x.values.view(np.uint64))
        np.testing.assert_array_equal(y.quality, x.quality)
        np.testing.assert_array_equal(y.flags, x.flags)
        # status: None and all-zero are the same thing on the wire (the element is left out)
        xs = np.zeros((n, k), np.uint32) if x.status is None else np.asarray(x.status, np.uint32)
        assert y.status is None or (y.status.dtype == np.uint32 and y.status.shape == (n, k) and y.status.any())
        ys = np.zeros((n, k), np.uint32) if y.status is None else y.status
        np.testing.assert_array_equal(ys, xs)
        assert sorted(y.text) == sorted(x.text or {})
        for j, col in (x.text or {}).items():
            assert y.text[j].dtype == object and y.text[j].tolist() == list(col)


def roundtrip(frame: Frame) -> Frame:
    out = decode_frame(encode_frame(frame))
    assert_frames_identical(frame, out)
    return out


def tag_encodings(data: bytes) -> list[list[str]]:
    doc = msgpack.unpackb(data, raw=False)
    return [[tag[2] for tag in block[2]] for block in doc[6]]


# --------------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------------

INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1), "uint8": (0, 2**8 - 1),
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int64": (INT64_MIN, INT64_MAX), "uint64": (0, 2**64 - 1),
}
# float64 values at the edges of the integer encodings. 2**63-1 and 2**64-1 are not float64: they
# round to 2**63 and 2**64, which must leave i8 (resp. u8) and still round-trip.
EDGE_FLOATS = [
    float(-(2**63)), float(2**63 - 1), float(2**63), float(2**63 - 1024), float(2**64 - 2048),
    float(2**64 - 1), float(2**64), -(2.0**53) - 2, 2.0**53 + 2, -0.0, 0.0, 1.0, -1.0,
    127.0, 128.0, -128.0, -129.0, 255.0, 256.0, 32767.0, 32768.0, -32768.0, -32769.0, 65535.0, 65536.0,
    2.0**31, -(2.0**31) - 1, 2.0**32 - 1, 2.0**32, 5e-324, -5e-324, 1.7976931348623157e308,
    float("inf"), float("-inf"), float("nan"), 3.4028234663852886e38, 1.401298464324817e-45, 0.1,
]
NAN_BITS = [
    0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001, 0x7FF4000000000000,
    0x7FFC000000000000, 0x7FF8000020000000, 0xFFFFFFFFFFFFFFFF, 0x7FF8000000000001,
]


def bits_to_float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


any_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(EDGE_FLOATS),
    st.sampled_from(NAN_BITS).map(bits_to_float),
    st.integers(0, 2**64 - 1).map(bits_to_float),  # every bit pattern, signalling NaNs included
)


@st.composite
def value_column(draw, n: int) -> tuple[str, list[float]]:
    kind = draw(st.sampled_from(
        ["float", "float32", "bool", "int", "edge", "constant", "int_with_negzero", "mixed"]
    ))
    if kind == "float":
        return draw(st.sampled_from(["float64", "float32"])), draw(st.lists(any_float, min_size=n, max_size=n))
    if kind == "float32":
        f32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
        return "float32", draw(st.lists(f32, min_size=n, max_size=n))
    if kind == "bool":
        return "bool", [float(v) for v in draw(st.lists(st.booleans(), min_size=n, max_size=n))]
    if kind == "int":
        name = draw(st.sampled_from(sorted(INT_RANGES)))
        lo, hi = INT_RANGES[name]
        ints = draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n))
        declared = name if name in VALUE_TYPES else "int16" if name == "int8" else "uint16"
        return declared, [float(v) for v in ints]
    if kind == "edge":
        return "float64", draw(st.lists(st.sampled_from(EDGE_FLOATS), min_size=n, max_size=n))
    if kind == "constant":
        return draw(st.sampled_from(VALUE_TYPES)), [draw(any_float)] * n
    if kind == "int_with_negzero":
        ints = [float(v) for v in draw(st.lists(st.integers(-100, 100), min_size=n, max_size=n))]
        if n:
            ints[draw(st.integers(0, n - 1))] = -0.0
        return "int16", ints
    return draw(st.sampled_from(VALUE_TYPES)), draw(
        st.lists(st.one_of(any_float, st.integers(-5, 5).map(float)), min_size=n, max_size=n)
    )


@st.composite
def ts_column(draw, n: int) -> list[int]:
    kind = draw(st.sampled_from(["regular", "extreme", "equal", "shuffled"]))
    if kind == "extreme":
        return draw(st.lists(
            st.one_of(st.integers(INT64_MIN, INT64_MAX), st.sampled_from([INT64_MIN, INT64_MAX, 0, -1])),
            min_size=n, max_size=n,
        ))
    t0 = draw(st.integers(0, 2**62))
    if kind == "equal":
        return [t0] * n
    period = draw(st.sampled_from([1, 1_000, 100_000_000, 1_000_000_000, 60_000_000_000]))
    jitter = draw(st.lists(st.integers(-1_000_000, 1_000_000), min_size=n, max_size=n))
    out = [t0 + i * period + j for i, j in enumerate(jitter)]
    if kind == "shuffled":
        out = draw(st.permutations(out))
    return list(out)


@st.composite
def uint_matrix(draw, n: int, k: int, dtype, choices: list[int]) -> np.ndarray:
    hi = np.iinfo(dtype).max
    element = st.one_of(st.sampled_from(choices), st.integers(0, hi))
    cols = []
    for _ in range(k):
        if draw(st.booleans()):
            cols.append([draw(element)] * n)
        else:
            cols.append(draw(st.lists(element, min_size=n, max_size=n)))
    return np.array(cols, dtype=dtype).T.reshape(n, k)


names = st.text(min_size=0, max_size=12)


@st.composite
def blocks(draw, max_rows: int = 50, max_tags: int = 8) -> Block:
    n = draw(st.integers(0, max_rows))
    k = draw(st.integers(1, max_tags))
    cols = [draw(value_column(n)) for _ in range(k)]
    values = np.array([c[1] for c in cols], dtype=np.float64).T.reshape(n, k)
    return Block(
        device=draw(names),
        tags=tuple(draw(st.lists(names, min_size=k, max_size=k))),
        types=tuple(c[0] for c in cols),
        ts=np.array(draw(ts_column(n)), dtype=np.int64),
        values=values,
        quality=draw(uint_matrix(n, k, np.uint8, [0x00, 0x40, 0x80, 0x81, 0x82, 0x83, 0x84])),
        flags=draw(uint_matrix(n, k, np.uint32, [0, 1, 255, 256, 65535, 65536, 2**31, 2**32 - 1])),
        status=draw(st.one_of(st.none(), uint_matrix(n, k, np.uint32, STATUS_CODES))),
        text=draw(text_columns(n, k)),
    )


# OPC UA StatusCodes the driver really sees (Good, Uncertain*, Bad*), and 0 so that columns mix.
STATUS_CODES = [0, 0x40000000, 0x408F0000, 0x80000000, 0x80310000, 0x808A0000, 0x80340000, 2**32 - 1]
texts = st.one_of(st.none(), st.text(max_size=20), st.sampled_from(["", "SN-000123", "Rezept Ä/β", "x" * 300]))


@st.composite
def text_columns(draw, n: int, k: int) -> dict[int, np.ndarray]:
    out = {}
    for j in draw(st.sets(st.integers(0, k - 1), max_size=k)):
        col = np.empty(n, dtype=object)
        col[:] = draw(st.lists(texts, min_size=n, max_size=n))
        out[j] = col
    return out


@st.composite
def frames(draw, max_blocks: int = 3) -> Frame:
    return Frame(
        agent=draw(names),
        boot=draw(st.binary(min_size=16, max_size=16)),
        seq=draw(st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 1, 2**32, 2**64 - 1]))),
        created_ns=draw(st.integers(INT64_MIN, INT64_MAX)),
        blocks=draw(st.lists(blocks(), max_size=max_blocks)),
    )


# --------------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------------


@FAST
@given(frames())
def test_roundtrip_property(frame: Frame) -> None:
    roundtrip(frame)


@FAST
@given(frames(), st.sampled_from([1, 3, 19]))
def test_zstd_roundtrip_property(frame: Frame, level: int) -> None:
    data = encode_frame(frame, zstd_level=level)
    out = decode_frame(data)
    assert encode_frame(out) == encode_frame(frame)  # same content as the plain encoding, bit for bit
    assert msgpack.unpackb(data, raw=False)[5] == 1


def test_zstd_shrinks_a_realistic_frame_and_keeps_the_header_readable() -> None:
    rng = np.random.default_rng(1)
    n, k = 100, 10
    ts = 1_700_000_000_000_000_000 + np.arange(n) * 1_000_000_000 + rng.integers(0, 1_000_000, n)
    values = np.round(50 + np.cumsum(rng.normal(0, 0.05, (n, k)), axis=0), 1).astype(np.float32).astype(float)
    block = make_block("press1", [f"temp_{j:02d}" for j in range(k)], ["float32"] * k, ts, values)
    frame = Frame("gw", BOOT, 7, 1, [block])
    plain, packed = encode_frame(frame), encode_frame(frame, zstd_level=3)
    assert len(packed) < 0.8 * len(plain)
    header = msgpack.unpackb(packed, raw=False)
    assert header[:6] == [1, "gw", BOOT, 7, 1, 1]


def test_zstd_bomb_is_refused() -> None:
    bomb = zstandard.compress(b"\x00" * (MAX_INFLATED_BODY + 1))
    doc = [1, "gw", BOOT, 1, 1, 1, bomb]
    with pytest.raises(FrameError, match=r"over the .* limit"):
        decode_frame(_pack(doc))


@settings(max_examples=40, deadline=None)
@given(frames())
def test_encoding_is_deterministic(frame: Frame) -> None:
    data = encode_frame(frame)
    assert encode_frame(decode_frame(data)) == data


def test_empty_frame() -> None:
    frame = Frame(agent="gw-1", boot=BOOT, seq=0, created_ns=0)
    out = roundtrip(frame)
    assert out.blocks == []


def test_block_with_zero_rows() -> None:
    block = make_block("plc", ["a", "b"], ["float32", "bool"], [], np.empty((0, 2)))
    out = roundtrip(Frame("gw", BOOT, 7, 1, [block]))
    assert out.blocks[0].values.shape == (0, 2)


def test_block_with_one_row_and_block_with_no_tags() -> None:
    one = make_block("plc", ["a"], ["int16"], [123], [[-7.0]])
    none = make_block("plc", [], [], [1, 2, 3], np.empty((3, 0)))
    roundtrip(Frame("gw", BOOT, 7, 1, [one, none]))


def test_unicode_names() -> None:
    block = make_block(
        "Presse-Ø 3 · 温度计 🌡", ["Température °C", "压力/bar", "ключ\u0000null", ""],
        ["float64", "float32", "int32", "bool"], [1, 2],
        [[1.5, 2.5, -3, 1], [np.nan, -np.inf, 4, 0]],
    )
    roundtrip(Frame("agent-ünïcode-✓", BOOT, 1, -5, [block]))


def test_nan_payloads_and_negative_zero_are_bit_exact() -> None:
    col = [bits_to_float(b) for b in NAN_BITS] + [-0.0, 0.0]
    n = len(col)
    values = np.array([col, col[::-1], [-0.0] * n, [bits_to_float(0x7FF0000000000001)] * n]).T
    block = make_block("d", ["a", "b", "c", "d"], ["float64"] * 4, range(n), values)
    roundtrip(Frame("gw", BOOT, 1, 1, [block]))


def test_integer_edges_pick_the_exact_encoding() -> None:
    cases = {
        "u1": [0.0, 255.0], "i1": [-128.0, 127.0], "u2": [0.0, 65535.0], "i2": [-32768.0, 0.0],
        "u4": [0.0, 2.0**32 - 1], "i4": [-(2.0**31), 2.0**31 - 1],
        "i8": [float(INT64_MIN), 2.0**63 - 1024], "u8": [2.0**63, 2.0**64 - 2048],
        # 2**64 is float(2**64 - 1): out of every integer range. f4 holds it exactly (a power of two).
        "f4": [0.0, 2.0**64], "f8": [-0.0, 0.1],
    }
    k = len(cases)
    values = np.array(list(cases.values())).T
    # Give every column a distinct pair so the constant encoding cannot win.
    block = make_block("d", list(cases), ["float64"] * k, [0, 1], values)
    data = encode_frame(Frame("gw", BOOT, 1, 1, [block]))
    assert tag_encodings(data) == [list(cases)]
    roundtrip(Frame("gw", BOOT, 1, 1, [block]))


def test_negative_zero_never_uses_an_integer_encoding() -> None:
    values = np.array([[0.0, 1.0, 2.0, -0.0] * 4]).T
    block = make_block("d", ["a"], ["int16"], range(16), values)
    data = encode_frame(Frame("gw", BOOT, 1, 1, [block]))
    assert tag_encodings(data) == [["f4"]]
    roundtrip(Frame("gw", BOOT, 1, 1, [block]))


def test_constant_bool_and_uniform_columns_are_compact() -> None:
    n = 64
    values = np.column_stack([np.full(n, 42.5), np.arange(n) % 2])
    quality = np.full((n, 2), QUALITY_UNCERTAIN, np.uint8)
    quality[5, 1] = QUALITY_BAD_COMM
    flags = np.zeros((n, 2), np.uint32)
    flags[7, 1] = 1
    block = make_block("d", ["static", "motor_on"], ["float32", "bool"], range(n), values, quality, flags)
    data = encode_frame(Frame("gw", BOOT, 1, 1, [block]))
    tags = msgpack.unpackb(data, raw=False)[6][0][2]
    assert tags[0][2:] == ["k", 42.5, QUALITY_UNCERTAIN, 0]
    assert tags[1][2] == "b" and len(tags[1][3]) == n // 8
    assert len(tags[1][4]) == n and len(tags[1][5]) == n  # max flag 1: one byte per sample
    roundtrip(Frame("gw", BOOT, 1, 1, [block]))


@pytest.mark.parametrize(("max_flag", "width", "dtype"), [
    (1, 1, "<u1"), (0xFF, 1, "<u1"),
    (0x100, 2, "<u2"), (0xFFFF, 2, "<u2"),
    (0x10000, 4, "<u4"), (2**32 - 1, 4, "<u4"),
])
def test_varying_flags_use_the_narrowest_width(max_flag: int, width: int, dtype: str) -> None:
    n = 20
    flags = np.zeros((n, 2), np.uint32)
    flags[3, 0] = max_flag
    flags[4, 0] = 1
    flags[:, 1] = max_flag  # uniform: a single uint whatever its value
    block = make_block("d", ["a", "b"], ["int16", "int16"], range(n), np.zeros((n, 2)), flags=flags)
    data = encode_frame(Frame("gw", BOOT, 1, 1, [block]))
    tags = msgpack.unpackb(data, raw=False)[6][0][2]
    assert tags[0][5] == flags[:, 0].astype(dtype).tobytes() and len(tags[0][5]) == width * n
    assert tags[1][5] == max_flag
    roundtrip(Frame("gw", BOOT, 1, 1, [block]))


def test_max_flag_1_costs_one_byte_per_sample() -> None:
    """One `limits` hit (bit 0) in a frame costs n bytes for that tag, not 4n."""
    n = 100
    flags = np.zeros((n, 1), np.uint32)
    flags[42, 0] = 1
    block = make_block("d", ["a"], ["int16"], range(n), np.zeros((n, 1)), flags=flags)
    data = encode_frame(Frame("gw", BOOT, 1, 1, [block]))
    payload = msgpack.unpackb(data, raw=False)[6][0][2][0][5]
    assert isinstance(payload, bytes) and len(payload) == n
    assert payload == bytes(42) + b"\x01" + bytes(n - 43)
    roundtrip(Frame("gw", BOOT, 1, 1, [block]))


@pytest.mark.parametrize("dtype", ["<u1", "<u2", "<u4"])
def test_decoder_accepts_every_flag_width(dtype: str) -> None:
    """The width follows from the bin length alone; a wider-than-needed column is still valid."""
    flags = np.array([[0], [1], [0]], np.uint32)
    block = make_block("d", ["a"], ["int16"], [1, 2, 3], np.zeros((3, 1)), flags=flags)
    frame = Frame("gw", BOOT, 1, 1, [block])
    doc = msgpack.unpackb(encode_frame(frame), raw=False)
    doc[6][0][2][0][5] = flags[:, 0].astype(dtype).tobytes()
    assert_frames_identical(frame, decode_frame(msgpack.packb(doc, use_bin_type=True)))


def test_zero_row_block_accepts_an_empty_flags_bin() -> None:
    block = make_block("d", ["a"], ["int16"], [], np.empty((0, 1)))
    frame = Frame("gw", BOOT, 1, 1, [block])
    doc = msgpack.unpackb(encode_frame(frame), raw=False)
    assert doc[6][0][2][0][5] == 0  # the encoder writes uint 0 for an empty column
    doc[6][0][2][0][5] = b""
    assert_frames_identical(frame, decode_frame(msgpack.packb(doc, use_bin_type=True)))
    doc[6][0][2][0][5] = b"\x00"
    with pytest.raises(FrameError, match=r"flags: 1 bytes, n=0 needs 0$"):
        decode_frame(msgpack.packb(doc, use_bin_type=True))


def test_timestamp_deltas_use_the_narrowest_width() -> None:
    def ts_enc(ts: list[int]) -> str:
        block = make_block("d", ["a"], ["int16"], ts, np.zeros((len(ts), 1)))
        data = encode_frame(Frame("gw", BOOT, 1, 1, [block]))
        roundtrip(Frame("gw", BOOT, 1, 1, [block]))
        return msgpack.unpackb(data, raw=False)[6][0][1][2]

    assert ts_enc([5, 5, 5, -100]) == "i1"
    assert ts_enc([0, 1000, 2000]) == "i2"
    assert ts_enc([0, 10**9, 2 * 10**9 + 1234]) == "i4"
    assert ts_enc([0, 10**12]) == "i8"
    # Wrap-around deltas: the difference overflows int64 but still round-trips.
    assert ts_enc([INT64_MIN, INT64_MAX, INT64_MIN]) == "i1"  # deltas are -1 and +1 modulo 2**64


def test_decoder_ignores_unknown_trailing_elements() -> None:
    """v1 is extended by appending array elements; a v1 decoder must keep working."""
    block = make_block("d", ["a", "b"], ["float32", "int16"], [1, 2, 3],
                       [[0.5, 1], [1.5, 2], [np.nan, 3]], flags=[[0, 1], [0, 0], [1, 0]])
    frame = Frame("gw", BOOT, 9, 10, [block])
    doc = msgpack.unpackb(encode_frame(frame), raw=False)
    doc.append({"future": [1, 2]})
    doc[6][0].append("block extension")
    doc[6][0][1].append(b"ts extension")
    for tag in doc[6][0][2]:
        tag.extend([b"\x00\x01\x02", 3.5, None])
    extended = msgpack.packb(doc, use_bin_type=True)
    assert_frames_identical(frame, decode_frame(extended))


def test_decoder_accepts_any_msgpack_int_width() -> None:
    """The spec lets encoders in other languages write ints wider than needed (e.g. always uint64)."""
    frame = Frame("gw", BOOT, 3, 5, [make_block("d", ["a"], ["int16"], [7], [[1.0]])])
    data = encode_frame(frame)
    # seq=3 (positive fixint 0x03) -> uint 64 0xcf, created_ns=5 -> int 64 0xd3.
    prefix = data.index(BOOT) + len(BOOT)
    assert data[prefix:prefix + 2] == b"\x03\x05"
    wide = data[:prefix] + b"\xcf" + (3).to_bytes(8, "big") + b"\xd3" + (5).to_bytes(8, "big") + data[prefix + 2:]
    assert_frames_identical(frame, decode_frame(wide))


# --------------------------------------------------------------------------------------------------
# size budget
# --------------------------------------------------------------------------------------------------


def _telemetry_frame() -> Frame:
    rng = np.random.default_rng(1234)
    n, k = 100, 10
    t0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
    ts = t0 + np.arange(n, dtype=np.int64) * 1_000_000_000 + rng.integers(-1_000_000, 1_000_000, n)
    base = rng.uniform(10, 500, k)
    values = (base + rng.normal(0, 1, (n, k)).cumsum(axis=0)).astype(np.float32).astype(np.float64)
    tags = tuple(f"press{j // 4 + 1}.temp_{j:02d}" for j in range(k))
    block = Block(
        device="plc-line-3", tags=tags, types=("float32",) * k, ts=ts, values=values,
        quality=np.full((n, k), QUALITY_GOOD, np.uint8), flags=np.zeros((n, k), np.uint32),
    )
    return Frame(agent="edge-gw-0042", boot=BOOT, seq=123_456, created_ns=int(ts[-1]) + 5_000_000,
                 blocks=[block])


def _json_lines(frame: Frame) -> bytes:
    lines = []
    for b in frame.blocks:
        for i in range(b.values.shape[0]):
            for j, tag in enumerate(b.tags):
                lines.append(json.dumps({
                    "agent": frame.agent, "boot": frame.boot.hex(), "seq": frame.seq,
                    "device": b.device, "tag": tag, "ts": int(b.ts[i]), "value": float(b.values[i, j]),
                    "quality": int(b.quality[i, j]), "flags": int(b.flags[i, j]),
                }, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


def test_bytes_per_point_budget() -> None:
    frame = _telemetry_frame()
    data = encode_frame(frame)
    assert tag_encodings(data) == [["f4"] * 10]
    per_point = len(data) / frame.points
    ratio = len(_json_lines(frame)) / len(data)
    print(f"frame {len(data)} B, {per_point:.2f} B/point, JSON lines {ratio:.1f}x larger")
    assert per_point < 5.0
    assert ratio >= 8.0
    roundtrip(frame)


# --------------------------------------------------------------------------------------------------
# malformed input: FrameError and nothing else
# --------------------------------------------------------------------------------------------------


def _decode_or_frame_error(data: bytes) -> None:
    try:
        decode_frame(data)
    except FrameError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_or_frame_error(data)


@settings(max_examples=150, deadline=None)
@given(st.booleans(), st.lists(st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=5)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=8),
    max_leaves=30,
), max_size=9))
def test_fuzz_random_msgpack_documents(versioned: bool, doc: list) -> None:
    if versioned:  # get past the version check to reach the field checks behind it
        doc = [FORMAT_VERSION, *doc]
    _decode_or_frame_error(msgpack.packb(doc, use_bin_type=True))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames(max_blocks=2), st.data())
def test_fuzz_mutated_bytes(frame: Frame, data: st.DataObject) -> None:
    raw = bytearray(encode_frame(frame))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and raw:
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "truncate":
            del raw[pos:]
        elif op == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and raw:
            del raw[pos]
    _decode_or_frame_error(bytes(raw))


def _nodes(doc, path=()):
    yield path
    if isinstance(doc, list):
        for i, child in enumerate(doc):
            yield from _nodes(child, (*path, i))


replacement = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=4),
    st.binary(max_size=40), st.lists(st.integers(0, 3), max_size=7), st.sampled_from(
        ["k", "b", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8", "zz"]),
    st.dictionaries(st.text(max_size=3), st.integers(-9, 9), max_size=2),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames(max_blocks=2), st.data())
def test_fuzz_structurally_mutated_frames(frame: Frame, data: st.DataObject) -> None:
    """Swap one node of the decoded msgpack tree: reaches the field checks that byte flips rarely hit."""
    doc = msgpack.unpackb(encode_frame(frame), raw=False)
    paths = [p for p in _nodes(doc) if p]
    path = data.draw(st.sampled_from(paths))
    parent = doc
    for i in path[:-1]:
        parent = parent[i]
    if data.draw(st.booleans()):
        parent[path[-1]] = data.draw(replacement)
    else:
        del parent[path[-1]]
    _decode_or_frame_error(msgpack.packb(doc, use_bin_type=True))


def _valid_doc() -> list:
    block = make_block("d", ["a"], ["int16"], [1, 2, 3], [[1.0], [2.0], [300.0]],
                       quality=[[0], [0x81], [0]], flags=[[0], [0], [1]])
    return msgpack.unpackb(encode_frame(Frame("gw", BOOT, 1, 1, [block])), raw=False)


def _pack(doc) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.__setitem__(0, 2), "unsupported frame version 2"),
    (lambda d: d.__setitem__(0, True), "unsupported frame version"),
    (lambda d: d.__setitem__(5, 1), "body (encoding 1) must be a msgpack bin"),
    (lambda d: (d.__setitem__(5, 1), d.__setitem__(6, b"not zstd")), "body is not a zstd frame"),
    (lambda d: (d.__setitem__(5, 1), d.__setitem__(6, zstandard.compress(b"\xc1"))), "zstd body is not a msgpack"),
    (lambda d: (d.__setitem__(5, 1), d.__setitem__(6, zstandard.compress(_pack({"a": 1})))),
     "body (encoding 1) must be an array of blocks"),
    (lambda d: d.__setitem__(5, 7), "unknown body encoding 7"),
    (lambda d: d.__setitem__(2, b"short"), "boot is 5 bytes"),
    (lambda d: d.__setitem__(3, -1), "seq=-1 out of range"),
    (lambda d: d.__setitem__(4, 2**63), "created_ns"),
    (lambda d: d.__setitem__(1, b"agent"), "agent must be a msgpack str"),
    (lambda d: d.__delitem__(6), "at least 7"),
    (lambda d: d[6][0][1].__setitem__(0, 4), "deltas are 2 bytes, n=4"),
    (lambda d: d[6][0][1].__setitem__(2, "u1"), "unknown delta encoding"),
    (lambda d: d[6][0][2][0].__setitem__(2, "i1"), "values are 6 bytes, n=3 with i1 needs 3"),
    (lambda d: d[6][0][2][0].__setitem__(2, "x9"), "unknown value encoding"),
    (lambda d: d[6][0][2][0].__setitem__(2, "k"), "'k' values must be a msgpack float"),
    (lambda d: d[6][0][2][0].__setitem__(4, b"\x00"), "quality: 1 bytes, n=3 needs 3"),
    (lambda d: d[6][0][2][0].__setitem__(4, 256), "quality=256 out of range"),
    (lambda d: d[6][0][2][0].__setitem__(5, b"\x00" * 9), "tag 0 'a' flags: 9 bytes, n=3 needs 3, 6 or 12"),
    (lambda d: d[6][0][2][0].__setitem__(5, b"\x00" * 5), "tag 0 'a' flags: 5 bytes, n=3 needs 3, 6 or 12"),
    (lambda d: d[6][0][2][0].__setitem__(5, 2**32), "flags=4294967296 out of range"),
    (lambda d: d[6][0][2][0].__setitem__(5, False), "flags must be a msgpack uint or bin"),
    (lambda d: d[6][0][2][0].__delitem__(5), "has 5 elements, needs at least 6"),
    (lambda d: d[6][0].__setitem__(2, {"a": 1}), "tags must be a msgpack array"),
    (lambda d: d[6][0][2][0].extend([[], b"\x00" * 8]), "status: 8 bytes, n=3 needs 12"),
    (lambda d: d[6][0][2][0].extend([[], 2**32]), "status=4294967296 out of range"),
    (lambda d: d[6][0][2][0].extend([[], 0, ["a", None]]), "text: 2 elements, n=3"),
    (lambda d: d[6][0][2][0].extend([[], 0, ["a", None, 5]]), "text row 2 must be a msgpack str or nil, got int"),
    (lambda d: d[6][0][2][0].extend([[], 0, ["a", b"b", "c"]]), "text row 1 must be a msgpack str or nil, got bin"),
])
def test_specific_errors(mutate, message: str) -> None:
    doc = _valid_doc()
    mutate(doc)
    with pytest.raises(FrameError, match=re.escape(message)):
        decode_frame(_pack(doc))


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\x91", b"\xc1", b"\xdd\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
    _pack(_valid_doc())[:-1], _pack(_valid_doc()) + b"\x00", b"\x91" * 5000, _pack({"a": 1}),
    _pack([1, "gw", BOOT, 1, 1, 0, [["d", [10**9, 0, "i1", b""], []]]]),  # n disagrees with deltas
])
def test_malformed_bytes_raise_frame_error(data: bytes) -> None:
    with pytest.raises(FrameError):
        decode_frame(data)


def test_max_points_bounds_constant_column_expansion() -> None:
    n, k = 1001, 200  # tiny on the wire (constant columns) but 200k points once decoded
    block = make_block("d", [f"t{j}" for j in range(k)], ["float64"] * k, range(n), np.ones((n, k)))
    data = encode_frame(Frame("gw", BOOT, 1, 1, [block]))
    assert len(data) < n + 30 * k + 100
    assert decode_frame(data).points == n * k
    with pytest.raises(FrameError, match="max_points"):
        decode_frame(data, max_points=n * k - 1)


def test_encoder_rejects_unrepresentable_frames() -> None:
    good = make_block("d", ["a"], ["int16"], [1], [[1.0]])
    with pytest.raises(ValueError, match="boot"):
        encode_frame(Frame("gw", b"x", 1, 1, [good]))
    with pytest.raises(ValueError, match="seq"):
        encode_frame(Frame("gw", BOOT, -1, 1, [good]))
    with pytest.raises(ValueError, match="type"):
        encode_frame(Frame("gw", BOOT, 1, 1, [make_block("d", ["a"], ["int8"], [1], [[1.0]])]))
    bad_shape = make_block("d", ["a"], ["int16"], [1], [[1.0]])
    bad_shape.quality = np.zeros((2, 1), np.uint8)
    with pytest.raises(ValueError, match="quality"):
        encode_frame(Frame("gw", BOOT, 1, 1, [bad_shape]))
    lossy = make_block("d", ["a"], ["int16"], [1], [[1.0]])
    lossy.ts = np.array([1], dtype=np.uint64)
    with pytest.raises(ValueError, match="ts"):
        encode_frame(Frame("gw", BOOT, 1, 1, [lossy]))


# --------------------------------------------------------------------------------------------------
# the worked example in docs/frame-format.md must stay what the encoder really produces
# --------------------------------------------------------------------------------------------------


def test_doc_worked_example_matches_encoder() -> None:
    doc = (pathlib.Path(__file__).parent.parent / "docs" / "frame-format.md").read_text()
    hex_block = re.search(r"Full frame as one hex string:\s*```text\n(.*?)```", doc, re.S)
    assert hex_block, "worked example hex string not found in docs/frame-format.md"
    data = bytes.fromhex("".join(hex_block.group(1).split()))

    t0 = 1_767_225_600_000_000_000
    values = np.array([[21.5, 100, 1, 72.5], [21.75, 101, 1, 72.5], [np.nan, 103, 0, 72.5]])
    block = make_block(
        "plc1", ["temp", "count", "running", "setpoint"], ["float32", "uint16", "bool", "float64"],
        [t0, t0 + 1_000_312_000, t0 + 1_999_870_000], values,
        quality=[[0, 0, 0, 0], [0, 0, 0, 0], [0x81, 0, 0, 0]],
        flags=[[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]],
    )
    frame = Frame("gw-7", bytes.fromhex("3f2a9c4e1b7d4e8f9a0c5d6e7f801234"), 42, t0 + 2_005_000_000, [block])
    assert encode_frame(frame) == data
    assert_frames_identical(frame, decode_frame(data))


def test_doc_status_and_text_example_matches_encoder() -> None:
    doc = (pathlib.Path(__file__).parent.parent / "docs" / "frame-format.md").read_text()
    hex_block = re.search(r"Full frame as one hex string \(status and text example\):\s*```text\n(.*?)```", doc, re.S)
    assert hex_block, "status/text worked example not found in docs/frame-format.md"
    data = bytes.fromhex("".join(hex_block.group(1).split()))
    assert f"Total: {len(data)} bytes for 6 points." in doc

    t0 = 1_767_225_600_000_000_000
    block = Block(
        "opc1", ("temp", "recipe", "valve"), ("float32", "string", "float64"),
        np.array([t0, t0 + 1_000_000_000], np.int64),
        np.array([[21.5, np.nan, np.nan], [21.75, np.nan, np.nan]]),
        np.array([[0, 0, 0x82], [0x42, 0x81, 0x82]], np.uint8), np.zeros((2, 3), np.uint32),
        status=np.array([[0, 0, 0x808C0000], [0x40930000, 0, 0x808C0000]], np.uint32),
        text={1: text_column(["PVC-12", None])},
    )
    frame = Frame("gw-7", bytes.fromhex("3f2a9c4e1b7d4e8f9a0c5d6e7f801234"), 43, t0 + 2_005_000_000, [block])
    assert encode_frame(frame) == data
    out = decode_frame(data)
    assert_frames_identical(frame, out)
    assert out.blocks[0].text[1].tolist() == ["PVC-12", None]
    assert out.blocks[0].status[:, 2].tolist() == [0x808C0000, 0x808C0000]


def test_all_zero_status_and_no_text_add_no_bytes() -> None:
    block = make_block("d", ["a", "b"], ["float32", "uint16"], [1, 2, 3], [[1.5, 1], [2.5, 2], [3.5, 3]])
    plain = encode_frame(Frame("gw", BOOT, 1, 1, [block]))
    block.status = np.zeros((3, 2), np.uint32)
    block.text = {}
    assert encode_frame(Frame("gw", BOOT, 1, 1, [block])) == plain
    assert decode_frame(plain).blocks[0].status is None


def test_status_is_a_uint_when_uniform_and_4n_bytes_when_it_varies() -> None:
    block = make_block("d", ["a", "b", "c"], ["float64"] * 3, [1, 2], np.zeros((2, 3)))
    block.status = np.array([[0, 0x80340000, 0], [0, 0x80340000, 0x40930000]], np.uint32)
    tags = msgpack.unpackb(encode_frame(Frame("gw", BOOT, 1, 1, [block])), raw=False)[6][0][2]
    assert [len(t) for t in tags] == [6, 8, 8]
    assert tags[1][6:] == [[], 0x80340000]
    assert tags[2][6:] == [[], struct.pack("<II", 0, 0x40930000)]


def test_status_after_scores_needs_no_placeholder() -> None:
    block = make_block("d", ["a"], ["float64"], [1, 2], [[1.0], [2.0]])
    block.scores = {"hampel": np.array([[0.5], [np.nan]], np.float32)}
    block.status = np.array([[7], [7]], np.uint32)
    tag = msgpack.unpackb(encode_frame(Frame("gw", BOOT, 1, 1, [block])), raw=False)[6][0][2][0]
    assert len(tag) == 8 and tag[6][0][0] == "hampel" and tag[7] == 7
    roundtrip(Frame("gw", BOOT, 1, 1, [block]))


def test_an_old_v1_decoder_reads_a_string_tag_as_nan_with_its_quality() -> None:
    """What a decoder written before elements 7 and 8 sees: it reads elements 0-5 (and iterates 6)."""
    block = make_block("d", ["sn", "t"], ["string", "float32"], [1, 2], [[np.nan, 1.5], [np.nan, 2.5]],
                       quality=[[0, 0], [0x81, 0]])
    block.text = {0: text_column(["SN-1", None])}
    tags = msgpack.unpackb(encode_frame(Frame("gw", BOOT, 1, 1, [block])), raw=False)[6][0][2]
    sn = tags[0]
    assert sn[2] == "k" and np.isnan(sn[3]) and sn[4] == b"\x00\x81" and sn[5] == 0
    assert sn[6] == [] and sn[7] == 0 and sn[8] == ["SN-1", None]
    assert len(tags[1]) == 6  # the numeric neighbour pays nothing


def test_text_survives_frame_splitting() -> None:
    from edge_agent.frame.builder import build_frames

    n = 40
    block = make_block("d", ["sn", "v"], ["string", "float64"], range(n),
                       np.column_stack([np.full(n, np.nan), np.arange(n) * 0.1]))
    block.text = {0: text_column([f"serial-{i:04d}-" + "x" * 50 for i in range(n)])}
    block.status = np.zeros((n, 2), np.uint32)
    block.status[5, 1] = 0x80000000

    def make(seq, part):
        return Frame("gw", BOOT, seq, 1, part)

    out = build_frames([block], 1, make, 600)
    assert len(out) > 2 and all(len(data) <= 600 for data, _, _ in out)
    got_text, got_status = [], []
    for data, _, _ in out:
        for b in decode_frame(data).blocks:
            if "sn" in b.tags:
                got_text += b.text[b.tags.index("sn")].tolist()
            if "v" in b.tags:
                col = b.status[:, b.tags.index("v")] if b.status is not None else np.zeros(b.ts.shape[0])
                got_status += col.tolist()
    assert got_text == block.text[0].tolist()
    assert got_status == block.status[:, 1].tolist()


def test_encoder_rejects_bad_text() -> None:
    block = make_block("d", ["sn"], ["string"], [1, 2], [[np.nan], [np.nan]])
    for text, message in [({1: text_column(["a", "b"])}, "not a tag position"),
                          ({0: text_column(["a"])}, "has 1 rows, expected 2"),
                          ({0: text_column(["a", 3])}, "row 1 is int")]:
        block.text = text
        with pytest.raises(ValueError, match=message):
            encode_frame(Frame("gw", BOOT, 1, 1, [block]))


def test_text_and_status_survive_a_split_by_tags() -> None:
    """One row that is too big: the builder splits by tags, and each part keeps its tags' text."""
    from edge_agent.frame.builder import build_frames

    k = 12
    block = make_block("d", [f"sn{j}" for j in range(k)], ["string"] * k, [5], np.full((1, k), np.nan))
    block.text = {j: text_column([f"{j:02d}" + "y" * 80]) for j in range(0, k, 2)}  # every other tag
    block.status = np.arange(k, dtype=np.uint32).reshape(1, k)
    out = build_frames([block], 1, lambda seq, part: Frame("gw", BOOT, seq, 1, part), 300)
    assert len(out) >= 4 and all(len(data) <= 300 for data, _, _ in out)
    text, status = {}, {}
    for data, _, _ in out:
        for b in decode_frame(data).blocks:
            for j, tag in enumerate(b.tags):
                text[tag] = b.text[j].tolist() if j in b.text else None
                status[tag] = int(b.status[0, j]) if b.status is not None else 0
    assert text == {f"sn{j}": ([f"{j:02d}" + "y" * 80] if j % 2 == 0 else None) for j in range(k)}
    assert status == {f"sn{j}": j for j in range(k)}
