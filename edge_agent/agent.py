"""Wires the stages together: driver -> filter engine -> batcher -> frame encoder -> spool -> uplink.

The driver tasks call the sink inline (numba and numpy only, no I/O); closed batches go through a
queue to the spool writer, which encodes and commits them on the spool's own thread; the uplink
publishes only what the spool committed. So a slow disk or a dead broker never stalls a poll loop, and every
sample that reached the batcher is either in the spool or in a batch that shutdown flushes into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from dataclasses import dataclass, field, replace

from drivers.api import Driver
from drivers.registry import plugins
from edge_agent import __version__
from edge_agent.batcher import Batcher
from edge_agent.batcher import warm_up as batcher_warm_up
from edge_agent.config.loader import Config
from edge_agent.config.models import DeviceBase
from edge_agent.filters.engine import DeviceFilters, kinds_in_use, warm_up
from edge_agent.filters.snapshot import restore_snapshots, save_snapshot
from edge_agent.filters.stage import DeviceStage
from edge_agent.frame import fastpack
from edge_agent.frame.builder import build_frames
from edge_agent.frame.model import Block, Frame
from edge_agent.metadata import build_meta
from edge_agent.metrics import serve as serve_metrics
from edge_agent.reload import plan_reload
from edge_agent.samples import Batch
from edge_agent.sdnotify import Notifier, watchdog_interval_s
from edge_agent.spool import AsyncSpool, Limits
from edge_agent.uplink.mqtt import MqttUplink

log = logging.getLogger("edge_agent")

SHUTDOWN_GRACE_S = 3.0
FILTER_SNAPSHOT_S = 300.0  # how much learning a crash (not a clean stop) can cost at most


@dataclass
class Counters:
    points_in: int = 0
    frames_spooled: int = 0
    points_spooled: int = 0
    blocked_s: float = 0.0  # time the spool was full under the block policy
    started_ns: int = field(default_factory=time.monotonic_ns)


# Allocations between collections of the youngest generation (CPython's default is 700).
GC_GEN0_THRESHOLD = 50_000


def settle_gc() -> None:
    """Freeze what start-up built and collect the young generation less often.

    Start-up objects (numba and its compiled kernels, pydantic models, the config) live for the whole
    run: frozen, no collection walks them again. Per-poll garbage (asyncio handles, protocol decode
    objects) dies by reference counting long before 50,000 allocations; collecting every 700 walked
    it anyway, which was a third of the agent's CPU on a busy OPC UA subscription
    (benchmarks/opcua_bench.py --gc-threshold). Real cycles are still collected, only later.

    Only the young generations are collected before the freeze: a full collection walked all ~90,000
    start-up objects (numba, pydantic) for the ~20 unreachable ones among them, 40-60 ms before the
    first poll on a 2-core machine; those few now stay, frozen.
    """
    gc.collect(1)
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)


def _batcher_entry(d: DeviceBase) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    return d.name, tuple(t.name for t in d.tags), plugins()[d.protocol].tag_types(d)


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
        self.filters = {d.name: DeviceFilters(d, cfg.filters) for d in cfg.devices}
        restore_snapshots(cfg.agent.state_dir, self.filters)
        self._stages: dict[str, DeviceStage] = {}
        self._event_tasks: set[asyncio.Task[None]] = set()
        self._snapshot_due = time.monotonic() + FILTER_SNAPSHOT_S
        self.batcher = Batcher(
            [_batcher_entry(d) for d in cfg.devices], cfg.batch.max_points, cfg.batch.max_interval,
            self._on_batch_closed,
        )
        self.sink = Sink(self)
        self.drivers: dict[str, Driver] = {d.name: registry[d.protocol].create(d, self.sink) for d in cfg.devices}
        self._driver_tasks: dict[str, asyncio.Task[None]] = {}
        self.uplink = self._make_uplink(cfg)
        self._uplink_task: asyncio.Task[None] | None = None
        self._uplink_restart = asyncio.Event()
        self.notifier = Notifier()
        self.loop_lag_s = 0.0
        self._closed: asyncio.Queue[list[Block]] = asyncio.Queue()

    def _make_uplink(self, cfg: Config) -> MqttUplink:
        return MqttUplink(cfg.uplink, cfg.agent.id, self.spool, boot=self.boot.hex(), version=__version__,
                          config_digest=cfg.digest[:16], meta=self._meta(cfg))

    def _meta(self, cfg: Config) -> dict[str, object]:
        return build_meta(cfg, self.boot.hex(), __version__)

    def _on_poll(self, batch: Batch) -> None:
        batches, blocks, events = self._stage(batch.device).run(batch)
        self.counters.points_in += batch.points
        for part in batches:
            self.batcher.add(part)
        if blocks:
            self.batcher.add_blocks(blocks)
        if events:
            # Published at once through the spool (durable across an outage), not held for the batch.
            task = asyncio.get_running_loop().create_task(self._store_events(events))
            self._event_tasks.add(task)
            task.add_done_callback(self._event_tasks.discard)
        if time.monotonic() >= self._snapshot_due:
            self._snapshot_due = time.monotonic() + FILTER_SNAPSHOT_S
            asyncio.get_running_loop().run_in_executor(None, self._save_filter_state, self._filter_snapshots())

    def _stage(self, device: str) -> DeviceStage:
        """The device's filters + events + adaptive reporting; rebuilt when a reload replaced its filters."""
        stage = self._stages.get(device)
        if stage is None or stage.engine is not self.filters[device]:
            dev = self.cfg.device(device)
            stage = DeviceStage(self.filters[device], dev, self.cfg.reporting, _batcher_entry(dev)[2])
            self._stages[device] = stage
        return stage

    async def _store_events(self, events: list[dict[str, object]]) -> None:
        for event in events:
            await self.spool.add_event(event)

    def _filter_snapshots(self) -> dict[str, dict]:
        return {name: f.snapshot() for name, f in self.filters.items() if f.active}

    def _save_filter_state(self, snapshots: dict[str, dict]) -> None:
        for name, arrays in snapshots.items():
            try:
                save_snapshot(self.cfg.agent.state_dir, name, arrays)
            except OSError as exc:
                log.warning("%s: cannot save the filter state (%s); it will be re-learned after a restart",
                            name, exc.strerror or exc)

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

        up = self.cfg.uplink  # read per batch: a reload may change compression
        zstd = up.zstd_level if up.compression == "zstd" else None

        def build(first_seq: int) -> list[tuple[bytes, int, int]]:
            return build_frames(blocks, first_seq, make, self.cfg.batch.max_frame_bytes, zstd)

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

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None,
                  reload: asyncio.Queue[Config] | None = None) -> None:
        """Run until `stop` is set, then flush every polled sample into the spool and return.

        Configs put on `reload` (already validated) are applied live: see `apply`.
        """
        await asyncio.to_thread(warm_up, kinds_in_use(self.cfg.devices, self.cfg.filters))
        await asyncio.to_thread(fastpack.warm_up)
        await asyncio.to_thread(batcher_warm_up)
        settle_gc()
        await self.spool.open()
        last = await self.spool.last_seq()
        depth = await self.spool.depth()
        log.info(
            "edge-agent %s starting: agent %s, boot %s, %d devices, spool %s (%d frames waiting, next seq %d)",
            __version__, self.cfg.agent.id, self.boot.hex(), len(self.drivers), self.spool.path,
            depth.frames, last + 1,
        )
        if self.cfg.metrics.enabled:
            try:
                serve_metrics(self, self.cfg.metrics.host, self.cfg.metrics.port)
            except OSError as exc:  # a busy port must not stop the data: say so and run without metrics
                log.error("metrics: cannot listen on %s (%s); running without the metrics endpoint",
                          self.cfg.metrics.listen, exc.strerror or exc)
        for name, drv in self.drivers.items():
            self._driver_tasks[name] = asyncio.create_task(drv.run(), name=f"device:{name}")
        writer = asyncio.create_task(self._spool_writer(), name="spool-writer")
        self._uplink_task = asyncio.create_task(self._uplink_supervisor(), name="uplink")
        heartbeat = asyncio.create_task(self._heartbeat(), name="heartbeat")
        reloader = asyncio.create_task(self._reloads(reload), name="reload") if reload is not None else None
        self.notifier.send(READY=1, STATUS=self.status_line())
        if ready is not None:
            ready.set()
        try:
            # The writer and uplink only ever end by failing; that is a bug, and must not go unnoticed.
            stopper = asyncio.create_task(stop.wait())
            while not stop.is_set():
                core = [stopper, writer, self._uplink_task]
                done, _ = await asyncio.wait(core, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {stopper}:
                    exc = None if task.cancelled() else task.exception()
                    raise RuntimeError(f"{task.get_name()} stopped unexpectedly: {exc!r}") from exc
        finally:
            self.notifier.send(STOPPING=1)
            heartbeat.cancel()
            if reloader is not None:
                reloader.cancel()
            await self._shutdown(list(self._driver_tasks.values()), writer, self._uplink_task)

    async def _uplink_supervisor(self) -> None:
        """Runs the uplink, and replaces it when a reload changes [uplink]; the spool keeps the data."""
        while True:
            inner = asyncio.create_task(self.uplink.run(), name="uplink-session")
            restart = asyncio.create_task(self._uplink_restart.wait())
            try:
                done, _ = await asyncio.wait([inner, restart], return_when=asyncio.FIRST_COMPLETED)
            finally:
                restart.cancel()
                if not inner.done():
                    inner.cancel()
                    await asyncio.gather(inner, return_exceptions=True)
            if inner in done:
                inner.result()  # run() only ends by failing: let the agent see it
            self._uplink_restart.clear()
            old, self.uplink = self.uplink, self._make_uplink(self.cfg)
            self.uplink.inherit(old)

    async def quiesce(self, timeout_s: float) -> bool:
        """Stop polling, spool the open batch and wait until the broker acknowledged everything.

        For a clean hand-over (the demo's end, a planned maintenance): returns False when frames
        still wait after `timeout_s`; they stay in the spool either way.
        """
        for task in self._driver_tasks.values():
            task.cancel()
        await asyncio.gather(*self._driver_tasks.values(), return_exceptions=True)
        self.batcher.close()
        await self._closed.join()
        deadline = time.monotonic() + timeout_s
        while (await self.spool.depth()).frames and time.monotonic() < deadline:
            self.spool.room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.spool.room.wait(), max(0.01, deadline - time.monotonic()))
        return (await self.spool.depth()).frames == 0

    def status_line(self) -> str:
        """One line for systemctl status: devices up, rate, spool depth."""
        up = sum(1 for d in self.drivers.values() if d.stats.connected)
        elapsed = max((time.monotonic_ns() - self.counters.started_ns) / 1e9, 1e-9)
        depth = self.spool.spool.depth() if self.spool.is_open else None
        spool = f"spool {depth.frames} frames" if depth else "spool closed"
        uplink = "uplink up" if self.uplink.connected else "uplink down"
        return (f"devices {up}/{len(self.drivers)} up, {self.counters.points_in / elapsed:.0f} points/s, "
                f"{spool}, {uplink}")

    async def _heartbeat(self, period_s: float = 5.0) -> None:
        """Watchdog pings come from the event loop itself: if the loop blocks, systemd restarts us.

        Every 5 s (or the watchdog's half period, if shorter): often enough for STATUS= and for the
        loop-lag gauge to show a stall, and an idle agent does not wake up just to say it is alive.
        """
        watchdog = watchdog_interval_s()
        period_s = min(period_s, watchdog) if watchdog else period_s
        last_status = 0.0
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(period_s)
            self.loop_lag_s = max(0.0, time.monotonic() - t0 - period_s)
            fields: dict[str, object] = {"WATCHDOG": 1} if watchdog else {}
            if self.notifier.enabled and time.monotonic() - last_status >= 5:
                fields["STATUS"] = self.status_line()
                last_status = time.monotonic()
            if fields:
                self.notifier.send(**fields)

    async def _reloads(self, queue: asyncio.Queue[Config]) -> None:
        while True:
            cfg = await queue.get()
            self.notifier.send(RELOADING=1, STATUS="reloading the config")
            try:
                await self.apply(cfg)
            finally:
                self.notifier.send(READY=1, STATUS=self.status_line())

    async def apply(self, new: Config) -> None:
        """Apply a new, valid config without a restart and without losing a sample.

        Devices added, removed or changed are started, stopped or restarted; the others keep
        polling untouched (their filter state too). The open batch is flushed to the spool first, so
        no sample is held under the old layout. A changed uplink reconnects (the spool keeps
        everything meanwhile). [agent] and [spool] changes need a restart and are reported.
        """
        old = self.cfg
        plan = plan_reload(old, new)
        # A filter kind new to this run is loaded (or compiled) here, off the event loop, not by the
        # first poll that reaches it.
        await asyncio.to_thread(warm_up, kinds_in_use(new.devices, new.filters))
        for section in plan.needs_restart:
            log.warning("reload: [%s] changed; that takes effect at the next restart", section)
        for name in (*plan.removed, *plan.changed):
            task = self._driver_tasks.pop(name, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        replaced = (*plan.removed, *plan.changed, *plan.refiltered)
        for name in replaced:  # rows adaptive reporting still holds, and open aggregates, go out first
            stage = self._stages.pop(name, None)
            if stage is not None:
                self.batcher.add_blocks(stage.flush())
        # Learned filter state survives the reload where the filter itself did not change: save it
        # under the old config, and let the new filters take back what still fits them.
        await asyncio.to_thread(self._save_filter_state,
                                {n: self.filters[n].snapshot() for n in replaced if self.filters[n].active})
        self.batcher.close()
        registry = plugins()
        devices = {d.name: d for d in new.devices}
        for name in plan.removed:
            del self.drivers[name]
            del self.filters[name]
        for name in (*plan.added, *plan.changed):
            dev = devices[name]
            self.filters[name] = DeviceFilters(dev, new.filters)
            self.drivers[name] = registry[dev.protocol].create(dev, self.sink)
        for name in plan.refiltered:
            self.filters[name] = DeviceFilters(devices[name], new.filters)
        restore_snapshots(old.agent.state_dir, {n: self.filters[n] for n in (*plan.changed, *plan.refiltered)})
        self.batcher.reconfigure([_batcher_entry(d) for d in new.devices], new.batch.max_points,
                                 new.batch.max_interval)
        self.cfg = replace(new, agent=old.agent, spool=old.spool)
        for name in (*plan.added, *plan.changed):
            self._driver_tasks[name] = asyncio.create_task(self.drivers[name].run(), name=f"device:{name}")
        if plan.uplink_changed:
            self._uplink_restart.set()  # the new uplink announces the new config when it connects
        else:
            self.uplink.update_config(new.digest[:16], self._meta(self.cfg))
        log.info("reload: config %s applied: %d devices added, %d removed, %d changed, %d kept%s",
                 new.digest[:16], len(plan.added), len(plan.removed), len(plan.changed), len(plan.kept),
                 ", uplink reconnected" if plan.uplink_changed else "")

    async def _shutdown(self, drivers: list[asyncio.Task], writer: asyncio.Task, uplink: asyncio.Task | None) -> None:
        for t in drivers:
            t.cancel()
        await asyncio.gather(*drivers, return_exceptions=True)
        for stage in self._stages.values():  # rows adaptive reporting still held, and open aggregates
            self.batcher.add_blocks(stage.flush())
        self.batcher.close()  # the open batch goes to the spool like any other
        try:
            await asyncio.wait_for(self._closed.join(), SHUTDOWN_GRACE_S)
        except TimeoutError:
            log.error("shutdown: %d batches could not be spooled within %.0fs (spool full under the block "
                      "policy?): their points are lost", self._closed.qsize() + 1, SHUTDOWN_GRACE_S)
        writer.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.uplink.announce_offline(), 1.0)
        if uplink is not None:
            uplink.cancel()
        await asyncio.gather(writer, *([uplink] if uplink else []), return_exceptions=True)
        try:
            await asyncio.wait_for(self.uplink.flush_acks(), 1.0)
        except Exception as exc:  # acked frames left behind are sent again: duplicates, never loss
            log.warning("shutdown: could not record the last acknowledgements (%s)", exc)
        await asyncio.gather(*self._event_tasks, return_exceptions=True)
        await asyncio.to_thread(self._save_filter_state, self._filter_snapshots())
        depth = await self.spool.depth()
        await self.spool.close()
        skipped = sum(d.stats.skipped_ticks for d in self.drivers.values())
        log.info(
            "stopped: %d points polled, %d ticks skipped, %d frames spooled, %d published; "
            "%d frames (%d points) wait in the spool",
            self.counters.points_in, skipped, self.counters.frames_spooled, self.uplink.frames_out,
            depth.frames, depth.points,
        )
