"""Wires the stages together: driver -> filter engine -> batcher -> frame encoder -> spool -> uplink.

The driver tasks call `_on_poll` inline (numba and numpy only, no I/O); closed batches go through a
queue to the spool writer, which encodes and commits them on the spool's own thread; the uplink
reads only from the spool. So a slow disk or a dead broker never stalls a poll loop, and every
sample that reached the batcher is either in the spool or in a batch that shutdown flushes into it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from drivers.api import Driver
from drivers.registry import plugins
from edge_agent import __version__
from edge_agent.batcher import Batcher
from edge_agent.config.loader import Config
from edge_agent.filters.engine import DeviceFilters, warm_up
from edge_agent.frame.codec import encode_frame
from edge_agent.frame.model import Block, Frame
from edge_agent.samples import Batch
from edge_agent.spool import AsyncSpool
from edge_agent.uplink.mqtt import MqttUplink

log = logging.getLogger("edge_agent")

SHUTDOWN_GRACE_S = 3.0


@dataclass
class Counters:
    points_in: int = 0
    frames_spooled: int = 0
    points_spooled: int = 0
    bytes_spooled: int = 0
    started_ns: int = field(default_factory=time.monotonic_ns)


class Agent:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.boot = uuid.uuid4().bytes
        self.counters = Counters()
        self.spool = AsyncSpool(cfg.agent.state_dir / "spool.db")
        registry = plugins()
        self._filters = {d.name: DeviceFilters(d, cfg.filters) for d in cfg.devices}
        self.batcher = Batcher(
            [(d.name, tuple(t.name for t in d.tags), registry[d.protocol].tag_types(d)) for d in cfg.devices],
            cfg.batch.max_points,
            cfg.batch.max_interval,
            self._on_batch_closed,
        )
        self.drivers: dict[str, Driver] = {
            d.name: registry[d.protocol].create(d, self._on_poll) for d in cfg.devices
        }
        self.uplink = MqttUplink(cfg.uplink, cfg.agent.id, self.spool)
        self._closed: asyncio.Queue[list[Block]] = asyncio.Queue()

    def _on_poll(self, batch: Batch) -> None:
        self._filters[batch.device].process(batch)
        self.counters.points_in += batch.points
        self.batcher.add(batch)

    def _on_batch_closed(self, blocks: list[Block]) -> None:
        self._closed.put_nowait(blocks)

    async def _spool_writer(self) -> None:
        while True:
            blocks = await self._closed.get()
            await self._commit(blocks)
            self._closed.task_done()

    async def _commit(self, blocks: list[Block]) -> None:
        def build(seq: int) -> tuple[bytes, int, int]:
            frame = Frame(self.cfg.agent.id, self.boot, seq, time.time_ns(), blocks)
            return encode_frame(frame), frame.points, frame.created_ns

        await self.spool.append(build)
        points = sum(b.points for b in blocks)
        self.counters.frames_spooled += 1
        self.counters.points_spooled += points

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Run until `stop` is set, then flush every polled sample into the spool and return."""
        await asyncio.to_thread(warm_up)
        await self.spool.open()
        last = await self.spool.last_seq()
        depth = await self.spool.depth()
        log.info(
            "edge-agent %s starting: agent %s, boot %s, %d devices, spool %s (%d frames waiting, next seq %d)",
            __version__, self.cfg.agent.id, self.boot.hex(), len(self.drivers), self.spool.path,
            depth.frames, last + 1,
        )
        tasks = [asyncio.create_task(drv.run(), name=f"device:{name}") for name, drv in self.drivers.items()]
        writer = asyncio.create_task(self._spool_writer(), name="spool-writer")
        uplink = asyncio.create_task(self.uplink.run(), name="uplink")
        if ready is not None:
            ready.set()
        try:
            # The writer and uplink only ever end by failing; that is a bug, and must not go unnoticed.
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopper, writer, uplink], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            for task in done - {stopper}:
                exc = task.exception()
                raise RuntimeError(f"{task.get_name()} stopped unexpectedly: {exc!r}") from exc
        finally:
            await self._shutdown(tasks, writer, uplink)

    async def _shutdown(self, drivers: list[asyncio.Task], writer: asyncio.Task, uplink: asyncio.Task) -> None:
        for t in drivers:
            t.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)
        self.batcher.close()  # the open batch goes to the spool like any other
        try:
            await asyncio.wait_for(self._closed.join(), SHUTDOWN_GRACE_S)
        except TimeoutError:
            log.error("shutdown: spool writer did not finish within %.0fs", SHUTDOWN_GRACE_S)
        writer.cancel()
        uplink.cancel()
        await asyncio.gather(writer, uplink, return_exceptions=True)
        try:
            await asyncio.wait_for(self.uplink.flush_acks(), 1.0)
        except Exception as exc:  # acked frames left behind are sent again: duplicates, never loss
            log.warning("shutdown: could not record the last acknowledgements (%s)", exc)
        depth = await self.spool.depth()
        await self.spool.close()
        log.info(
            "stopped: %d points polled, %d frames spooled, %d published; %d frames (%d points) wait in the spool",
            self.counters.points_in, self.counters.frames_spooled, self.uplink.frames_out, depth.frames, depth.points,
        )
