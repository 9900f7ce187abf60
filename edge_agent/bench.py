"""`edge-agent bench`: CPU per point and bytes per point of the pipeline, against a JSON baseline
measured in the same run (machines here are noisy: only ratios travel between machines).

The pipeline is the real one minus the network: filter engine -> batcher -> frame encoder -> SQLite
spool (WAL, synchronous=FULL, in a temporary directory). The baseline is what a typical Python gateway
does with the same samples: one JSON object per sample.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.batcher import Batcher
from edge_agent.batcher import warm_up as batcher_warm_up
from edge_agent.config.models import DeviceBase, LimitsFilter, TagBase
from edge_agent.filters.engine import DeviceFilters, warm_up
from edge_agent.frame.fastpack import encode_frame
from edge_agent.frame.fastpack import warm_up as fastpack_warm_up
from edge_agent.frame.model import Block, Frame
from edge_agent.samples import Batch
from edge_agent.spool import Limits, Spool


@dataclass
class BenchResult:
    tags: int
    polls: int
    points: int
    frames: int
    pipeline_cpu_s: float
    pipeline_bytes: int
    json_cpu_s: float
    json_bytes: int

    def report(self) -> str:
        us_per_k = self.pipeline_cpu_s / self.points * 1e9
        json_us_per_k = self.json_cpu_s / self.points * 1e9
        return "\n".join([
            f"{self.points} points ({self.tags} tags x {self.polls} polls), {self.frames} frames",
            f"  pipeline (filters+batcher+encoder+spool): {us_per_k:8.1f} us CPU per 1000 points, "
            f"{self.points / self.pipeline_cpu_s:,.0f} points/s per core, "
            f"{self.pipeline_bytes / self.points:.2f} B/point",
            f"  baseline (one JSON object per sample):    {json_us_per_k:8.1f} us CPU per 1000 points, "
            f"{self.json_bytes / self.points:.2f} B/point",
            f"  ratio: {json_us_per_k / us_per_k:.1f}x less CPU, "
            f"{self.json_bytes / self.pipeline_bytes:.1f}x fewer bytes than the baseline",
        ])


def synthetic_polls(tags: int, polls: int, period_ns: int, seed: int = 1) -> list[Batch]:
    """Plant-like rows: float32 analogs (slow sines plus noise), counters and status bits."""
    rng = np.random.default_rng(seed)
    t0 = time.time_ns()
    ts = t0 + np.arange(polls, dtype=np.int64) * period_ns + rng.integers(0, 2_000_000, polls)
    phase = rng.uniform(0, 2 * np.pi, tags)
    i = np.arange(polls)[:, None]
    values = 50 + 20 * np.sin(i / 300 + phase) + rng.normal(0, 0.2, (polls, tags))
    values = values.astype(np.float32).astype(np.float64)
    values[:, ::10] = np.floor(i * 0.5)  # counters
    values[:, 5::10] = (i // 50 % 2).astype(np.float64)  # status bits
    out = []
    for r in range(polls):
        b = Batch.empty("bench", 1, tags)
        b.ts[0] = ts[r]
        b.values[0] = values[r]
        b.quality[0] = 0
        out.append(b)
    return out


async def _pipeline(rows: list[Batch], tags: int, spool: Spool, max_points: int) -> tuple[int, int]:
    device = DeviceBase(name="bench", protocol="bench",
                        tags=[TagBase(name=f"t{j}", filters=["lim"] if j % 2 else []) for j in range(tags)])
    filters = DeviceFilters(device, {"lim": LimitsFilter(kind="limits", lo=0.0, hi=69.0)})
    names = tuple(t.name for t in device.tags)

    def commit(blocks: list[Block]) -> None:
        def build(seq: int) -> list[tuple[bytes, int, int]]:
            f = Frame("bench", bytes(16), seq, time.time_ns(), blocks)
            return [(encode_frame(f), f.points, f.created_ns)]

        spool.append(build)

    batcher = Batcher([("bench", names, ("float32",) * tags)], max_points, 3_600_000_000_000, commit)
    for b in rows:
        filters.process(b)
        batcher.add(b)
    batcher.close()
    depth = spool.depth()
    return depth.bytes, depth.frames


def _json_baseline(rows: list[Batch]) -> int:
    total = 0
    for b in rows:
        ts = b.ts[0].tolist()
        values = b.values[0].tolist()
        quality = b.quality[0].tolist()
        flags = b.flags[0].tolist()
        for j in range(len(values)):
            total += len(json.dumps({
                "agent": "bench", "boot": "00" * 16, "seq": 1, "device": "bench", "tag": f"t{j}",
                "ts": ts[j], "value": values[j], "quality": quality[j], "flags": flags[j],
            }))
    return total


def run_bench(tags: int = 1000, polls: int = 500, max_points: int = 50_000) -> BenchResult:
    warm_up()
    fastpack_warm_up()
    batcher_warm_up()
    rows = synthetic_polls(tags, polls, 100_000_000)
    baseline_rows = synthetic_polls(tags, polls, 100_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp) / "spool.db", Limits(max_bytes=2**40))
        c0 = time.process_time()
        written, frames = asyncio.run(_pipeline(rows, tags, spool, max_points))
        pipeline_cpu = time.process_time() - c0
        spool.close()
    c0 = time.process_time()
    json_bytes = _json_baseline(baseline_rows)
    json_cpu = time.process_time() - c0
    return BenchResult(tags, polls, tags * polls, frames, pipeline_cpu, written, json_cpu, json_bytes)
