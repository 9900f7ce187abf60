"""Modbus device and tag config: validated at load time so the poll loop never meets a bad address."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from drivers.modbus.address import TABLES, parse_address
from drivers.modbus.types import REGISTER_WIDTH, TYPES
from edge_agent.config.models import DeviceBase, TagBase
from edge_agent.config.units import MillisDuration, PositiveDuration
from edge_agent.config.urls import check_endpoint

ModbusType = Literal["bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]


class ModbusTag(TagBase):
    address: str
    type: ModbusType

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        parse_address(v)  # raises ValueError with the reason
        return v

    @model_validator(mode="after")
    def _fits(self) -> ModbusTag:
        table, index = parse_address(self.address)
        if TABLES[table].bits:
            if self.type != "bool":
                raise ValueError(f"{table} holds single bits: type must be 'bool', not {self.type!r}")
        else:
            if self.type == "bool":
                raise ValueError(f"{table} holds 16-bit registers: use a numeric type, or a coil/di for a bit")
            last = index + REGISTER_WIDTH[self.type] - 1
            if last > 0xFFFF:
                raise ValueError(
                    f"{self.type} at {self.address} needs registers {index}..{last}, past the last address 65535"
                )
        return self


class ModbusDevice(DeviceBase):
    protocol: Literal["modbus"]
    endpoint: str
    unit: Annotated[int, Field(ge=0, le=255)] = 1
    timeout: MillisDuration = Field(default="1s", validate_default=True)
    reconnect_min: PositiveDuration = Field(default="200ms", validate_default=True)
    reconnect_max: PositiveDuration = Field(default="30s", validate_default=True)
    max_gap: Annotated[int, Field(ge=0, le=2000)] = 16
    max_registers: Annotated[int, Field(ge=1, le=125)] = 125
    max_bits: Annotated[int, Field(ge=1, le=2000)] = 2000
    tags: list[ModbusTag] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return check_endpoint(v, ("tcp",), "tcp://HOST:PORT (rtu:// and rtu+tcp:// come with the full Modbus driver)")

    @model_validator(mode="after")
    def _consistent(self) -> ModbusDevice:
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("reconnect_min must not exceed reconnect_max")
        for tag in self.tags:
            if REGISTER_WIDTH.get(tag.type, 1) > self.max_registers:
                raise ValueError(
                    f"tag {tag.name!r} ({tag.type}) needs {REGISTER_WIDTH[tag.type]} registers in one read, "
                    f"more than max_registers = {self.max_registers}"
                )
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.endpoint).port or 502


assert set(TYPES) >= set(ModbusType.__args__)  # type: ignore[attr-defined]
