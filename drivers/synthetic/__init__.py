"""Synthetic driver: a load source with values a consumer can verify, for chaos tests and benchmarks.

Each tag's value at a tick is the absolute tick number (unix time // poll_interval), stamped at the
tick's exact time. Ticks are on the wall-clock grid, so they stay unique across agent restarts: a
consumer proves "every sample exactly once, in order per tag" by checking that each tag's values
are consecutive integers, with holes only where the agent counted skipped ticks.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from drivers.api import DeviceSummary, DriverStats, SampleSink
from edge_agent.config.models import DeviceBase
from edge_agent.samples import QUALITY_GOOD, Batch


class SyntheticDevice(DeviceBase):
    protocol: Literal["synthetic"]


class SyntheticDriver:
    def __init__(self, device: SyntheticDevice, sink: SampleSink):
        self.device = device
        self.sink = sink
        self.stats = DriverStats(connected=True)
        self._k = len(device.tags)

    async def run(self) -> None:
        period = self.device.poll_interval
        tick = time.time_ns() // period + 1
        while True:
            delay = (tick * period - time.time_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            now_tick = time.time_ns() // period
            if now_tick > tick:  # overrun: skip, never burst
                self.stats.skipped_ticks += now_tick - tick
                tick = now_tick
            if not getattr(self.sink, "accepting", True):
                self.stats.skipped_ticks += 1
            else:
                b = Batch.empty(self.device.name, 1, self._k)
                b.ts[0] = tick * period
                b.values[0] = float(tick)
                b.quality[0] = QUALITY_GOOD
                self.stats.polls += 1
                self.sink(b)
            tick += 1


class SyntheticPlugin:
    name = "synthetic"
    device_model = SyntheticDevice

    def create(self, device: DeviceBase, sink: SampleSink) -> SyntheticDriver:
        assert isinstance(device, SyntheticDevice)
        return SyntheticDriver(device, sink)

    def describe(self, device: DeviceBase) -> DeviceSummary:
        return DeviceSummary(0, ("values are the absolute tick number; no requests",))

    def tag_types(self, device: DeviceBase) -> tuple[str, ...]:
        return ("float64",) * len(device.tags)


PLUGIN = SyntheticPlugin()
