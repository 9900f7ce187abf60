"""Wires the stages together: driver -> filter engine -> batcher -> frame encoder -> spool -> uplink.

The driver tasks call the sink inline (numba and numpy only, no I/O); closed batches go through a
queue to the spool writer, which encodes and commits them on the spool's own thread; the uplink
reads only from the spool. So a slow disk or a dead broker never stalls a poll loop, and every
sample that reached the batcher is either in the spool or in a batch that shutdown flushes into it.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from edge_agent.frame.builder import build_frames
from edge_agent.frame.model import Block, Frame
from edge_agent.samples import Batch
from edge_agent.spool import AsyncSpool, Limits
from edge_agent.uplink.mqtt import MqttUplink

log = logging.getLogger("edge_agent")

SHUTDOWN_GRACE_S = 3.0


@dataclass
class Counters:
    points_in: int = 0
    frames_spooled: int = 0
    points_spooled: int = 0
    blocked_s: float = 0.0  # time the spool was full under the block policy
    started_ns: int = field(default_factory=time.monotonic_ns)


class Sink:
    """What drivers call with each poll: filters, then the batcher. See drivers.api.SampleSink."""

    def __init__(self, agent: Agent):
        self._agent = agent
        self.accepting = True

    def __call__(self, batch: Batch) -> None:
        self._agent._on_poll(batch)


class Agent:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.boot = uuid.uuid4().bytes
        self.counters = Counters()
        limits = Limits(cfg.spool.max_bytes, cfg.spool.max_age, cfg.spool.on_full)
        self.spool = AsyncSpool(cfg.agent.state_dir / "spool.db", limits, cfg.agent.id, self.boot.hex())
        registry = plugins()
        self._filters = {d.name: DeviceFilters(d, cfg.filters) for d in cfg.devices}
        self.batcher = Batcher(
            [(d.name, tuple(t.name for t in d.tags), registry[d.protocol].tag_types(d)) for d in cfg.devices],
            cfg.batch.max_points,
            cfg.batch.max_interval,
            self._on_batch_closed,
        )
        self.sink = Sink(self)
        self.drivers: dict[str, Driver] = {d.name: registry[d.protocol].create(d, self.sink) for d in cfg.devices}
        self.uplink = MqttUplink(cfg.uplink, cfg.agent.id, self.spool, boot=self.boot.hex(), version=__version__,
                                 config_digest=cfg.digest[:16])
        self._closed: asyncio.Queue[list[Block]] = asyncio.Queue()
        self._zstd = cfg.uplink.zstd_level if cfg.uplink.compression == "zstd" else None

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
        def make(seq: int, part: list[Block]) -> Frame:
            return Frame(self.cfg.agent.id, self.boot, seq, time.time_ns(), part)

        def build(first_seq: int) -> list[tuple[bytes, int, int]]:
            return build_frames(blocks, first_seq, make, self.cfg.batch.max_frame_bytes, self._zstd)

        while True:
            self.spool.room.clear()
            result = await self.spool.append(build)
            if not result.full:
                break
            # block policy: hold this batch, stop the pollers, and wait for acknowledgements to make room.
            if self.sink.accepting:
                log.warning("spool full (%d bytes): pausing polls until the broker acknowledges frames",
                            self.cfg.spool.max_bytes)
            self.sink.accepting = False
            t0 = time.monotonic()
            await self.spool.room.wait()
            self.counters.blocked_s += time.monotonic() - t0
        if not self.sink.accepting:
            log.info("spool has room again: polls resume")
            self.sink.accepting = True
        self.counters.frames_spooled += len(result.seqs)
        self.counters.points_spooled += sum(b.points for b in blocks) if result.seqs else 0

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
            log.error("shutdown: %d batches could not be spooled within %.0fs (spool full under the block "
                      "policy?): their points are lost", self._closed.qsize() + 1, SHUTDOWN_GRACE_S)
        writer.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.uplink.announce_offline(), 1.0)
        uplink.cancel()
        await asyncio.gather(writer, uplink, return_exceptions=True)
        try:
            await asyncio.wait_for(self.uplink.flush_acks(), 1.0)
        except Exception as exc:  # acked frames left behind are sent again: duplicates, never loss
            log.warning("shutdown: could not record the last acknowledgements (%s)", exc)
        depth = await self.spool.depth()
        await self.spool.close()
        skipped = sum(d.stats.skipped_ticks for d in self.drivers.values())
        log.info(
            "stopped: %d points polled, %d ticks skipped, %d frames spooled, %d published; "
            "%d frames (%d points) wait in the spool",
            self.counters.points_in, skipped, self.counters.frames_spooled, self.uplink.frames_out,
            depth.frames, depth.points,
        )
