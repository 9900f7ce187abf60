"""Modbus TCP side of the plant simulator."""

from simulators.modbus.server import ModbusSimServer

__all__ = ["ModbusSimServer"]
