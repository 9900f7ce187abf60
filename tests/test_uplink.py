"""The uplink against a real mosquitto through a relay: spool while the broker is unreachable, replay
oldest first, and never delete a frame that was not acknowledged, even on a silently dead link."""

from __future__ import annotations

import asyncio
import time

from edge_agent.config.models import UplinkSection
from edge_agent.spool import AsyncSpool
from edge_agent.uplink.mqtt import MqttUplink
from tests.conftest import async_wait_for, free_port
from tests.mqtt_consumer import Consumer
from tests.relay import Relay


def payload(seq: int) -> bytes:
    return f"frame {seq:05d}".encode() * 20


async def append(spool: AsyncSpool, n: int) -> None:
    for _ in range(n):
        await spool.append(lambda seq: [(payload(seq), 1, time.time_ns())])


async def test_spools_while_unreachable_then_replays_in_order_and_survives_a_dead_link(broker, tmp_path):
    relay_port = free_port()
    consumer = Consumer(broker, topic="edge/test/data")
    spool = AsyncSpool(tmp_path / "spool.db")
    await spool.open()
    cfg = UplinkSection(url=f"mqtt://127.0.0.1:{relay_port}", keepalive="1s", inflight=4,
                        reconnect_min="50ms", reconnect_max="200ms")
    uplink = MqttUplink(cfg, "test", spool)
    task = asyncio.create_task(uplink.run())
    relay = Relay(relay_port, broker)
    try:
        await append(spool, 20)
        # Nothing listens on the relay port yet: the uplink is refused and keeps trying.
        await async_wait_for(lambda: uplink.connect_failures >= 2, 10, "failed connection attempts")
        assert (await spool.depth()).frames == 20

        await relay.start()
        await append(spool, 5)
        await async_wait_for(lambda: len(consumer.received()) >= 25, 15, "25 frames at the consumer")
        assert consumer.received()[:25] == [payload(s) for s in range(1, 26)]  # oldest first, in order
        depth = 1
        while depth:
            depth = (await spool.depth()).frames
            await asyncio.sleep(0.02)

        # Silently dead link: sockets stay open, nothing passes. Nothing may be deleted.
        relay.blackhole()
        await append(spool, 5)
        await async_wait_for(lambda: not uplink.connected, 10, "keepalive to notice the dead link")
        assert (await spool.depth()).frames == 5
        relay.cut()
        relay.restore()
        await async_wait_for(lambda: len(set(consumer.received())) >= 30, 15, "the 5 frames after the link came back")
        assert set(consumer.received()) == {payload(s) for s in range(1, 31)}
        await async_wait_for(lambda: uplink.connected, 10, "reconnection")
        for _ in range(500):
            if (await spool.depth()).frames == 0:
                break
            await asyncio.sleep(0.02)
        assert (await spool.depth()).frames == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await relay.stop()
        await spool.close()
        consumer.close()
