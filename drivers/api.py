"""The one small interface between the agent and a protocol driver.

A driver knows its protocol only. The agent never imports a protocol library; it finds drivers
through the `edge_agent.drivers` entry point group, so a new protocol is a new folder under
drivers/ plus one entry point, and nothing else changes.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from edge_agent.config.models import DeviceBase
from edge_agent.samples import Batch


@runtime_checkable
class SampleSink(Protocol):
    """Where a driver hands each completed poll.

    Calling it runs the filter engine and the batcher inline, so it is cheap (vectorised numpy and
    numba only) and never blocks on I/O. `accepting` turns False when the spool is full under the
    `block` policy: a poll-based driver then skips its ticks (and counts them in skipped_ticks)
    instead of reading data that has nowhere to go.
    """

    accepting: bool

    def __call__(self, batch: Batch) -> None: ...


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class DriverStats:
    """Counters a driver keeps; metrics and STATUS= read them, the driver never resets them."""

    polls: int = 0
    poll_errors: int = 0
    skipped_ticks: int = 0
    connects: int = 0
    connected: bool = False
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    # Poll latency (start of a poll to its last answer) as a cumulative-ready histogram.
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def error(self, kind: str) -> None:
        self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + 1

    def observe_latency(self, seconds: float) -> None:
        i = bisect.bisect_left(LATENCY_BUCKETS, seconds)  # first bucket with seconds <= bound
        self.latency_counts[i] += 1
        self.latency_sum += seconds


@runtime_checkable
class Driver(Protocol):
    stats: DriverStats

    async def run(self) -> None:
        """Poll until cancelled. Device faults are handled (logged, counted, retried) inside."""
        ...


@dataclass(frozen=True)
class DeviceSummary:
    """What `edge-agent check` prints for a device: requests per poll and the plan lines.

    A device whose data is pushed (OPC UA subscriptions) makes no requests per poll, and "12 tags in 0
    requests" would mislead: `subscribed` counts the tags the device delivers by itself, and
    `headline`, when given, replaces "every <poll_interval>: N tags in M requests" on the device line.
    """

    requests_per_poll: int
    plan: tuple[str, ...] = ()
    subscribed: int = 0
    headline: str = ""


class DriverPlugin(Protocol):
    name: str
    device_model: type[DeviceBase]

    def create(self, device: DeviceBase, sink: SampleSink) -> Driver: ...

    def describe(self, device: DeviceBase) -> DeviceSummary: ...

    def tag_types(self, device: DeviceBase) -> tuple[str, ...]:
        """Declared value type of each tag in config order (frame metadata for consumers)."""
        ...
