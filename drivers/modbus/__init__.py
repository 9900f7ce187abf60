"""Modbus driver plugin: Modbus TCP, RTU over serial lines and RTU over TCP (serial converters)."""

from __future__ import annotations

from drivers.api import DeviceSummary, SampleSink
from drivers.modbus.config import ModbusDevice
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.plan import plan_device
from edge_agent.config.models import DeviceBase


class ModbusPlugin:
    name = "modbus"
    device_model = ModbusDevice

    def create(self, device: DeviceBase, sink: SampleSink) -> ModbusDriver:
        assert isinstance(device, ModbusDevice)
        return ModbusDriver(device, sink)

    def describe(self, device: DeviceBase) -> DeviceSummary:
        assert isinstance(device, ModbusDevice)
        plan = plan_device(device)
        return DeviceSummary(len(plan), tuple(r.describe() for r in plan))

    def tag_types(self, device: DeviceBase) -> tuple[str, ...]:
        assert isinstance(device, ModbusDevice)
        return tuple(t.type for t in device.tags)

    def tag_units(self, device: DeviceBase) -> tuple[str, ...]:
        """Engineering unit of each tag in config order ("" when none), for the agent's retained
        metadata message (edge_agent/metadata.py, docs/metadata.md). An optional plugin hook: a plugin
        without it gets each tag's `eng_unit` attribute, or none."""
        assert isinstance(device, ModbusDevice)
        return tuple(t.eng_unit for t in device.tags)


PLUGIN = ModbusPlugin()
