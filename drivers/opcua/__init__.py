"""OPC UA driver plugin: subscriptions and batched reads, security, recovery from server restarts.

Importing this module does not import asyncua (config checks and `edge-agent check` stay fast); the
driver and its session module are imported when a device is created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.api import DeviceSummary, SampleSink
from drivers.opcua.config import OpcUaDevice
from edge_agent.config.models import DeviceBase
from edge_agent.config.units import format_duration

if TYPE_CHECKING:
    from drivers.opcua.driver import OpcUaDriver


class OpcUaPlugin:
    name = "opcua"
    device_model = OpcUaDevice

    def create(self, device: DeviceBase, sink: SampleSink) -> OpcUaDriver:
        from drivers.opcua.driver import OpcUaDriver

        assert isinstance(device, OpcUaDevice)
        return OpcUaDriver(device, sink)

    def describe(self, device: DeviceBase) -> DeviceSummary:
        assert isinstance(device, OpcUaDevice)
        modes = device.mode_of
        polled = [t for t, m in zip(device.tags, modes, strict=True) if m == "poll"]
        subscribed = [t for t, m in zip(device.tags, modes, strict=True) if m == "subscribe"]
        limit = device.max_nodes_per_read
        # The server's MaxNodesPerRead is only known once connected; the count assumes no smaller limit.
        reads = (-(-len(polled) // limit) if limit else 1) if polled else 0
        plan = []
        security = device.security_policy if device.security_policy == "None" else (
            f"{device.security_policy}/{device.security_mode or 'SignAndEncrypt'}")
        plan.append(f"security {security}" + (f", user {device.username}" if device.username else ""))
        if polled:
            plan.append(f"poll every {format_duration(device.poll_interval)}: {len(polled)} nodes in {reads} Read"
                        + (f" (at most {limit} nodes each)" if limit else ""))
        if subscribed:
            plan.append(f"subscribe: publishing every {format_duration(device.publishing_interval_ns)}, "
                        f"{len(subscribed)} monitored items")
            for tag in subscribed:
                band_type, band = device.deadband_of(tag)
                sampling = format_duration(device.sampling_interval_ns(tag))
                plan.append(f"  {tag.name} {tag.address_text} sampling {sampling}"
                            f" queue {device.queue_size_of(tag)}"
                            + (f" deadband {band_type} {band:g}" if band_type != "none" else ""))
        for tag in polled:
            plan.append(f"  {tag.name} {tag.address_text} (polled)")
        parts = []
        if subscribed:
            samplings = sorted({device.sampling_interval_ns(t) for t in subscribed})
            sampling = "/".join(format_duration(x) for x in samplings)
            banded = sum(1 for t in subscribed if device.deadband_of(t)[0] != "none")
            parts.append(f"{len(subscribed)} monitored items in 1 subscription (publishing every "
                         f"{format_duration(device.publishing_interval_ns)}, sampling {sampling}"
                         + (f", {banded} with a deadband" if banded else "") + ")")
        if polled:
            parts.append(f"{len(polled)} polled every {format_duration(device.poll_interval)} in {reads} Read"
                         + ("s" if reads != 1 else "") + " per poll")
        headline = f"{len(device.tags)} tags: " + ", ".join(parts)
        return DeviceSummary(reads, tuple(plan), subscribed=len(subscribed), headline=headline)

    def tag_types(self, device: DeviceBase) -> tuple[str, ...]:
        assert isinstance(device, OpcUaDevice)
        return tuple(t.type for t in device.tags)


PLUGIN = OpcUaPlugin()
