"""Scores in the frame (tag element 6): round trip, cost, and what an older decoder sees."""

from __future__ import annotations

import msgpack
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_agent.frame.codec import decode_frame, encode_frame
from edge_agent.frame.model import Block, Frame

BOOT = bytes(range(16))


def block(n: int, k: int, scores: dict[str, np.ndarray]) -> Block:
    return Block("plc", tuple(f"t{j}" for j in range(k)), ("float32",) * k, np.arange(n, dtype=np.int64),
                 np.zeros((n, k)), np.zeros((n, k), np.uint8), np.zeros((n, k), np.uint32), scores)


score_el = st.one_of(st.just(np.nan), st.floats(-1e6, 1e6, width=32), st.sampled_from([np.inf, 3.5, 0.0]))


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 12), st.integers(1, 4), st.data())
def test_scores_round_trip_at_float16_precision(n, k, data):
    kinds = data.draw(st.lists(st.sampled_from(["ewma_zscore", "hampel", "cusum"]), unique=True, max_size=3))
    scores = {kind: data.draw(hnp.arrays(np.float32, (n, k), elements=score_el)) for kind in kinds}
    frame = Frame("gw", BOOT, 1, 2, [block(n, k, scores)])
    data1 = encode_frame(frame)
    out = decode_frame(data1).blocks[0]
    assert encode_frame(decode_frame(data1)) == data1  # re-encoding a decoded frame is a no-op
    for kind, s in scores.items():
        sent = ~np.isnan(s).all(axis=0)
        if not sent.any():
            assert kind not in out.scores
            continue
        got = out.scores[kind]
        assert np.isnan(got[:, ~sent]).all()
        want = s[:, sent]
        big = np.abs(np.where(np.isfinite(want), want, 0)).max(axis=0, initial=0) > 65504
        with np.errstate(over="ignore"):  # only the columns sent as f2 use the rounded values
            expect = np.where(big[None, :], want, want.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(got[:, sent], expect)


def test_scores_cost_two_bytes_per_sample_and_nothing_when_absent():
    n, k = 100, 10
    plain = encode_frame(Frame("gw", BOOT, 1, 2, [block(n, k, {})]))
    none_sent = encode_frame(Frame("gw", BOOT, 1, 2, [block(n, k, {"cusum": np.full((n, k), np.nan, np.float32)})]))
    assert none_sent == plain  # a filter that scored nothing (warm-up, send_scores = false) costs nothing
    z = np.random.default_rng(1).normal(size=(n, k)).astype(np.float32)
    scored = encode_frame(Frame("gw", BOOT, 1, 2, [block(n, k, {"ewma_zscore": z})]))
    per_tag = (len(scored) - len(plain)) / k
    assert 2 * n <= per_tag <= 2 * n + 20


def test_an_older_decoder_sees_a_valid_v1_frame():
    """Element 6 is a trailing element: a decoder that stops at element 5 gets every other field."""
    s = {"hampel": np.array([[1.0, np.nan]], np.float32)}
    doc = msgpack.unpackb(encode_frame(Frame("gw", BOOT, 1, 2, [block(1, 2, s)])), raw=False)
    tag0, tag1 = doc[6][0][2]
    assert len(tag1) == 6 and len(tag0) == 7
    assert tag0[6] == [["hampel", "f2", np.float16(1.0).tobytes()]]
