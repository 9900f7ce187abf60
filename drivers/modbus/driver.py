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
from drivers.modbus.client import DeviceException, LinkError, ModbusTcpLink
from drivers.modbus.config import ModbusDevice
from drivers.modbus.decode import ReplyError, decode_bits, decode_registers
from drivers.modbus.plan import plan_device
from edge_agent.backoff import Backoff
from edge_agent.samples import QUALITY_BAD_DECODE, QUALITY_BAD_DEVICE, QUALITY_GOOD, Batch

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

    async def run(self) -> None:
        period = self.device.poll_interval
        start = time.monotonic_ns()
        tick = 0
        try:
            while True:
                if not self._link.connected and not await self._connect():
                    continue
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

    async def _connect(self) -> bool:
        try:
            await self._link.connect()
        except LinkError as exc:
            self.stats.error("connect")
            delay = self._backoff.next_delay_s()
            level = logging.WARNING if self._backoff.attempt == 1 else logging.DEBUG
            log.log(level, "%s: cannot connect (%s); retrying in %.1fs", self._where, exc, delay)
            await asyncio.sleep(delay)
            return False
        if self._backoff.attempt:
            log.info("%s: connected after %d failed attempts", self._where, self._backoff.attempt)
        else:
            log.info("%s: connected", self._where)
        self._backoff.reset()
        self.stats.connects += 1
        self.stats.connected = True
        return True

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
                if req.bit_index is not None:
                    decode_bits(req, reply, values)
                else:
                    decode_registers(req, reply, values)
                quality[req.columns] = QUALITY_GOOD
            except DeviceException as exc:
                ts[req.columns] = time.time_ns()
                quality[req.columns] = QUALITY_BAD_DEVICE
                self.stats.error("exception")
                log.warning("%s: %s answered %s", self._where, req.describe(), exc)
            except ReplyError as exc:
                ts[req.columns] = time.time_ns()
                quality[req.columns] = QUALITY_BAD_DECODE
                self.stats.error("reply")
                log.warning("%s: %s: bad reply (%s); reconnecting", self._where, req.describe(), exc)
                failed = True
            except LinkError as exc:
                ts[req.columns] = time.time_ns()
                self.stats.error(exc.kind)
                log.warning("%s: %s; reconnecting", self._where, exc)
                failed = True
        if failed:
            self.stats.poll_errors += 1
            self._link.close()
            self.stats.connected = False
        self.sink(batch)


async def _sleep_until(deadline_ns: int) -> None:
    delay = (deadline_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


