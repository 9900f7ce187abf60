"""The spine, end to end with real processes: simulator -> agent -> mosquitto -> consumer.

Asserts what a plant engineer relies on: the values that arrive are the values the PLC served at
those timestamps, seq has no gaps and continues across a restart, and SIGTERM neither hangs nor
loses a polled sample (each one is either delivered or waiting in the spool).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from edge_agent.config.loader import Config, load_config
from edge_agent.filters.flags import LIMITS
from edge_agent.frame.codec import decode_frame
from edge_agent.frame.model import Frame
from edge_agent.samples import QUALITY_GOOD
from simulators.plant import DEFAULT_TICK_NS, point, value_at_tick
from tests.conftest import agent_cmd, example_config, start_simulator, wait_for
from tests.mqtt_consumer import Consumer

SEED = 7
# The simulator computes a value when the request arrives; the agent stamps it when the answer
# arrives. On loopback that is well under this bound, so the served tick is within it.
MAX_LATENCY_NS = 300_000_000


def spooled(state: Path) -> list[bytes]:
    db = sqlite3.connect(f"file:{state / 'spool.db'}?mode=ro", uri=True)
    try:
        return [bytes(r[0]) for r in db.execute("SELECT data FROM frames ORDER BY seq")]
    finally:
        db.close()


def frames_by_seq(payloads: list[bytes]) -> dict[int, Frame]:
    out: dict[int, Frame] = {}
    for data in payloads:
        f = decode_frame(data)
        out.setdefault(f.seq, f)  # duplicates (redelivery) carry identical content
    return out


def covered_seconds(payloads: list[bytes], device: str) -> float:
    ts = [b.ts for f in frames_by_seq(payloads).values() for b in f.blocks if b.device == device]
    if not ts:
        return 0.0
    all_ts = np.concatenate(ts)
    return (all_ts.max() - all_ts.min()) / 1e9 if all_ts.size else 0.0


def assert_values_match_simulator(frames: dict[int, Frame]) -> int:
    """Every good sample equals what the simulator served at a tick just before its timestamp."""
    checked = 0
    for f in frames.values():
        for b in f.blocks:
            for j, tag in enumerate(b.tags):
                p = point(b.device, tag)
                for i in range(b.ts.shape[0]):
                    assert b.quality[i, j] == QUALITY_GOOD, f"{b.device}/{tag} bad quality {b.quality[i, j]:#x}"
                    ts, v = int(b.ts[i]), float(b.values[i, j])
                    ticks = range(ts // DEFAULT_TICK_NS, (ts - MAX_LATENCY_NS) // DEFAULT_TICK_NS - 1, -1)
                    expected = [value_at_tick(p, k, SEED) for k in ticks]
                    assert v in expected, f"{b.device}/{tag} at {ts}: got {v!r}, simulator served one of {expected}"
                    checked += 1
    return checked


def test_example_plant_end_to_end(procs, broker, simulator, tmp_path):
    sim, sim_port = simulator
    config = example_config(tmp_path, sim_port, broker)
    state = tmp_path / "state"
    consumer = Consumer(broker)
    tail = procs([sys.executable, "-m", "edge_agent.cli", "tail", "--broker", f"mqtt://127.0.0.1:{broker}",
                  "--count", "40"], "tail")
    try:
        agent = procs(agent_cmd(config), "agent")
        wait_for(lambda: covered_seconds(consumer.received(), "boiler") >= 3 or not agent.alive(), 60,
                 "3 s of boiler samples at the consumer")
        assert agent.alive(), agent.stderr()

        # `edge-agent tail` printed exactly --count samples as JSON lines, then exited by itself.
        assert tail.popen.wait(30) == 0, tail.stderr()
        lines = [json.loads(line) for line in tail.stdout().splitlines()]
        assert len(lines) == 40
        keys = {"agent", "boot", "seq", "device", "tag", "ts", "value", "quality", "flags"}
        assert all(set(x) == keys for x in lines)
        python_type = {"bool": bool, "float32": float, "float64": float}
        for x in lines:  # values are presented in the tag's declared type
            assert type(x["value"]) is python_type.get(point(x["device"], x["tag"]).type, int), x

        rc, took = agent.terminate()
        assert rc == 0, agent.stderr()
        assert took < 5.0, f"agent took {took:.1f}s to stop on SIGTERM"
        assert "Traceback" not in agent.stderr(), agent.stderr()

        # Every frame is either at the consumer or still in the spool, and seq has no gap.
        def all_accounted() -> dict[int, Frame] | None:
            frames = frames_by_seq(consumer.received() + spooled(state))
            return frames if frames and sorted(frames) == list(range(min(frames), max(frames) + 1)) else None

        frames = wait_for(all_accounted, 10, "frames 1..N at the consumer or in the spool")
        assert len({f.boot for f in frames.values()}) == 1
        assert {f.agent for f in frames.values()} == {"plant-demo"}
        assert assert_values_match_simulator(frames) > 100
        assert_limits_flags(frames, load_config(config))

        # Every row the simulator served is in a frame: at most the request in flight at SIGTERM is missing.
        rows: dict[str, list[np.ndarray]] = defaultdict(list)
        for f in frames.values():
            for b in f.blocks:
                rows[b.device].append(b.ts)
        sim_rc, _ = sim.terminate()
        assert sim_rc == 0, sim.stderr()
        served = json.loads(sim.stdout().strip().splitlines()[-1])["requests"]
        units = {"boiler": "1", "press": "2", "mixer": "3"}
        for device, unit in units.items():
            # A device's tags in one request share a time column; count rows per request via its fc.
            by_fc = served[unit]
            polled_rows = _rows_per_request(frames, device)
            for fc, n_rows in polled_rows.items():
                assert n_rows <= by_fc[str(fc)] <= n_rows + 1, (device, fc, n_rows, by_fc)
        press_seconds = max(covered_seconds(consumer.received(), "press"), 1)
        press_rate = len(np.unique(np.concatenate(rows["press"]))) / press_seconds
        assert press_rate > 5, f"press polled at {press_rate:.1f}/s, configured 10/s"

        # A restart continues seq and replays what the spool still held.
        first_seq, last_seq, first_boot = min(frames), max(frames), next(iter(frames.values())).boot
        _, sim2_port = start_simulator(procs, tmp_path, "simulator2")
        agent2 = procs(agent_cmd(example_config(tmp_path, sim2_port, broker, "plant2.toml")), "agent2")

        def replayed_and_new() -> bool:
            got = frames_by_seq(consumer.received())
            return set(range(first_seq, last_seq + 1)) <= set(got) and any(
                f.boot != first_boot for s, f in got.items() if s > last_seq
            )

        wait_for(lambda: replayed_and_new() or not agent2.alive(), 60, "spool replay and new frames after restart")
        got = frames_by_seq(consumer.received())
        assert min(s for s, f in got.items() if f.boot != first_boot) == last_seq + 1
        rc, took = agent2.terminate()
        assert rc == 0 and took < 5.0, agent2.stderr()
    finally:
        consumer.close()


def assert_limits_flags(frames: dict[int, Frame], cfg: Config) -> None:
    """Flag bit 0 is set exactly on the samples outside the tag's configured limits."""
    checked = 0
    for f in frames.values():
        for b in f.blocks:
            dev = cfg.device(b.device)
            for j, tag in enumerate(b.tags):
                refs = next(t.filters for t in dev.tags if t.name == tag)
                lo = max([cfg.filters[r].lo for r in refs if cfg.filters[r].lo is not None], default=-np.inf)
                hi = min([cfg.filters[r].hi for r in refs if cfg.filters[r].hi is not None], default=np.inf)
                outside = (b.values[:, j] < lo) | (b.values[:, j] > hi)
                np.testing.assert_array_equal((b.flags[:, j] & LIMITS) != 0, outside, err_msg=f"{b.device}/{tag}")
                checked += bool(refs) * b.ts.shape[0]
    assert checked > 10


FC_OF_DEVICE_TAG = {
    ("boiler", "temp_supply"): 3,
    ("press", "motor_current_raw"): 4, ("press", "running"): 1,
    ("mixer", "flow_setpoint"): 3, ("mixer", "door_closed"): 2,
}


def _rows_per_request(frames: dict[int, Frame], device: str) -> dict[int, int]:
    """Rows polled per function code, counted on one tag read by each of the device's requests."""
    counts: dict[int, int] = defaultdict(int)
    for f in frames.values():
        for b in f.blocks:
            if b.device != device:
                continue
            for tag in b.tags:
                fc = FC_OF_DEVICE_TAG.get((device, tag))
                if fc is not None:
                    counts[fc] += b.ts.shape[0]
    return dict(counts)
