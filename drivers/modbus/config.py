"""Modbus device and tag config: validated at load time so the poll loop never meets a bad address."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from drivers.modbus.address import TABLES, Address, parse_address
from drivers.modbus.endpoint import Endpoint, parse_endpoint
from drivers.modbus.types import BYTE_ORDERS, REGISTER_WIDTH, TYPES, width
from edge_agent.config.models import DeviceBase, TagBase
from edge_agent.config.units import Duration, MillisDuration, PositiveDuration

ModbusType = Literal[
    "bool", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "string"
]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class ModbusTag(TagBase):
    address: str
    type: ModbusType
    length: Annotated[int, Field(ge=1, le=125)] | None = None  # string: registers (2 characters each)
    byte_order: ByteOrder | None = None  # default: the device's
    scale: Finite = 1.0
    offset: Finite = 0.0
    eng_unit: Annotated[str, Field(max_length=32)] = ""
    poll_interval: MillisDuration | None = None  # default: the device's

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        parse_address(v)  # raises ValueError with the reason
        return v

    @property
    def parsed(self) -> Address:
        return parse_address(self.address)

    @property
    def registers(self) -> int:
        """Items this tag spans in its table (a bit tag spans one register or one bit)."""
        return 1 if self.type == "bool" else width(self.type, self.length)

    @model_validator(mode="after")
    def _fits(self) -> ModbusTag:
        addr = self.parsed
        table = TABLES[addr.table]
        if self.type == "string" and self.length is None:
            raise ValueError("a string needs length = N, its size in registers (2 characters each)")
        if self.type != "string" and self.length is not None:
            raise ValueError(f"length is for strings only; a {self.type} has a fixed size")
        if table.bits and self.type != "bool":
            raise ValueError(f"{addr.table} holds single bits: type must be 'bool', not {self.type!r}")
        if not table.bits:
            if self.type == "bool" and addr.bit is None:
                raise ValueError(
                    f"{addr.table} holds 16-bit registers: for one bit of a register write "
                    f"{addr.table}:{addr.index}.B (B = 0..15), or read a coil/di"
                )
            if addr.bit is not None and self.type != "bool":
                raise ValueError(f"{self.address} is a single bit: type must be 'bool', not {self.type!r}")
            last = addr.index + self.registers - 1
            if last > 0xFFFF:
                raise ValueError(
                    f"{self.type} at {self.address} needs registers {addr.index}..{last}, past the last address 65535"
                )
        if self.type == "string" and self.filters:
            raise ValueError("filters judge numbers; a string tag cannot have filters (its text is sent as is)")
        if self.type in ("bool", "string") and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError(f"scale and offset apply to numbers, not to a {self.type}")
        if self.scale == 0.0:
            raise ValueError("scale must not be 0 (every value would read 0 plus the offset)")
        if self.byte_order is not None and self.type == "bool":
            raise ValueError("byte_order does not apply to a bool")
        return self


class ModbusDevice(DeviceBase):
    protocol: Literal["modbus"]
    endpoint: str
    unit: Annotated[int, Field(ge=0, le=255)] = 1
    timeout: MillisDuration = Field(default="1s", validate_default=True)
    retries: Annotated[int, Field(ge=0, le=10)] = 0
    max_inflight: Annotated[int, Field(ge=1, le=16)] = 1
    reconnect_min: PositiveDuration = Field(default="200ms", validate_default=True)
    reconnect_max: PositiveDuration = Field(default="30s", validate_default=True)
    connect_delay: Duration = Field(default="0s", validate_default=True)
    request_delay: Duration = Field(default="0s", validate_default=True)
    close_after_poll: bool = False
    byte_order: ByteOrder = "ABCD"
    max_gap: Annotated[int, Field(ge=0, le=2000)] = 16
    max_registers: Annotated[int, Field(ge=1, le=125)] = 125
    max_bits: Annotated[int, Field(ge=1, le=2000)] = 2000
    tags: list[ModbusTag] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        parse_endpoint(v)
        return v

    @field_validator("connect_delay", "request_delay")
    @classmethod
    def _not_negative_or_huge(cls, v: int) -> int:
        if not 0 <= v <= 60_000_000_000:
            raise ValueError("must be from 0s to 1m")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModbusDevice:
        if self.reconnect_min > self.reconnect_max:
            raise ValueError("reconnect_min must not exceed reconnect_max")
        ep = self.parsed_endpoint
        if ep.rtu and self.max_inflight > 1:
            raise ValueError(
                f"max_inflight = {self.max_inflight}: RTU has no transaction ids, so one request at a time (use 1)"
            )
        if ep.rtu and not 1 <= self.unit <= 247:
            raise ValueError(f"unit {self.unit}: an RTU unit id is 1..247 (0 is broadcast and gets no answer)")
        for tag in self.tags:
            if not TABLES[tag.parsed.table].bits and tag.registers > self.max_registers:
                raise ValueError(
                    f"tag {tag.name!r} ({tag.type}) needs {tag.registers} registers in one read, "
                    f"more than max_registers = {self.max_registers}"
                )
        return self

    @property
    def parsed_endpoint(self) -> Endpoint:
        return parse_endpoint(self.endpoint)

    @property
    def host(self) -> str:
        return self.parsed_endpoint.host

    @property
    def port(self) -> int:
        return self.parsed_endpoint.port

    def tag_interval(self, tag: ModbusTag) -> int:
        return tag.poll_interval or self.poll_interval

    def tag_byte_order(self, tag: ModbusTag) -> str:
        return tag.byte_order or self.byte_order


assert set(TYPES) == set(ModbusType.__args__)  # type: ignore[attr-defined]
assert set(BYTE_ORDERS) == set(ByteOrder.__args__)  # type: ignore[attr-defined]
assert set(REGISTER_WIDTH) < set(TYPES)
