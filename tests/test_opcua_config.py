"""OPC UA config: addresses and settings refused at load time with one line naming file, key and reason;
the StatusCode -> quality table checked against asyncua's own code names."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from asyncua import ua

from drivers.opcua.address import NS0, Namespace, parse_browse_path, parse_node_id
from drivers.opcua.quality import (
    QUALITY_UNCERTAIN_INACCURATE,
    QUALITY_UNCERTAIN_LAST_USABLE,
    QUALITY_UNCERTAIN_SUBSTITUTE,
    quality_of,
)
from edge_agent.config.loader import ConfigError, load_config
from edge_agent.samples import (
    QUALITY_BAD,
    QUALITY_BAD_COMM,
    QUALITY_BAD_CONFIG,
    QUALITY_BAD_DECODE,
    QUALITY_BAD_DEVICE,
    QUALITY_GOOD,
    QUALITY_UNCERTAIN,
)
from tests.conftest import ROOT

SAMPLE = ROOT / "drivers" / "opcua" / "sample.toml"

HEAD = """
[agent]
id = "gw"
state_dir = "./state"

[[devices]]
name = "plc"
protocol = "opcua"
endpoint = "opc.tcp://10.0.0.7:4840"
namespaces = { plant = "urn:plant" }
"""


def errors(tmp_path: Path, device_keys: str, tag: str = 'name = "t"\nnode = "ns=2;s=T"\n') -> list[str]:
    path = tmp_path / "c.toml"
    path.write_text(HEAD + device_keys + "\n[[devices.tags]]\n" + tag)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return [line.removeprefix(f"{path}: ") for line in exc.value.problems]


def test_node_ids_and_browse_paths_parse():
    assert parse_node_id("ns=2;s=Line1.Temp").identifier == "Line1.Temp"
    assert parse_node_id("i=2258").namespace == NS0 and parse_node_id("i=2258").identifier == 2258
    assert parse_node_id("nsu=urn:a:b;i=5").namespace == Namespace(uri="urn:a:b")
    assert parse_node_id("ns=plant;s=a;b=c").identifier == "a;b=c"  # the rest of a string id is the id
    g = parse_node_id("ns=3;g=09087e75-8e5e-499b-954f-f2a9603db28a")
    assert g.identifier == uuid.UUID("09087e75-8e5e-499b-954f-f2a9603db28a")
    assert parse_node_id("ns=1;b=AAEC").identifier == b"\x00\x01\x02"
    path = parse_browse_path("/Objects/2:Plant/plant:Temp")
    assert path.elements == ((NS0, "Objects"), (Namespace(index=2), "Plant"), (Namespace(alias="plant"), "Temp"))
    for bad in ("ns=2;x=1", "s=", "ns=99999;i=1", "i=-1", "i=4294967296", "ns=2;g=nope", "ns=2;b=%%", "Temp"):
        with pytest.raises(ValueError):
            parse_node_id(bad)
    for bad in ("Objects/2:Plant", "/", "/Objects//Temp", "/Objects/2:"):
        with pytest.raises(ValueError):
            parse_browse_path(bad)


def test_config_errors_are_one_line_each(tmp_path):
    assert errors(tmp_path, 'mode = "poll"', 'name = "t"\nnode = "ns=2;x=5"\n') == [
        "devices[0].tags[0].node: 'ns=2;x=5' is not a NodeId (use ns=2;s=Line1.Temp, ns=2;i=1001, "
        "nsu=urn:plant;s=Temp, ns=plant;g=<uuid>, ns=2;b=<base64> or i=2258)"]
    assert errors(tmp_path, "", 'name = "t"\nnode = "ns=2;s=T"\npath = "/Objects/2:T"\n') == [
        'devices[0].tags[0]: give exactly one of node (a NodeId such as "ns=2;s=Line1.Temp") or path '
        '(a browse path such as "/Objects/2:Plant/2:Temp")']
    assert errors(tmp_path, "", 'name = "t"\nnode = "ns=2;s=T"\ntype = "text"\n') == [
        "devices[0].tags[0].type: 'text' is not one of 'bool', 'int16', 'uint16', 'int32', 'uint32', "
        "'int64', 'uint64', 'float32', 'float64', 'string'"]
    assert errors(tmp_path, "", 'name = "t"\npath = "/Objects/site:T"\n') == [
        "devices[0]: tags[0] (t): namespace alias 'site' is not in namespaces (declared: plant)"]
    assert errors(tmp_path, 'endpoint = "tcp://10.0.0.7:4840"'.replace("endpoint", "timeout_ms")) == [
        "devices[0].timeout_ms: unknown key (did you mean 'timeout'?)"]
    assert errors(tmp_path, 'security_policy = "Basic256Sha256"') == [
        "devices[0]: security_policy 'Basic256Sha256' needs certificate, private_key, trust_dir "
        "(create a certificate with `edge-agent opcua-cert`)"]
    assert errors(tmp_path, 'security_policy = "Basic128Rsa15"')[0].startswith(
        "devices[0].security_policy: 'Basic128Rsa15' is not one of 'None', 'Basic256Sha256'")
    assert errors(tmp_path, 'security_mode = "Sign"') == [
        "devices[0]: security_mode 'Sign' needs a security_policy other than 'None'"]
    assert errors(tmp_path, 'username = "op"') == [
        "devices[0]: username needs password_file or password_env (the password is never in this file)"]
    assert errors(tmp_path, f'username = "op"\npassword_file = "{tmp_path}/nope"') == [
        f"devices[0].password_file: {tmp_path}/nope: no such file"]
    assert errors(tmp_path, 'deadband_type = "percent"\ndeadband = 150.0') == [
        "devices[0]: tags[0] (t): a percent deadband is 0..100, not 150"]
    assert errors(tmp_path, 'mode = "poll"', 'name = "t"\nnode = "ns=2;s=T"\nsampling_interval = "1s"\n') == [
        "devices[0]: tags[0] (t): sampling_interval, queue_size and deadband apply to subscribed tags, "
        "and this tag is polled"]
    assert errors(tmp_path, 'keepalive = 5') == [
        'devices[0].keepalive: expected a duration string such as "500ms", "5s" or "2m", got 5']


def test_endpoint_must_be_opc_tcp(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(HEAD.replace("opc.tcp://10.0.0.7:4840", "tcp://10.0.0.7:4840")
                    + '[[devices.tags]]\nname = "t"\nnode = "i=1"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.problems == [
        f"{path}: devices[0].endpoint: 'tcp://10.0.0.7:4840': use opc.tcp://HOST[:PORT][/PATH], port default 4840"]


def test_sample_config_loads_and_check_does_not_import_asyncua():
    cfg = load_config(SAMPLE)
    assert [d.protocol for d in cfg.devices] == ["opcua", "opcua"]
    code = ("import sys\nfrom edge_agent.cli import main\n"
            f"rc = main(['check', '-c', {str(SAMPLE)!r}, '--plan'])\n"
            "assert 'asyncua' not in sys.modules, 'check imported asyncua'\nraise SystemExit(rc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "subscribe: publishing every 500ms, 4 monitored items" in done.stdout
    assert "poll every 200ms: 4 nodes in 1 Read" in done.stdout
    assert "4 tags: 4 monitored items in 1 subscription (publishing every 500ms, sampling 100ms" in done.stdout


def test_check_says_what_a_subscribing_device_does_instead_of_zero_requests(tmp_path, capsys):
    from edge_agent.cli import main

    tags = "".join(f'[[devices.tags]]\nname = "t{i}"\nnode = "ns=plant;s=T{i}"\n' for i in range(3))
    polled = ('[[devices.tags]]\nname = "p0"\nnode = "ns=plant;s=P0"\nmode = "poll"\n'
              '[[devices.tags]]\nname = "p1"\nnode = "ns=plant;s=P1"\nmode = "poll"\n')
    banded = '[[devices.tags]]\nname = "b"\nnode = "ns=plant;s=B"\ndeadband_type = "percent"\ndeadband = 1.0\n'
    path = tmp_path / "c.toml"
    path.write_text(HEAD + 'poll_interval = "1s"\nsampling_interval = "100ms"\nmax_nodes_per_read = 1\n'
                    + tags + banded + polled)
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "devices  1, 6 tags, 2 requests per poll, 4 tags by subscription" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("plc "))
    assert line.endswith("opc.tcp://10.0.0.7:4840 6 tags: 4 monitored items in 1 subscription (publishing every 1s, "
                         "sampling 100ms, 1 with a deadband), 2 polled every 1s in 2 Reads per poll"), line
    assert "requests" not in line


@pytest.mark.parametrize(("name", "quality"), [
    ("Good", QUALITY_GOOD), ("GoodLocalOverride", QUALITY_GOOD),
    ("Uncertain", QUALITY_UNCERTAIN), ("UncertainLastUsableValue", QUALITY_UNCERTAIN_LAST_USABLE),
    ("UncertainNoCommunicationLastUsableValue", QUALITY_UNCERTAIN_LAST_USABLE),
    ("UncertainSensorNotAccurate", QUALITY_UNCERTAIN_INACCURATE),
    ("UncertainEngineeringUnitsExceeded", QUALITY_UNCERTAIN_INACCURATE),
    ("UncertainSensorCalibration", QUALITY_UNCERTAIN_INACCURATE),
    ("UncertainSubstituteValue", QUALITY_UNCERTAIN_SUBSTITUTE), ("UncertainInitialValue", QUALITY_UNCERTAIN_SUBSTITUTE),
    ("UncertainDominantValueChanged", QUALITY_UNCERTAIN),
    ("BadNoCommunication", QUALITY_BAD_COMM), ("BadTimeout", QUALITY_BAD_COMM),
    ("BadWaitingForInitialData", QUALITY_BAD_COMM), ("BadSessionIdInvalid", QUALITY_BAD_COMM),
    ("BadNodeIdUnknown", QUALITY_BAD_CONFIG), ("BadNoMatch", QUALITY_BAD_CONFIG),
    ("BadTypeMismatch", QUALITY_BAD_CONFIG), ("BadUserAccessDenied", QUALITY_BAD_CONFIG),
    ("BadDecodingError", QUALITY_BAD_DECODE),
    ("BadSensorFailure", QUALITY_BAD_DEVICE), ("BadDeviceFailure", QUALITY_BAD_DEVICE),
    ("BadOutOfService", QUALITY_BAD_DEVICE), ("Bad", QUALITY_BAD),
])
def test_status_code_to_quality(name, quality):
    code = getattr(ua.StatusCodes, name)
    assert quality_of(code) == quality
    assert quality_of(code | 0x0400) == quality, "info bits do not change the meaning"


def test_string_tags_are_carried_but_take_no_filters():
    from drivers.opcua.config import OpcUaTag

    assert OpcUaTag(name="recipe", node="ns=2;s=Recipe", type="string").type == "string"
    with pytest.raises(ValueError, match="a string tag cannot have filters"):
        OpcUaTag(name="recipe", node="ns=2;s=Recipe", type="string", filters=["lim"])
    with pytest.raises(ValueError, match="a deadband applies to numbers"):
        OpcUaTag(name="recipe", node="ns=2;s=Recipe", type="string", deadband_type="absolute", deadband=1.0)
