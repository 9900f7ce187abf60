"""Batches that encode over max_frame_bytes are split into several frames, in order, losing nothing."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.frame.builder import build_frames
from edge_agent.frame.codec import decode_frame
from edge_agent.frame.model import Block, Frame

BOOT = bytes(range(16))


def block(device: str, n: int, k: int, seed: int) -> Block:
    rng = np.random.default_rng(seed)
    return Block(
        device, tuple(f"t{j}" for j in range(k)), ("float64",) * k,
        ts=np.arange(n, dtype=np.int64) * 1_000_000_000 + 1_700_000_000_000_000_000,
        values=rng.normal(size=(n, k)), quality=np.zeros((n, k), np.uint8), flags=np.zeros((n, k), np.uint32),
    )


def make(seq: int, blocks: list[Block]) -> Frame:
    return Frame("gw", BOOT, seq, 1, blocks)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 30)), min_size=1, max_size=4),
       st.integers(1024, 20_000), st.booleans())
def test_split_frames_fit_and_carry_every_sample_once_in_order(shapes, max_bytes, zstd):
    blocks = [block(f"d{i}", n, k, i) for i, (n, k) in enumerate(shapes)]
    out = build_frames(blocks, 41, make, max_bytes, 3 if zstd else None)
    frames = [decode_frame(data) for data, _, _ in out]
    assert [f.seq for f in frames] == list(range(41, 41 + len(frames)))
    assert all(len(data) <= max_bytes for data, _, _ in out)
    assert [p for _, p, _ in out] == [f.points for f in frames]
    for b in blocks:  # every (tag, ts) once, and per tag in time order across frames
        for j, tag in enumerate(b.tags):
            got_ts, got_v = [], []
            for f in frames:
                for fb in f.blocks:
                    if fb.device == b.device and tag in fb.tags:
                        got_ts += fb.ts.tolist()
                        got_v += fb.values[:, fb.tags.index(tag)].tolist()
            assert got_ts == b.ts.tolist() and got_v == b.values[:, j].tolist()


def test_a_frame_that_fits_is_not_split():
    out = build_frames([block("d", 10, 10, 0)], 1, make, 1_000_000)
    assert len(out) == 1 and out[0][1] == 100
