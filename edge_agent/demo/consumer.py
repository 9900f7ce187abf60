"""The demo's cloud side: subscribes, decodes frames, dedupes by (agent, seq), counts what arrived."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field

import aiomqtt
import numpy as np

from edge_agent.dedupe import Deduper
from edge_agent.filters import flags as flag_bits
from edge_agent.frame.codec import FrameError, decode_frame


@dataclass
class Anomaly:
    ts: int
    device: str
    tag: str
    filters: str
    value: float


@dataclass
class Consumer:
    host: str
    port: int
    topic_prefix: str = "edge"
    frames: int = 0
    bytes: int = 0
    points: int = 0
    points_by_device: dict[str, int] = field(default_factory=dict)
    flagged: int = 0
    anomalies: deque[Anomaly] = field(default_factory=lambda: deque(maxlen=8))
    flagged_samples: list[tuple[str, str, int]] = field(default_factory=list)  # (device, tag, ts), for scoring
    events: list[dict] = field(default_factory=list)
    duplicates: int = 0
    bad: int = 0  # samples whose quality says bad (a fault at the PLC), counted, never dropped
    connected: bool = False
    deduper: Deduper = field(default_factory=Deduper)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set on every frame

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier="edge-agent-demo-consumer",
                                          protocol=aiomqtt.ProtocolVersion.V311, clean_session=False) as client:
                    await client.subscribe(f"{self.topic_prefix}/+/data", qos=1)
                    await client.subscribe(f"{self.topic_prefix}/+/events", qos=1)
                    self.connected = True
                    async for message in client.messages:
                        self._on(message.topic.value, bytes(message.payload))  # type: ignore[arg-type]
            except aiomqtt.MqttError:
                self.connected = False
                await asyncio.sleep(0.5)

    def _on(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/events"):
            self.events.append(json.loads(payload))
            return
        try:
            frame = decode_frame(payload)
        except FrameError:
            return
        if not self.deduper.first_time(frame.agent, frame.seq):
            self.duplicates += 1
            return
        self.frames += 1
        self.bytes += len(payload)
        self.arrived.set()
        for b in frame.blocks:
            self.points += b.points
            self.bad += int((b.quality >= 0x80).sum())
            self.points_by_device[b.device] = self.points_by_device.get(b.device, 0) + b.points
            fired = b.flags != 0
            if fired.any():
                self.flagged += int(fired.sum())
                for i, j in zip(*np.nonzero(fired), strict=True):
                    names = [n for n, bit in _FLAG_NAMES if b.flags[i, j] & bit]
                    self.anomalies.append(Anomaly(int(b.ts[i]), b.device, b.tags[j], ",".join(names) or "?",
                                                  float(b.values[i, j])))
                    if len(self.flagged_samples) < 1_000_000:
                        self.flagged_samples.append((b.device, b.tags[j], int(b.ts[i])))


_FLAG_NAMES = [(name.lower(), bit) for name, bit in vars(flag_bits).items()
               if name.isupper() and isinstance(bit, int) and bit and not bit & (bit - 1)]
