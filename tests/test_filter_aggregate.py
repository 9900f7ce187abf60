"""Aggregate reporting end to end in-process: filter stage -> batcher -> frame codec -> decoded frame,
checked against a NumPy reference of per-interval min/max/mean/last/count over the usable samples that
were not sent at full rate."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from edge_agent.batcher import Batcher
from edge_agent.config.loader import load_config
from edge_agent.filters import flags as F
from edge_agent.filters.engine import DeviceFilters
from edge_agent.filters.stage import DeviceStage
from edge_agent.frame.codec import decode_frame, encode_frame
from edge_agent.frame.model import Block, Frame
from edge_agent.samples import Batch

SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC  # on a 10 s boundary, so interval ids are easy to read
INTERVAL, PRE, POST = 10 * SEC, 3 * SEC, 4 * SEC
TAGS = ("a", "b", "c")

CONFIG = """
[agent]
id = "gw"
state_dir = "{state}"

[filters.range]
kind = "limits"
hi = 100.0

[reporting.summary]
mode = "aggregate"
interval = "10s"
pre_trigger = "3s"
post_trigger = "4s"

[[devices]]
name = "plc"
protocol = "synthetic"

[[devices.tags]]
name = "a"
filters = ["range"]
reporting = "summary"

[[devices.tags]]
name = "b"
reporting = "summary"

[[devices.tags]]
name = "c"
"""


def _run(tmp_path: Path, ts: np.ndarray, values: np.ndarray, quality: np.ndarray, rows_per_batch: int) -> list[Frame]:
    """Feed the rows through the device stage into a real Batcher; every closed batch becomes a frame
    that is encoded and decoded again, as the spool and the cloud see it."""
    (tmp_path / "plant.toml").write_text(CONFIG.replace("{state}", str(tmp_path / "state")))
    cfg = load_config(tmp_path / "plant.toml")
    dev = cfg.device("plc")
    stage = DeviceStage(DeviceFilters(dev, cfg.filters), dev, cfg.reporting, ("float64",) * 3)
    frames: list[Frame] = []

    def on_close(blocks: list[Block]) -> None:
        frame = Frame("gw", b"\x01" * 16, len(frames), 0, blocks)
        frames.append(decode_frame(encode_frame(frame)))

    async def main() -> None:
        batcher = Batcher([("plc", TAGS, ("float64",) * 3)], 10**9, 3600 * SEC, on_close)
        for start in range(0, len(ts), rows_per_batch):
            rows = slice(start, start + rows_per_batch)
            b = Batch.empty("plc", len(ts[rows]), 3)
            b.ts[:] = ts[rows, None]
            b.values[:] = values[rows]
            b.quality[:] = quality[rows]
            batches, blocks, _ = stage.run(b)
            for x in batches:
                batcher.add(x)
            batcher.add_blocks(blocks)
            batcher.close()  # a frame per poll batch: the test sees every step, not one big frame
        batcher.add_blocks(stage.flush())  # shutdown: open intervals are closed, nothing is dropped
        batcher.close()

    asyncio.run(main())
    return frames


def test_aggregate_mode_sends_interval_statistics_and_full_rate_around_the_anomaly(tmp_path):
    rng = np.random.default_rng(5)
    n = 95  # 1 s polls over nine and a half intervals; the last one is still open at shutdown
    ts = T0 + np.arange(n, dtype=np.int64) * SEC + 250_000_000  # polls off the interval grid
    values = rng.normal(50.0, 5.0, (n, 3)).round(3)
    quality = np.zeros((n, 3), np.uint8)
    values[12, 1] = np.nan  # not usable: left out of every statistic
    quality[13, 0] = 0x81  # bad quality: likewise
    values[20:30, 1] = np.inf
    quality[20:30, 1] = 0x80  # a whole interval without a usable sample of b
    values[55, 0] = 150.0  # the anomaly: `a` above its limit
    frames = _run(tmp_path, ts, values, quality, rows_per_batch=7)

    # Full rate: every tag of the group from PRE before the flagged row to POST after it.
    trigger = ts[55]
    full = (ts >= trigger - PRE) & (ts <= trigger + POST)
    got_full: dict[str, list[tuple[int, float]]] = {t: [] for t in TAGS}
    got_agg: dict[tuple[str, str], dict[int, tuple[float, int, int]]] = {}
    for f in frames:
        for blk in f.blocks:
            for j, tag in enumerate(blk.tags):
                if "@" in tag:
                    name, stat = tag.split("@")
                    for i, t in enumerate(blk.ts):
                        got_agg.setdefault((name, stat), {})[int(t)] = (
                            float(blk.values[i, j]), int(blk.quality[i, j]), int(blk.flags[i, j]))
                else:
                    got_full[tag] += [(int(t), float(blk.values[i, j])) for i, t in enumerate(blk.ts)]
    for j, tag in enumerate(("a", "b")):
        want = [(int(t), float(v)) for t, v in zip(ts[full], values[full, j], strict=True)]
        assert got_full[tag] == want, tag
        assert len(got_full[tag]) == int(full.sum()) == 8
    # c is in no group: every sample at full rate, no aggregates.
    assert [v for _, v in sorted(got_full["c"])] == values[:, 2].tolist()
    assert not any(name == "c" for name, _ in got_agg)

    # NumPy reference over the rows not sent whole, per 10 s interval and tag.
    ids = ts // INTERVAL
    for j, tag in enumerate(("a", "b")):
        ok = ((quality[:, j] & 0x80) == 0) & np.isfinite(values[:, j]) & ~full
        for iid in np.unique(ids[~full]):
            rows = (ids == iid) & ~full
            use = rows & ok
            start = int(iid * INTERVAL)
            v = values[use, j]
            count = int(use.sum())
            stats = got_agg
            assert stats[(tag, "count")][start][:2] == (count, 0), (tag, start)
            if count:
                assert stats[(tag, "min")][start][:2] == (v.min(), 0)
                assert stats[(tag, "max")][start][:2] == (v.max(), 0)
                # The reporter sums chunk by chunk as batches arrive: equal up to summation order.
                assert np.isclose(stats[(tag, "mean")][start][0], v.mean(), rtol=1e-13, atol=0)
                assert stats[(tag, "mean")][start][1] == 0
                assert stats[(tag, "last")][start][:2] == (v[-1], 0)
            else:  # an interval without a usable sample: NaN statistics, bad quality, but a count of 0
                for stat in ("min", "max", "mean", "last"):
                    value, q, _ = stats[(tag, stat)][start]
                    assert np.isnan(value) and q & 0x80, (tag, stat, start)
            # The flagged row went out whole: no alarm bit was reduced into a summary.
            assert not any(stats[(tag, stat)][start][2] & F.ANOMALY for stat in ("min", "max", "mean", "last", "count"))
        assert sorted(got_agg[(tag, "count")]) == sorted(int(i * INTERVAL) for i in np.unique(ids[~full]))
    # Bandwidth: 9.5 intervals of 1 s polls for two tags became 10 rows of aggregates plus 8 full rows.
    points_group = sum(blk.points for f in frames for blk in f.blocks if blk.tags[0] != "c")
    assert points_group == 2 * 8 + 2 * 5 * len(np.unique(ids[~full]))
