"""Which devices share a connection: one bus per serial port or RTU converter, one per TCP device.

RTU has no transaction ids, so two connections to one converter (or two opens of one port) would
interleave frames on the line; every device on such an endpoint goes through one `RtuBus`, whose one
task serialises the requests. Modbus TCP devices each get their own connection, so a slow PLC behind
one socket never queues the requests of another.
"""

from __future__ import annotations

import asyncio

from drivers.modbus.client import Bus, RtuBus, TcpBus
from drivers.modbus.config import ModbusDevice

# (event loop, bus key) -> [bus, users]; per loop because tests run many loops in one process.
_SHARED: dict[tuple[int, str], list] = {}


def acquire_bus(device: ModbusDevice) -> Bus:
    endpoint = device.parsed_endpoint
    delay_s = device.connect_delay / 1e9
    if not endpoint.rtu:
        bus: Bus = TcpBus(endpoint)
        bus.connect_delay_s = delay_s
        return bus
    key = (id(asyncio.get_running_loop()), endpoint.bus_key)
    entry = _SHARED.get(key)
    if entry is None:
        entry = _SHARED[key] = [RtuBus(endpoint), 0]
    entry[1] += 1
    bus = entry[0]
    # Shared: a device that needs a pause after connecting gets it, and so do its neighbours.
    bus.connect_delay_s = max(bus.connect_delay_s, delay_s)
    return bus


def release_bus(device: ModbusDevice, bus: Bus) -> None:
    if isinstance(bus, RtuBus):
        key = next((k for k, v in _SHARED.items() if v[0] is bus), None)
        if key is not None:
            _SHARED[key][1] -= 1
            if _SHARED[key][1] > 0:
                return
            del _SHARED[key]
        bus.shutdown()
    else:
        bus.close("device stopped")
