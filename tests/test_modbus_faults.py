"""Every fault of the issue injected through the simulator on a real socket, with the driver recovering
in bounded time: exception replies, short / over-long / malformed replies, transaction-id mismatches,
dropped connections, a dead unit, an address the device does not have inside a merged read, and a
device answering after 2 s beside one answering at once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from drivers.modbus.client import crc16, rtu_frame
from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from edge_agent.samples import (
    QUALITY_BAD_COMM,
    QUALITY_BAD_CONFIG,
    QUALITY_BAD_DECODE,
    QUALITY_BAD_DEVICE,
    QUALITY_GOOD,
    Batch,
)
from simulators.modbus.faults import Faults
from simulators.modbus.server import ModbusSimServer
from simulators.plant import DEFAULT_TICK_NS, point, value_at_tick
from tests.conftest import async_wait_for

SEED = 5
BOILER = [
    {"name": "temp_supply", "address": "hr:0", "type": "float32"},
    {"name": "pressure", "address": "40005", "type": "float32"},  # Modicon spelling of hr:4
    {"name": "flame_status_word", "address": "hr:7", "type": "uint16"},
    {"name": "heartbeat", "address": "hr:7.15", "type": "bool"},
]


def device(port: int, tags: list[dict] = BOILER, **kw: object) -> ModbusDevice:
    return ModbusDevice.model_validate({
        "name": kw.pop("name", "boiler"), "protocol": "modbus",
        "endpoint": kw.pop("endpoint", f"tcp://127.0.0.1:{port}"), "unit": kw.pop("unit", 1),
        "poll_interval": kw.pop("poll_interval", "50ms"), "timeout": kw.pop("timeout", "300ms"),
        "reconnect_min": "20ms", "reconnect_max": "200ms", "tags": tags, **kw,
    })


@pytest.fixture
async def sim() -> AsyncIterator[ModbusSimServer]:
    server = ModbusSimServer(seed=SEED, faults=Faults(seed=SEED))
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


class Running:
    """A driver task and the rows it delivered."""

    def __init__(self, dev: ModbusDevice):
        self.rows: list[Batch] = []
        self.driver = ModbusDriver(dev, self.rows.append)
        self.task = asyncio.create_task(self.driver.run())

    async def until(self, cond: Callable[[], object], within: float, what: str) -> None:
        await async_wait_for(lambda: cond() or self.task.done(), within, what)
        if self.task.done():
            self.task.result()  # a crashed driver fails the test with its traceback

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    def good_since(self, n: int) -> bool:
        return len(self.rows) > n and bool((self.rows[-1].quality == QUALITY_GOOD).all())


def assert_values_served(rows: list[Batch], tags: list[dict], device_name: str = "boiler", lag_ticks: int = 4) -> None:
    """Good samples are exactly what the simulator served: never a silently wrong value."""
    checked = 0
    for b in rows:
        for j, tag in enumerate(tags):
            if b.quality[0, j] != QUALITY_GOOD:
                continue
            name = "flame_status_word" if tag["name"] == "heartbeat" else tag["name"]
            p = point(device_name, name)
            tick = int(b.ts[0, j]) // DEFAULT_TICK_NS
            expected = [value_at_tick(p, k, SEED) for k in range(tick, tick - lag_ticks, -1)]
            if tag["name"] == "heartbeat":
                expected = [float((int(v) >> 15) & 1) for v in expected]
            assert b.values[0, j] in expected, (tag["name"], b.values[0, j], expected)
            checked += 1
    assert checked


# Pipelined: one request per tag, four in flight (written in one go), faults hitting all of them at once.
PIPELINED = {"max_gap": 0, "max_registers": 2, "max_inflight": 4}


@pytest.mark.parametrize("pipelined", [False, True], ids=["serial", "pipelined"])
@pytest.mark.parametrize("fault", ["short", "long", "malformed"])
async def test_wrong_size_replies_are_bad_decode_never_wrong_values(sim: ModbusSimServer, fault: str,
                                                                    pipelined: bool) -> None:
    setattr(sim.faults, f"{fault}_rate", 1.0)
    run = Running(device(sim.port, **(PIPELINED if pipelined else {})))
    try:
        await run.until(lambda: len(run.rows) >= 3, 10, f"polls with {fault} replies")
        assert all((b.quality == QUALITY_BAD_DECODE).all() and np.isnan(b.values).all() for b in run.rows)
        assert run.driver.stats.errors_by_kind[fault] >= 3
        setattr(sim.faults, f"{fault}_rate", 0.0)
        n = len(run.rows)
        await run.until(lambda: run.good_since(n), 5, "good polls once the device answers properly")
    finally:
        await run.stop()
    assert run.driver.stats.connects == 1  # the framing stayed in step: no reconnect needed
    assert_values_served(run.rows, BOILER)


@pytest.mark.parametrize("pipelined", [False, True], ids=["serial", "pipelined"])
async def test_transaction_id_mismatch_flushes_and_reconnects(sim: ModbusSimServer, pipelined: bool) -> None:
    run = Running(device(sim.port, **(PIPELINED if pipelined else {})))
    try:
        await run.until(lambda: len(run.rows) >= 2, 10, "first polls")
        sim.faults.tid_rate = 1.0
        # Two polls hit by a mismatch (pipelined, one mismatch fails every request in flight at once).
        await run.until(lambda: run.driver.stats.errors_by_kind.get("tid_mismatch", 0) >= 2
                        and run.driver.stats.poll_errors >= 2, 10, "mismatches")
        assert any((b.quality == QUALITY_BAD_COMM).all() for b in run.rows)
        sim.faults.tid_rate = 0.0
        n = len(run.rows)
        await run.until(lambda: run.good_since(n), 5, "recovery after the mismatch")
    finally:
        await run.stop()
    assert run.driver.stats.connects >= 3  # one per mismatch, then the good one
    assert_values_served(run.rows, BOILER)


@pytest.mark.parametrize("pipelined", [False, True], ids=["serial", "pipelined"])
async def test_exception_replies_mark_bad_device_and_keep_the_connection(sim: ModbusSimServer,
                                                                          caplog: pytest.LogCaptureFixture,
                                                                          pipelined: bool) -> None:
    sim.faults.exception_rate = 1.0
    run = Running(device(sim.port, **(PIPELINED if pipelined else {})))
    try:
        with caplog.at_level(logging.INFO, logger="edge_agent.drivers.modbus"):
            await run.until(lambda: len(run.rows) >= 5, 10, "polls answered with exceptions")
            assert all((b.quality == QUALITY_BAD_DEVICE).all() for b in run.rows)
            sim.faults.exception_rate = 0.0
            n = len(run.rows)
            await run.until(lambda: run.good_since(n), 5, "good polls")
    finally:
        await run.stop()
    assert run.driver.stats.connects == 1 and run.driver.stats.errors_by_kind["exception"] >= 5
    lines = [r.getMessage() for r in caplog.records if "exception 4" in r.getMessage()]
    assert len(lines) == len(run.driver.plan), lines  # one line per request's state change, not one per poll
    assert any("answers again" in r.getMessage() for r in caplog.records)


async def test_dropped_connections_reconnect_in_bounded_time() -> None:
    server = ModbusSimServer(seed=SEED, faults=Faults(drop_every_s=0.4))
    await server.start("127.0.0.1", 0)
    run = Running(device(server.port))
    try:
        await run.until(lambda: server.dropped_connections >= 3 and run.driver.stats.connects >= 4, 10,
                        "three drops and reconnects")
        n = len(run.rows)
        await run.until(lambda: run.good_since(n), 2, "a good poll right after")
    finally:
        await run.stop()
        await server.stop()
    # A drop between polls is noticed at the next poll's connect, so not every drop costs a bad row.
    assert run.driver.stats.errors_by_kind.get("connection", 0) <= server.dropped_connections
    assert_values_served(run.rows, BOILER)


async def test_illegal_address_in_a_merged_read_is_split_and_isolated(sim: ModbusSimServer,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    # hr:8 is beyond the boiler's map; merged with the rest (max_gap 16) the whole read gets exception 2.
    tags = [*BOILER, {"name": "spare", "address": "hr:9", "type": "uint16"}]
    with caplog.at_level(logging.INFO, logger="edge_agent.drivers.modbus"):
        run = Running(device(sim.port, tags))
        try:
            await run.until(lambda: len(run.rows) >= 5, 10, "polls")
        finally:
            await run.stop()
    first = run.rows[0]
    assert first.quality[0, -1] == QUALITY_BAD_CONFIG and np.isnan(first.values[0, -1])
    for b in run.rows:  # from the first poll on, only the offending tag is bad
        assert (b.quality[0, :-1] == QUALITY_GOOD).all() and b.quality[0, -1] == QUALITY_BAD_CONFIG
    assert_values_served(run.rows, BOILER)
    # The live plan: halved until the bad tag is alone (log2 steps), kept for the following polls.
    assert [r.describe() for r in run.driver.plan] == [
        "fc=03 unit=1 hr:0..5 count=6 tags=temp_supply,pressure",
        "fc=03 unit=1 hr:7..7 count=1 tags=flame_status_word",
        "fc=03 unit=1 hr:7..7 count=1 tags=heartbeat",
        "fc=03 unit=1 hr:9..9 count=1 tags=spare",
    ]
    assert run.driver.stats.splits == 3
    bad = [r.getMessage() for r in caplog.records if "no such address" in r.getMessage()]
    assert bad == [f"device boiler (tcp://127.0.0.1:{sim.port} unit 1): tag spare at hr:9: the device has no such "
                   "address (exception 2); marked bad (0x83), polling the other tags"]
    assert run.driver.stats.connects == 1


async def test_a_unit_that_never_answers_is_retried_with_backoff_not_every_tick(sim: ModbusSimServer) -> None:
    sim.faults.dead_units = frozenset({1})
    dev = device(sim.port, timeout="100ms").model_copy(update={"reconnect_min": 400_000_000,
                                                               "reconnect_max": 400_000_000})
    run = Running(dev)
    try:
        await run.until(lambda: run.driver.stats.connects >= 2, 10, "two attempts")
        t0 = time.monotonic()
        await run.until(lambda: run.driver.stats.connects >= 4, 10, "two more attempts")
        elapsed = time.monotonic() - t0
    finally:
        await run.stop()
    assert elapsed >= 2 * 0.4, f"two retries took {elapsed:.2f}s: backoff not applied"
    assert all((b.quality == QUALITY_BAD_COMM).all() for b in run.rows)
    assert run.driver.stats.errors_by_kind["timeout"] == len(run.rows)


@pytest.mark.parametrize("pipelined", [False, True], ids=["serial", "pipelined"])
async def test_retries_ride_out_a_lost_reply(sim: ModbusSimServer, pipelined: bool) -> None:
    # Every other reply is malformed: with one retry per request every poll still ends good.
    run = Running(device(sim.port, retries=1, **(PIPELINED if pipelined else {})))
    try:
        await run.until(lambda: len(run.rows) >= 2, 10, "first polls")
        sim.faults.malformed_rate = 0.5
        n = len(run.rows)
        await run.until(lambda: len(run.rows) >= n + 20, 10, "20 polls with faults")
    finally:
        await run.stop()
    stats = run.driver.stats
    assert stats.retries >= 3 and stats.errors_by_kind["malformed"] >= 3
    # A request's samples are bad only if both attempts failed (p = 1/4): most are good.
    good = sum(int((b.quality == QUALITY_GOOD).sum()) for b in run.rows)
    assert good > sum(b.quality.size for b in run.rows) // 2


async def test_slow_device_does_not_slow_a_fast_one(sim: ModbusSimServer) -> None:
    # Unit 1 answers after 2 s; unit 3 at once. Both on the same simulator, each device its own link.
    sim.faults.unit_latency_s = {1: 2.0}
    slow = Running(device(sim.port, poll_interval="100ms", timeout="3s"))
    fast = Running(device(sim.port, [{"name": "flow_setpoint", "address": "hr:0", "type": "float32"}],
                          name="mixer", unit=3, poll_interval="100ms"))
    try:
        await fast.until(lambda: len(fast.rows) >= 5, 10, "the fast device running")
        t0, n0 = time.monotonic(), len(fast.rows)
        await slow.until(lambda: len(slow.rows) >= 2, 10, "two slow answers")
        elapsed, polls = time.monotonic() - t0, len(fast.rows) - n0
    finally:
        await slow.stop()
        await fast.stop()
    rate = polls / elapsed
    assert rate >= 8.0, f"fast device polled at {rate:.1f}/s beside the slow one (configured 10/s)"
    assert all((b.quality == QUALITY_GOOD).all() for b in fast.rows + slow.rows)
    assert slow.driver.stats.skipped_ticks >= 19  # overruns skipped, not replayed
    assert_values_served(slow.rows, BOILER, lag_ticks=25)  # served at arrival, answered 2 s later


def test_crc16_known_vector() -> None:
    # From the Modbus over serial line spec's example: read 1 holding register of unit 1.
    assert rtu_frame(1, bytes.fromhex("0300000001")) == bytes.fromhex("010300000001840a")
    assert crc16(bytes.fromhex("010300000001840a")) == 0  # a frame with its CRC checks to 0


PRESS = [  # two requests per poll: coils, then input registers
    {"name": "running", "address": "coil:0", "type": "bool"},
    {"name": "motor_current_raw", "address": "ir:0", "type": "uint16"},
]


async def test_max_inflight_overlaps_requests_of_a_slow_device(sim: ModbusSimServer) -> None:
    # Four requests per poll, each answered after 300 ms: in flight together a poll takes ~0.3 s, not 1.2 s.
    sim.faults.unit_latency_s = {1: 0.3}
    tags = [{"name": n, "address": f"hr:{a}", "type": t} for n, a, t in
            [("temp_supply", 0, "float32"), ("temp_return", 2, "float32"), ("pressure", 4, "float32"),
             ("flame_status_word", 7, "uint16")]]
    run = Running(device(sim.port, tags, max_gap=0, max_registers=2, max_inflight=4, poll_interval="2s",
                         timeout="1s"))
    try:
        await run.until(lambda: len(run.rows) >= 2, 10, "two polls")
    finally:
        await run.stop()
    assert len(run.driver.plan) == 4
    for b in run.rows:
        assert (b.quality == QUALITY_GOOD).all()
        spread = (b.ts.max() - b.ts.min()) / 1e9
        assert spread < 0.25, f"answers {spread:.2f}s apart: requests were not in flight together"
    assert_values_served(run.rows, tags, lag_ticks=6)


async def test_request_delay_spaces_the_requests_of_a_poll(sim: ModbusSimServer) -> None:
    run = Running(device(sim.port, PRESS, name="press", unit=2, request_delay="200ms", poll_interval="1s"))
    try:
        await run.until(lambda: len(run.rows) >= 2, 10, "two polls")
    finally:
        await run.stop()
    for b in run.rows:
        assert (b.quality == QUALITY_GOOD).all()
        assert (b.ts[0, 1] - b.ts[0, 0]) / 1e9 >= 0.2  # coils first, then the pause, then the registers


async def test_close_after_poll_and_connect_delay(sim: ModbusSimServer) -> None:
    run = Running(device(sim.port, PRESS, name="press", unit=2, close_after_poll=True, connect_delay="150ms",
                         poll_interval="50ms"))
    try:
        await run.until(lambda: len(run.rows) >= 4, 10, "four polls")
    finally:
        await run.stop()
    stats = run.driver.stats
    assert stats.connects >= 4 and sim.connections_total >= 4  # a new connection for every poll
    assert all((b.quality == QUALITY_GOOD).all() for b in run.rows)
    # Each poll waits 150 ms after its connect, so polls cannot come faster than that.
    gaps = [(b.ts.min() - a.ts.min()) / 1e9 for a, b in zip(run.rows, run.rows[1:], strict=False)]
    assert min(gaps) >= 0.15, gaps
    assert stats.skipped_ticks >= 2  # the 50 ms ticks that passed meanwhile, skipped and counted
