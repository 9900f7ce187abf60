"""The `limits` kernel against a plain NumPy reference, for any batch hypothesis can think of."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_agent.filters.kernels.limits import limits_kernel

BIT = np.uint32(1 << 0)


def limits_reference(values, quality, lo, hi, bit, flags):
    out = flags.copy()
    usable = (quality & 0x80) == 0
    with np.errstate(invalid="ignore"):
        fire = usable & ((values < lo[None, :]) | (values > hi[None, :]))
    out[fire] |= bit
    return out, int(fire.sum())


floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def batches(draw):
    n = draw(st.integers(0, 20))
    k = draw(st.integers(1, 12))
    values = draw(hnp.arrays(np.float64, (n, k), elements=floats))
    quality = draw(hnp.arrays(np.uint8, (n, k), elements=st.sampled_from([0x00, 0x40, 0x80, 0x81, 0x84])))
    flags = draw(hnp.arrays(np.uint32, (n, k), elements=st.integers(0, 2**32 - 1)))
    lo = draw(hnp.arrays(np.float64, (k,), elements=st.one_of(st.just(-np.inf), floats.filter(lambda x: x == x))))
    hi = draw(hnp.arrays(np.float64, (k,), elements=st.one_of(st.just(np.inf), floats.filter(lambda x: x == x))))
    return values, quality, lo, hi, flags


@settings(max_examples=300, deadline=None)
@given(batches())
def test_kernel_agrees_with_reference(batch):
    values, quality, lo, hi, flags = batch
    expected, expected_fired = limits_reference(values, quality, lo, hi, BIT, flags)
    got = flags.copy()
    fired = limits_kernel(values, quality, lo, hi, BIT, got)
    np.testing.assert_array_equal(got, expected)
    assert fired == expected_fired


def test_nan_and_bad_quality_never_fire_and_other_bits_survive():
    values = np.array([[np.nan, 100.0, 100.0, -5.0, 50.0]])
    quality = np.array([[0, 0x81, 0, 0x40, 0]], dtype=np.uint8)
    flags = np.array([[0, 0, 0b100, 0, 0]], dtype=np.uint32)
    lo, hi = np.full(5, 0.0), np.full(5, 90.0)
    assert limits_kernel(values, quality, lo, hi, BIT, flags) == 2
    assert flags.tolist() == [[0, 0, 0b101, 1, 0]]


def test_engine_applies_each_tags_limits_to_a_subset_batch():
    from edge_agent.config.models import DeviceBase, LimitsFilter, TagBase
    from edge_agent.filters.engine import DeviceFilters
    from edge_agent.samples import Batch

    dev = DeviceBase(name="d", protocol="x", tags=[TagBase(name="a"), TagBase(name="b", filters=["f"])])
    engine = DeviceFilters(dev, {"f": LimitsFilter(kind="limits", hi=10.0)})
    b = Batch.empty("d", 1, 1, columns=np.array([1]))
    b.values[0, 0], b.quality[0, 0] = 11.0, 0
    engine.process(b)
    assert b.flags[0, 0] == 1  # tag b's limit, although the batch holds only that one column
