"""Uplink figures, each beside a baseline measured in the same run:

1. Bytes per point on the wire for the simulator's plant profile (the example plant's poll rates),
   plain and zstd, at several batch intervals, beside two JSON encodings of the same samples:
   one object per sample (what `edge-agent tail` prints) and one object per device poll with a
   values map (the telemetry JSON a popular Python gateway sends).
2. Backlog replay after an outage: a spool holding `--outage` seconds of a 5,000 points/s load is
   published into a real mosquitto on loopback; frames/s and points/s, against the load's own rate.

    .venv/bin/python benchmarks/uplink.py [--outage 600]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.batcher import split_by_timestamps  # noqa: E402
from edge_agent.config.models import UplinkSection  # noqa: E402
from edge_agent.frame.codec import encode_frame  # noqa: E402
from edge_agent.frame.model import Block, Frame  # noqa: E402
from edge_agent.samples import Batch  # noqa: E402
from edge_agent.spool import AsyncSpool, Limits  # noqa: E402
from edge_agent.uplink.mqtt import MqttUplink  # noqa: E402
from simulators.plant import DEFAULT_TICK_NS, points_for, value_at_tick  # noqa: E402
from tests.conftest import free_port, mosquitto_binary, port_open, wait_for  # noqa: E402

RATES = {"boiler": 1_000_000_000, "press": 100_000_000, "mixer": 250_000_000}  # examples/plant.toml


def plant_batches(seconds: int, t0: int) -> dict[str, Batch]:
    """The example plant's samples for `seconds`, exactly as the simulator serves them (seed 7)."""
    out = {}
    for device, period in RATES.items():
        pts = points_for(device)
        n = seconds * 1_000_000_000 // period
        ts = t0 + np.arange(n, dtype=np.int64) * period + np.random.default_rng(1).integers(0, 3_000_000, n)
        values = np.array([[value_at_tick(p, int(t) // DEFAULT_TICK_NS, 7) for p in pts] for t in ts])
        b = Batch.empty(device, n, len(pts))
        b.ts[:] = ts[:, None]
        b.values[:] = values
        b.quality[:] = 0
        out[device] = b
    return out


def frames_for(batches: dict[str, Batch], interval_s: int, seconds: int, t0: int) -> list[list[Block]]:
    frames = []
    for w in range(0, seconds, interval_s):
        lo, hi = t0 + w * 1_000_000_000, t0 + (w + interval_s) * 1_000_000_000
        blocks = []
        for device, b in batches.items():
            rows = (b.ts[:, 0] >= lo) & (b.ts[:, 0] < hi)
            part = Batch(device, b.ts[rows], b.values[rows], b.quality[rows], b.flags[rows])
            pts = points_for(device)
            blocks += split_by_timestamps(device, tuple(p.name for p in pts), tuple(p.type for p in pts), part)
        frames.append(blocks)
    return frames


def json_sizes(batches: dict[str, Batch]) -> tuple[int, int]:
    per_sample = per_poll = 0
    for device, b in batches.items():
        names = [p.name for p in points_for(device)]
        for i in range(b.rows):
            ts = int(b.ts[i, 0])
            vals = b.values[i].tolist()
            values = dict(zip(names, vals, strict=True))
            per_poll += len(json.dumps({device: [{"ts": ts // 1_000_000, "values": values}]}))
            for j, name in enumerate(names):
                per_sample += len(json.dumps({"agent": "plant-demo", "boot": "0" * 32, "seq": 1, "device": device,
                                              "tag": name, "ts": ts, "value": vals[j], "quality": 0, "flags": 0},
                                             separators=(",", ":")))
    return per_sample, per_poll


def bytes_per_point(seconds: int = 60) -> None:
    t0 = time.time_ns()
    batches = plant_batches(seconds, t0)
    points = sum(b.points for b in batches.values())
    per_sample, per_poll = json_sizes(batches)
    print(f"plant profile, {seconds} s, {points} points ({points / seconds:.0f} points/s)")
    print(f"  JSON, one object per sample:           {per_sample / points:6.2f} B/point")
    print(f"  JSON, one object per device poll:      {per_poll / points:6.2f} B/point (baseline)")
    for interval in (1, 10, 60):
        frames = frames_for(batches, interval, seconds, t0)
        plain = sum(len(encode_frame(Frame("plant-demo", bytes(16), i + 1, t0, f))) for i, f in enumerate(frames))
        packed = sum(len(encode_frame(Frame("plant-demo", bytes(16), i + 1, t0, f), zstd_level=3))
                     for i, f in enumerate(frames))
        print(f"  frames every {interval:2d} s: plain {plain / points:5.2f} B/point "
              f"({per_poll / plain:4.1f}x smaller than the baseline), zstd {packed / points:5.2f} B/point "
              f"({per_poll / packed:4.1f}x)")


def replay(outage_s: int) -> None:
    tmp = Path(tempfile.mkdtemp())
    port = free_port()
    (tmp / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen([mosquitto_binary(), "-c", str(tmp / "m.conf")], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: port_open(port), 10, "mosquitto")
        asyncio.run(_replay(tmp, port, outage_s))
    finally:
        broker.terminate()
        broker.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


def _frame(seq: int, block: Block, created: int) -> list[tuple[bytes, int, int]]:
    return [(encode_frame(Frame("bench", bytes(16), seq, created, [block])), block.points, created)]


async def _replay(tmp: Path, port: int, outage_s: int, rate: int = 5000, tags: int = 500) -> None:
    spool = AsyncSpool(tmp / "spool.db", Limits(max_bytes=2**40))
    await spool.open()
    rows_per_frame = rate // tags  # one frame per second of load
    rng = np.random.default_rng(1)
    t0 = time.time_ns()
    for s in range(outage_s):
        ts = t0 + s * 1_000_000_000 + np.arange(rows_per_frame) * (1_000_000_000 // rows_per_frame)
        values = np.round(20 + np.cumsum(rng.normal(0, 0.1, (rows_per_frame, tags)), axis=0), 2)
        values = values.astype(np.float32).astype(np.float64)
        block = Block("load", tuple(f"t{j}" for j in range(tags)), ("float32",) * tags, ts, values,
                      np.zeros(values.shape, np.uint8), np.zeros(values.shape, np.uint32))
        await spool.append(lambda seq, b=block, c=int(ts[0]): _frame(seq, b, c))
    depth = await spool.depth()
    uplink = MqttUplink(UplinkSection(url=f"mqtt://127.0.0.1:{port}", inflight=32), "bench", spool)
    start = time.monotonic()
    task = asyncio.create_task(uplink.run())
    while (await spool.depth()).frames:
        spool.room.clear()
        await spool.room.wait()
    took = time.monotonic() - start
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await spool.close()
    print(f"backlog replay: {outage_s} s outage at {rate} points/s = {depth.frames} frames, "
          f"{depth.points} points, {depth.bytes / 1e6:.1f} MB")
    print(f"  drained in {took:.1f} s: {depth.frames / took:.0f} frames/s, {depth.points / took:,.0f} points/s "
          f"= {depth.points / took / rate:.0f}x the load's rate")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--outage", type=int, default=600)
    ap.add_argument("--seconds", type=int, default=60)
    args = ap.parse_args()
    bytes_per_point(args.seconds)
    replay(args.outage)
