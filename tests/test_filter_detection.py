"""Detection quality on the simulators' injected anomalies, scored against their ground-truth labels.

The plant is `simulators/profiles/line.toml` (tank level: spike, drift, stuck, step, noise_burst;
inlet temperature: step, drift), computed offline from the simulator's own signal functions
(`simulators.plant.value_at_tick`, exactly what the Modbus server would serve) at its 100 ms tick for
one simulated hour, seed 7. Filters as an engineer would tune them with `edge-agent replay`. Floors are
set just below what was measured (see docs/filters.md): a change that makes detection worse fails here.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config.models import DeviceBase, EwmaZscoreFilter, FlatlineFilter, HampelFilter, TagBase
from edge_agent.filters import flags as F
from edge_agent.filters.engine import DeviceFilters
from edge_agent.samples import Batch

plant = pytest.importorskip("simulators.plant")

TICK = 100_000_000
TICKS = 36_000  # one hour
SEED = 7
GRACE = 20  # ticks (2 s) after a window's end that still count as detecting it
SPECS = {
    "spike": HampelFilter(kind="hampel", window=31, n_sigmas=6.0, min_sigma=0.05),
    "spike_raw": HampelFilter(kind="hampel", window=31, n_sigmas=6.0, min_sigma=3.0),  # int16 x10 register
    "stuck": FlatlineFilter(kind="flatline", samples=40),
    "z": EwmaZscoreFilter(kind="ewma_zscore", alpha=0.02, threshold=6.0, warmup=100, min_sigma=0.02),
}
TAGS = {"level": ["spike", "stuck", "z"], "inlet_temp": ["spike_raw", "z"]}
# measured (seed 7, one hour): level recall 14/14 spike, 14/14 step, 11/11 noise_burst, 7/7 stuck,
# 12/14 drift, precision 120/138 alarm onsets; inlet_temp 9/9 step, 9/9 drift, precision 27/27.
RECALL_FLOORS = {("level", "spike"): 0.95, ("level", "step"): 0.95, ("level", "noise_burst"): 0.95,
                 ("level", "stuck"): 0.95, ("level", "drift"): 0.8, ("inlet_temp", "step"): 0.95,
                 ("inlet_temp", "drift"): 0.95}
PRECISION_FLOORS = {"level": 0.8, "inlet_temp": 0.95}


@pytest.fixture(scope="module")
def detection():
    profile = Path(__file__).parents[1] / "simulators" / "profiles" / "line.toml"
    points = {p.name: p for p in plant.load_profile(profile) if p.device == "tank"}
    names = list(TAGS)
    values = np.array([[plant.value_at_tick(points[n], k, SEED) for n in names] for k in range(TICKS)])
    labels = [lab for lab in plant.anomaly_labels(points.values(), SEED, 0, TICKS) if lab["point"] in names]
    dev = DeviceBase(name="tank", protocol="x", tags=[TagBase(name=n, filters=TAGS[n]) for n in names])
    engine = DeviceFilters(dev, SPECS)
    flags = np.zeros(values.shape, np.uint32)
    for a in range(0, TICKS, 10):  # one batch per second of 100 ms polls, as the agent would see them
        b = Batch.empty("tank", 10, 2)
        b.values[:], b.quality[:] = values[a:a + 10], 0
        b.ts[:] = (np.arange(a, a + 10) * TICK)[:, None]
        engine.process(b)
        flags[a:a + 10] = b.flags
    return names, labels, (flags & F.ANOMALY) != 0


def test_recall_per_anomaly_type(detection):
    names, labels, alarm = detection
    found: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for lab in labels:
        j = names.index(lab["point"])
        start, end = lab["start_ns"] // TICK, lab["end_ns"] // TICK
        found[(lab["point"], lab["kind"])][0] += bool(alarm[start:end + GRACE, j].any())
        found[(lab["point"], lab["kind"])][1] += 1
    assert set(found) == set(RECALL_FLOORS)  # every injected kind was seen at least once
    for key, (hit, total) in found.items():
        assert hit / total >= RECALL_FLOORS[key], (key, hit, total)


def test_precision_of_alarm_onsets(detection):
    names, labels, alarm = detection
    for j, name in enumerate(names):
        window = np.zeros(TICKS, dtype=bool)
        for lab in labels:
            if lab["point"] == name:
                window[lab["start_ns"] // TICK: lab["end_ns"] // TICK + GRACE] = True
        onsets = np.flatnonzero(alarm[:, j] & ~np.concatenate([[False], alarm[:-1, j]]))
        assert len(onsets)
        assert window[onsets].mean() >= PRECISION_FLOORS[name], (name, int(window[onsets].sum()), len(onsets))
