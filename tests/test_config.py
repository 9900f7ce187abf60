"""Config errors: every problem one line `FILE: key.path: message`, exit 78, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.config.loader import EX_CONFIG, load_config
from tests.conftest import EXAMPLE

MINIMAL = """
[agent]
id = "line1"
state_dir = "./state"

[filters.hot]
kind = "limits"
hi = 90.0

[[devices]]
name = "boiler"
protocol = "modbus"
endpoint = "tcp://127.0.0.1:5020"

[[devices.tags]]
name = "temp"
address = "hr:0"
type = "float32"
filters = ["hot"]

[[devices]]
name = "press"
protocol = "modbus"
endpoint = "tcp://127.0.0.1:5020"
unit = 2
poll_interval = "100ms"

[[devices.tags]]
name = "current"
address = "ir:0"
type = "uint16"

[[devices.tags]]
name = "count"
address = "ir:2"
type = "uint32"

[[devices.tags]]
name = "running"
address = "coil:0"
type = "bool"

[[devices.tags]]
name = "energy"
address = "ir:4"
type = "float64"
"""


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # error lines name the file as given: `-c plant.toml` -> "plant.toml: ..."


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    (tmp_path / "plant.toml").write_text(text)
    rc = main(["check", "-c", "plant.toml"])
    out, err = capsys.readouterr()
    return rc, [line for line in err.splitlines() if line], out


def test_example_config_is_valid_and_summarised(capsys):
    rc = main(["check", "-c", str(EXAMPLE)])
    out, err = capsys.readouterr()
    assert rc == 0 and err == ""
    assert "3, 16 tags, 5 requests per poll" in out
    assert "mqtt://127.0.0.1:1883 topic edge/plant-demo/data" in out
    assert "supply_temp (limits)" in out


def test_minimal_config_loads_with_defaults(tmp_path):
    path = tmp_path / "plant.toml"
    path.write_text(MINIMAL)
    cfg = load_config(path)
    assert [d.name for d in cfg.devices] == ["boiler", "press"]
    assert cfg.devices[0].poll_interval == 1_000_000_000
    assert cfg.devices[1].poll_interval == 100_000_000
    assert cfg.batch.max_interval == 1_000_000_000
    assert cfg.uplink.keepalive == 30_000_000_000


def test_check_plan_prints_requests(tmp_path, capsys):
    path = tmp_path / "plant.toml"
    path.write_text(MINIMAL)
    assert main(["check", "--plan", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "fc=04 unit=2 ir:0..7 count=8 tags=current,count,energy" in out
    assert "fc=01 unit=2 coil:0..0 count=1 tags=running" in out


def test_misspelled_type_names_the_full_path(tmp_path, capsys):
    rc, lines, _ = check(tmp_path, MINIMAL.replace('type = "float64"', 'type = "flot32"'), capsys)
    assert rc == EX_CONFIG
    assert len(lines) == 1
    assert lines[0].startswith("plant.toml: devices[1].tags[3].type: 'flot32' is not one of 'bool', 'int16'")


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path, capsys):
    rc, lines, _ = check(tmp_path, MINIMAL.replace('poll_interval = "100ms"', 'pol_interval = "100ms"'), capsys)
    assert rc == EX_CONFIG
    assert lines == ["plant.toml: devices[1].pol_interval: unknown key (did you mean 'poll_interval'?)"]


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    text = (
        MINIMAL.replace('id = "line1"', 'id = "line 1"')
        .replace('type = "float64"', 'type = "double"')
        .replace('poll_interval = "100ms"', 'poll_interval = 100')
        .replace('hi = 90.0', 'hi = 90.0\nhi_high = 95.0')
    )
    rc, lines, _ = check(tmp_path, text, capsys)
    assert rc == EX_CONFIG
    assert len(lines) == 4, lines
    joined = "\n".join(lines)
    assert "plant.toml: agent.id: 'line 1' is not a valid name" in joined
    assert "plant.toml: devices[1].tags[3].type: 'double' is not one of" in joined
    assert 'plant.toml: devices[1].poll_interval: expected a duration string such as "500ms"' in joined
    assert "plant.toml: filters.hot.hi_high: unknown key" in joined


def test_missing_file_is_one_line(tmp_path, capsys):
    rc = main(["check", "-c", str(tmp_path / "nope.toml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == EX_CONFIG
    assert err == [f"{tmp_path / 'nope.toml'}: cannot read config: No such file or directory"]


def test_toml_syntax_error_gives_line_and_column(tmp_path, capsys):
    rc, lines, _ = check(tmp_path, MINIMAL.replace('unit = 2', 'unit = = 2'), capsys)
    assert rc == EX_CONFIG
    assert len(lines) == 1
    assert lines[0].startswith("plant.toml: TOML syntax error:")
    line_no = MINIMAL.splitlines().index("unit = 2") + 1
    assert f"(at line {line_no}, column 8)" in lines[0]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('name = "count"', 'name = "current"',
         "plant.toml: devices[1].tags[1].name: duplicate tag name 'current' in device 'press' (also tags[0])"),
        ('name = "press"', 'name = "boiler"',
         "plant.toml: devices[1].name: duplicate device name 'boiler' (also devices[0])"),
        ('address = "ir:4"', 'address = "ir:65533"',
         "plant.toml: devices[1].tags[3]: float64 at ir:65533 needs registers 65533..65536, past the last address"),
        ('address = "ir:0"', 'address = "ir:70000"',
         "plant.toml: devices[1].tags[0].address: 'ir:70000': address out of range 0..65535"),
        ('address = "ir:0"', 'address = "40000"',
         "plant.toml: devices[1].tags[0].address: '40000' is not an address: Modicon numbers count from 1"),
        ('address = "coil:0"', 'address = "hr:9"',
         "plant.toml: devices[1].tags[2]: hr holds 16-bit registers"),
        ('filters = ["hot"]', 'filters = ["hott"]',
         "plant.toml: devices[0].tags[0].filters[0]: no filter named 'hott' (filters: 'hot')"),
        ('protocol = "modbus"\nendpoint = "tcp://127.0.0.1:5020"\nunit = 2', 'protocol = "profinet"\nunit = 2',
         "plant.toml: devices[1].protocol: 'profinet' is not one of 'modbus'"),
        ('endpoint = "tcp://127.0.0.1:5020"\nunit = 2', 'endpoint = "udp://127.0.0.1:5020"\nunit = 2',
         "plant.toml: devices[1].endpoint: 'udp://127.0.0.1:5020': use tcp://HOST:PORT"),
        ('poll_interval = "100ms"', 'poll_interval = "0s"',
         "plant.toml: devices[1].poll_interval: 0ns is too short: the minimum is 1ms"),
        ('poll_interval = "100ms"', 'poll_interval = "5 sec"',
         "plant.toml: devices[1].poll_interval: '5 sec' is not a"),
        ('hi = 90.0', 'lo = 95.0\nhi = 90.0', "plant.toml: filters.hot: lo (95.0) must be below hi (90.0)"),
        ('kind = "limits"', 'kind = "limit"', "plant.toml: filters.hot: 'limit' is not one of 'limits'"),
        ('[agent]\nid = "line1"\nstate_dir = "./state"', '', "plant.toml: agent: required key is missing"),
        ('unit = 2', 'unit = 300', "plant.toml: devices[1].unit: Input should be less than or equal to 255 (got 300)"),
        ('unit = 2', 'unit = "2"', "plant.toml: devices[1].unit: Input should be a valid integer (got '2')"),
        ('hi = 90.0', 'hi = nan', "plant.toml: filters.hot.hi: Input should be a finite number (got nan)"),
        ('hi = 90.0', 'hi = "90"', "plant.toml: filters.hot.hi: Input should be a valid number (got '90')"),
        ('hi = 90.0', 'hi = 90.0\nhii = 1', "plant.toml: filters.hot.hii: unknown key (did you mean 'hihi'?)"),
        ('filters = ["hot"]', 'filters = ["hot", "hot"]',
         "plant.toml: devices[0].tags[0].filters[1]: 'hot' is listed twice"),
        ('[[devices]]', '[filters.cold]\nkind = "limits"\nlo = 95.0\n\n[[devices]]', None),
        ('endpoint = "tcp://127.0.0.1:5020"\nunit = 2', 'endpoint = "tcp://127.0.0.1:0"\nunit = 2',
         "plant.toml: devices[1].endpoint: 'tcp://127.0.0.1:0': the port must be a number from 1 to 65535"),
        ('endpoint = "tcp://127.0.0.1:5020"\nunit = 2', 'endpoint = "tcp://127.0.0.1:5020/plc"\nunit = 2',
         "plant.toml: devices[1].endpoint: 'tcp://127.0.0.1:5020/plc': unexpected path or query"),
        ('state_dir = "./state"', 'state_dir = "./state"\n[uplink]\nurl = "mqtt://u:secret@127.0.0.1:1883"',
         "plant.toml: uplink.url: 'mqtt://u:secret@127.0.0.1:1883': credentials do not belong in the URL"),
        ('state_dir = "./state"', 'state_dir = "./state"\n[uplink]\nkeepalive = "1500ms"',
         "plant.toml: uplink.keepalive: 1500ms: must be a whole number of seconds"),
        ('state_dir = "./state"', 'state_dir = "./state"\n[uplink]\ntopic_prefix = "/a//b/"',
         "plant.toml: uplink.topic_prefix: '/a//b/' is not a topic prefix"),
        ('state_dir = "./state"', 'state_dir = ""', "plant.toml: agent.state_dir: "),
        ('poll_interval = "100ms"', 'poll_interval = "100us"',
         "plant.toml: devices[1].poll_interval: 100us is too short"),
        ('poll_interval = "100ms"', 'poll_interval = "2M"',
         "plant.toml: devices[1].poll_interval: '2M' is not a duration"),
        ('unit = 2', 'unit = 2\nmax_registers = 2',
         "plant.toml: devices[1]: tag 'energy' (float64) needs 4 registers in one read, more than max_registers = 2"),
    ],
)
def test_semantic_errors_are_one_clear_line(tmp_path, capsys, old, new, expected):
    assert old in MINIMAL
    text = MINIMAL.replace(old, new, 1)
    if expected is None:  # two limits filters on one tag that leave no valid range
        text = text.replace('filters = ["hot"]', 'filters = ["hot", "cold"]')
        expected = "plant.toml: devices[0].tags[0].filters: the limits filters combine to lo 95.0 >= hi 90.0"
    rc, lines, _ = check(tmp_path, text, capsys)
    assert rc == EX_CONFIG
    assert len(lines) == 1, lines
    assert lines[0].startswith(expected), lines[0]


def test_run_with_invalid_config_exits_78_without_traceback(tmp_path):
    path = tmp_path / "plant.toml"
    path.write_text(MINIMAL.replace('type = "float64"', 'type = "flot32"'))
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", "-c", "plant.toml"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=tmp_path,
    )
    assert proc.returncode == EX_CONFIG
    assert proc.stderr.strip().splitlines() == [
        "plant.toml: devices[1].tags[3].type: 'flot32' is not one of 'bool', 'int16', 'uint16', 'int32', "
        "'uint32', 'int64', 'uint64', 'float32', 'float64' or 'string'"
    ]
    assert proc.stdout == ""


def test_unwritable_state_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = tmp_path / "plant.toml"
    path.write_text(MINIMAL.replace('state_dir = "./state"', f'state_dir = "{blocker}/state"'))
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", "-c", "plant.toml"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=tmp_path,
    )
    assert proc.returncode == 73
    expected = f"plant.toml: agent.state_dir: cannot write {blocker}/state: Not a directory"
    assert proc.stderr.strip().splitlines() == [expected]


def test_version():
    proc = subprocess.run([sys.executable, "-m", "edge_agent.cli", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "edge-agent 0.1.0"
