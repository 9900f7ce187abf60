"""RTU for real: through a socat PTY pair (a serial line in software) and over TCP as a converter passes
it. Several units on one bus, one of them dead; CRC errors and foreign replies on the line; the
inter-frame gap; `edge-agent-sim modbus --serial` as a process."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from edge_agent.samples import QUALITY_BAD_COMM, QUALITY_BAD_DECODE, QUALITY_GOOD, Batch
from simulators.modbus.faults import Faults
from simulators.modbus.server import ModbusSimServer
from simulators.plant import DEFAULT_TICK_NS, point, value_at_tick
from tests.conftest import Proc, async_wait_for, wait_for

SEED = 11
TAGS = {
    1: ("boiler", [{"name": "temp_supply", "address": "hr:0", "type": "float32"},
                   {"name": "flame_status_word", "address": "hr:7", "type": "uint16"}]),
    2: ("press", [{"name": "oil_temp_x10", "address": "ir:1", "type": "int16"},
                  {"name": "running", "address": "coil:0", "type": "bool"}]),
    3: ("mixer", [{"name": "flow_setpoint", "address": "hr:0", "type": "float32"}]),
}


@pytest.fixture
def pty_pair(procs: Callable[..., Proc], tmp_path: Path) -> tuple[str, str]:
    """Two linked pseudo-terminals: what one end writes, the other reads, like a null-modem cable."""
    socat = shutil.which("socat")
    if socat is None:
        pytest.fail("socat is not installed: run the README's test command (scripts/test installs it)")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = procs([socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"], "socat")
    wait_for(lambda: (a.exists() and b.exists()) or not proc.alive(), 10, "socat's PTY pair")
    assert proc.alive(), proc.stderr()
    return str(a), str(b)


def device(endpoint: str, unit: int, **kw: object) -> ModbusDevice:
    name, tags = TAGS[unit]
    return ModbusDevice.model_validate({
        "name": name, "protocol": "modbus", "endpoint": endpoint, "unit": unit,
        "poll_interval": kw.pop("poll_interval", "100ms"), "timeout": kw.pop("timeout", "150ms"),
        "reconnect_min": kw.pop("reconnect_min", "100ms"), "reconnect_max": kw.pop("reconnect_max", "1s"),
        "tags": tags, **kw,
    })


class Fleet:
    """Drivers for several units of one endpoint, run as the agent runs them: one task each."""

    def __init__(self, endpoint: str, units: list[int], **kw: object):
        self.rows: dict[int, list[Batch]] = {u: [] for u in units}
        self.drivers = {u: ModbusDriver(device(endpoint, u, **kw), self.rows[u].append) for u in units}
        self.tasks = [asyncio.create_task(d.run()) for d in self.drivers.values()]

    async def until(self, cond: Callable[[], object], within: float, what: str) -> None:
        await async_wait_for(lambda: cond() or any(t.done() for t in self.tasks), within, what)
        for t in self.tasks:
            if t.done():
                t.result()

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def good(self, unit: int) -> int:
        return sum(bool((b.quality == QUALITY_GOOD).all()) for b in self.rows[unit])


def assert_served(rows: list[Batch], unit: int) -> int:
    device_name, tags = TAGS[unit]
    checked = 0
    for b in rows:
        for j, tag in enumerate(tags):
            if b.quality[0, j] == QUALITY_GOOD:
                tick = int(b.ts[0, j]) // DEFAULT_TICK_NS
                p = point(device_name, tag["name"])
                assert b.values[0, j] in [value_at_tick(p, k, SEED) for k in range(tick, tick - 4, -1)], tag
                checked += 1
    return checked


@pytest.fixture
async def serial_sim(pty_pair: tuple[str, str]) -> AsyncIterator[tuple[ModbusSimServer, str]]:
    server = ModbusSimServer(seed=SEED, faults=Faults(seed=SEED))
    # Pseudo-terminals refuse parity settings, so the tests run 8N1 (real lines default to 8E1).
    await server.start_serial(pty_pair[0], baudrate=38400, parity="N")
    yield server, f"rtu://{pty_pair[1]}?baudrate=38400&parity=N"
    await server.stop()


async def test_three_units_on_one_serial_bus_a_dead_one_never_stalls_the_others(serial_sim) -> None:
    server, endpoint = serial_sim
    server.faults.dead_units = frozenset({3})
    fleet = Fleet(endpoint, [1, 2, 3])
    try:
        await fleet.until(lambda: fleet.good(1) >= 20 and fleet.good(2) >= 20, 20, "20 good polls of units 1 and 2")
    finally:
        await fleet.stop()
    assert assert_served(fleet.rows[1], 1) and assert_served(fleet.rows[2], 2)
    assert all((b.quality == QUALITY_BAD_COMM).all() for b in fleet.rows[3])
    dead = fleet.drivers[3].stats
    # The dead unit backs off (100 ms .. 1 s): far fewer attempts than its 10 polls a second.
    assert dead.errors_by_kind["timeout"] == len(fleet.rows[3]) < len(fleet.rows[1]) // 2
    bus = fleet.drivers[1].bus
    assert bus is fleet.drivers[3].bus and bus is not None and bus.connects == 1  # the port was never reset
    # Neighbours lost at most one tick to each of the dead unit's timeouts.
    assert fleet.drivers[1].stats.skipped_ticks <= dead.errors_by_kind["timeout"] + 2
    assert server.crc_errors == 0


async def test_crc_errors_and_foreign_replies_are_counted_and_survived(serial_sim) -> None:
    server, endpoint = serial_sim
    fleet = Fleet(endpoint, [1])
    try:
        await fleet.until(lambda: fleet.good(1) >= 3, 10, "good polls")
        server.faults.crc_rate = 1.0
        await fleet.until(lambda: fleet.drivers[1].stats.errors_by_kind.get("crc", 0) >= 3, 10, "CRC errors")
        server.faults.crc_rate, server.faults.tid_rate = 0.0, 1.0
        await fleet.until(lambda: fleet.drivers[1].stats.errors_by_kind.get("mismatch", 0) >= 3, 10, "foreign replies")
        server.faults.tid_rate = 0.0
        n = fleet.good(1)
        await fleet.until(lambda: fleet.good(1) >= n + 3, 10, "good polls again")
    finally:
        await fleet.stop()
    assert any((b.quality == QUALITY_BAD_DECODE).all() for b in fleet.rows[1])
    assert assert_served(fleet.rows[1], 1)
    assert fleet.drivers[1].bus is not None and fleet.drivers[1].bus.connects == 1


async def test_inter_frame_gap_is_kept_between_units(pty_pair: tuple[str, str]) -> None:
    # At 1200 baud with parity, a character is 11 bits: the silent interval is 3.5 x 9.2 ms = 32 ms.
    server = ModbusSimServer(seed=SEED)
    await server.start_serial(pty_pair[0], baudrate=1200, parity="N")
    fleet = Fleet(f"rtu://{pty_pair[1]}?baudrate=1200&parity=N&stopbits=2", [1, 2], poll_interval="50ms",
                  timeout="500ms")
    try:
        await fleet.until(lambda: len(server.rtu_gaps) >= 20, 20, "20 requests")
    finally:
        await fleet.stop()
        await server.stop()
    gap = 3.5 * 11 / 1200
    assert min(server.rtu_gaps) >= gap * 0.9, (min(server.rtu_gaps), gap)


async def test_rtu_over_tcp_serves_several_units_on_one_connection() -> None:
    server = ModbusSimServer(seed=SEED, framing="rtu", faults=Faults(dead_units=frozenset({3})))
    await server.start("127.0.0.1", 0)
    fleet = Fleet(f"rtu+tcp://127.0.0.1:{server.port}", [1, 2, 3])
    try:
        await fleet.until(lambda: fleet.good(1) >= 10 and fleet.good(2) >= 10, 20, "good polls of units 1 and 2")
    finally:
        await fleet.stop()
        await server.stop()
    assert server.connections_total == 1  # one connection for the bus, and a dead unit did not reset it
    assert assert_served(fleet.rows[1], 1) and assert_served(fleet.rows[2], 2)


def test_simulator_cli_serves_rtu_on_a_serial_path(procs, pty_pair: tuple[str, str], tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    sim = procs([sys.executable, "-m", "simulators.cli", "modbus", "--serial", pty_pair[0], "--seed", str(SEED),
                 "--baudrate", "19200", "--parity", "N", "--ready-file", str(ready)], "sim")
    wait_for(lambda: ready.exists() or not sim.alive(), 15, "the serial simulator")
    assert sim.alive(), sim.stderr()
    assert ready.read_text().strip() == pty_pair[0]

    async def poll() -> list[Batch]:
        fleet = Fleet(f"rtu://{pty_pair[1]}?parity=N", [2])
        try:
            await fleet.until(lambda: fleet.good(2) >= 5, 15, "good polls from the serial simulator")
        finally:
            await fleet.stop()
        return fleet.rows[2]

    rows = asyncio.run(poll())
    assert assert_served(rows, 2)
    rc, _ = sim.terminate()
    assert rc == 0, sim.stderr()
    assert f"modbus simulator listening on serial {pty_pair[0]} (RTU, 19200 baud, parity N)" in sim.stderr()
