"""Timestamp grouping of a closed batch: the fast run-based grouping gives np.unique's grouping exactly."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.batcher import split_by_timestamps, timestamp_groups
from edge_agent.samples import Batch


def reference_groups(ts: np.ndarray) -> list[np.ndarray]:
    """The grouping as first written: unique timestamp columns, in order of their first tag."""
    k = ts.shape[1]
    if k == 1 or (ts == ts[:, :1]).all():
        return [np.arange(k)]
    _, first, inverse = np.unique(ts.T, axis=0, return_index=True, return_inverse=True)
    return [np.flatnonzero(inverse.ravel() == g) for g in np.argsort(first)]


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 4), st.integers(1, 14), st.data())
def test_groups_match_the_unique_reference(n: int, k: int, data: st.DataObject) -> None:
    # Few distinct values, so that non-adjacent columns often share a timestamp column.
    cells = st.lists(st.lists(st.integers(0, 2), min_size=k, max_size=k), min_size=n, max_size=n)
    ts = np.array(data.draw(cells), dtype=np.int64).reshape(n, k)
    got = [np.arange(k)[g] for g in timestamp_groups(ts)]
    want = reference_groups(ts)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_split_keeps_each_group_with_its_own_columns() -> None:
    batch = Batch.empty("d", 2, 5)
    batch.ts[:] = [[1, 1, 2, 2, 1], [3, 3, 4, 4, 3]]
    batch.values[:] = np.arange(10).reshape(2, 5)
    tags, types = tuple("abcde"), ("float32",) * 5
    blocks = split_by_timestamps("d", tags, types, batch)
    assert [b.tags for b in blocks] == [("a", "b", "e"), ("c", "d")]
    np.testing.assert_array_equal(blocks[0].ts, [1, 3])
    np.testing.assert_array_equal(blocks[1].ts, [2, 4])
    np.testing.assert_array_equal(blocks[0].values, [[0, 1, 4], [5, 6, 9]])
    np.testing.assert_array_equal(blocks[1].values, [[2, 3], [7, 8]])
    assert all(b.values.flags.c_contiguous for b in blocks)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 14), st.data())
def test_the_batchers_layout_path_gives_the_same_blocks(k: int, data: st.DataObject) -> None:
    # The batcher passes its _Layout: one-row batches then take a views-only path, which must give
    # exactly the blocks of the general one.
    from edge_agent.batcher import _Layout

    n = data.draw(st.integers(1, 3))
    ts = np.array(data.draw(st.lists(st.integers(0, 2), min_size=n * k, max_size=n * k)), dtype=np.int64)
    batch = Batch.empty("d", n, k)
    batch.ts[:] = ts.reshape(n, k)
    batch.values[:] = np.arange(n * k).reshape(n, k)
    batch.quality[:] = 0
    tags, types = tuple(f"t{j}" for j in range(k)), ("float32",) * k
    want = split_by_timestamps("d", tags, types, batch)
    got = split_by_timestamps("d", tags, types, batch, _Layout(tags, types, {}))
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert (a.device, a.tags, a.types, a.scores, a.status, a.text) == (b.device, b.tags, b.types, b.scores,
                                                                           b.status, b.text)
        for name in ("ts", "values", "quality", "flags"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and x.shape == y.shape and x.flags.c_contiguous
            np.testing.assert_array_equal(x, y)
