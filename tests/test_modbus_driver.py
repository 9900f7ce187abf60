"""The Modbus driver against the simulator on a real socket: decoding, exceptions, a PLC that goes away."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from edge_agent.samples import QUALITY_BAD_COMM, QUALITY_BAD_CONFIG, QUALITY_GOOD, Batch
from simulators.modbus.server import ModbusSimServer
from simulators.plant import DEFAULT_TICK_NS, point, value_at_tick
from tests.conftest import async_wait_for

SEED = 3


def device(port: int, tags: list[dict], **kw: object) -> ModbusDevice:
    return ModbusDevice.model_validate({
        "name": kw.pop("name", "press"), "protocol": "modbus", "endpoint": f"tcp://127.0.0.1:{port}",
        "unit": kw.pop("unit", 2), "poll_interval": kw.pop("poll_interval", "50ms"), "timeout": "300ms",
        "reconnect_min": "20ms", "reconnect_max": "100ms", "tags": tags, **kw,
    })


PRESS_TAGS = [
    {"name": "motor_current_raw", "address": "ir:0", "type": "uint16"},
    {"name": "oil_temp_x10", "address": "ir:1", "type": "int16"},
    {"name": "stroke_count", "address": "ir:2", "type": "uint32"},
    {"name": "energy_kwh", "address": "ir:4", "type": "float64"},
    {"name": "running", "address": "coil:0", "type": "bool"},
]




@pytest.fixture
async def sim():
    server = ModbusSimServer(seed=SEED)
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()


async def test_values_decode_exactly_and_are_stamped_on_arrival(sim):
    rows: list[Batch] = []
    drv = ModbusDriver(device(sim.port, PRESS_TAGS), rows.append)
    task = asyncio.create_task(drv.run())
    try:
        await async_wait_for(lambda: len(rows) >= 10, 10, "10 polls")
    finally:
        task.cancel()
    for b in rows:
        assert (b.quality == QUALITY_GOOD).all()
        for j, tag in enumerate(PRESS_TAGS):
            p = point("press", tag["name"])
            ts = int(b.ts[0, j])
            assert abs(ts - time.time_ns()) < 30e9
            tick = ts // DEFAULT_TICK_NS
            candidates = [value_at_tick(p, k, SEED) for k in range(tick, tick - 3, -1)]
            assert b.values[0, j] in candidates, (tag, b.values[0, j], candidates)
    # Two requests per poll (coils, input registers), each stamped with its own reply time.
    assert len(drv.plan) == 2


async def test_exception_reply_marks_only_that_request_bad(sim):
    tags = [*PRESS_TAGS, {"name": "missing", "address": "hr:100", "type": "uint16"}]
    rows: list[Batch] = []
    drv = ModbusDriver(device(sim.port, tags), rows.append)
    task = asyncio.create_task(drv.run())
    try:
        await async_wait_for(lambda: len(rows) >= 3, 10, "3 polls")
    finally:
        task.cancel()
    last = rows[-1]
    assert last.quality[0, -1] == QUALITY_BAD_CONFIG and np.isnan(last.values[0, -1])
    assert (last.quality[0, :-1] == QUALITY_GOOD).all()
    assert drv.stats.errors_by_kind["exception"] >= 3
    assert drv.stats.connects == 1  # an exception reply is an answer: the connection stays


async def test_plc_that_goes_away_is_reconnected_with_backoff():
    server = ModbusSimServer(seed=SEED)
    await server.start("127.0.0.1", 0)
    port = server.port
    rows: list[Batch] = []
    drv = ModbusDriver(device(port, PRESS_TAGS), rows.append)
    task = asyncio.create_task(drv.run())
    try:
        await async_wait_for(lambda: len(rows) >= 3, 10, "first polls")
        await server.stop()
        await async_wait_for(lambda: (rows[-1].quality == QUALITY_BAD_COMM).all(), 10, "a bad-comm row")
        await async_wait_for(lambda: drv.stats.errors_by_kind.get("connect", 0) >= 3, 10, "reconnect attempts")
        assert not drv.stats.connected
        before = len(rows)
        server = ModbusSimServer(seed=SEED)
        await server.start("127.0.0.1", port)
        await async_wait_for(lambda: len(rows) > before + 3 and (rows[-1].quality == QUALITY_GOOD).all(), 10,
                         "good polls after the PLC came back")
        assert drv.stats.connects == 2
    finally:
        task.cancel()
        await server.stop()


async def test_first_poll_is_at_connect_not_one_interval_later(sim):
    rows: list[Batch] = []
    drv = ModbusDriver(device(sim.port, PRESS_TAGS, poll_interval="2s"), rows.append)
    task = asyncio.create_task(drv.run())
    try:
        await async_wait_for(lambda: rows, 1.5, "the first poll, well before the 2 s interval")
    finally:
        task.cancel()
    assert drv.stats.skipped_ticks == 0


async def test_polls_pause_while_the_sink_is_not_accepting(sim):
    class Gate:
        accepting = True

        def __init__(self) -> None:
            self.rows: list[Batch] = []

        def __call__(self, batch: Batch) -> None:
            self.rows.append(batch)

    gate = Gate()
    drv = ModbusDriver(device(sim.port, PRESS_TAGS), gate)
    task = asyncio.create_task(drv.run())
    try:
        await async_wait_for(lambda: len(gate.rows) >= 2, 10, "polls")
        gate.accepting = False  # the spool is full under on_full = "block"
        skipped, n = drv.stats.skipped_ticks, len(gate.rows)
        await async_wait_for(lambda: drv.stats.skipped_ticks >= skipped + 5, 10, "skipped ticks")
        assert len(gate.rows) <= n + 1  # at most the poll already under way
        gate.accepting = True
        await async_wait_for(lambda: len(gate.rows) >= n + 3, 10, "polls again")
    finally:
        task.cancel()
    assert sum(drv.stats.latency_counts) >= len(gate.rows) - 1 and drv.stats.latency_sum > 0
