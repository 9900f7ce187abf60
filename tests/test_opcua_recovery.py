"""Recovery from a real server crash: the simulator process is SIGKILLed and started again on the
same port with its namespace table changed (the plant namespace index moves from 2 to 4). Both a
subscribing and a polling driver must come back by themselves, within a bounded time, with every tag
good again and none left with the bad quality of the outage or a good one from before it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from drivers.opcua.driver import OpcUaDriver
from edge_agent.samples import QUALITY_BAD_COMM
from simulators.plant import DEFAULT_TICK_NS, point, value_at_tick
from tests.conftest import Proc, async_wait_for
from tests.test_opcua_driver import Collector, device, plant_tags, running, stop

SEED = 7


async def start_sim(procs, tmp_path: Path, name: str, port: int = 0, *extra: str) -> tuple[Proc, int]:
    ready = tmp_path / f"{name}.port"
    proc = procs([sys.executable, "-m", "simulators.cli", "opcua", "--port", str(port), "--seed", str(SEED),
                  "--ready-file", str(ready), *extra], name)
    await async_wait_for(lambda: (ready.exists() and ready.read_text().strip()) or not proc.alive(), 30, name)
    assert proc.alive(), proc.stderr()
    return proc, int(ready.read_text())


def all_bad_comm(got: Collector) -> bool:
    return any(b.columns is None and (b.quality == QUALITY_BAD_COMM).all() for b in got.batches)


async def test_both_modes_recover_after_the_server_is_killed_and_restarted(procs, tmp_path):
    sim, port = await start_sim(procs, tmp_path, "opcua-sim")
    endpoint = f"opc.tcp://127.0.0.1:{port}/edge-agent/plant"
    tags = plant_tags(by_path=("temp_return", "speed_rpm"))
    names = [t["name"] for t in tags]
    drivers = {}
    for mode in ("subscribe", "poll"):
        got = Collector(len(tags))
        drv = OpcUaDriver(device(endpoint, tags, mode=mode, keepalive="1s", reconnect_min="100ms",
                                 reconnect_max="1s", name=f"plant-{mode}"), got)
        drivers[mode] = (drv, got, await running(drv))
    try:
        for _, got, _ in drivers.values():
            await async_wait_for(lambda got=got: got.all_good_since(0), 15, "every tag good before the crash")

        sim.kill()  # SIGKILL: no goodbye to the clients
        killed = time.time_ns()
        for mode, (_, got, _) in drivers.items():
            await async_wait_for(lambda got=got: all_bad_comm(got), 5, f"{mode}: a bad-comm row for every tag")
        await async_wait_for(lambda: all(d.stats.errors_by_kind.get("connect", 0) >= 2 for d, _, _ in
                                         drivers.values()), 10, "reconnect attempts while the server is down")
        for _, got, _ in drivers.values():  # nothing claims to be good while the server is down
            assert all(v[2] == QUALITY_BAD_COMM for v in got.latest.values())
            assert all(v[3] >= killed for v in got.latest.values())

        sim2, port2 = await start_sim(procs, tmp_path, "opcua-sim-2", port, "--extra-namespaces", "2")
        assert port2 == port
        restarted = time.time_ns()
        for mode, (_, got, _) in drivers.items():
            # Bounded: one backoff wait (<= reconnect_max) plus a connect, resolve and subscribe.
            await async_wait_for(lambda got=got: got.all_good_since(restarted), 6,
                                 f"{mode}: every tag good again after the restart")
        recovered_s = (time.time_ns() - restarted) / 1e9
        await async_wait_for(lambda: all(d.stats.connects == 2 for d, _, _ in drivers.values()), 2,
                             "the reconnects to be counted")
        assert "namespace index 4" in sim2.stderr()
    finally:
        for _, _, task in drivers.values():
            await stop(task)
    assert recovered_s < 6
    for mode, (drv, got, _) in drivers.items():
        assert drv.stats.connects == 2, (mode, drv.stats)
        # Values stamped after the kill come from the new server: the plant's, from the re-resolved nodes.
        after = [s for s in got.samples() if s[3] == 0 and s[1] >= killed]
        assert len(after) >= len(tags)
        for j, ts, v, _ in after:
            dev, name = names[j].split(".")
            assert v == value_at_tick(point(dev, name), ts // DEFAULT_TICK_NS, SEED), (mode, names[j])
        assert all(got.latest[j][2] == 0 for j in range(len(tags)))
