"""The ground-truth label file both simulators write: one JSON line per injected anomaly."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from simulators.plant import Point, anomaly_labels


class LabelledServer(Protocol):
    points: Sequence[Point]
    seed: int
    tick_ns: int
    clock: Callable[[], int]


async def label_writer(server: LabelledServer, path: Path) -> None:
    """Append each anomaly to `path` once simulated time reaches its start, and the rest at exit."""
    tick = server.tick_ns
    k = server.clock() // tick
    with path.open("a", encoding="utf-8") as f:
        try:
            while True:
                await asyncio.sleep(1.0)
                now = server.clock() // tick + 1
                for rec in anomaly_labels(server.points, server.seed, k, now, tick):
                    f.write(json.dumps(rec) + "\n")
                f.flush()
                k = now
        finally:  # at exit: up to the last tick served
            for rec in anomaly_labels(server.points, server.seed, k, server.clock() // tick + 1, tick):
                f.write(json.dumps(rec) + "\n")
