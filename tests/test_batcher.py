"""The batcher closes on points or age, and groups tags that share a time column."""

from __future__ import annotations

import numpy as np

from edge_agent.batcher import Batcher, split_by_timestamps
from edge_agent.frame.model import Block
from edge_agent.samples import Batch
from tests.conftest import async_wait_for

DEVICES = [("a", ("x", "y", "z"), ("float32", "int16", "bool")), ("b", ("w",), ("float64",))]


def row(device: str, k: int, t: int, ts_per_tag: list[int] | None = None) -> Batch:
    b = Batch.empty(device, 1, k)
    b.ts[0] = ts_per_tag if ts_per_tag is not None else t
    b.values[0] = np.arange(k) + t
    b.quality[0] = 0
    return b


async def test_closes_on_max_points():
    closed: list[list[Block]] = []
    batcher = Batcher(DEVICES, max_points=7, max_interval_ns=60_000_000_000, on_close=closed.append)
    batcher.add(row("a", 3, 1))
    batcher.add(row("b", 1, 1))
    assert closed == []
    batcher.add(row("a", 3, 2))  # 7 points
    assert len(closed) == 1
    blocks = {b.device: b for b in closed[0]}
    assert blocks["a"].values.shape == (2, 3) and blocks["a"].ts.tolist() == [1, 2]
    assert blocks["b"].tags == ("w",) and blocks["b"].types == ("float64",)
    assert batcher.open_points == 0


async def test_closes_on_age_without_further_input():
    closed: list[list[Block]] = []
    batcher = Batcher(DEVICES, max_points=1000, max_interval_ns=50_000_000, on_close=closed.append)
    batcher.add(row("a", 3, 1))
    await async_wait_for(lambda: closed, 5, "the age close")
    assert len(closed) == 1 and closed[0][0].points == 3


def test_tags_with_different_reply_times_get_separate_time_columns():
    rows = [row("a", 3, t, [t, t + 5, t]) for t in (10, 20)]
    batch = Batch("a", *(np.concatenate([getattr(r, f) for r in rows]) for f in ("ts", "values", "quality", "flags")))
    blocks = split_by_timestamps("a", ("x", "y", "z"), ("float32", "int16", "bool"), batch)
    assert [(b.tags, b.ts.tolist()) for b in blocks] == [(("x", "z"), [10, 20]), (("y",), [15, 25])]
    assert blocks[0].values[:, 1].tolist() == [12.0, 22.0]


async def test_batches_of_a_subset_of_tags_become_their_own_blocks():
    closed: list[list[Block]] = []
    batcher = Batcher(DEVICES, max_points=1000, max_interval_ns=60_000_000_000, on_close=closed.append)
    full = row("a", 3, 1)
    only_z = Batch.empty("a", 2, 1, columns=np.array([2]))
    only_z.ts[:, 0] = [5, 7]
    only_z.values[:, 0] = [1.0, 0.0]
    only_z.quality[:] = 0
    batcher.add(full)
    batcher.add(only_z)
    batcher.close()
    blocks = [(b.tags, b.types, b.ts.tolist(), b.values[:, -1].tolist()) for b in closed[0]]
    assert blocks == [(("x", "y", "z"), ("float32", "int16", "bool"), [1], [3.0]),
                      (("z",), ("bool",), [5, 7], [1.0, 0.0])]


async def test_blocks_reuse_one_tags_tuple_per_layout_across_closes_and_devices():
    # The frame encoder caches packed tag headers by the identity of these tuples (fastpack._Heads).
    devices = [("p", ("x", "y", "z"), ("float32",) * 3), ("q", ("x", "y", "z"), ("float32",) * 3)]
    closed: list[list[Block]] = []
    batcher = Batcher(devices, max_points=1000, max_interval_ns=60_000_000_000, on_close=closed.append)
    for t in (1, 2):
        batcher.add(row("p", 3, t, [t, t, t + 1]))
        batcher.add(row("q", 3, t, [t, t, t + 1]))
        batcher.close()
    first, second = ([(b.device, b.tags, b.types) for b in blocks] for blocks in closed)
    assert [(d, tags) for d, tags, _ in first] == [("p", ("x", "y")), ("p", ("z",)), ("q", ("x", "y")), ("q", ("z",))]
    assert first == second
    for (_, tags_a, types_a), (_, tags_b, types_b) in zip(first, second, strict=True):
        assert tags_a is tags_b and types_a is types_b
    assert first[0][1] is first[2][1]  # device q's ("x", "y") is device p's object
