"""Runs the demo: simulators, an embedded broker (or --broker), the agent, a consumer, a live view.

Halfway through, the link to the broker goes down for a few seconds: the spool fills, then drains
when the link returns, and the summary proves that every polled sample reached the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from edge_agent.config.loader import load_config
from edge_agent.demo.config import DEMO_TOML
from edge_agent.demo.consumer import Consumer
from edge_agent.demo.link import Link
from edge_agent.demo.view import Snapshot, View
from simulators.plant import anomaly_labels

if TYPE_CHECKING:
    from edge_agent.agent import Agent

OUTAGE_S = 5.0
SEED = 7
PROFILE = Path(__file__).with_name("plant.toml")
# The points the demo config watches with anomaly filters; anomalies injected elsewhere are not scored.
WATCHED = {("tank", "level"), ("kiln", "zone_temp")}
GRACE_NS = 2_000_000_000  # a detection up to 2 s after an anomaly's window still counts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _embedded_broker() -> tuple[object, int]:
    try:
        from amqtt.broker import Broker
    except ImportError:
        raise SystemExit(
            "edge-agent demo: the embedded broker needs the demo extra (pip install 'edge-agent[demo]'), "
            "or point the demo at a broker with --broker mqtt://HOST:PORT"
        ) from None
    port = _free_port()
    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    })
    await broker.start()
    return broker, port


async def run_demo(duration: float, broker_url: str | None, plain: bool | None = None) -> int:
    from edge_agent.agent import Agent  # late: imports numba, after NUMBA_CACHE_DIR is set
    from simulators.modbus.faults import Faults
    from simulators.modbus.server import ModbusSimServer
    from simulators.opcua.server import OpcUaSimServer
    from simulators.plant import DEFAULT_TICK_NS, PLANT, load_profile

    with tempfile.TemporaryDirectory(prefix="edge-agent-demo-") as tmp:
        _log_to(Path(tmp) / "demo.log")
        profile = load_profile(PROFILE)
        # Real PLCs misbehave: now and then an exception reply or a short reply, which the driver must
        # mark bad (quality) and retry, never turn into a wrong value.
        faults = Faults(exception_rate=0.005, short_rate=0.005, seed=SEED)
        sim = ModbusSimServer(seed=SEED, points=(*PLANT, *profile), faults=faults)
        await sim.start("127.0.0.1", 0)
        opcua = OpcUaSimServer(seed=SEED, points=profile)
        await opcua.start("127.0.0.1", 0)
        broker = None
        if broker_url:
            parts = urlsplit(broker_url)
            host, port, protocol = parts.hostname or "127.0.0.1", parts.port or 1883, "5"
        else:
            broker, port = await _embedded_broker()
            host, protocol = "127.0.0.1", "3.1.1"  # the embedded broker speaks MQTT 3.1.1
        link = Link(host, port)
        await link.start()
        config = Path(tmp) / "demo.toml"
        config.write_text(DEMO_TOML.format(state_dir=Path(tmp) / "state", broker_url=f"mqtt://127.0.0.1:{link.port}",
                                           protocol=protocol, modbus_port=sim.port, opcua_port=opcua.port))
        cfg = load_config(config)
        agent = Agent(cfg)
        consumer = Consumer(host, port)
        consumer_task = asyncio.create_task(consumer.run())
        stop, ready = asyncio.Event(), asyncio.Event()
        agent_task = asyncio.create_task(agent.run(stop, ready))
        await ready.wait()
        view = View(plain)
        t0, first_tick = time.monotonic(), time.time_ns() // DEFAULT_TICK_NS
        outage_at, outage_end = duration / 2, duration / 2 + OUTAGE_S
        session_drop_at, sessions_dropped = duration / 4, 0
        peak_spool, drained_in = 0, None
        phase = "polling and publishing"
        last = (0.0, 0, 0, 0)  # time, points, frames, bytes
        rates = (0.0, 0.0, 0.0)
        try:
            with view:
                while (elapsed := time.monotonic() - t0) < duration:
                    if not sessions_dropped and elapsed >= session_drop_at:
                        sessions_dropped = await opcua.drop_sessions()  # the OPC UA server drops its clients
                        phase = "OPC UA server dropped its sessions"
                    if link.up and outage_at <= elapsed < outage_end:
                        await link.down()
                        phase = f"broker unreachable for {OUTAGE_S:.0f} s"
                    elif not link.up and elapsed >= outage_end:
                        await link.start()
                        phase, drain_from = "link back: replaying the spool", time.monotonic()
                    depth = agent.spool.spool.depth()
                    if not link.up:
                        peak_spool = max(peak_spool, depth.frames)
                    elif phase.startswith("link back") and depth.frames == 0:
                        drained_in = time.monotonic() - drain_from
                        phase = f"spool drained in {drained_in:.1f} s, nothing lost"
                    now = time.monotonic()
                    if now - last[0] >= 1.0:
                        dt = now - last[0]
                        rates = ((consumer.points - last[1]) / dt, (consumer.frames - last[2]) / dt,
                                 (consumer.bytes - last[3]) / dt)
                        last = (now, consumer.points, consumer.frames, consumer.bytes)
                    view.update(_snapshot(agent, consumer, elapsed, duration, phase, rates))
                    await asyncio.sleep(0.25)
                view.update(_snapshot(agent, consumer, duration, duration, "draining: last frames out", rates))
                await agent.quiesce(15)
                left = agent.spool.spool.depth().points  # not lost: still waiting for a PUBACK
                stop.set()
                await agent_task
                published = agent.uplink.points_out
                await _until(lambda: consumer.points >= published, consumer.arrived, 10)
        finally:
            stop.set()
            for task in (agent_task, consumer_task):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            await link.down()
            await sim.stop()
            await opcua.stop()
            if broker is not None:
                await broker.shutdown()  # type: ignore[attr-defined]
        injected = anomaly_labels(profile, SEED, first_tick, time.time_ns() // DEFAULT_TICK_NS)
        found = score(injected, consumer.flagged_samples, WATCHED)
        polled = agent.counters.points_in
        lost = polled - consumer.points - left
        lines = [
            f"points polled:                 {polled:,}",
            f"points acknowledged by broker: {published:,}",
            f"points received (deduped):     {consumer.points:,} in {consumer.frames:,} frames, "
            f"{consumer.duplicates} duplicate frames dropped",
            f"points still in the spool:     {left:,}",
            f"points lost:                   {lost:,}",
            f"outage: spool peaked at {peak_spool} frames, drained in "
            + (f"{drained_in:.1f} s" if drained_in is not None else "(not within the run)"),
            f"wire: {consumer.bytes / max(consumer.points, 1):.2f} bytes/point",
            f"faults injected: {faults.injected['exception']} Modbus exception replies, {faults.injected['short']} "
            f"short replies, {sessions_dropped} OPC UA session(s) dropped; {consumer.bad:,} samples "
            "arrived with a bad quality code instead of a value",
            f"anomalies: {consumer.flagged} samples flagged; found {sum(found.values())} of {len(found)} injected "
            f"({_by_kind(found)})",
        ]
        view.summary(lines)
        return 0 if lost == 0 else 1


def score(labels: list[dict], flagged: list[tuple[str, str, int]],
          watched: set[tuple[str, str]]) -> dict[tuple[str, int], bool]:
    """Each injected anomaly on a watched point: was any sample of that point flagged inside its window?"""
    by_tag: dict[tuple[str, str], list[int]] = {}
    for device, tag, ts in flagged:
        by_tag.setdefault((device, tag), []).append(ts)
    out = {}
    for lab in labels:
        key = (lab["device"], lab["point"])
        if key not in watched:
            continue
        hits = by_tag.get(key, [])
        out[(lab["kind"], lab["start_ns"])] = any(lab["start_ns"] <= t <= lab["end_ns"] + GRACE_NS for t in hits)
    return out


def _by_kind(found: dict[tuple[str, int], bool]) -> str:
    kinds: dict[str, list[int]] = {}
    for (kind, _), hit in found.items():
        kinds.setdefault(kind, [0, 0])
        kinds[kind][0] += hit
        kinds[kind][1] += 1
    return ", ".join(f"{k} {h}/{n}" for k, (h, n) in sorted(kinds.items())) or "none in this run"


def _log_to(path: Path) -> None:
    """The live view is the demo's output: the agent's log lines go to a file instead of the screen."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


async def _until(condition: Callable[[], bool], changed: asyncio.Event, timeout_s: float) -> bool:
    """Wait for `condition`, re-checking whenever `changed` fires, at most `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        changed.clear()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), remaining)
    return True


def _snapshot(agent: Agent, consumer: Consumer, elapsed: float, duration: float, phase: str,
              rates: tuple[float, float, float]) -> Snapshot:
    devices = [(name, agent.cfg.device(name).protocol, d.stats.connected, d.stats.polls, d.stats.poll_errors)
               for name, d in agent.drivers.items()]
    depth = agent.spool.spool.depth()
    anomalies = [(a.ts, a.device, a.tag, a.filters, a.value) for a in consumer.anomalies]
    return Snapshot(elapsed, duration, phase, devices, agent.counters.points_in, consumer.points,
                    consumer.frames, consumer.bytes, depth.frames, depth.points, agent.uplink.connected,
                    anomalies, rates, consumer.flagged)
