"""The OPC UA driver against the OPC UA simulator on a real socket: both modes, exact values and
source timestamps, status codes to quality, chunked Reads, dropped sessions, wrong passwords."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from asyncua import ua

from drivers.opcua.config import OpcUaDevice
from drivers.opcua.driver import OpcUaDriver
from drivers.opcua.quality import QUALITY_UNCERTAIN_LAST_USABLE
from edge_agent.samples import QUALITY_BAD_COMM, QUALITY_BAD_CONFIG, QUALITY_BAD_DEVICE, QUALITY_GOOD, Batch
from simulators.opcua.server import NAMESPACE_URI, OpcUaSimServer
from simulators.plant import DEFAULT_TICK_NS, PLANT, point, value_at_tick
from tests.conftest import async_wait_for

SEED = 3
TICK = DEFAULT_TICK_NS


def plant_tags(by_path: tuple[str, ...] = ()) -> list[dict]:
    """Every plant point as one tag; names in `by_path` are addressed by browse path instead of NodeId."""
    tags = []
    for p in PLANT:
        tag = {"name": f"{p.device}.{p.name}", "type": p.type}
        if p.name in by_path:
            tag["path"] = f"/Objects/plant:Plant/plant:{p.device}/plant:{p.name}"
        else:
            tag["node"] = f"ns=plant;s={p.device}.{p.name}"
        tags.append(tag)
    return tags


def device(endpoint: str, tags: list[dict], **kw: object) -> OpcUaDevice:
    return OpcUaDevice.model_validate({
        "name": "plant", "protocol": "opcua", "endpoint": endpoint, "poll_interval": "100ms",
        "namespaces": {"plant": NAMESPACE_URI}, "timeout": "1s", "keepalive": "1s",
        "reconnect_min": "50ms", "reconnect_max": "300ms", "tags": tags, **kw,
    })


class Collector:
    """The sink: keeps every batch, and the latest (ts, value, quality, time received) of every tag.

    Recovery is judged by when a sample arrived, not by its source timestamp: a value that has not
    changed since before an outage rightly keeps its old source timestamp when it is sent again."""

    def __init__(self, k: int):
        self.batches: list[Batch] = []
        self.latest: dict[int, tuple[int, float, int, int]] = {}
        self.k = k

    def __call__(self, batch: Batch) -> None:
        self.batches.append(batch)
        cols = batch.columns if batch.columns is not None else np.arange(self.k)
        now = time.time_ns()
        for c, j in enumerate(cols):
            self.latest[int(j)] = (int(batch.ts[-1, c]), float(batch.values[-1, c]), int(batch.quality[-1, c]), now)

    def samples(self) -> list[tuple[int, int, float, int]]:
        """(tag index, ts, value, quality) of every sample received."""
        out = []
        for b in self.batches:
            cols = b.columns if b.columns is not None else np.arange(self.k)
            for i in range(b.rows):
                for c, j in enumerate(cols):
                    out.append((int(j), int(b.ts[i, c]), float(b.values[i, c]), int(b.quality[i, c])))
        return out

    def all_good_since(self, t_ns: int, cols: range | list[int] | None = None) -> bool:
        cols = range(self.k) if cols is None else cols
        return all(j in self.latest and self.latest[j][3] >= t_ns and self.latest[j][2] == QUALITY_GOOD
                   for j in cols)


async def running(drv: OpcUaDriver) -> asyncio.Task[None]:
    return asyncio.create_task(drv.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def sim():
    server = OpcUaSimServer(seed=SEED, extra_namespaces=1, max_nodes_per_read=5)
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


def assert_exact(samples: list[tuple[int, int, float, int]], names: list[str]) -> int:
    """Each good sample is exactly the simulator's value for the tick its source timestamp names."""
    checked = 0
    for j, ts, v, q in samples:
        assert q == QUALITY_GOOD, (names[j], hex(q))
        assert ts % TICK == 0, f"{names[j]}: {ts} is not a tick start: not the source timestamp"
        dev, name = names[j].split(".")
        expected = value_at_tick(point(dev, name), ts // TICK, SEED)
        assert v == expected, (names[j], ts, v, expected)
        checked += 1
    return checked


async def test_subscription_delivers_exact_values_with_source_timestamps_in_bounded_batches(sim):
    tags = plant_tags(by_path=("pressure", "door_closed"))
    dev = device(sim.endpoint, tags, publishing_interval="200ms")
    got = Collector(len(tags))
    drv = OpcUaDriver(dev, got)
    task = await running(drv)
    t0 = time.monotonic()
    try:
        await async_wait_for(lambda: drv.notifications >= 100, 15, "100 notifications")
    finally:
        await stop(task)
    elapsed = time.monotonic() - t0
    names = [t["name"] for t in tags]
    assert assert_exact(got.samples(), names) >= 100
    assert set(got.latest) == set(range(len(tags))), "every tag gets its initial value"
    # Notifications were accumulated: at most about one batch per publishing interval, not one per item.
    assert drv.batches_out <= elapsed / 0.2 * 2 + 4, (drv.batches_out, drv.notifications, elapsed)
    assert drv.notifications > 2 * drv.batches_out
    assert any(b.columns is not None and len(b.columns) < len(tags) for b in got.batches), "subsets of changed tags"
    assert any(b.rows > 1 for b in got.batches), "a 100 ms tag sampled twice per 200 ms publish gives 2 rows"
    assert drv.stats.connects == 1 and not drv.stats.errors_by_kind


async def test_poll_is_chunked_to_the_servers_max_nodes_per_read(sim):
    tags = plant_tags(by_path=("flow_actual",))
    dev = device(sim.endpoint, tags, mode="poll")
    got = Collector(len(tags))
    drv = OpcUaDriver(dev, got)
    task = await running(drv)
    try:
        await async_wait_for(lambda: drv.stats.polls >= 10, 15, "10 polls")
    finally:
        await stop(task)
    assert sim.reads["refused"] == 0, "a Read over MaxNodesPerRead was sent"
    polls = len(got.batches)
    # 16 nodes with MaxNodesPerRead = 5: 4 Reads per tick (the last one may be in flight at cancel).
    # The session's own small reads (keepalive, server clock for the skew check) add up to about one per
    # poll interval on a loaded machine; one Read per node would be 16 per tick, far above this bound.
    assert 4 * polls <= sim.reads["calls"] <= 5 * polls + 8, (polls, dict(sim.reads))
    assert all(b.columns is None and b.rows == 1 for b in got.batches)
    assert assert_exact(got.samples(), [t["name"] for t in tags]) == polls * len(tags)


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_status_codes_map_to_quality_and_the_full_code_is_kept(sim, mode):
    sim.set_status("boiler.pressure", ua.StatusCodes.BadSensorFailure)
    sim.set_status("boiler.temp_return", ua.StatusCodes.UncertainLastUsableValue)
    tags = [
        {"name": "pressure", "node": "ns=plant;s=boiler.pressure", "type": "float32"},
        {"name": "temp_return", "node": "ns=plant;s=boiler.temp_return", "type": "float32"},
        {"name": "temp_supply", "node": f"nsu={NAMESPACE_URI};s=boiler.temp_supply", "type": "float32"},
        {"name": "missing", "node": "ns=plant;s=boiler.nope"},
        {"name": "missing_path", "path": "/Objects/plant:Plant/plant:nowhere"},
        {"name": "serial", "node": "ns=plant;s=Plant.serial"},
    ]
    got = Collector(len(tags))
    drv = OpcUaDriver(device(sim.endpoint, tags, mode=mode), got)
    task = await running(drv)
    try:
        await async_wait_for(lambda: len(got.latest) == len(tags), 10, "a sample of every tag")
        await async_wait_for(lambda: sum(1 for s in got.samples() if s[0] == 1) >= 2, 10, "two uncertain samples")
    finally:
        await stop(task)
    latest = got.latest
    assert latest[0][2] == QUALITY_BAD_DEVICE and np.isnan(latest[0][1]), "bad: value is to be ignored"
    assert latest[1][2] == QUALITY_UNCERTAIN_LAST_USABLE and not np.isnan(latest[1][1]), "uncertain keeps its value"
    assert latest[2][2] == QUALITY_GOOD
    assert latest[3][2] == QUALITY_BAD_CONFIG and latest[4][2] == QUALITY_BAD_CONFIG
    assert latest[5][2] == QUALITY_BAD_CONFIG, "a String node is refused, not sampled"
    assert drv.status[0] == ua.StatusCodes.BadSensorFailure
    assert drv.status[1] == ua.StatusCodes.UncertainLastUsableValue
    assert drv.status[3] == ua.StatusCodes.BadNodeIdUnknown
    assert drv.status[5] == ua.StatusCodes.BadTypeMismatch
    assert drv.stats.errors_by_kind["BadSensorFailure"] >= 1


async def test_absolute_deadband_is_sent_to_the_server(sim):
    tags = [
        {"name": "pressure", "node": "ns=plant;s=boiler.pressure", "type": "float32",
         "deadband_type": "absolute", "deadband": 0.5},
        {"name": "temp_supply", "node": "ns=plant;s=boiler.temp_supply", "type": "float32"},
    ]
    got = Collector(len(tags))
    drv = OpcUaDriver(device(sim.endpoint, tags), got)
    task = await running(drv)
    try:
        await async_wait_for(lambda: sum(1 for s in got.samples() if s[0] == 1) >= 15, 10, "15 temp_supply samples")
    finally:
        await stop(task)
    # Pressure moves ~0.005 bar per tick: inside a 0.5 deadband it reports its initial value only.
    assert sum(1 for s in got.samples() if s[0] == 0) <= 2


async def test_percent_deadband_is_sent_to_the_server_and_applied_to_the_eu_range(sim, caplog):
    # The same node twice: once unfiltered, once with a 0.2 % deadband of its EURange 0..150 (0.3 K),
    # plus a percent deadband on a node without an EURange, which the server must refuse.
    tags = [
        {"name": "all", "node": "ns=plant;s=boiler.temp_supply", "type": "float32"},
        {"name": "banded", "node": "ns=plant;s=boiler.temp_supply", "type": "float32",
         "deadband_type": "percent", "deadband": 0.2},
        {"name": "speed", "node": "ns=plant;s=mixer.speed_rpm", "type": "uint16",
         "deadband_type": "percent", "deadband": 1},
    ]
    got = Collector(len(tags))
    caplog.set_level(logging.INFO, logger="edge_agent")
    # Queues deep enough that a slow test machine loses no report in the server (that would look like a
    # missed band crossing).
    drv = OpcUaDriver(device(sim.endpoint, tags, queue_size=20), got)
    task = await running(drv)
    try:
        # The signal's own pace decides how soon it crosses the band a few times: wait for both counts.
        await async_wait_for(lambda: sum(1 for s in got.samples() if s[0] == 0) >= 40
                             and sum(1 for s in got.samples() if s[0] == 1) >= 5, 40,
                             "40 unfiltered samples and 5 reports through the deadband")
    finally:
        await stop(task)
    every = sorted(s[1] for s in got.samples() if s[0] == 0)
    banded = sorted((s[1], s[2]) for s in got.samples() if s[0] == 1 and every[0] <= s[1] <= every[-1])
    assert 3 <= len(banded) < 0.7 * len(every), (len(banded), len(every))
    band = 0.002 * 150.0
    temp = point("boiler", "temp_supply")
    missed = 0
    for (t0, v0), (t1, v1) in itertools.pairwise(banded):
        assert abs(v1 - v0) > band, "a report inside the deadband of the last reported value"
        assert v1 == value_at_tick(temp, t1 // TICK, SEED)
        # Every tick in between stayed inside the band around the last reported value (not the last sample).
        missed += sum(abs(value_at_tick(temp, k, SEED) - v0) > band for k in range(t0 // TICK + 1, t1 // TICK))
    skipped = (every[-1] - every[0]) // TICK + 1 - len(every)  # ticks the simulator never wrote (a late loop)
    assert missed <= max(0, skipped), (missed, skipped)
    # No EURange on speed_rpm: refused, reported with its code and a hint, and the tag is bad, not silent.
    assert got.latest[2][2] >= 0x80 and drv.status[2] == ua.StatusCodes.BadFilterNotAllowed
    refused = [r.getMessage() for r in caplog.records if "monitored items refused" in r.getMessage()]
    # One line per connect (a loaded machine may miss a 1 s keepalive and reconnect).
    assert 1 <= len(refused) == drv.stats.connects, (refused, drv.stats)
    assert "speed (BadFilterNotAllowed)" in refused[0] and "EURange" in refused[0], refused


async def test_a_dropped_session_is_noticed_and_everything_is_recreated(sim):
    tags = plant_tags()
    got = Collector(len(tags))
    drv = OpcUaDriver(device(sim.endpoint, tags, keepalive="1s"), got)
    task = await running(drv)
    try:
        await async_wait_for(lambda: got.all_good_since(0), 10, "every tag good")
        dropped_at = time.time_ns()
        assert await sim.drop_sessions() == 1
        # Noticed through the keepalive (probe answered BadSessionIdInvalid, or the silent subscription).
        await async_wait_for(lambda: any((b.quality == QUALITY_BAD_COMM).all() and b.columns is None
                                         for b in got.batches), 3, "a bad-comm row for every tag")
        noticed = time.time_ns()
        assert (noticed - dropped_at) / 1e9 < 2.5
        await async_wait_for(lambda: got.all_good_since(noticed), 10, "every tag good again, after the drop")
        # Initial values may reach the sink just before the connect is counted.
        await async_wait_for(lambda: drv.stats.connects == 2, 2, "the reconnect to be counted")
    finally:
        await stop(task)


async def test_wrong_password_is_one_clear_line_and_retried_with_backoff(tmp_path: Path, caplog):
    server = OpcUaSimServer(seed=SEED, users={"operator": "s3cret-pw"})
    await server.start("127.0.0.1", 0)
    secret = tmp_path / "opcua.pass"
    secret.write_text("wrong-pw\n")
    tags = [{"name": "temp_supply", "node": "ns=plant;s=boiler.temp_supply", "type": "float32"}]
    dev = device(server.endpoint, tags, username="operator", password_file=str(secret),
                 reconnect_min="300ms", reconnect_max="300ms")
    got = Collector(1)
    drv = OpcUaDriver(dev, got)
    caplog.set_level(logging.DEBUG, logger="edge_agent")
    task = await running(drv)
    try:
        await async_wait_for(lambda: drv.stats.errors_by_kind.get("auth", 0) >= 1, 10, "a refused login")
        t0 = time.monotonic()
        await async_wait_for(lambda: drv.stats.errors_by_kind.get("auth", 0) >= 3, 10, "two more attempts")
        assert time.monotonic() - t0 >= 2 * 0.3, "attempts not spaced by the backoff"
        secret.write_text("s3cret-pw\n")  # read again at the next attempt: no restart needed
        await async_wait_for(lambda: got.all_good_since(0), 10, "samples once the password is right")
    finally:
        await stop(task)
        await server.stop()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("edge_agent")]
    refused = [x for x in lines if "rejected user 'operator'" in x]
    assert refused and "BadUserAccessDenied" in refused[0] and str(secret) in refused[0], lines
    assert next(r.levelno for r in caplog.records if "rejected user" in r.getMessage()) == logging.WARNING
    assert not any("s3cret" in x or "wrong-pw" in x for x in lines), "a password was logged"
    assert "\n" not in refused[0] and "Traceback" not in caplog.text


async def test_namespace_index_is_resolved_from_the_uri_at_every_connect():
    tags = [{"name": "speed", "node": "ns=plant;s=mixer.speed_rpm", "type": "uint16"}]
    for extra in (0, 3):  # the same config against two servers whose plant namespace index differs
        server = OpcUaSimServer(seed=SEED, extra_namespaces=extra)
        await server.start("127.0.0.1", 0)
        got = Collector(1)
        drv = OpcUaDriver(device(server.endpoint, tags, mode="poll"), got)
        task = await running(drv)
        try:
            await async_wait_for(lambda got=got: got.all_good_since(0), 10, f"a good sample with ns index {2 + extra}")
        finally:
            await stop(task)
            await server.stop()
        assert server.ns == 2 + extra




async def test_one_device_can_subscribe_to_some_tags_and_poll_others(sim):
    tags = plant_tags()
    for j in (3, 9):  # burner_modulation and running are polled, the rest subscribed
        tags[j]["mode"] = "poll"
    got = Collector(len(tags))
    drv = OpcUaDriver(device(sim.endpoint, tags, poll_interval="200ms", publishing_interval="100ms"), got)
    task = await running(drv)

    def polled_batches() -> list:
        return [b for b in got.batches if b.columns is not None and list(b.columns) == [3, 9]]

    try:
        # Wait on delivered poll rows, not stats.polls (counted when a poll starts, before its answer).
        await async_wait_for(lambda: len(polled_batches()) >= 5 and got.all_good_since(0), 10,
                             "polls and notifications")
    finally:
        await stop(task)
    polled = polled_batches()
    assert len(polled) >= 5
    subscribed = [b for b in got.batches if b.columns is None or not set(b.columns) & {3, 9}]
    assert len(subscribed) + len(polled) == len(got.batches), "a poll row and notifications never share a batch"
    assert assert_exact(got.samples(), [t["name"] for t in tags]) > 20


async def test_clock_skew_is_tolerated_and_reported(caplog):
    server = OpcUaSimServer(seed=SEED, clock_offset_ns=300 * 10**9)  # the server's clock runs 5 min ahead
    await server.start("127.0.0.1", 0)
    tags = [{"name": "boiler.temp_supply", "node": "ns=plant;s=boiler.temp_supply", "type": "float32"}]
    got = Collector(1)
    drv = OpcUaDriver(device(server.endpoint, tags), got)
    caplog.set_level(logging.INFO, logger="edge_agent")
    task = await running(drv)
    try:
        await async_wait_for(lambda: len(got.samples()) >= 5, 10, "samples from a server with a skewed clock")
    finally:
        await stop(task)
        await server.stop()
    assert abs(drv.clock_skew_ns - 300 * 10**9) < 2 * 10**9
    assert any("server clock is 300" in r.getMessage() and "ahead" in r.getMessage() for r in caplog.records)
    assert assert_exact(got.samples(), ["boiler.temp_supply"]) >= 5  # source timestamps used as sent


@pytest.mark.parametrize("fallback", ["server", "receipt"])
@pytest.mark.parametrize("mode", ["poll", "subscribe"])
async def test_a_value_without_source_timestamp_takes_the_configured_fallback(sim, mode, fallback):
    # A node that carries no SourceTimestamp (some servers omit it for computed values).
    server = sim._server
    plant = server.get_node(ua.NodeId("Plant", sim.ns))
    node = await plant.add_variable(ua.NodeId("Plant.untimed", sim.ns), ua.QualifiedName("untimed", sim.ns),
                                    ua.Variant(0.0, ua.VariantType.Double))
    stamped = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)  # the server timestamp, far from "now"
    await server.iserver.aspace.write_attribute_value(
        node.nodeid, ua.AttributeIds.Value,
        ua.DataValue(ua.Variant(2.5, ua.VariantType.Double), SourceTimestamp=None, ServerTimestamp=stamped))
    tags = [{"name": "untimed", "node": "ns=plant;s=Plant.untimed", "type": "float64"}]
    got = Collector(1)
    drv = OpcUaDriver(device(sim.endpoint, tags, mode=mode, timestamp_fallback=fallback), got)
    before = time.time_ns()
    task = await running(drv)
    try:
        await async_wait_for(lambda: any(s[3] == QUALITY_GOOD for s in got.samples()), 10, "a good sample")
    finally:
        await stop(task)
    after = time.time_ns()
    ts, v = next((s[1], s[2]) for s in got.samples() if s[3] == QUALITY_GOOD)
    assert v == 2.5
    if fallback == "server":
        assert ts == int(stamped.timestamp()) * 10**9, ts
    else:
        assert before <= ts <= after, (before, ts, after)
