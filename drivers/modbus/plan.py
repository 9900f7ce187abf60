"""The request planner: a device's tags become the fewest reads, computed once at start-up.

One request per tag costs several times the CPU and bus time of range reads (field notes). Tags that
share a table and a poll interval are merged across unused gaps up to `max_gap`, never past the
protocol limit or the device's. Everything a poll needs to decode a reply (byte gather indices per
dtype, already permuted for the tag's byte order) is precomputed here, so a poll is a few numpy calls
per request and no per-tag Python work.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from drivers.modbus.address import TABLES
from drivers.modbus.config import ModbusDevice
from drivers.modbus.types import DTYPES, byte_positions, string_positions
from edge_agent.config.units import format_duration

TABLE_ORDER = ("coil", "di", "hr", "ir")


@dataclass(frozen=True)
class DecodeGroup:
    """Tags of one dtype in one reply: values = payload[gather].view(dtype) -> columns."""

    dtype: np.dtype
    gather: np.ndarray  # intp (m, bytes per value): byte indices into the reply payload
    columns: np.ndarray  # intp (m,): columns in the poll group's batch


@dataclass(frozen=True)
class RegisterBits:
    """Bits inside registers (`hr:10.3`): (registers[offsets] >> shifts) & 1 -> columns."""

    offsets: np.ndarray  # intp: register offset from the request start
    shifts: np.ndarray  # uint16: bit number, 0 = least significant
    columns: np.ndarray  # intp


@dataclass(frozen=True)
class StringTag:
    column: int
    gather: np.ndarray  # intp: byte indices of the characters, in reading order


@dataclass(frozen=True)
class ReadRequest:
    table: str
    function: int
    unit: int
    start: int
    count: int
    columns: np.ndarray  # intp: every column (of its poll group's batch) this request fills
    tag_names: tuple[str, ...]
    groups: tuple[DecodeGroup, ...] = ()  # registers
    bit_index: np.ndarray | None = None  # bit tables: offset of each column's bit from `start`
    register_bits: RegisterBits | None = None
    strings: tuple[StringTag, ...] = ()
    interval: int = 0  # ns
    interval_label: str = ""  # shown only when the tags' interval differs from the device's

    def describe(self) -> str:
        last = self.start + self.count - 1
        every = f" every {self.interval_label}" if self.interval_label else ""
        return (
            f"fc={self.function:02d} unit={self.unit} {self.table}:{self.start}..{last} "
            f"count={self.count}{every} tags={','.join(self.tag_names)}"
        )

    @property
    def register_reply(self) -> bool:
        return self.bit_index is None


@dataclass(frozen=True)
class PollGroup:
    """The tags polled together on one schedule; one batch row per poll, with these columns."""

    interval: int
    columns: np.ndarray  # intp: device tag indices, ascending
    requests: tuple[ReadRequest, ...]
    scale: np.ndarray | None = None  # float64 per column, None when every tag is raw
    offset: np.ndarray | None = None
    names: tuple[str, ...] = field(default=())


def plan_device(device: ModbusDevice) -> list[ReadRequest]:
    """Every read request of the device, in poll group (interval) then table then address order."""
    return [r for g in poll_groups(device) for r in g.requests]


def poll_groups(device: ModbusDevice) -> list[PollGroup]:
    """Tags grouped by poll interval (fastest first), each group planned into read requests."""
    intervals = sorted({device.tag_interval(t) for t in device.tags})
    out = []
    for interval in intervals:
        cols = [j for j, t in enumerate(device.tags) if device.tag_interval(t) == interval]
        position = {c: i for i, c in enumerate(cols)}
        label = "" if interval == device.poll_interval else format_duration(interval)
        requests = []
        for table_name in TABLE_ORDER:
            items = sorted(
                (device.tags[c].parsed.index, device.tags[c].registers, c)
                for c in cols if device.tags[c].parsed.table == table_name
            )
            for span in merge(items, device.max_gap, _limit(device, table_name)):
                req = _request(device, table_name, span, position)
                requests.append(replace(req, interval=interval, interval_label=label))
        scale = np.array([device.tags[c].scale for c in cols])
        offset = np.array([device.tags[c].offset for c in cols])
        raw = bool((scale == 1.0).all() and (offset == 0.0).all())
        out.append(PollGroup(interval, np.array(cols, dtype=np.intp), tuple(requests),
                             None if raw else scale, None if raw else offset,
                             tuple(device.tags[c].name for c in cols)))
    return out


def _limit(device: ModbusDevice, table_name: str) -> int:
    table = TABLES[table_name]
    return min(table.protocol_limit, device.max_bits if table.bits else device.max_registers)


def merge(items: list[tuple[int, int, int]], max_gap: int, limit: int) -> list[list[tuple[int, int, int]]]:
    """Sorted (start, width, column) items -> spans, each read by one request.

    A span grows while the next item starts at most `max_gap` unused addresses after the span's end
    and the whole span still fits in `limit`. Greedy in address order is optimal here: a span can only
    end because of the gap or the limit, and moving its end earlier never lets a later span cover more.
    """
    spans: list[list[tuple[int, int, int]]] = []
    span: list[tuple[int, int, int]] = []
    lo = hi = 0
    for item in items:
        start, w, _ = item
        if span and start - hi <= max_gap and max(hi, start + w) - lo <= limit:
            span.append(item)
            hi = max(hi, start + w)
            continue
        if span:
            spans.append(span)
        span, lo, hi = [item], start, start + w
    if span:
        spans.append(span)
    return spans


def _request(device: ModbusDevice, table_name: str, span: list[tuple[int, int, int]],
             position: dict[int, int]) -> ReadRequest:
    table = TABLES[table_name]
    start = span[0][0]
    count = max(s + w for s, w, _ in span) - start
    columns = np.array([position[c] for _, _, c in span], dtype=np.intp)
    names = tuple(device.tags[c].name for _, _, c in span)
    base = ReadRequest(table_name, table.read_function, device.unit, start, count, columns, names)
    if table.bits:
        return replace(base, bit_index=np.array([s - start for s, _, _ in span], dtype=np.intp))
    numeric: dict[str, list[tuple[list[int], int]]] = {}
    bits: list[tuple[int, int, int]] = []
    strings = []
    for s, w, c in span:
        tag = device.tags[c]
        first = (s - start) * 2
        if tag.type == "bool":
            bits.append((s - start, tag.parsed.bit or 0, position[c]))
        elif tag.type == "string":
            pos = string_positions(w, device.tag_byte_order(tag))
            strings.append(StringTag(position[c], np.array([first + p for p in pos], dtype=np.intp)))
        else:
            pos = byte_positions(w, device.tag_byte_order(tag))
            numeric.setdefault(tag.type, []).append(([first + p for p in pos], position[c]))
    groups = tuple(
        DecodeGroup(DTYPES[t], np.array([g for g, _ in m], dtype=np.intp), np.array([c for _, c in m], dtype=np.intp))
        for t, m in sorted(numeric.items())
    )
    register_bits = None
    if bits:
        register_bits = RegisterBits(np.array([b[0] for b in bits], dtype=np.intp),
                                     np.array([b[1] for b in bits], dtype=np.uint16),
                                     np.array([b[2] for b in bits], dtype=np.intp))
    return replace(base, groups=groups, register_bits=register_bits, strings=tuple(strings))


def split_request(device: ModbusDevice, group: PollGroup, req: ReadRequest) -> tuple[ReadRequest, ReadRequest]:
    """Halve a merged request's tags (in address order) into two requests that read only their own span.

    Used when a device refuses a merged read with exception 02: repeated halving isolates the tag
    whose address the device does not have in log2(tags) steps, and tags whose only fault was a hole
    between them end up in requests that skip the hole.
    """
    cols = [int(group.columns[p]) for p in req.columns]
    items = sorted((device.tags[c].parsed.index, device.tags[c].registers, c) for c in cols)
    position = {int(c): i for i, c in enumerate(group.columns)}
    half = len(items) // 2
    a, b = (_request(device, req.table, part, position) for part in (items[:half], items[half:]))
    return (replace(a, interval=req.interval, interval_label=req.interval_label),
            replace(b, interval=req.interval, interval_label=req.interval_label))
