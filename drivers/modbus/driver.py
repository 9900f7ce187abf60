"""Polls one Modbus device on absolute ticks and hands each poll's row to the sink.

Ticks are absolute (start + k * interval on the monotonic clock): a poll timer that restarts from
"now" drifts (field notes: 86 polls/s instead of 100). An overrun skips the missed ticks and counts
them; it never bursts to catch up, which would hammer a PLC that is already slow.
"""

from __future__ import annotations

import asyncio
import logging
import time

from drivers.api import DriverStats, SampleSink
from drivers.modbus.client import ILLEGAL_DATA_ADDRESS, DeviceException, LinkError, ModbusTcpLink
from drivers.modbus.config import ModbusDevice
from drivers.modbus.decode import ReplyError, decode_bits, decode_registers
from drivers.modbus.plan import plan_device
from edge_agent.backoff import Backoff
from edge_agent.samples import QUALITY_BAD_CONFIG, QUALITY_BAD_DECODE, QUALITY_BAD_DEVICE, QUALITY_GOOD, Batch

log = logging.getLogger("edge_agent.drivers.modbus")


class ModbusDriver:
    def __init__(self, device: ModbusDevice, sink: SampleSink):
        self.device = device
        self.sink = sink
        self.plan = plan_device(device)
        self.stats = DriverStats()
        self._link = ModbusTcpLink(device.host, device.port, device.timeout / 1e9)
        self._backoff = Backoff(device.reconnect_min, device.reconnect_max)
        self._k = len(device.tags)
        self._where = f"device {device.name} ({device.endpoint} unit {device.unit})"
        self._backoff_pending = False
        self._last_error = ""

    async def run(self) -> None:
        period = self.device.poll_interval
        start: int | None = None  # the tick grid starts at the first connection, not at process start
        tick = 0
        try:
            while True:
                if not self._link.connected:
                    await self._connect()
                    now = time.monotonic_ns()
                    if start is None:
                        start = now
                    # Back on the absolute grid: ticks that passed while offline are skipped, not replayed.
                    due = -(-(now - start) // period)
                    if due > tick:
                        self.stats.skipped_ticks += due - tick
                        tick = due
                assert start is not None
                await _sleep_until(start + tick * period)
                await self._poll()
                # Next tick strictly in the future; missed ones are skipped and counted, not replayed.
                due = (time.monotonic_ns() - start) // period + 1
                if due > tick + 1:
                    self.stats.skipped_ticks += due - tick - 1
                tick = max(tick + 1, due)
        finally:
            self._link.close()
            self.stats.connected = False

    async def _connect(self) -> None:
        """Connect, waiting out the backoff first if the device has been failing.

        The backoff is reset only by an answer from the device, not by a TCP connect: a gateway that
        accepts connections for a dead unit behind it must not be hammered with one poll per tick.
        """
        while True:
            if self._backoff_pending:
                delay = self._backoff.next_delay_s()
                level = logging.WARNING if self._backoff.attempt == 1 else logging.DEBUG
                log.log(level, "%s: %s; retrying in %.1fs", self._where, self._last_error, delay)
                await asyncio.sleep(delay)
            try:
                await self._link.connect()
            except LinkError as exc:
                self.stats.error("connect")
                self._last_error = f"cannot connect ({exc})"
                self._backoff_pending = True
                continue
            # While a device keeps failing, only the first failure and the recovery are worth a line.
            log.log(logging.DEBUG if self._backoff.attempt > 1 else logging.INFO, "%s: connected", self._where)
            self.stats.connects += 1
            self.stats.connected = True
            return

    async def _poll(self) -> None:
        batch = Batch.empty(self.device.name, 1, self._k)
        ts, values, quality = batch.ts[0], batch.values[0], batch.quality[0]
        self.stats.polls += 1
        failed = False
        for req in self.plan:
            if failed:
                ts[req.columns] = time.time_ns()
                continue  # columns stay BAD_COMM: the link is gone for the rest of this poll
            try:
                reply = await self._link.read(req)
                ts[req.columns] = time.time_ns()  # stamped when the answer arrives, not when converted
                self._answered()
                if req.bit_index is not None:
                    decode_bits(req, reply, values)
                else:
                    decode_registers(req, reply, values)
                quality[req.columns] = QUALITY_GOOD
            except DeviceException as exc:
                ts[req.columns] = time.time_ns()
                self._answered()
                quality[req.columns] = QUALITY_BAD_CONFIG if exc.code == ILLEGAL_DATA_ADDRESS else QUALITY_BAD_DEVICE
                self.stats.error("exception")
                log.warning("%s: %s answered %s", self._where, req.describe(), exc)
            except ReplyError as exc:
                ts[req.columns] = time.time_ns()
                quality[req.columns] = QUALITY_BAD_DECODE
                self.stats.error("reply")
                self._last_error = f"{req.describe()}: bad reply ({exc})"
                failed = True
            except LinkError as exc:
                ts[req.columns] = time.time_ns()
                self.stats.error(exc.kind)
                self._last_error = str(exc)
                failed = True
        if failed:
            self.stats.poll_errors += 1
            self._link.close()
            self.stats.connected = False
            level = logging.WARNING if not self._backoff_pending else logging.DEBUG
            self._backoff_pending = True
            log.log(level, "%s: connection dropped: %s", self._where, self._last_error)
        self.sink(batch)

    def _answered(self) -> None:
        if self._backoff_pending:
            if self._backoff.attempt > 1:
                log.info("%s: answering again after %d attempts", self._where, self._backoff.attempt)
            self._backoff_pending = False
            self._backoff.reset()


async def _sleep_until(deadline_ns: int) -> None:
    delay = (deadline_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


