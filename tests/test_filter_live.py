"""The filter stage live: the real agent process on a synthetic device (each tag's value is its poll
tick, so every sample is verifiable), a real mosquitto, a real MQTT consumer.

Tag t0 has a `limits` band [LO, HI] in ticks: below LO from the first poll (an alarm at start-up that
ends), inside the band for 5 s, above HI from then on (a stuck alarm). t0 and t1 form an adaptive
reporting group (mode deadband, 1 s pre- and post-trigger); t2 is in no group, so it carries every
poll and is the record of what was polled.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edge_agent.filters.engine import warm_up
from edge_agent.frame import fastpack
from tests.chaos import Accounting
from tests.conftest import agent_cmd, wait_for
from tests.mqtt_consumer import Consumer

PERIOD = 100_000_000  # poll interval, ns: one tick
PRE = POST = 10  # ticks (1 s)
BAND = 4.5  # deadband: a report every 5 ticks while normal
HOLD_ABOVE = 30  # ticks the stuck alarm is watched for: six times its event_interval


def _config(tmp: Path, port: int, lo: int, hi: int) -> Path:
    text = f"""
[agent]
id = "live"
state_dir = "{tmp / "state"}"

[uplink]
url = "mqtt://127.0.0.1:{port}"
reconnect_min = "100ms"
reconnect_max = "1s"

[batch]
max_interval = "200ms"
max_points = 100000

[filters.band]
kind = "limits"
lo = {lo}.0
hi = {hi}.0
event_interval = "500ms"

[filters.db]
kind = "deadband"
absolute = {BAND}
max_silence = "1h"

[reporting.watch]
mode = "deadband"
pre_trigger = "1s"
post_trigger = "1s"

[[devices]]
name = "load"
protocol = "synthetic"
poll_interval = "100ms"

[[devices.tags]]
name = "t0"
filters = ["band", "db"]
reporting = "watch"

[[devices.tags]]
name = "t1"
filters = ["db"]
reporting = "watch"

[[devices.tags]]
name = "t2"
"""
    path = tmp / "agent.toml"
    path.write_text(text)
    return path


def _deadband_reports(ticks: np.ndarray) -> set[int]:
    """Reference deadband: first sample, then each one more than BAND from the last report."""
    out: set[int] = set()
    last = None
    for v in ticks.tolist():
        if last is None or abs(v - last) > BAND:
            out.add(v)
            last = v
    return out


def test_events_rate_limit_and_adaptive_reporting_live(broker, procs, tmp_path):
    warm_up()  # the kernels into the shared cache first, so the agent starts in about a second
    fastpack.warm_up()  # the frame encoder too: compiled cold it takes ~10 s on a busy 2-core machine
    consumer = Consumer(broker, topic="edge/+/data,edge/+/events", client_id="live-consumer")
    try:
        now = time.time_ns() // PERIOD
        lo, hi = now + 60, now + 110  # 6 s of start-up and alarm, then 5 s inside the band
        agent = procs(agent_cmd(_config(tmp_path, broker, lo, hi)), "agent")

        def polled() -> np.ndarray:
            return Accounting.of(consumer.received()).ticks().get("t2", np.empty(0, np.int64))

        wait_for(lambda: (polled().size and polled()[-1] >= hi + HOLD_ABOVE) or not agent.alive(), 40,
                 "the agent to poll past the stuck alarm")
        assert agent.alive(), agent.stderr()
        events = [json.loads(p) for p in consumer.on("edge/live/events")]
        ticks = Accounting.of(consumer.received()).ticks()
    finally:
        consumer.close()

    t2 = ticks["t2"]
    first, cutoff = int(t2[0]), int(t2[-1])
    assert first < lo - 1, f"the agent started polling too late ({lo - first} ticks before LO)"
    assert (np.diff(t2) > 0).all()

    # Events: one per alarm onset (below LO at the first poll, above HI at tick HI+1), each with the
    # sample's time, value and the limit crossed; the stuck alarm above HI raises nothing more for
    # HOLD_ABOVE ticks although every sample is flagged and event_interval has passed six times.
    t0_events = [e for e in events if e["tag"] == "t0"]
    assert [(e["ts"], e["value"], e["threshold"]) for e in t0_events] == [
        (first * PERIOD, float(first), float(lo)), ((hi + 1) * PERIOD, float(hi + 1), float(hi))]
    for e in t0_events:
        assert e == {**e, "kind": "anomaly", "device": "load", "filter": "band", "filter_kind": "limits",
                     "flag": "limits", "score": None, "suppressed": 0}
    assert {e["tag"] for e in events} == {"t0"}

    # Rows: full rate from the first poll through POST ticks after the last sample below LO, and from
    # PRE ticks before the first sample above HI onwards; in between only the deadband reports.
    full = ((t2 <= lo - 1 + POST) | (t2 >= hi + 1 - PRE))
    reports = _deadband_reports(t2)
    middle = t2[~full]
    expected = np.sort(np.concatenate([t2[full], [t for t in middle if t in reports]])).astype(np.int64)
    for tag in ("t0", "t1"):
        got = ticks[tag][ticks[tag] <= cutoff]
        # Sorted: a frame carries the full-rate rows before the reduced reports closed in the same
        # batch (each block has its own timestamps), so the last report before the pre-trigger
        # window may follow that window in frame order. No sample twice, none missing.
        np.testing.assert_array_equal(np.sort(got), expected, err_msg=tag)
    # The reduction is real: about one row in five between the windows.
    assert len(middle) >= 25 and len([t for t in middle if t in reports]) <= len(middle) // 5 + 1
