"""The compiled frame encoder gives exactly the reference encoder's bytes, and declines what it does not know."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.frame import fastpack
from edge_agent.frame.codec import decode_frame, encode_frame
from edge_agent.frame.model import Block, Frame
from tests.test_frame_codec import BOOT, EDGE_FLOATS, FAST, NAN_BITS, bits_to_float, blocks, frames, make_block

EDGE_INTS = [0, 1, 31, 32, 127, 128, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1]
F2_MAX = float(np.finfo(np.float16).max)
# Scores around float16's range (f2 against f4), its rounding edges, NaN (not scored) and infinities.
SCORE_EDGES = [0.0, -0.0, 1.0, 0.1, -3.5, F2_MAX, -F2_MAX, 65519.0, 65520.0, 1e5, -1e30, 6e-8, 1e-40,
               float("inf"), float("-inf"), float("nan")]


@st.composite
def score_columns(draw, n: int, k: int, dtype) -> np.ndarray:
    element = st.one_of(st.sampled_from(SCORE_EDGES), st.floats(width=32, allow_nan=True))
    cols = []
    for _ in range(k):
        shape = draw(st.sampled_from(["nan", "constant", "mixed", "scored"]))
        if shape == "nan":
            cols.append([float("nan")] * n)
        elif shape == "constant":
            cols.append([draw(element)] * n)
        else:
            col = draw(st.lists(element, min_size=n, max_size=n))
            cols.append([x if shape == "scored" or draw(st.booleans()) else float("nan") for x in col])
    return np.array(cols, dtype=np.float64).T.reshape(n, k).astype(dtype)


@st.composite
def scored_blocks(draw, max_rows: int = 20, max_tags: int = 6) -> Block:
    """blocks() (which draws status columns and text) plus score columns of up to three kinds."""
    block = draw(blocks(max_rows=max_rows, max_tags=max_tags))
    n, k = block.values.shape
    kinds = draw(st.lists(st.sampled_from(["ewma_zscore", "hampel", "rate_of_change", "z" * 40]),
                          unique=True, max_size=3))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float64]))
    block.scores = {kind: draw(score_columns(n, k, dtype)) for kind in kinds}
    if draw(st.booleans()):
        block.text = {}  # text is the one field the fast path leaves to the reference
    return block


@st.composite
def scored_frames(draw) -> Frame:
    frame = draw(frames(max_blocks=0))
    frame.blocks = draw(st.lists(scored_blocks(), max_size=4))
    return frame


@settings(FAST, max_examples=300)
@given(frames(), st.sampled_from([None, 3]))
def test_fast_path_gives_the_reference_bytes(frame: Frame, level: int | None) -> None:
    for block in frame.blocks:
        if not block.text:
            assert fastpack.encode_block(block) is not None, "the fast path declined a block without text"
    assert fastpack.encode_frame(frame, zstd_level=level) == encode_frame(frame, zstd_level=level)


@settings(FAST, max_examples=400)
@given(scored_frames(), st.sampled_from([None, 3]))
def test_scores_and_status_give_the_reference_bytes(frame: Frame, level: int | None) -> None:
    for block in frame.blocks:
        if not block.text:
            assert fastpack.encode_block(block) is not None, "the fast path declined scores or status"
    assert fastpack.encode_frame(frame, zstd_level=level) == encode_frame(frame, zstd_level=level)


@FAST
@given(blocks(max_rows=300, max_tags=40))
def test_fast_path_on_larger_blocks(block: Block) -> None:
    # Longer columns cross the bin 8 / bin 16 headers and the fixarray / array 16 tag-count header.
    frame = Frame("gw", BOOT, 7, 1, [block])
    assert fastpack.encode_frame(frame) == encode_frame(frame)


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 48, 49, 56, 57, 63, 64, 65, 300])
def test_edges_of_every_choice(n: int) -> None:
    """Hand-picked boundaries, where an off-by-one in a size or range check would show."""
    rng = np.random.default_rng(n)
    cols, types = [], []
    for x in [*EDGE_FLOATS, *map(bits_to_float, NAN_BITS)]:
        cols.append(np.full(n, x))  # constants: k against u1 / i1 / b by n
        cols.append(np.where(np.arange(n) % 2 == 0, x, 0.0))  # a value against zero
        cols.append(np.where(np.arange(n) % 3 == 0, x, -1.0))
    cols += [np.arange(n) % 2 * 1.0, np.ones(n), np.zeros(n), -np.zeros(n), rng.standard_normal(n)]
    values = np.stack(cols, axis=1)
    k = values.shape[1]
    types = ["float64"] * k
    quality = np.zeros((n, k), np.uint8)
    flags = np.zeros((n, k), np.uint32)
    for j in range(k):
        v = EDGE_INTS[j % len(EDGE_INTS)]
        flags[:, j] = v if j % 2 else np.where(np.arange(n) % 2 == 0, v, 0)
        quality[:, j] = min(v, 255) if j % 3 else np.where(np.arange(n) % 2 == 0, min(v, 255), 0)
    for j, step in enumerate([0, 1, 127, 128, 32767, 32768, 2**31 - 1, 2**31, -(2**63), 2**63 - 1]):
        ts = (np.arange(n, dtype=np.uint64) * np.uint64(step % 2**64)).view(np.int64) - (j << 40)
        block = make_block(f"dev{j}", [f"t{i}" for i in range(k)], types, ts, values, quality, flags)
        frame = Frame("gw", BOOT, 2**64 - 1, -(2**63), [block])
        assert fastpack.encode_block(block) is not None
        assert fastpack.encode_frame(frame) == encode_frame(frame)


def test_long_names_and_many_tags_use_the_wider_msgpack_headers() -> None:
    k = 70_000 // 1000  # > 15 tags: array 16; names past 31 and 255 bytes: str 8 / str 16
    names = [f"tag{j}" * (j % 80) for j in range(k)]
    values = np.arange(3 * k, dtype=np.float64).reshape(3, k) * 1.5
    block = make_block("d" * 300, names, ["float64"] * k, [1, 2, 3], values)
    frame = Frame("a" * 40, BOOT, 2**40, -5, [block])
    assert fastpack.encode_frame(frame) == encode_frame(frame)


def test_rows_over_bin16_use_bin32() -> None:
    n = 70_000  # f8 values: 560 kB, over the bin 16 limit; quality bin 70 kB
    rng = np.random.default_rng(3)
    values = rng.standard_normal((n, 1))
    quality = (rng.integers(0, 2, (n, 1)) * 0x81).astype(np.uint8)
    block = make_block("d", ["x"], ["float64"], np.arange(n) * 1000, values, quality=quality)
    frame = Frame("gw", BOOT, 1, 1, [block])
    assert fastpack.encode_frame(frame) == encode_frame(frame)


def test_scores_and_status_take_the_fast_path() -> None:
    block = make_block("d", ["a", "b"], ["float32", "float32"], [1, 2], [[1.5, 2.0], [1.25, 3.0]])
    block.scores = {"ewma_zscore": np.array([[0.5, np.nan], [1.0, np.nan]], dtype=np.float32)}
    block.status = np.array([[0, 0x40000000], [0, 0x40000000]], np.uint32)
    assert fastpack.encode_block(block) is not None
    frame = Frame("gw", BOOT, 1, 1, [block])
    assert fastpack.encode_frame(frame) == encode_frame(frame)
    got = decode_frame(fastpack.encode_frame(frame)).blocks[0]
    assert got.scores["ewma_zscore"][:, 0].tolist() == [0.5, 1.0] and got.status[:, 1].tolist() == [0x40000000] * 2


def test_text_falls_back_to_the_reference_for_its_block_only() -> None:
    plain = make_block("d", ["a"], ["float32"], [1, 2], [[1.5], [2.0]])
    texted = make_block("d", ["s"], ["string"], [1, 2], [[np.nan], [np.nan]])
    texted.text = {0: np.array(["x", None], dtype=object)}
    assert fastpack.encode_block(texted) is None
    frame = Frame("gw", BOOT, 1, 1, [plain, texted, plain])
    assert fastpack.encode_frame(frame) == encode_frame(frame)


@dataclass(slots=True)
class _GrownBlock(Block):
    """Stands for a Block that gained a field after fastpack was written."""

    grown: np.ndarray | None = None


@dataclass(slots=True)
class _GrownTwice(_GrownBlock):
    more: dict | None = None


def test_unknown_fields_are_declined_unless_empty() -> None:
    base = make_block("d", ["a"], ["float32"], [1], [[1.5]])
    empty = _GrownBlock(base.device, base.tags, base.types, base.ts, base.values, base.quality, base.flags)
    assert fastpack.encode_block(empty) == fastpack.encode_block(base)
    full = _GrownBlock(base.device, base.tags, base.types, base.ts, base.values, base.quality, base.flags,
                       grown=np.ones((1, 1), np.uint32))
    assert fastpack.encode_block(full) is None
    deeper = _GrownTwice(base.device, base.tags, base.types, base.ts, base.values, base.quality, base.flags,
                         grown=np.ones((1, 1), np.uint32))
    assert fastpack.encode_block(deeper) is None  # a field of an intermediate class counts too
    texted = _GrownTwice(base.device, base.tags, base.types, base.ts, base.values, base.quality, base.flags,
                         more={0: "abc"})
    assert fastpack.encode_block(texted) is None


@pytest.mark.parametrize("mutate", [
    lambda b: setattr(b, "values", b.values.astype(np.float32)),
    lambda b: setattr(b, "quality", b.quality.astype(np.int64)),
    lambda b: setattr(b, "types", ("float32", "no-such-type")),
    lambda b: setattr(b, "tags", ("a", "\ud800")),
    lambda b: setattr(b, "tags", ("a",)),
    lambda b: setattr(b, "device", 5),
    lambda b: setattr(b, "values", b.values.astype(">f8")),
])
def test_unusual_blocks_are_declined_and_the_reference_decides(mutate) -> None:
    block = make_block("d", ["a", "b"], ["float32", "float32"], [1, 2], [[1.5, 2.0], [1.25, 3.0]])
    mutate(block)
    assert fastpack.encode_block(block) is None
    frame = Frame("gw", BOOT, 1, 1, [block])
    try:
        expected: bytes | type[Exception] = encode_frame(frame)
    except ValueError:
        expected = ValueError
    if expected is ValueError:
        with pytest.raises(ValueError):
            fastpack.encode_frame(frame)
    else:
        assert fastpack.encode_frame(frame) == expected


@pytest.mark.parametrize("frame", [
    Frame("gw", bytes(15), 1, 1, []),
    Frame("gw", BOOT, -1, 1, []),
    Frame("gw", BOOT, True, 1, []),
    Frame("gw\udc80", BOOT, 1, 1, []),
    Frame("gw", BOOT, 1, 2**63, []),
])
def test_unrepresentable_frames_raise_the_reference_error(frame: Frame) -> None:
    with pytest.raises(ValueError) as ref:
        encode_frame(frame)
    with pytest.raises(ValueError) as fast:
        fastpack.encode_frame(frame)
    assert str(fast.value) == str(ref.value)
