"""`edge-agent tail`: subscribe, decode frames, print one JSON object per sample.

It is the reference consumer: what a cloud team's decoder must produce, in a form an engineer can
pipe into jq. Per-sample Python objects are fine here: this is a debugging tool, not the hot path.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import Iterator
from typing import TextIO
from urllib.parse import urlsplit

import aiomqtt

from edge_agent.dedupe import Deduper
from edge_agent.frame.codec import FrameError, decode_frame
from edge_agent.frame.model import Frame

_INT_TYPES = {"int16", "uint16", "int32", "uint32", "int64", "uint64"}


def frame_samples(frame: Frame) -> Iterator[dict[str, object]]:
    """Every sample of a frame as a dict with the keys tail prints."""
    boot = frame.boot.hex()
    for block in frame.blocks:
        ts = block.ts.tolist()
        for j, (tag, type_name) in enumerate(zip(block.tags, block.types, strict=True)):
            text = block.text.get(j)
            if text is not None:  # a string tag: its text, None where the sample is missing
                values = text.tolist()
            else:
                values = [_present(v, type_name) for v in block.values[:, j].tolist()]
            quality = block.quality[:, j].tolist()
            flags = block.flags[:, j].tolist()
            # "status" (the protocol's own code) only when the block carries one: most frames do not.
            status = block.status[:, j].tolist() if block.status is not None else None
            for i in range(len(ts)):
                sample = {
                    "agent": frame.agent, "boot": boot, "seq": frame.seq, "device": block.device, "tag": tag,
                    "ts": ts[i], "value": values[i], "quality": quality[i], "flags": flags[i],
                }
                if status is not None:
                    sample["status"] = status[i]
                yield sample


def _present(v: float, type_name: str) -> object:
    if math.isnan(v) or math.isinf(v):
        return None  # JSON has no NaN; quality says why the value is missing
    if type_name == "bool":
        return bool(v)
    if type_name in _INT_TYPES:
        return int(v)
    return v


def units_of(meta: dict) -> dict[tuple[str, str], str]:
    """(device, tag) -> eng_unit from a metadata message (docs/metadata.md); tags without one left out."""
    units = {}
    for dev in meta.get("devices", []):
        for tag in dev.get("tags", []):
            if tag.get("eng_unit"):
                units[(dev["name"], tag["name"])] = tag["eng_unit"]
    return units


def _unit(units: dict[tuple[str, str], str], device: str, tag: str) -> str | None:
    got = units.get((device, tag))
    if got is None and "@" in tag:  # an adaptive-reporting aggregate: TAG@min etc. are in TAG's unit
        base, _, agg = tag.rpartition("@")
        got = None if agg == "count" else units.get((device, base))
    return got


async def tail(url: str, topic: str, count: int | None, dedupe: bool = False, out: TextIO = sys.stdout,
               units: bool = False) -> int:
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        print(f"edge-agent tail: --broker {url!r}: use mqtt://HOST:PORT", file=sys.stderr)
        return 2
    printed = 0
    deduper = Deduper() if dedupe else None
    unit_maps: dict[str, dict[tuple[str, str], str]] = {}  # agent -> its latest metadata's units
    async with aiomqtt.Client(parts.hostname, parts.port or 1883) as client:
        if units:  # the retained metadata arrives first, so even the first samples get their units
            await client.subscribe(topic.rsplit("/", 1)[0] + "/meta", qos=1)
        await client.subscribe(topic, qos=1)
        async for message in client.messages:
            payload = bytes(message.payload)  # type: ignore[arg-type]
            name = message.topic.value
            if units and name.endswith("/meta"):
                try:
                    meta = json.loads(payload)
                    unit_maps[str(meta["agent"])] = units_of(meta)
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    print(f"edge-agent tail: {name}: not a metadata message ({exc})", file=sys.stderr)
                if not topic.endswith("/meta") and "#" not in topic:
                    continue
            if not name.endswith("/data"):  # events, status and metadata are JSON already
                out.write(payload.decode(errors="replace") + "\n")
                out.flush()
                continue
            try:
                frame = decode_frame(payload)
            except FrameError as exc:
                print(f"edge-agent tail: {message.topic}: not a frame ({exc})", file=sys.stderr)
                continue
            if deduper is not None and not deduper.first_time(frame.agent, frame.seq):
                print(f"edge-agent tail: duplicate frame {frame.agent}/{frame.seq} skipped", file=sys.stderr)
                continue
            agent_units = unit_maps.get(frame.agent, {})
            for sample in frame_samples(frame):
                if agent_units:
                    unit = _unit(agent_units, str(sample["device"]), str(sample["tag"]))
                    if unit:
                        sample["unit"] = unit
                out.write(json.dumps(sample, separators=(",", ":")) + "\n")
                printed += 1
                if count is not None and printed >= count:
                    out.flush()
                    return 0
            out.flush()
    return 0


def run_tail(url: str, topic: str, count: int | None, dedupe: bool = False, units: bool = False) -> int:
    try:
        return asyncio.run(tail(url, topic, count, dedupe, units=units))
    except aiomqtt.MqttError as exc:
        print(f"edge-agent tail: {url}: {exc}", file=sys.stderr)
        return 69  # EX_UNAVAILABLE
