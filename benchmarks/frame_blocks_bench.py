"""Per-block cost of the batcher and frame encoder on an OPC UA-shaped batch, without a server.

OPC UA servers stamp every tag with its own source timestamp, so a closed batch is one frame block
per tag (docs/frame-format.md gives a block one time column): the cost per block, not per sample,
decides what the agent can handle. This feeds the batcher batches of `--tags` tags by `--rows` rows,
every tag with its own timestamps, optionally with a score column (any scoring filter) and raw
OPC UA status codes, and reports CPU per 1000 points of Batcher.close and of build_frames (the
agent's encoder stage, split at max_frame_bytes). Compare commits with PYTHONPATH:

    .venv/bin/python benchmarks/frame_blocks_bench.py [--tags 5000] [--rows 2] [--scores] [--status]
    PYTHONPATH=/tmp/base .venv/bin/python benchmarks/frame_blocks_bench.py ...   # another checkout
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from edge_agent.batcher import Batcher
from edge_agent.frame.builder import build_frames
from edge_agent.frame.model import Block, Frame
from edge_agent.samples import Batch


def batch(device: str, k: int, n: int, r: int, rng: np.random.Generator, scores: bool, status: bool) -> Batch:
    t0 = 1_700_000_000_000_000_000 + r * n * 100_000_000
    ts = t0 + np.arange(n)[:, None] * 100_000_000 + rng.integers(0, 10**7, (n, k))
    b = Batch(device, ts.astype(np.int64), np.round(rng.normal(size=(n, k)), 2),
              np.zeros((n, k), np.uint8), np.zeros((n, k), np.uint32))
    if scores:
        s = rng.normal(size=(n, k)).astype(np.float32)
        s[:, ::3] = np.nan  # not scored (warming up)
        b.scores = {"ewma_zscore": s}
    if status:
        codes = np.zeros((n, k), np.uint32)
        codes[:, ::7] = 0x40000000  # Uncertain on every 7th tag
        b.status = codes
    return b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tags", type=int, default=5000)
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--max-frame-bytes", type=int, default=128 * 1024)
    ap.add_argument("--scores", action="store_true")
    ap.add_argument("--status", action="store_true")
    args = ap.parse_args()
    k = args.tags // args.devices
    devs = [(f"d{d}", tuple(f"b{i}" for i in range(k)), ("float64",) * k) for d in range(args.devices)]
    rng = np.random.default_rng(1)
    closed: list[list[Block]] = []

    def make(seq: int, part: list[Block]) -> Frame:
        return Frame("gw", bytes(16), seq, time.time_ns(), part)

    async def close_one(r: int) -> float:
        batcher = Batcher(devs, 10**9, 10**12, closed.append)
        for name, _, _ in devs:
            batcher.add(batch(name, k, args.rows, r, rng, args.scores, args.status))
        c0 = time.process_time()
        batcher.close()
        return time.process_time() - c0

    close_s, build_s = [], []
    for r in range(args.reps + 1):  # the first round loads or compiles the kernels
        close_s.append(asyncio.run(close_one(r)))
        c0 = time.process_time()
        frames = build_frames(closed[-1], 1, make, args.max_frame_bytes)
        build_s.append(time.process_time() - c0)
    points = k * args.devices * args.rows
    per_1000 = 1000 / points * 1000
    print(f"{points} points ({args.devices} devices x {k} tags x {args.rows} rows), {len(closed[-1])} blocks, "
          f"{len(frames)} frames of at most {args.max_frame_bytes} bytes"
          f"{', a score column' if args.scores else ''}{', status codes' if args.status else ''}")
    print(f"  batcher close {min(close_s[1:]) * per_1000:.2f} ms CPU per 1000 points, "
          f"build_frames {min(build_s[1:]) * per_1000:.2f} ms (best of {args.reps}), "
          f"{sum(len(f[0]) for f in frames) / points:.2f} bytes/point")


if __name__ == "__main__":
    main()
