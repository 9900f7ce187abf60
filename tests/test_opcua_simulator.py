"""`edge-agent-sim opcua` as a process, and the agent reading it end to end: the command line's fault
switches (bad status, SIGUSR1 dropped sessions, users), its exit behaviour, and the agent's frames."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np

from drivers.opcua.driver import OpcUaDriver
from edge_agent.frame.codec import decode_frame
from edge_agent.samples import QUALITY_BAD_DEVICE, QUALITY_GOOD
from simulators.plant import DEFAULT_TICK_NS, point, value_at_tick
from tests.conftest import ROOT, agent_cmd, async_wait_for, wait_for
from tests.mqtt_consumer import Consumer
from tests.test_opcua_driver import Collector, device, running, stop
from tests.test_opcua_recovery import start_sim

SEED = 7


async def test_cli_faults_users_and_summary(procs, tmp_path, monkeypatch):
    sim, port = await start_sim(procs, tmp_path, "opcua-sim", 0, "--bad-status", "boiler.pressure=BadSensorFailure",
                                "--user", "operator:pw-9", "--max-nodes-per-read", "2")
    monkeypatch.setenv("EDGE_AGENT_TEST_UA_PW", "pw-9")
    tags = [{"name": n, "node": f"ns=plant;s=boiler.{n}", "type": "float32"}
            for n in ("temp_supply", "temp_return", "pressure")]
    got = Collector(len(tags))
    drv = OpcUaDriver(device(f"opc.tcp://127.0.0.1:{port}/edge-agent/plant", tags, mode="poll",
                             username="operator", password_env="EDGE_AGENT_TEST_UA_PW"), got)
    task = await running(drv)
    try:
        await async_wait_for(lambda: got.all_good_since(0, [0, 1]) and 2 in got.latest, 15, "first polls")
        assert got.latest[2][2] == QUALITY_BAD_DEVICE
        sim.popen.send_signal(signal.SIGUSR1)  # the server forgets every session
        t0 = time.monotonic()
        await async_wait_for(lambda: drv.stats.connects == 2, 10, "a new session after SIGUSR1")
        assert time.monotonic() - t0 < 3
    finally:
        await stop(task)
    rc, took = sim.terminate()
    assert rc == 0 and took < 5, sim.stderr()
    summary = json.loads(sim.stdout().strip().splitlines()[-1])
    assert summary["reads"]["calls"] >= 2 * drv.stats.polls - 2, summary  # 3 nodes, 2 per Read
    assert summary["reads"].get("refused", 0) == 0
    assert "namespace index 2" in sim.stderr() and "Traceback" not in sim.stderr()


def test_cli_usage_errors_are_one_line(tmp_path):
    for args, text in ((["--bad-status", "boiler.nope=BadSensorFailure"], "no point 'boiler.nope'"),
                       (["--bad-status", "boiler.pressure=BadNonsense"], "unknown StatusCode 'BadNonsense'"),
                       (["--user", "nopassword"], "use NAME:PASSWORD"),
                       (["--security", "Basic128Rsa15-Sign"], "unknown security 'Basic128Rsa15-Sign'")):
        done = subprocess.run([sys.executable, "-m", "simulators.cli", "opcua", "--port", "0", *args],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and text in done.stderr, (args, done.stderr)


async def test_agent_end_to_end_over_opcua(procs, broker, tmp_path):
    _, port = await start_sim(procs, tmp_path, "opcua-sim", 0, "--extra-namespaces", "1")
    sample = (ROOT / "drivers" / "opcua" / "sample.toml").read_text()
    config = tmp_path / "opcua.toml"
    config.write_text(sample.replace("opc.tcp://127.0.0.1:4840", f"opc.tcp://127.0.0.1:{port}")
                      .replace("mqtt://127.0.0.1:1883", f"mqtt://127.0.0.1:{broker}")
                      .replace('state_dir = "./state"', f'state_dir = "{tmp_path / "state"}"')
                      .replace('id = "opcua-demo"', 'id = "opcua-e2e"'))
    consumer = Consumer(broker)
    agent = procs(agent_cmd(config), "agent")
    try:
        def enough() -> bool:
            seen = {(b.device, t) for p in consumer.received() for b in decode_frame(p).blocks for t in b.tags}
            return len(seen) == 8 and len(consumer.received()) >= 3

        await async_wait_for(lambda: enough() or not agent.alive(), 60, "frames with all 8 tags")
        assert agent.alive(), agent.stderr()
    finally:
        rc, _ = agent.terminate()
    assert rc == 0, agent.stderr()
    checked = 0
    for payload in consumer.received():
        frame = decode_frame(payload)
        assert frame.agent == "opcua-e2e"
        for b in frame.blocks:
            for j, tag in enumerate(b.tags):
                p = point(b.device, tag)
                assert b.types[j] == p.type
                for i in range(len(b.ts)):
                    assert b.quality[i, j] == QUALITY_GOOD, (b.device, tag)
                    ts = int(b.ts[i])
                    assert ts % DEFAULT_TICK_NS == 0, "the source timestamp, not the time of arrival"
                    assert b.values[i, j] == value_at_tick(p, ts // DEFAULT_TICK_NS, SEED), (b.device, tag, ts)
                    checked += 1
    assert checked > 20
    press = [b for p in consumer.received() for b in decode_frame(p).blocks if b.device == "press"]
    assert np.unique(np.concatenate([b.ts for b in press])).size >= 5, "press polled every 200 ms"
    wait_for(lambda: "Traceback" not in agent.stderr(), 1, "no traceback")
    assert "device boiler (opc.tcp://" in agent.stderr() and "connected" in agent.stderr()
