"""Publishes spooled frames over MQTT (QoS 1) and deletes each one only after its PUBACK.

No timeout ever counts as delivered: a publish waits for its PUBACK as long as the connection lives
(a peer that gave up after 1 s lost 42-44 s of data on a silently dead link). A dead link is noticed
by MQTT keepalive; the connection is then dropped, and every unacknowledged frame is still in the
spool and goes out again, oldest first, on the next connection. Consumers dedupe by (agent, seq).
Publishes run in a window of `inflight` unacknowledged frames, never one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math

import aiomqtt

from edge_agent.backoff import Backoff
from edge_agent.config.models import UplinkSection
from edge_agent.spool import AsyncSpool

log = logging.getLogger("edge_agent.uplink")


class MqttUplink:
    def __init__(self, cfg: UplinkSection, agent_id: str, spool: AsyncSpool):
        self.cfg = cfg
        self.spool = spool
        self.topic = f"{cfg.topic_prefix}/{agent_id}/data"
        self.client_id = cfg.client_id or f"edge-agent-{agent_id}"
        self._backoff = Backoff(cfg.reconnect_min, cfg.reconnect_max)
        self.connected = False
        self.frames_out = 0
        self.bytes_out = 0
        self.points_out = 0
        self.connects = 0
        self.connect_failures = 0
        self._acked: list[int] = []
        self._ack_event = asyncio.Event()

    async def run(self) -> None:
        """Connect, drain the spool, reconnect on any failure, until cancelled."""
        target = f"{self.cfg.host}:{self.cfg.port}"
        while True:
            try:
                async with aiomqtt.Client(
                    self.cfg.host,
                    self.cfg.port,
                    identifier=self.client_id,
                    keepalive=max(1, round(self.cfg.keepalive / 1e9)),
                    max_inflight_messages=self.cfg.inflight,
                    max_queued_outgoing_messages=self.cfg.inflight,
                    timeout=10,
                ) as client:
                    self.connected = True
                    self.connects += 1
                    log.info("uplink connected to mqtt://%s as %s", target, self.client_id)
                    self._backoff.reset()
                    await self._session(client)
            except aiomqtt.MqttError as exc:
                delay = self._backoff.next_delay_s()
                was = "lost" if self.connected else "cannot connect to"
                self.connect_failures += not self.connected
                log.warning("uplink %s mqtt://%s (%s); retrying in %.1fs", was, target, exc, delay)
                self.connected = False
                await asyncio.sleep(delay)
            finally:
                self.connected = False

    async def _session(self, client: aiomqtt.Client) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch(client))
                tg.create_task(self._flush_acks())
                await self._send(client, tg)
        except BaseExceptionGroup as group:
            lost = [e for e in group.exceptions if isinstance(e, aiomqtt.MqttError)]
            if lost:
                raise lost[0] from None
            raise

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        # The message iterator raises MqttError as soon as the connection drops; that ends the
        # session's task group, including publishes still waiting for a PUBACK that will never come.
        async for _ in client.messages:
            pass

    async def _send(self, client: aiomqtt.Client, tg: asyncio.TaskGroup) -> None:
        window = asyncio.Semaphore(self.cfg.inflight)
        last = 0
        while True:
            self.spool.changed.clear()  # cleared before the query: an append after it still wakes us
            rows = await self.spool.pending(last, self.cfg.inflight)
            if not rows:
                await self.spool.changed.wait()
                continue
            for seq, data in rows:
                await window.acquire()
                tg.create_task(self._publish(client, window, seq, data))
                last = seq

    async def _publish(self, client: aiomqtt.Client, window: asyncio.Semaphore, seq: int, data: bytes) -> None:
        try:
            await client.publish(self.topic, data, qos=1, timeout=math.inf)
        finally:
            window.release()
        self.frames_out += 1
        self.bytes_out += len(data)
        self._acked.append(seq)
        self._ack_event.set()

    async def _flush_acks(self) -> None:
        """Delete acknowledged frames in groups: one spool transaction for many PUBACKs."""
        while True:
            await self._ack_event.wait()
            self._ack_event.clear()
            await self.flush_acks()

    async def flush_acks(self) -> None:
        if self._acked:
            seqs, self._acked = self._acked, []
            await self.spool.delete(seqs)


