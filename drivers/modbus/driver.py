"""Polls one Modbus device on absolute ticks and hands each poll's row to the sink.

Ticks are absolute (start + k * interval on the monotonic clock): a poll timer that restarts from
"now" drifts (field notes: 86 polls/s instead of 100). An overrun skips the missed ticks and counts
them; it never bursts to catch up, which would hammer a PLC that is already slow.

Tags with their own `poll_interval` form poll groups; each group runs its own tick loop inside the
device's task and delivers batches of its columns only.

A device that fails (no answer, connection lost) backs off on its own: until its backoff delay has
passed it sends nothing, so on a shared RTU bus a dead unit costs one timeout per backoff period and
never a reset of the line its neighbours use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from drivers.api import DriverStats, SampleSink
from drivers.modbus.bus import acquire_bus, release_bus
from drivers.modbus.client import (
    ILLEGAL_DATA_ADDRESS,
    Bus,
    DeviceException,
    LinkError,
    Read,
    ReplyError,
    RequestTimeout,
    TcpBus,
)
from drivers.modbus.config import ModbusDevice
from drivers.modbus.decode import decode_bits, decode_registers
from drivers.modbus.plan import PollGroup, ReadRequest, poll_groups, split_request
from drivers.modbus.statelog import StateLog
from edge_agent.backoff import Backoff
from edge_agent.samples import (
    QUALITY_BAD_CONFIG,
    QUALITY_BAD_DECODE,
    QUALITY_BAD_DEVICE,
    QUALITY_GOOD,
    Batch,
    text_column,
)

log = logging.getLogger("edge_agent.drivers.modbus")


@dataclass
class ModbusStats(DriverStats):
    requests: int = 0
    retries: int = 0
    splits: int = 0
    bad_tags: set[str] = field(default_factory=set)


class _LinkFailed(Exception):
    """The rest of this poll is not sent: the device or its connection is not answering."""


class ModbusDriver:
    def __init__(self, device: ModbusDevice, sink: SampleSink):
        self.device = device
        self.sink = sink
        self.groups: list[PollGroup] = poll_groups(device)
        # The live plan per group: starts as planned, refined when a device refuses a merged read.
        self._plans: list[list[ReadRequest]] = [list(g.requests) for g in self.groups]
        self.stats = ModbusStats()
        self.endpoint = device.parsed_endpoint
        self._timeout_s = device.timeout / 1e9
        self._pause_s = device.request_delay / 1e9
        self._backoff = Backoff(device.reconnect_min, device.reconnect_max)
        self._retry_at = 0.0
        self._failing = False
        self._last_error = ""
        self._where = f"device {device.name} ({device.endpoint} unit {device.unit})"
        self._states = StateLog(log, self._where)
        self._ready_lock = asyncio.Lock()
        self._all_columns = len(self.groups) == 1
        self.bus: Bus | None = None
        self._troubled = False  # some request or tag has been reported bad: check for recoveries
        # id(request) -> (request, its wire form, its columns as a slice when contiguous)
        self._reads: dict[int, tuple[ReadRequest, Read, slice | np.ndarray]] = {}
        self._templates: dict[int, Batch] = {}  # poll group -> its empty one-row batch
        # poll group -> (_plan_epoch they were made in, the plan's wire forms, their Reads): chain path
        self._forms: dict[int, tuple[int, list[tuple[ReadRequest, Read, slice | np.ndarray]], list[Read]]] = {}
        self._plan_epoch = 0  # bumped whenever a split changes a plan

    @property
    def plan(self) -> list[ReadRequest]:
        """Every request one round of polls sends (after any splits), for tests and `check --plan`."""
        return [r for p in self._plans for r in p]

    async def run(self) -> None:
        self.bus = acquire_bus(self.device)
        try:
            if len(self.groups) == 1:
                await self._run_group(0)
            else:
                async with asyncio.TaskGroup() as tg:
                    for i in range(len(self.groups)):
                        tg.create_task(self._run_group(i), name=f"{self.device.name}:group{i}")
        finally:
            release_bus(self.device, self.bus)
            self.stats.connected = False

    async def _run_group(self, gi: int) -> None:
        period = self.groups[gi].interval
        start: int | None = None  # the tick grid starts at the first connection, not at process start
        tick = 0
        bus = self.bus
        assert bus is not None
        while True:
            if self._retry_at or not bus.connected or self._ready_lock.locked():
                await self._ready()
            else:  # what _ready would find at once, without taking the lock on every tick
                self.stats.connected = True
            now = time.monotonic_ns()
            if start is None:
                start = now
            # Back on the absolute grid: ticks that passed while offline are skipped, not replayed.
            due = -(-(now - start) // period)
            if due > tick:
                self.stats.skipped_ticks += due - tick
                tick = due
            delay = (start + tick * period - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            if getattr(self.sink, "accepting", True):  # a plain callable is a sink that always accepts
                t0 = time.monotonic()
                await self._poll(gi)
                self.stats.observe_latency(time.monotonic() - t0)
            else:  # the spool is full under the block policy: read nothing that has nowhere to go
                self.stats.skipped_ticks += 1
            # Next tick strictly in the future; missed ones are skipped and counted, not replayed.
            due = (time.monotonic_ns() - start) // period + 1
            if due > tick + 1:
                self.stats.skipped_ticks += due - tick - 1
            tick = max(tick + 1, due)

    async def _ready(self) -> None:
        """Wait out the backoff if the device has been failing, then make sure the bus is connected.

        The backoff is reset only by an answer from the device, not by a TCP connect: a gateway that
        accepts connections for a dead unit behind it must not be hammered with one poll per tick.
        """
        assert self.bus is not None
        async with self._ready_lock:
            while True:
                delay = self._retry_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self.bus.connected:
                    self.stats.connected = True
                    return
                try:
                    made = await self.bus.connect(self._timeout_s * 2)
                except LinkError as exc:
                    self.stats.error("connect")
                    self._fail(f"cannot connect ({exc})")
                    continue
                if made:
                    # While a device keeps failing, only the first failure and the recovery are worth a line.
                    log.log(logging.DEBUG if self._backoff.attempt > 1 else logging.INFO, "%s: connected", self._where)
                    self.stats.connects += 1
                self.stats.connected = True
                return

    def _fail(self, reason: str) -> None:
        delay = self._backoff.next_delay_s()
        self._retry_at = time.monotonic() + delay
        level = logging.WARNING if self._backoff.attempt == 1 else logging.DEBUG
        log.log(level, "%s: %s; retrying in %.1fs", self._where, reason, delay)
        self._failing = True
        self._last_error = reason

    def _answered(self) -> None:
        if self._failing:
            if self._backoff.attempt > 1:
                log.info("%s: answering again after %d attempts", self._where, self._backoff.attempt)
            self._failing = False
            self._backoff.reset()
            self._retry_at = 0.0

    # --- one poll ------------------------------------------------------------------------------

    async def _poll(self, gi: int) -> None:
        group = self.groups[gi]
        k = len(group.columns)
        batch = self._empty_row(gi, k)
        row = _Row(batch)
        self.stats.polls += 1
        plan = self._plans[gi]
        failure: LinkError | None = None
        # Requests the chain fast path left to the general path below, with what the chain saw of
        # each (None: not sent yet); the general path handles it exactly as if read() had raised it.
        todo: list[tuple[int, Exception | None]] | None = None  # None: all of them
        bus = self.bus
        if type(bus) is TcpBus and self._pause_s == 0 and bus.connected:
            todo = await self._chain(gi, plan, row)
        if todo is None or todo:
            # The general path may split a request of the live plan: walk a copy of it.
            plan = list(plan)
            if todo is None:
                todo = [(i, None) for i in range(len(plan))]
        if self.device.max_inflight == 1:
            for i, preset in todo:
                req = plan[i]
                if failure is not None:
                    row.stamp(req)  # columns stay BAD_COMM: the device is not answering this poll
                    continue
                try:
                    await self._request(gi, req, row, self._pause_s if i else 0.0, preset)
                except _LinkFailed as exc:
                    failure = exc.args[0]
        elif todo:
            sem = asyncio.Semaphore(self.device.max_inflight)
            failures: list[LinkError] = []

            async def one(req: ReadRequest, preset: Exception | None) -> None:
                async with sem:
                    if failures:
                        row.stamp(req)
                        return
                    try:
                        await self._request(gi, req, row, self._pause_s, preset)
                    except _LinkFailed as exc:
                        failures.append(exc.args[0])

            await asyncio.gather(*(one(plan[i], preset) for i, preset in todo))
            failure = failures[0] if failures else None
        if row.text:  # string tags read this poll; the others stay missing (their quality says why)
            batch.text = {c: text_column([t]) for c, t in row.text.items()}
        if group.scale is not None:
            np.multiply(batch.values, group.scale, out=batch.values)
            np.add(batch.values, group.offset, out=batch.values)
        if failure is not None:
            self.stats.poll_errors += 1
            assert self.bus is not None
            dropped = not self.bus.connected
            self.stats.connected = self.bus.connected
            what = "connection dropped" if dropped else "no answer"
            if not self._failing:
                log.warning("%s: %s: %s", self._where, what, failure)
            self._fail(str(failure))
        elif self.device.close_after_poll and self.bus is not None and self.bus.idle():
            self.bus.close("close_after_poll")
            self.stats.connected = False
        self.sink(batch)

    def _empty_row(self, gi: int, k: int) -> Batch:
        """Batch.empty(device, 1, k, columns), copied from a template: np.full per poll is slow."""
        tpl = self._templates.get(gi)
        if tpl is None:
            tpl = Batch.empty(self.device.name, 1, k, None if self._all_columns else self.groups[gi].columns)
            self._templates[gi] = tpl
        return Batch(tpl.device, tpl.ts.copy(), tpl.values.copy(), tpl.quality.copy(), tpl.flags.copy(),
                     tpl.columns)

    def _wire_form(self, req: ReadRequest) -> tuple[ReadRequest, Read, slice | np.ndarray]:
        hit = self._reads.get(id(req))
        if hit is None or hit[0] is not req:
            hit = (req, Read(req.unit, req.function, req.start, req.count), _as_slice(req.columns))
            self._reads[id(req)] = hit  # holds req: its id stays unique; splits add a few, once
        return hit

    async def _chain(self, gi: int, plan: list[ReadRequest], row: _Row) -> list[tuple[int, Exception | None]]:
        """The requests of a poll through TcpBus.read_chain; returns what is left for _request."""
        assert isinstance(self.bus, TcpBus)
        cached = self._forms.get(gi)
        if cached is None or cached[0] != self._plan_epoch:
            forms = [self._wire_form(r) for r in plan]
            cached = self._forms[gi] = (self._plan_epoch, forms, [f[1] for f in forms])
        forms = cached[1]

        def on_reply(i: int, data: bytes) -> None:  # the good-reply half of _request, in the reply callback
            req, _, cols = forms[i]
            self._accept(req, cols, data, row)

        outcomes, first_unsent, sent = await self.bus.read_chain(
            cached[2], self._timeout_s, self.stats.error, self.device.max_inflight, on_reply)
        self.stats.requests += sent
        if not outcomes and first_unsent == len(plan):
            return []
        return sorted(outcomes.items()) + [(i, None) for i in range(first_unsent, len(plan))]

    def _accept(self, req: ReadRequest, cols: object, data: bytes, row: _Row) -> None:
        """A good reply: its tags decoded and good, stamped when the answer arrived, not when converted."""
        row.ts[cols] = time.time_ns()
        if self._failing:
            self._answered()
        if req.register_reply:
            decode_registers(req, data, row.values, row.text)
        else:
            decode_bits(req, data, row.values)
        row.quality[cols] = QUALITY_GOOD
        if self._troubled:  # rare: only after a request or tag went bad, so no per-tag work per poll
            self._recovered(req)

    async def _request(self, gi: int, req: ReadRequest, row: _Row, pause_s: float,
                       preset: Exception | None = None) -> None:
        """Send one request (with retries) and fill its columns; raises _LinkFailed to end the poll.

        `preset` is the outcome of a first attempt the chain fast path already sent: handled here as
        if this read had raised it, so every fault takes the one path below."""
        assert self.bus is not None
        _, wire, cols = self._wire_form(req)
        last: Exception | None = None
        for attempt in range(self.device.retries + 1):
            if attempt:
                self.stats.retries += 1
            if preset is None:
                self.stats.requests += 1
            try:
                if preset is not None:
                    exc, preset = preset, None
                    raise exc
                data = await self.bus.read(wire, self._timeout_s, self.stats.error, pause_s)
            except RequestTimeout as exc:
                self.stats.error("timeout")
                last = exc
                if exc.closed:
                    break
                continue
            except ReplyError as exc:
                self.stats.error(exc.kind)
                last = exc
                continue
            except DeviceException as exc:
                row.stamp(req)
                self._answered()
                await self._exception(gi, req, row, exc)
                return
            except LinkError as exc:
                self.stats.error(exc.kind)
                row.stamp(req)
                raise _LinkFailed(exc) from None
            self._accept(req, cols, data, row)
            return
        row.stamp(req)
        if isinstance(last, ReplyError):
            # An answer arrived, just not one we can trust: only this request's tags are bad.
            row.quality[req.columns] = QUALITY_BAD_DECODE
            self._troubled = True
            self._states.report(f"request {req.table}:{req.start}", f"reply:{last.kind}", logging.WARNING,
                                "%s: bad reply (%s)", req.describe(), last)
            return
        assert isinstance(last, LinkError)
        raise _LinkFailed(last)

    def _recovered(self, req: ReadRequest) -> None:
        self._states.report(f"request {req.table}:{req.start}", "ok", logging.INFO, "%s answers again",
                            req.describe())
        for name in req.tag_names:
            if name in self.stats.bad_tags:
                self.stats.bad_tags.discard(name)
                self._states.report(f"tag {name}", "ok", logging.INFO, "tag %s is readable again", name)

    async def _exception(self, gi: int, req: ReadRequest, row: _Row, exc: DeviceException) -> None:
        self.stats.error("exception")
        if exc.code == ILLEGAL_DATA_ADDRESS and len(req.tag_names) > 1:
            # A merged read crossed an address the device does not have: halve it until the tags that
            # are readable are read without the hole and the offending tag is alone.
            a, b = split_request(self.device, self.groups[gi], req)
            plan = self._plans[gi]
            if req in plan:
                i = next(i for i, r in enumerate(plan) if r is req)
                plan[i : i + 1] = [a, b]
                self._plan_epoch += 1
            self.stats.splits += 1
            log.info("%s: %s answered %s; split into %s and %s", self._where, req.describe(), exc,
                     a.describe(), b.describe())
            await self._request(gi, a, row, self._pause_s)
            await self._request(gi, b, row, self._pause_s)
            return
        self._troubled = True
        row.set_status(req, exc.code)  # the exception code travels as the samples' status (README)
        if exc.code == ILLEGAL_DATA_ADDRESS:
            self.stats.error("illegal_address")
            row.quality[req.columns] = QUALITY_BAD_CONFIG
            name = req.tag_names[0]
            tag = next(t for t in self.device.tags if t.name == name)
            if name not in self.stats.bad_tags:
                self.stats.bad_tags.add(name)
                self._states.report(
                    f"tag {name}", "illegal", logging.WARNING,
                    "tag %s at %s: the device has no such address (exception 2); marked bad (0x83), "
                    "polling the other tags", name, tag.address)
            return
        row.quality[req.columns] = QUALITY_BAD_DEVICE
        self._states.report(f"request {req.table}:{req.start}", f"exception {exc.code}", logging.WARNING,
                            "%s answered %s", req.describe(), exc)


class _Row:
    """Views of a one-row batch: what a request writes into."""

    __slots__ = ("batch", "quality", "text", "ts", "values")

    def __init__(self, batch: Batch):
        self.batch = batch
        self.ts, self.values, self.quality = batch.ts[0], batch.values[0], batch.quality[0]
        self.text: dict[int, str] = {}  # column -> decoded text of the string tags answered

    def set_status(self, req: ReadRequest, code: int) -> None:
        """Rare (an exception reply), so the status column is only allocated when one arrives."""
        if self.batch.status is None:
            self.batch.status = np.zeros(self.batch.values.shape, dtype=np.uint32)
        self.batch.status[0, req.columns] = code

    def stamp(self, req: ReadRequest) -> None:
        self.ts[req.columns] = time.time_ns()  # stamped when the answer arrives, not when converted


def _as_slice(columns: np.ndarray) -> slice | np.ndarray:
    """Contiguous ascending columns (the usual case) as a slice: assigning through a slice costs a
    fraction of a fancy-index assignment, and a poll does a few per request."""
    if len(columns) and np.array_equal(columns, np.arange(columns[0], columns[0] + len(columns))):
        return slice(int(columns[0]), int(columns[0]) + len(columns))
    return columns
