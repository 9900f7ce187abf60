"""Runs the example plant for real (simulator, mosquitto, agent as processes) and reports what the
agent costs: points/s, CPU per 1000 points, bytes per point on the wire next to JSON lines of the
same samples (the baseline, computed from the same frames in the same run).

    .venv/bin/python benchmarks/example_plant.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.frame.codec import decode_frame  # noqa: E402
from edge_agent.tail import frame_samples  # noqa: E402
from tests.conftest import Proc, agent_cmd, example_config, free_port, mosquitto_binary, port_open, wait_for  # noqa: E402
from tests.mqtt_consumer import Consumer  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"edge-bench-{os.getpid()}"
    work.mkdir()
    procs: list[Proc] = []
    try:
        port = free_port()
        (work / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        procs.append(Proc([mosquitto_binary(), "-c", str(work / "mosquitto.conf")], work, "mosquitto"))
        wait_for(lambda: port_open(port), 10, "mosquitto")
        ready = work / "sim.port"
        procs.append(Proc([sys.executable, "-m", "simulators.cli", "modbus", "--port", "0", "--seed", "7",
                           "--ready-file", str(ready)], work, "simulator"))
        wait_for(lambda: ready.exists() and ready.read_text().strip(), 15, "simulator")
        consumer = Consumer(port, client_id="bench-consumer")
        config = example_config(work, int(ready.read_text()), port)
        agent = Proc(agent_cmd(config), work, "agent")
        procs.append(agent)
        wait_for(lambda: consumer.received(), 60, "first frame")
        n0, c0, t0 = len(consumer.received()), cpu_seconds(agent.pid), time.monotonic()
        time.sleep(args.seconds)
        payloads = consumer.received()[n0:]
        cpu, wall = cpu_seconds(agent.pid) - c0, time.monotonic() - t0
        frames = [decode_frame(p) for p in payloads]
        points = sum(f.points for f in frames)
        wire = sum(len(p) for p in payloads)
        json_bytes = sum(len(json.dumps(s, separators=(",", ":"))) + 1 for f in frames for s in frame_samples(f))
        consumer.close()
        print(f"example plant, {wall:.1f} s steady state: {len(frames)} frames, {points} points")
        print(f"  {points / wall:.1f} points/s; agent CPU {100 * cpu / wall:.2f}% of one core, "
              f"{cpu / points * 1e6:.0f} us per point ({cpu / points * 1e9 / 1e3:.0f} ms per 1000 points)")
        print(f"  wire: {wire / points:.2f} B/point in frames vs {json_bytes / points:.1f} B/point as JSON lines "
              f"({json_bytes / wire:.1f}x)")
    finally:
        for p in reversed(procs):
            p.terminate()
            p.close()


if __name__ == "__main__":
    main()
