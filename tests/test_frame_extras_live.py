"""Strings, StatusCodes and metadata end to end, with real processes: both simulators serving
simulators/profiles/line.toml -> agent (Modbus and OPC UA devices) -> mosquitto -> consumer and
`edge-agent tail --units`; then a SIGHUP reload re-publishes the retained metadata."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import numpy as np

from edge_agent.config.loader import load_config
from edge_agent.frame.model import Frame
from simulators.opcua.server import NAMESPACE_URI, status_code
from simulators.plant import DEFAULT_TICK_NS, load_profile, text_of, value_at_tick
from tests.conftest import agent_cmd, wait_for
from tests.mqtt_consumer import Consumer
from tests.test_end_to_end import frames_by_seq

SEED = 7
PROFILE = Path(__file__).parents[1] / "simulators" / "profiles" / "line.toml"
POINTS = {p.name: p for p in load_profile(PROFILE)}
MAX_LATENCY_NS = 300_000_000
BAD = status_code("BadSensorFailure")
UNCERTAIN = status_code("UncertainSensorNotAccurate")


def start(procs, tmp_path: Path, kind: str, *extra: str) -> int:
    ready = tmp_path / f"{kind}.port"
    proc = procs([sys.executable, "-m", "simulators.cli", kind, "--port", "0", "--seed", str(SEED),
                  "--profile", str(PROFILE), "--ready-file", str(ready), *extra], f"{kind}-sim")
    wait_for(lambda: (ready.exists() and ready.read_text().strip()) or not proc.alive(), 30, f"the {kind} simulator")
    assert proc.alive(), proc.stderr()
    return int(ready.read_text())


def config(tmp_path: Path, broker: int, modbus: int, opcua: int, level_unit: str = "m") -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[agent]
id = "extras"
state_dir = "{tmp_path / 'state'}"

[uplink]
url = "mqtt://127.0.0.1:{broker}"
topic_prefix = "edge"

[batch]
max_interval = "500ms"

[[devices]]
name = "tank"
protocol = "modbus"
endpoint = "tcp://127.0.0.1:{modbus}"
unit = 4
poll_interval = "200ms"
timeout = "500ms"

[[devices.tags]]
name = "level"
address = "hr:0"
type = "float32"
eng_unit = "{level_unit}"

[[devices.tags]]
name = "recipe"
address = "hr:10"
type = "string"
length = 4

[[devices.tags]]
name = "missing"
address = "hr:300"
type = "uint16"

[[devices]]
name = "line"
protocol = "opcua"
endpoint = "opc.tcp://127.0.0.1:{opcua}/edge-agent/plant"
namespaces = {{ plant = "{NAMESPACE_URI}" }}
poll_interval = "200ms"

[[devices.tags]]
name = "recipe"
node = "ns=plant;s=tank.recipe"
type = "string"

[[devices.tags]]
name = "recipe_polled"
node = "ns=plant;s=tank.recipe"
type = "string"
mode = "poll"

[[devices.tags]]
name = "level"
node = "ns=plant;s=tank.level"
type = "float32"
mode = "poll"

[[devices.tags]]
name = "inlet_temp"
node = "ns=plant;s=tank.inlet_temp"
type = "int16"
""")
    return path


def columns(frames: dict[int, Frame], device: str, tag: str) -> dict[str, list]:
    """Every sample of one tag across frames: ts, text, quality, status, flags, value."""
    out: dict[str, list] = {"ts": [], "text": [], "quality": [], "status": [], "flags": [], "value": []}
    for f in frames.values():
        for b in f.blocks:
            if b.device != device or tag not in b.tags:
                continue
            j = b.tags.index(tag)
            n = b.ts.shape[0]
            out["ts"] += b.ts.tolist()
            out["text"] += b.text[j].tolist() if j in b.text else [None] * n
            out["quality"] += b.quality[:, j].tolist()
            out["status"] += b.status[:, j].tolist() if b.status is not None else [0] * n
            out["flags"] += b.flags[:, j].tolist()
            out["value"] += b.values[:, j].tolist()
    return out


def latest(consumer: Consumer, topic: str) -> dict | None:
    got = consumer.on(topic)
    return json.loads(got[-1]) if got else None


def test_strings_status_and_metadata_through_mosquitto(procs, broker, tmp_path):
    modbus = start(procs, tmp_path, "modbus")
    opcua = start(procs, tmp_path, "opcua", "--bad-status", "tank.level=BadSensorFailure",
                  "--bad-status", "tank.inlet_temp=UncertainSensorNotAccurate")
    path = config(tmp_path, broker, modbus, opcua)
    consumer = Consumer(broker, topic="edge/extras/data,edge/extras/meta,edge/extras/status")
    tail = procs([sys.executable, "-m", "edge_agent.cli", "tail", "--broker", f"mqtt://127.0.0.1:{broker}",
                  "--units", "--count", "300"], "tail")
    try:
        agent = procs(agent_cmd(path), "agent")

        def enough() -> bool:
            frames = frames_by_seq(consumer.received())
            return (len([t for t in columns(frames, "line", "recipe_polled")["text"] if t]) >= 5
                    and len([t for t in columns(frames, "tank", "recipe")["text"] if t]) >= 5)

        wait_for(lambda: enough() or not agent.alive(), 60, "string samples of both devices at the consumer")
        assert agent.alive(), agent.stderr()
        frames = frames_by_seq(consumer.received())
        recipe = POINTS["recipe"]

        # Modbus: the text the simulator served when the request arrived; NaN numeric column, no flags.
        mb = columns(frames, "tank", "recipe")
        for ts, text, q in zip(mb["ts"], mb["text"], mb["quality"], strict=True):
            assert q == 0 and text is not None
            ticks = range(ts // DEFAULT_TICK_NS, (ts - MAX_LATENCY_NS) // DEFAULT_TICK_NS - 1, -1)
            assert text in {text_of(recipe, value_at_tick(recipe, k, SEED)) for k in ticks}, (ts, text)
        assert all(np.isnan(mb["value"])) and set(mb["flags"]) == {0} and set(mb["status"]) == {0}
        # An address the device does not have: exception 2 kept as the status, quality 0x83.
        missing = columns(frames, "tank", "missing")
        assert missing["ts"] and set(missing["status"]) == {2} and set(missing["quality"]) == {0x83}
        assert set(columns(frames, "tank", "level")["status"]) == {0}

        # OPC UA: source timestamps are the simulator's ticks, so the text is exactly predictable.
        for tag in ("recipe", "recipe_polled"):
            ua = columns(frames, "line", tag)
            assert ua["ts"], tag
            for ts, text, q in zip(ua["ts"], ua["text"], ua["quality"], strict=True):
                assert q == 0 and text == text_of(recipe, value_at_tick(recipe, ts // DEFAULT_TICK_NS, SEED)), (tag, ts)
        level = columns(frames, "line", "level")
        assert set(level["status"]) == {BAD} and set(level["quality"]) == {0x82} and all(np.isnan(level["value"]))
        inlet = columns(frames, "line", "inlet_temp")
        assert set(inlet["status"]) == {UNCERTAIN} and set(inlet["quality"]) == {0x42}
        assert not any(np.isnan(inlet["value"]))  # uncertain values are kept, with their code

        # The retained metadata, keyed by the birth's config digest.
        digest = load_config(path).digest[:16]
        wait_for(lambda: latest(consumer, "edge/extras/meta"), 10, "the metadata message")
        meta, birth = latest(consumer, "edge/extras/meta"), latest(consumer, "edge/extras/status")
        assert meta["config"] == birth["config"] == digest and meta["boot"] == birth["boot"]
        devices = {d["name"]: d for d in meta["devices"]}
        assert devices["tank"]["protocol"] == "modbus" and devices["line"]["protocol"] == "opcua"
        assert devices["tank"]["tags"] == [{"name": "level", "type": "float32", "eng_unit": "m"},
                                           {"name": "recipe", "type": "string"},
                                           {"name": "missing", "type": "uint16"}]
        assert [t["name"] for t in devices["line"]["tags"]] == ["recipe", "recipe_polled", "level", "inlet_temp"]

        # `tail --units`: strings as values, status where a block carries one, units from the metadata.
        assert tail.popen.wait(30) == 0, tail.stderr()
        lines = [json.loads(x) for x in tail.stdout().splitlines()]
        assert len(lines) == 300
        by = {}
        for x in lines:
            by.setdefault((x["device"], x["tag"]), []).append(x)
        assert all(type(x["value"]) is str for x in by[("tank", "recipe")])
        assert all(x["unit"] == "m" for x in by[("tank", "level")])
        assert all(x["status"] == 2 and x["value"] is None for x in by[("tank", "missing")])
        assert all(x["status"] == BAD for x in by.get(("line", "level"), []))
        assert all("unit" not in x for x in by[("tank", "recipe")])

        # A reload re-publishes the metadata (new unit, new digest) and a birth naming the same digest.
        config(tmp_path, broker, modbus, opcua, level_unit="cm")
        agent.popen.send_signal(signal.SIGHUP)
        new_digest = load_config(path).digest[:16]
        wait_for(lambda: (latest(consumer, "edge/extras/meta") or {}).get("config") == new_digest
                 or not agent.alive(), 20, "the metadata after the reload")
        wait_for(lambda: latest(consumer, "edge/extras/status")["config"] == new_digest, 10,
                 "the birth after the reload")
        meta = latest(consumer, "edge/extras/meta")
        assert {d["name"]: d for d in meta["devices"]}["tank"]["tags"][0]["eng_unit"] == "cm"

        # Retained: a consumer that subscribes later gets the current metadata at once.
        late = Consumer(broker, topic="edge/extras/meta", client_id="late-consumer")
        try:
            wait_for(lambda: late.on("edge/extras/meta"), 10, "the retained metadata")
            assert json.loads(late.on("edge/extras/meta")[-1])["config"] == new_digest
        finally:
            late.close()
        rc, _ = agent.terminate()
        assert rc == 0, agent.stderr()
        assert "Traceback" not in agent.stderr(), agent.stderr()
    finally:
        consumer.close()
