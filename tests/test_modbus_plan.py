"""The request planner (property tests) and the Modbus config's one-line errors, through `edge-agent check`."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.address import TABLES
from drivers.modbus.config import ModbusDevice
from drivers.modbus.plan import poll_groups, split_request
from edge_agent.cli import main
from edge_agent.config.loader import EX_CONFIG

WIDTH = {"uint16": 1, "float32": 2, "float64": 4, "bool": 1}


def device(tags: list[dict], **kw: object) -> ModbusDevice:
    return ModbusDevice.model_validate({"name": "d", "protocol": "modbus", "endpoint": "tcp://127.0.0.1:502",
                                        "tags": tags, **kw})


@st.composite
def devices(draw: st.DrawFn) -> ModbusDevice:
    n = draw(st.integers(1, 60))
    tags = []
    for i in range(n):
        table = draw(st.sampled_from(["hr", "ir", "coil", "di"]))
        if TABLES[table].bits:
            type_ = "bool"
            address = f"{table}:{draw(st.integers(0, 5000))}"
        else:
            type_ = draw(st.sampled_from(["uint16", "float32", "float64", "bool", "string"]))
            index = draw(st.integers(0, 700))
            address = f"{table}:{index}" + (f".{draw(st.integers(0, 15))}" if type_ == "bool" else "")
        tag = {"name": f"t{i}", "address": address, "type": type_}
        if type_ == "string":
            tag["length"] = draw(st.integers(1, 10))
        if draw(st.booleans()):
            tag["poll_interval"] = draw(st.sampled_from(["100ms", "1s", "5s"]))
        tags.append(tag)
    return device(tags, max_gap=draw(st.integers(0, 100)), max_registers=draw(st.integers(10, 125)),
                  max_bits=draw(st.integers(1, 2000)))


@settings(max_examples=300, deadline=None)
@given(devices())
def test_plan_covers_every_tag_once_within_limits_and_gaps(dev: ModbusDevice) -> None:
    seen: list[int] = []
    for group in poll_groups(dev):
        for req in group.requests:
            table = TABLES[req.table]
            limit = min(table.protocol_limit, dev.max_bits if table.bits else dev.max_registers)
            assert 1 <= req.count <= limit
            assert req.start + req.count <= 65536
            cols = [int(group.columns[p]) for p in req.columns]
            spans = sorted((dev.tags[c].parsed.index, dev.tags[c].registers) for c in cols)
            for c in cols:
                tag = dev.tags[c]
                assert tag.parsed.table == req.table and dev.tag_interval(tag) == group.interval
                assert req.start <= tag.parsed.index and tag.parsed.index + tag.registers <= req.start + req.count
            # The read starts at its first tag, ends at its last, and no hole inside is over max_gap.
            assert spans[0][0] == req.start and max(s + w for s, w in spans) == req.start + req.count
            covered_to = spans[0][0]
            for s, w in spans:
                assert s - covered_to <= dev.max_gap
                covered_to = max(covered_to, s + w)
            seen += cols
    assert sorted(seen) == list(range(len(dev.tags)))


@settings(max_examples=100, deadline=None)
@given(devices())
def test_splitting_keeps_every_tag_exactly_once(dev: ModbusDevice) -> None:
    for group in poll_groups(dev):
        for req in group.requests:
            if len(req.tag_names) < 2:
                continue
            a, b = split_request(dev, group, req)
            assert sorted(a.tag_names + b.tag_names) == sorted(req.tag_names)
            assert a.count + b.count <= req.count + max(dev.tags[c].registers for c in group.columns)
            assert a.interval == b.interval == req.interval


def test_planner_merges_across_small_gaps_and_respects_limits() -> None:
    tags = [{"name": f"t{i}", "address": f"hr:{a}", "type": "uint16"} for i, a in enumerate([0, 1, 20, 40, 200])]
    plan = poll_groups(device(tags, max_gap=19, max_registers=41))[0].requests
    assert [(r.start, r.count) for r in plan] == [(0, 41), (200, 1)]
    plan = poll_groups(device(tags, max_gap=0))[0].requests
    assert [(r.start, r.count) for r in plan] == [(0, 2), (20, 1), (40, 1), (200, 1)]


def test_tags_with_their_own_interval_get_their_own_requests() -> None:
    tags = [{"name": "fast", "address": "hr:0", "type": "uint16", "poll_interval": "100ms"},
            {"name": "slow", "address": "hr:1", "type": "uint16"},
            {"name": "fast2", "address": "hr:2", "type": "uint16", "poll_interval": "100ms"}]
    groups = poll_groups(device(tags))
    assert [g.interval for g in groups] == [100_000_000, 1_000_000_000]
    assert [r.describe() for g in groups for r in g.requests] == [
        "fc=03 unit=1 hr:0..2 count=3 every 100ms tags=fast,fast2",
        "fc=03 unit=1 hr:1..1 count=1 tags=slow",
    ]
    assert groups[0].columns.tolist() == [0, 2] and groups[0].requests[0].columns.tolist() == [0, 1]


MINIMAL = """\
[agent]
id = "line1"
state_dir = "./state"

[[devices]]
name = "press"
protocol = "modbus"
endpoint = "tcp://127.0.0.1:5020"
unit = 2

[[devices.tags]]
name = "current"
address = "ir:0"
type = "uint16"
"""


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('endpoint = "tcp://127.0.0.1:5020"', 'endpoint = "rtu:///dev/ttyUSB0?baudrate=19200&parity=even"',
     "devices[0].endpoint: 'rtu:///dev/ttyUSB0?baudrate=19200&parity=even': parity must be N, E or O, not 'even'"),
    ('endpoint = "tcp://127.0.0.1:5020"', 'endpoint = "rtu:///dev/ttyUSB0?baud=9600"',
     "devices[0].endpoint: 'rtu:///dev/ttyUSB0?baud=9600': unknown serial setting 'baud' (allowed: baudrate,"),
    ('endpoint = "tcp://127.0.0.1:5020"', 'endpoint = "rtu://dev/ttyUSB0"',
     "devices[0].endpoint: 'rtu://dev/ttyUSB0': a serial endpoint has no host: write rtu:///dev/ttyUSB0"),
    ('endpoint = "tcp://127.0.0.1:5020"', 'endpoint = "rtu:///dev/ttyUSB0?stopbits=3"',
     "devices[0].endpoint: 'rtu:///dev/ttyUSB0?stopbits=3': stopbits must be 1 or 2, not 3"),
    ('endpoint = "tcp://127.0.0.1:5020"', 'endpoint = "modbus://1.2.3.4"',
     "devices[0].endpoint: 'modbus://1.2.3.4': use tcp://HOST:PORT, rtu+tcp://HOST:PORT"),
    ('endpoint = "tcp://127.0.0.1:5020"\nunit = 2', 'endpoint = "rtu+tcp://10.0.0.5:4001"\nunit = 0',
     "devices[0]: unit 0: an RTU unit id is 1..247"),
    ('endpoint = "tcp://127.0.0.1:5020"', 'endpoint = "rtu+tcp://10.0.0.5:4001"\nmax_inflight = 4',
     "devices[0]: max_inflight = 4: RTU has no transaction ids"),
    ('unit = 2', 'unit = 2\nbyte_order = "BACD"', "devices[0].byte_order: 'BACD' is not one of 'ABCD'"),
    ('unit = 2', 'unit = 2\nrequest_delay = "2m"', "devices[0].request_delay: must be from 0s to 1m"),
    ('type = "uint16"', 'type = "uint16"\nscale = 0.0', "devices[0].tags[0]: scale must not be 0"),
    ('type = "uint16"', 'type = "uint16"\nscale = "10"', "devices[0].tags[0].scale: Input should be a valid number"),
    ('type = "uint16"', 'type = "string"', "devices[0].tags[0]: a string needs length = N, its size in registers"),
    ('type = "uint16"', 'type = "uint16"\nlength = 4', "devices[0].tags[0]: length is for strings only"),
    ('type = "uint16"', 'type = "bool"',
     "devices[0].tags[0]: ir holds 16-bit registers: for one bit of a register write ir:0.B (B = 0..15)"),
    ('address = "ir:0"', 'address = "ir:0.3"', "devices[0].tags[0]: ir:0.3 is a single bit: type must be 'bool'"),
    ('address = "ir:0"', 'address = "coil:3"\nscale = 2.0',
     "devices[0].tags[0]: coil holds single bits: type must be 'bool'"),
    ('address = "ir:0"\ntype = "uint16"', 'address = "ir:0.1"\ntype = "bool"\nscale = 2.0',
     "devices[0].tags[0]: scale and offset apply to numbers, not to a bool"),
    ('type = "uint16"', 'type = "uint16"\neng_unit = "' + "x" * 40 + '"',
     "devices[0].tags[0].eng_unit: String should have at most 32 characters"),
    ('type = "uint16"', 'type = "uint16"\npoll_interval = "10us"',
     "devices[0].tags[0].poll_interval: 10us is too short"),
    ('type = "uint16"', 'type = "string"\nlength = 126', "devices[0].tags[0].length: Input should be less than"),
])
def test_config_errors_are_one_line(tmp_path, capsys, old: str, new: str, expected: str) -> None:
    assert old in MINIMAL
    path = tmp_path / "plant.toml"
    path.write_text(MINIMAL.replace(old, new, 1))
    rc = main(["check", "-c", str(path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == EX_CONFIG and len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: {expected}"), lines[0]


def test_full_featured_device_checks_and_prints_its_plan(tmp_path, capsys) -> None:
    path = tmp_path / "plant.toml"
    path.write_text(MINIMAL.replace('endpoint = "tcp://127.0.0.1:5020"',
                                    'endpoint = "rtu:///dev/ttyUSB0?baudrate=9600&parity=N&stopbits=2"') + """
[[devices.tags]]
name = "temp"
address = "30003"
type = "float32"
byte_order = "CDAB"
scale = 0.1
offset = -40
eng_unit = "°C"

[[devices.tags]]
name = "alarm"
address = "ir:5.7"
type = "bool"
poll_interval = "5s"

[[devices.tags]]
name = "serial_no"
address = "ir:10"
type = "string"
length = 8
""")
    assert main(["check", "--plan", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "fc=04 unit=2 ir:0..17 count=18 tags=current,temp,serial_no" in out
    assert "fc=04 unit=2 ir:5..5 count=1 every 5s tags=alarm" in out
