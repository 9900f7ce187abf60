"""The request planner: a device's tags become the fewest reads, computed once at start-up.

One request per tag costs several times the CPU and bus time of range reads (field notes). Tags of a
table are merged across unused gaps up to `max_gap`, never past the protocol limit or the device's.
Everything a poll needs to decode a reply (byte gather indices per dtype) is precomputed here, so a
poll is a few numpy calls per request and no per-tag Python work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers.modbus.address import TABLES, parse_address
from drivers.modbus.config import ModbusDevice
from drivers.modbus.types import DTYPES, width


@dataclass(frozen=True)
class DecodeGroup:
    """Tags of one dtype in one reply: values = payload[gather].view(dtype) -> columns."""

    dtype: np.dtype
    gather: np.ndarray  # intp (m, bytes per value): byte indices into the reply payload
    columns: np.ndarray  # intp (m,): tag columns in the device's batch


@dataclass(frozen=True)
class ReadRequest:
    table: str
    function: int
    unit: int
    start: int
    count: int
    columns: np.ndarray  # intp: every tag column this request fills
    tag_names: tuple[str, ...]
    groups: tuple[DecodeGroup, ...] = ()  # registers
    bit_index: np.ndarray | None = None  # bits: offset of each column's bit from `start`

    def describe(self) -> str:
        last = self.start + self.count - 1
        return (
            f"fc={self.function:02d} unit={self.unit} {self.table}:{self.start}..{last} "
            f"count={self.count} tags={','.join(self.tag_names)}"
        )


def plan_device(device: ModbusDevice) -> list[ReadRequest]:
    """Merge the device's tags into read requests, in table then address order."""
    by_table: dict[str, list[tuple[int, int, int]]] = {}
    for col, tag in enumerate(device.tags):
        table, index = parse_address(tag.address)
        by_table.setdefault(table, []).append((index, width(tag.type), col))

    requests = []
    for table_name in ("coil", "di", "hr", "ir"):
        items = sorted(by_table.get(table_name, ()))
        if not items:
            continue
        table = TABLES[table_name]
        limit = min(table.protocol_limit, device.max_bits if table.bits else device.max_registers)
        span: list[tuple[int, int, int]] = []
        for item in items:
            start, w, _ = item
            if span:
                lo = span[0][0]
                hi = max(s + ww for s, ww, _ in span)
                if start - hi <= device.max_gap and max(hi, start + w) - lo <= limit:
                    span.append(item)
                    continue
                requests.append(_request(device, table_name, span))
            span = [item]
        requests.append(_request(device, table_name, span))
    return requests


def _request(device: ModbusDevice, table_name: str, span: list[tuple[int, int, int]]) -> ReadRequest:
    table = TABLES[table_name]
    start = span[0][0]
    count = max(s + w for s, w, _ in span) - start
    columns = np.array([c for _, _, c in span], dtype=np.intp)
    names = tuple(device.tags[c].name for _, _, c in span)
    if table.bits:
        bit_index = np.array([s - start for s, _, _ in span], dtype=np.intp)
        return ReadRequest(table_name, table.read_function, device.unit, start, count, columns, names,
                           bit_index=bit_index)
    groups = []
    types = [device.tags[c].type for _, _, c in span]
    for type_name in sorted(set(types)):
        members = [(s, c) for (s, _, c), t in zip(span, types, strict=True) if t == type_name]
        dtype = DTYPES[type_name]
        offsets = np.array([(s - start) * 2 for s, _ in members], dtype=np.intp)
        gather = offsets[:, None] + np.arange(dtype.itemsize, dtype=np.intp)[None, :]
        groups.append(DecodeGroup(dtype, gather, np.array([c for _, c in members], dtype=np.intp)))
    return ReadRequest(table_name, table.read_function, device.unit, start, count, columns, names,
                       groups=tuple(groups))
