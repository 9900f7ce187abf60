"""The Modbus plant simulator against a real client: served values must equal `value_at`.

Values are checked exactly, not approximately: the simulator quantises time into ticks, so for a
request sent at t_before and answered at t_after the reply must equal value_at for one tick in
[t_before // tick, t_after // tick], with every point of one reply taken from the same tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient, ModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from simulators.cli import main, parse_tick
from simulators.modbus.server import ModbusSimServer
from simulators.plant import (
    DEFAULT_TICK_NS,
    DEVICES,
    PLANT,
    Point,
    encode,
    point,
    points_for,
    value_at,
    value_at_tick,
)
from simulators.signals import GOLDEN64, mix64

SEED = 7
TICK = DEFAULT_TICK_NS
REPO = Path(__file__).resolve().parents[1]
FMT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f", "float64": ">d"}


# --- helpers -------------------------------------------------------------------------------------


def decode(p: Point, words: Sequence[int]) -> float:
    """Independent of the simulator's encoder on purpose: big-endian, high word first."""
    raw = struct.pack(f">{len(words)}H", *words)
    return float(struct.unpack(FMT[p.type], raw)[0])


def decoded_block(points: Sequence[Point], start: int, words: Sequence[int]) -> dict[str, float]:
    return {p.name: decode(p, words[p.address - start : p.end - start]) for p in points}


def matching_ticks(expected: Callable[[int], dict[str, float]], got: dict[str, float],
                   t_before: int, t_after: int, tick_ns: int = TICK) -> list[int]:
    """Ticks in the request's window whose predicted values equal everything the reply carried."""
    return [k for k in range(t_before // tick_ns, t_after // tick_ns + 1) if expected(k) == got]


def predict(points: Sequence[Point], seed: int = SEED, tick_ns: int = TICK) -> Callable[[int], dict[str, float]]:
    return lambda k: {p.name: value_at_tick(p, k, seed, tick_ns) for p in points}


async def wait_for(cond: Callable[[], bool], within_s: float = 2.0) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def read_pdu(fc: int, address: int, count: int) -> bytes:
    return struct.pack(">BHH", fc, address, count)


async def read_frame(reader: asyncio.StreamReader, within_s: float = 1.0) -> tuple[int, int, bytes]:
    """(transaction id, unit, pdu) of the next reply."""
    header = await asyncio.wait_for(reader.readexactly(7), within_s)
    tid, proto, length, unit = struct.unpack(">HHHB", header)
    assert proto == 0
    pdu = await asyncio.wait_for(reader.readexactly(length - 1), within_s)
    return tid, unit, pdu


@pytest.fixture
async def server() -> AsyncIterator[ModbusSimServer]:
    srv = ModbusSimServer(seed=SEED)
    await srv.start("127.0.0.1", 0)
    yield srv
    await srv.stop()


@pytest.fixture
async def client(server: ModbusSimServer) -> AsyncIterator[AsyncModbusTcpClient]:
    c = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=1.0, retries=0)
    assert await c.connect()
    yield c
    c.close()


@contextlib.asynccontextmanager
async def raw_connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# --- signal math ---------------------------------------------------------------------------------


def test_mix64_is_splitmix64() -> None:
    # First output of the reference splitmix64 generator seeded with 0.
    assert mix64(GOLDEN64) == 0xE220A8397B1DCDAF


def test_plant_map_shape() -> None:
    assert DEVICES == ("boiler", "press", "mixer")
    assert {p.unit for p in points_for("boiler")} == {1}
    assert {p.unit for p in points_for("press")} == {2}
    assert {p.unit for p in points_for("mixer")} == {3}
    assert [(p.table, p.address, p.type) for p in points_for("press")] == [
        ("ir", 0, "uint16"), ("ir", 1, "int16"), ("ir", 2, "uint32"), ("ir", 4, "float64"),
        ("coil", 0, "bool"), ("coil", 1, "bool"),
    ]
    with pytest.raises(KeyError):
        points_for("chiller")


def test_values_are_deterministic_quantised_and_seeded() -> None:
    t = 1_767_225_600_123_456_789
    k = t // TICK
    for p in PLANT:
        v = value_at(p, t, SEED)
        assert v == value_at(p, t, SEED) == value_at_tick(p, k, SEED)
        assert v == value_at(p, k * TICK, SEED) == value_at(p, (k + 1) * TICK - 1, SEED)  # same tick
        if p.type == "float32":
            assert v == struct.unpack(">f", struct.pack(">f", v))[0]
        elif p.type != "float64":
            assert v == int(v)
    noisy = point("boiler", "temp_supply")
    assert any(value_at_tick(noisy, k + i, 1) != value_at_tick(noisy, k + i, 2) for i in range(10))


def test_signals_have_realistic_ranges() -> None:
    k0 = 1_767_225_600 * 10  # 2026-01-01 in 100 ms ticks
    ks = [k0 + i * 29 for i in range(6000)]  # ~4.8 h of plant, sampled

    def series(device: str, name: str) -> list[float]:
        return [value_at_tick(point(device, name), k, SEED) for k in ks]

    for name in ("temp_supply", "temp_return"):
        temps = series("boiler", name)
        assert min(temps) >= 20.0 and max(temps) <= 90.0
    pressure = series("boiler", "pressure")
    assert min(pressure) >= 1.0 and max(pressure) <= 10.0
    mod = series("boiler", "burner_modulation")
    assert min(mod) >= 0 and max(mod) <= 100 and len(set(mod)) > 20
    current = series("press", "motor_current_raw")
    assert min(current) >= 0 and 2000 < max(current) <= 3000
    oil = series("press", "oil_temp_x10")
    assert -50 <= min(oil) < 0 and 600 < max(oil) <= 650
    position = series("mixer", "position")
    assert min(position) < 0 < max(position)
    running = series("press", "running")
    assert 0.5 < sum(running) / len(running) < 0.95
    fault = series("press", "fault")
    assert 0 < sum(fault) < 0.01 * len(fault)

    consecutive = range(k0, k0 + 3000)
    strokes = [value_at_tick(point("press", "stroke_count"), k, SEED) for k in consecutive]
    energy = [value_at_tick(point("press", "energy_kwh"), k, SEED) for k in consecutive]
    assert all(b >= a for a, b in itertools.pairwise(strokes)) and strokes[-1] > strokes[0]
    assert all(b > a for a, b in itertools.pairwise(energy))
    # flow_actual tracks its setpoint: settled at the end of every 30 s hold
    sp, act = point("mixer", "flow_setpoint"), point("mixer", "flow_actual")
    for k in range(k0 - k0 % 300 + 299, k0 + 30_000, 300):
        assert math.isclose(value_at_tick(act, k, SEED), value_at_tick(sp, k, SEED), abs_tol=0.5)


# --- served values -------------------------------------------------------------------------------

BLOCKS = [  # (device, function, start, count)
    ("boiler", "read_holding_registers", 0, 8),
    ("press", "read_input_registers", 0, 8),
    ("press", "read_coils", 0, 2),
    ("mixer", "read_holding_registers", 0, 7),
    ("mixer", "read_discrete_inputs", 0, 1),
]


@pytest.mark.parametrize(("device", "method", "start", "count"), BLOCKS)
async def test_served_values_equal_value_at(client: AsyncModbusTcpClient, device: str, method: str,
                                            start: int, count: int) -> None:
    table = {"read_holding_registers": "hr", "read_input_registers": "ir",
             "read_coils": "coil", "read_discrete_inputs": "di"}[method]
    pts = [p for p in points_for(device) if p.table == table]
    unit = pts[0].unit
    for _ in range(3):
        t_before = time.time_ns()
        rr = await getattr(client, method)(start, count=count, device_id=unit)
        t_after = time.time_ns()
        assert not rr.isError(), rr
        if table in ("coil", "di"):
            got = {p.name: float(rr.bits[p.address - start]) for p in pts}
        else:
            assert len(rr.registers) == count
            got = decoded_block(pts, start, rr.registers)
        assert matching_ticks(predict(pts), got, t_before, t_after), (got, t_before, t_after)


async def test_reads_spanning_point_boundaries(client: AsyncModbusTcpClient) -> None:
    """A read may start or end inside a multi-register value, as on a real PLC."""
    sup, ret = point("boiler", "temp_supply"), point("boiler", "temp_return")
    t_before = time.time_ns()
    rr = await client.read_holding_registers(1, count=3, device_id=1)
    t_after = time.time_ns()
    assert not rr.isError()
    ok = [k for k in range(t_before // TICK, t_after // TICK + 1)
          if list(rr.registers) == [encode(sup, value_at_tick(sup, k, SEED))[1],
                                    *encode(ret, value_at_tick(ret, k, SEED))]]
    assert ok


async def test_injected_clock_gives_exact_values() -> None:
    t = 1_800_000_000_000_000_000
    srv = ModbusSimServer(seed=3, clock=lambda: t)
    await srv.start("127.0.0.1", 0)
    try:
        async with raw_connection(srv.port) as (reader, writer):
            writer.write(mbap(1, 2, read_pdu(4, 0, 8)))
            await writer.drain()
            _, _, pdu = await read_frame(reader)
    finally:
        await srv.stop()
    words = struct.unpack(">8H", pdu[2:])
    expected = [w for p in points_for("press") if p.table == "ir" for w in encode(p, value_at(p, t, 3))]
    assert pdu[:2] == bytes((4, 16)) and list(words) == expected
    assert decode(point("press", "energy_kwh"), words[4:8]) == value_at(point("press", "energy_kwh"), t, 3)


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "unit", "address", "count"), [
    ("read_holding_registers", 1, 8, 1),   # just past the boiler map
    ("read_holding_registers", 1, 7, 2),   # starts legal, runs past the end
    ("read_input_registers", 1, 0, 1),     # boiler has no input registers
    ("read_input_registers", 2, 6, 3),     # past energy_kwh
    ("read_coils", 2, 2, 1),
    ("read_coils", 2, 0, 3),
    ("read_discrete_inputs", 3, 1, 1),
    ("read_holding_registers", 3, 100, 10),
])
async def test_illegal_address_is_exception_2(client: AsyncModbusTcpClient, method: str, unit: int,
                                              address: int, count: int) -> None:
    rr = await getattr(client, method)(address, count=count, device_id=unit)
    assert rr.isError() and rr.exception_code == 2


async def test_bad_count_and_writes_are_rejected(server: ModbusSimServer) -> None:
    # Raw frames: pymodbus refuses to send count 0 or 126 itself.
    cases = [
        (read_pdu(3, 0, 126), bytes((0x83, 3))),
        (read_pdu(3, 0, 0), bytes((0x83, 3))),
        (read_pdu(4, 0, 126), bytes((0x84, 3))),
        (read_pdu(1, 0, 2001), bytes((0x81, 3))),
        (read_pdu(1, 0, 2000), bytes((0x81, 2))),  # count legal, range is not
        (bytes((3, 0, 0)), bytes((0x83, 3))),  # truncated read PDU
        (struct.pack(">BHH", 6, 0, 1), bytes((0x86, 1))),  # write single register
        (struct.pack(">BHHB4H", 16, 0, 2, 4, 1, 2, 3, 4)[:10], bytes((0x90, 1))),
        (bytes((0x2B, 0x0E, 1, 0)), bytes((0xAB, 1))),  # device identification: not supported
    ]
    async with raw_connection(server.port) as (reader, writer):
        for tid, (req, want) in enumerate(cases, start=1):
            writer.write(mbap(tid, 1, req))
            await writer.drain()
            assert await read_frame(reader) == (tid, 1, want)


async def test_unknown_unit_gets_no_reply(server: ModbusSimServer) -> None:
    c = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=0.5, retries=0)
    assert await c.connect()
    try:
        with pytest.raises(ModbusIOException):
            await c.read_holding_registers(0, count=2, device_id=9)
        assert server.unanswered == 1
        rr = await c.read_holding_registers(0, count=2, device_id=1)  # same connection still serves
        assert not rr.isError()
    finally:
        c.close()


# --- framing and connections ---------------------------------------------------------------------


async def test_pipelined_requests_answered_in_order(server: ModbusSimServer) -> None:
    frames = [mbap(10, 1, read_pdu(3, 0, 2)), mbap(11, 9, read_pdu(3, 0, 2)),  # unit 9: silence
              mbap(12, 3, read_pdu(3, 4, 2)), mbap(13, 2, read_pdu(1, 0, 2)), mbap(14, 1, read_pdu(3, 50, 1))]
    async with raw_connection(server.port) as (reader, writer):
        writer.write(b"".join(frames))
        await writer.drain()
        replies = [await read_frame(reader) for _ in range(4)]
    assert [(tid, unit, pdu[0]) for tid, unit, pdu in replies] == [(10, 1, 3), (12, 3, 3), (13, 2, 1), (14, 1, 0x83)]
    assert replies[-1][2] == bytes((0x83, 2))
    assert server.stats[(1, 3)] == 2 and server.stats[(3, 3)] == 1 and server.stats[(2, 1)] == 1
    assert server.stats_summary() == {"requests": {"1": {"3": 2}, "2": {"1": 1}, "3": {"3": 1}}}


async def test_request_split_across_segments(server: ModbusSimServer) -> None:
    p = point("mixer", "speed_rpm")
    async with raw_connection(server.port) as (reader, writer):
        frame = mbap(0xBEEF, 3, read_pdu(3, 6, 1))
        t_before = time.time_ns()
        for i in range(len(frame)):
            writer.write(frame[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.005)  # give the server a chance to see each byte alone
        tid, unit, pdu = await read_frame(reader)
        t_after = time.time_ns()
    assert (tid, unit, pdu[:2]) == (0xBEEF, 3, bytes((3, 2)))
    got = struct.unpack(">H", pdu[2:])[0]
    assert any(value_at_tick(p, k, SEED) == got for k in range(t_before // TICK, t_after // TICK + 1))


async def test_foreign_protocol_skipped_and_bad_length_closes(server: ModbusSimServer) -> None:
    async with raw_connection(server.port) as (reader, writer):
        not_modbus = struct.pack(">HHHB", 1, 7, 6, 1) + read_pdu(3, 0, 2)  # protocol id 7: skipped
        writer.write(not_modbus + mbap(2, 1, read_pdu(3, 0, 2)))
        await writer.drain()
        assert (await read_frame(reader))[0] == 2
        writer.write(struct.pack(">HHHB", 3, 0, 0, 1))  # length 0 cannot be framed: server hangs up
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 1.0) == b""
    assert server.unanswered == 1


async def test_client_closing_mid_request_does_not_hurt_others(server: ModbusSimServer,
                                                               client: AsyncModbusTcpClient) -> None:
    await wait_for(lambda: server.active_connections == 1)
    for partial in (mbap(1, 1, read_pdu(3, 0, 2))[:4], mbap(2, 1, read_pdu(3, 0, 2))[:9]):
        _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        await wait_for(lambda: server.active_connections == 2)
        writer.write(partial)
        await writer.drain()
        writer.close()
        await wait_for(lambda: server.active_connections == 1)
    rr = await client.read_holding_registers(0, count=8, device_id=1)
    assert not rr.isError()


async def test_concurrent_clients(server: ModbusSimServer) -> None:
    clients = [AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=1.0, retries=0) for _ in range(4)]
    assert all(await asyncio.gather(*(c.connect() for c in clients)))
    try:
        await wait_for(lambda: server.active_connections == 4)
        pts = [p for p in points_for("mixer") if p.table == "hr"]

        async def poll(c: AsyncModbusTcpClient) -> None:
            for _ in range(5):
                t_before = time.time_ns()
                rr = await c.read_holding_registers(0, count=7, device_id=3)
                t_after = time.time_ns()
                assert matching_ticks(predict(pts), decoded_block(pts, 0, rr.registers), t_before, t_after)

        await asyncio.gather(*(poll(c) for c in clients))
        assert server.stats[(3, 3)] == 20
    finally:
        for c in clients:
            c.close()
    await wait_for(lambda: server.active_connections == 0)


async def test_stop_drops_clients_promptly() -> None:
    srv = ModbusSimServer()
    await srv.start("127.0.0.1", 0)
    async with raw_connection(srv.port) as (reader, _writer):
        await wait_for(lambda: srv.active_connections == 1)
        t0 = time.monotonic()
        await srv.stop()
        assert time.monotonic() - t0 < 1.0
        assert await asyncio.wait_for(reader.read(), 1.0) == b""  # server closed our connection


# --- CLI -----------------------------------------------------------------------------------------


def test_parse_tick_and_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_tick("100ms") == 100_000_000 and parse_tick("1s") == 10**9 and parse_tick("2m") == 120 * 10**9
    for bad in (["modbus", "--tick", "fast"], ["modbus", "--tick", "0ms"], ["modbus", "--port", "70000"], []):
        with pytest.raises(SystemExit) as exc:
            main(bad)
        assert exc.value.code == 2
    assert "invalid tick 'fast'" in capsys.readouterr().err


def test_list_prints_the_map(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["DEVICE", "UNIT", "ADDRESS", "TYPE", "NAME"]
    assert len(out) == 1 + len(PLANT)
    assert out[8].split()[:5] == ["press", "2", "ir:2-3", "uint32", "stroke_count"]


def _sim(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "simulators.cli", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_cli_serves_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "port"
    proc = _sim("modbus", "--host", "127.0.0.1", "--port", "0", "--seed", "42", "--tick", "1s",
                "--ready-file", str(ready))
    try:
        deadline = time.monotonic() + 5.0
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "simulator did not become ready"
            time.sleep(0.02)
        port = int(ready.read_text())

        p = point("boiler", "temp_supply")
        with ModbusTcpClient("127.0.0.1", port=port, timeout=1.0, retries=0) as c:
            t_before = time.time_ns()
            rr = c.read_holding_registers(0, count=2, device_id=1)
            t_after = time.time_ns()
        assert not rr.isError()
        got = decode(p, rr.registers)
        tick = 10**9
        assert any(value_at_tick(p, k, 42, tick) == got for k in range(t_before // tick, t_after // tick + 1))

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=2.0)
        assert time.monotonic() - t0 < 2.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == {"requests": {"1": {"3": 1}}}
    assert f"modbus simulator listening on 127.0.0.1:{port} (units 1,2,3, seed 42, tick 1s)" in err
    assert "connection open" in err and "connection closed" in err
    assert not ready.exists()


def test_cli_port_in_use_is_one_line_exit_1() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        proc = _sim("modbus", "--port", str(port))
        try:
            out, err = proc.communicate(timeout=5.0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cannot listen on 127.0.0.1:{port}: "), err
    assert "Traceback" not in err and out == ""


def test_cli_sigint_also_exits_0(tmp_path: Path) -> None:
    ready = tmp_path / "port"
    proc = _sim("modbus", "--port", "0", "--ready-file", str(ready))
    try:
        deadline = time.monotonic() + 5.0
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=2.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert json.loads(out) == {"requests": {}}


# --- profiles, anomalies, faults ---------------------------------------------------------------------

PROFILE = REPO / "simulators" / "profiles" / "line.toml"


async def test_profile_serves_its_byte_orders_and_64_bit_values() -> None:
    from simulators.plant import load_profile

    points = load_profile(PROFILE)
    t = 1_800_000_000_000_000_000
    srv = ModbusSimServer(seed=3, points=points, clock=lambda: t)
    await srv.start("127.0.0.1", 0)
    try:
        async with raw_connection(srv.port) as (reader, writer):
            writer.write(mbap(1, 5, read_pdu(4, 0, 10)))
            await writer.drain()
            _, _, pdu = await read_frame(reader)
    finally:
        await srv.stop()
    words = struct.unpack(">10H", pdu[2:])
    by_name = {p.name: p for p in points}
    power, energy, freq = by_name["active_power"], by_name["energy_total"], by_name["frequency"]
    # CDAB: low word first; the frequency point overrides to ABCD.
    assert struct.unpack(">f", struct.pack(">2H", words[1], words[0]))[0] == value_at(power, t, 3)
    assert struct.unpack(">Q", struct.pack(">4H", *reversed(words[2:6])))[0] == value_at(energy, t, 3)
    assert struct.unpack(">d", struct.pack(">4H", *words[6:10]))[0] == value_at(freq, t, 3)


def test_anomalies_change_values_exactly_where_the_labels_say() -> None:
    from simulators.plant import anomaly_labels, load_profile
    from simulators.signals import Anomalies

    points = load_profile(PROFILE)
    level = next(p for p in points if p.name == "level")
    assert isinstance(level.signal, Anomalies)
    k0 = 18_000_000_000
    k1 = k0 + 36_000  # an hour of 100 ms ticks
    labels = [r for r in anomaly_labels(points, SEED, k0, k1) if r["point"] == "level"]
    assert len(labels) == 60 and {r["kind"] for r in labels} == {"spike", "drift", "stuck", "step", "noise_burst"}
    inside = {k for r in labels for k in range(r["start_ns"] // TICK, r["end_ns"] // TICK)}
    clean = Point(level.device, level.unit, level.table, level.address, level.type, level.name, level.signal.inner)
    for k in range(k0, k0 + 3000):
        differs = value_at_tick(level, k, SEED) != value_at_tick(clean, k, SEED)
        assert differs <= (k in inside), k  # outside a labelled window the value is the clean signal
    assert sum(value_at_tick(level, k, SEED) != value_at_tick(clean, k, SEED) for k in inside if k < k0 + 3000)


@pytest.mark.parametrize(("text", "message"), [
    ("[[devices]]\nname = 'a'\nunit = 1\npoints = [{name = 'x', address = 'hr:0', type = 'int16', "
     "signal = {kind = 'sin'}}]", "devices[0].points[0].signal.kind: 'sin' is not one of sine, ramp"),
    ("[[devices]]\nname = 'a'\nunit = 1\npoints = [{name = 'x', address = 'hr:0', type = 'int16', "
     "signal = {kind = 'sine', mean = 1.0, amplitude = 1.0, period = 5}}]",
     "devices[0].points[0].signal.period: 5 is not a duration"),
    ("[[devices]]\nname = 'a'\nunit = 1\npoints = [{name = 'x', address = '40001', type = 'int16', "
     "signal = {kind = 'constant', value = 1.0}}]", "devices[0].points[0].address: '40001' is not table:N"),
    ("[[devices]]\nname = 'a'\nunit = 1\npoints = [{name = 'x', address = 'hr:0', type = 'int16', "
     "signal = {kind = 'constant', value = 1.0}, anomalies = {every = '1m', kinds = ['blip']}}]",
     "devices[0].points[0].anomalies.kinds: 'blip' is not one of spike"),
])
def test_profile_errors_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    from simulators.plant import ProfileError, load_profile

    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as exc:
        load_profile(path)
    assert str(exc.value).startswith(f"{path}: {message}"), str(exc.value)
    assert "\n" not in str(exc.value)


def test_cli_profile_labels_and_fault_summary(tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text("[[devices]]\nname = 'a'\nunit = 9\n[[devices.points]]\nname = 'x'\naddress = 'hr:0'\n"
                       "type = 'int16'\nsignal = {kind = 'constant', value = 5.0}\n"
                       "anomalies = {every = '1s', duration = '300ms', magnitude = 50.0}\n")
    ready, labels = tmp_path / "port", tmp_path / "labels.jsonl"
    proc = _sim("modbus", "--port", "0", "--profile", str(profile), "--labels", str(labels), "--seed", "4",
                "--short-rate", "1", "--ready-file", str(ready))
    try:
        deadline = time.monotonic() + 5.0
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        with ModbusTcpClient("127.0.0.1", port=int(ready.read_text()), timeout=1.0, retries=0) as c:
            rr = c.read_holding_registers(0, count=1, device_id=9)
        assert not rr.isError() and rr.registers == []  # the short reply: no register at all
        deadline = time.monotonic() + 5.0
        while not (labels.exists() and labels.read_text().count("\n") >= 2):
            assert time.monotonic() < deadline, "no labels written"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=5.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "(units 9, seed 4, tick 100ms)" in err
    assert json.loads(out.strip().splitlines()[-1]) == {"requests": {"9": {"3": 1}}, "faults": {"short": 1}}
    records = [json.loads(line) for line in labels.read_text().splitlines()]
    assert all(r["device"] == "a" and r["point"] == "x" and r["end_ns"] > r["start_ns"] for r in records)
    assert len({r["start_ns"] for r in records}) == len(records)  # each anomaly labelled once


def test_cli_bad_profile_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = _sim("modbus", "--port", "0", "--profile", str(tmp_path / "missing.toml"))
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 2 and out == ""
    assert err.strip().splitlines() == [f"edge-agent-sim: {tmp_path / 'missing.toml'}: cannot read profile: "
                                        "No such file or directory"]
