"""Publishes spooled frames and events over MQTT (QoS 1); deletes each only after a good PUBACK.

No timeout ever counts as delivered: a publish waits for its PUBACK as long as the connection lives
(a peer that gave up after 1 s lost 42-44 s of data on a silently dead link). A dead link is noticed
by MQTT keepalive; the connection is then dropped, and every unacknowledged frame is still in the
spool and goes out again on the next connection. Consumers dedupe by (agent, seq).

After an outage the backlog goes out oldest first while live frames keep flowing: the two share the
in-flight window (`backlog_share`), and a live frame never waits longer than `live_max_delay`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import ssl
import time

import aiomqtt

from edge_agent.backoff import Backoff
from edge_agent.config.models import UplinkSection
from edge_agent.spool import AsyncSpool
from edge_agent.uplink.client import AckClient

log = logging.getLogger("edge_agent.uplink")


# After the broker refused the metadata message, connections skip it for this long.
META_RETRY_AFTER_REFUSAL_S = 600.0


class PublishRefused(aiomqtt.MqttError):
    """The broker answered a publish with a failure reason code (MQTT 5): nothing was delivered."""


class MqttUplink:
    def __init__(self, cfg: UplinkSection, agent_id: str, spool: AsyncSpool, *,
                 boot: str = "", version: str = "", config_digest: str = "",
                 meta: dict[str, object] | None = None):
        self.cfg = cfg
        self.spool = spool
        base = f"{cfg.topic_prefix}/{agent_id}"
        self.topic, self.events_topic, self.status_topic = f"{base}/data", f"{base}/events", f"{base}/status"
        self.meta_topic = f"{base}/meta"
        self._meta = meta  # retained tag metadata (edge_agent/metadata.py), published before the birth
        self._meta_task: asyncio.Task[None] | None = None
        self._meta_refused_at: float | None = None  # monotonic time the broker last refused it
        self.client_id = cfg.client_id or f"edge-agent-{agent_id}"
        self._identity = {"agent": agent_id, "boot": boot}
        self._birth = {"state": "online", **self._identity, "version": version, "config": config_digest}
        self._backoff = Backoff(cfg.reconnect_min, cfg.reconnect_max)
        self.connected = False
        self.frames_out = 0
        self.points_out = 0
        self.bytes_out = 0
        self.events_out = 0
        self.connects = 0
        self.connect_failures = 0
        self.refused = 0
        self._acked: list[int] = []
        self._acked_events: list[int] = []
        self._ack_event = asyncio.Event()
        self._client: AckClient | None = None
        self._target = f"{'mqtts' if cfg.tls else 'mqtt'}://{cfg.host}:{cfg.port}"
        if cfg.tls and not cfg.verify_hostname:
            log.warning("uplink: TLS hostname verification is OFF for %s (verify_hostname = false)", self._target)
        if cfg.protocol == "3.1.1":
            log.info("uplink: MQTT 3.1.1 cannot tell a refused publish from a delivered one; MQTT 5 can")

    def inherit(self, old: MqttUplink) -> None:
        """Carry the counters over when a reload replaces the uplink: metrics count from the start."""
        for name in ("frames_out", "points_out", "bytes_out", "events_out", "connects", "connect_failures", "refused"):
            setattr(self, name, getattr(old, name))

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.cfg.tls:
            return None
        ctx = ssl.create_default_context(cafile=str(self.cfg.ca_file) if self.cfg.ca_file else None)
        ctx.check_hostname = self.cfg.verify_hostname
        if self.cfg.cert_file is not None:
            ctx.load_cert_chain(str(self.cfg.cert_file), str(self.cfg.key_file))
        return ctx

    def _client_for(self) -> AckClient:
        cfg = self.cfg
        v5 = cfg.protocol == "5"
        offline = json.dumps({"state": "offline", **self._identity}).encode()
        client = AckClient(
            cfg.host, cfg.port,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            username=cfg.username,
            password=cfg.password(),
            will=aiomqtt.Will(self.status_topic, offline, qos=1, retain=True),
            tls_context=self._tls_context(),
            keepalive=cfg.keepalive // 1_000_000_000,
            max_inflight_messages=cfg.inflight,
            max_queued_outgoing_messages=cfg.inflight + 4,
            timeout=10,
            # The spool, not the broker, remembers what is unacknowledged: start each session clean.
            **({"clean_start": True} if v5 else {"clean_session": True}),
        )
        client.pending_calls_threshold = cfg.inflight + 8  # a full window is the plan, not a warning sign
        return client

    async def run(self) -> None:
        """Connect, drain the spool, reconnect on any failure, until cancelled."""
        while True:
            client: AckClient | None = None
            try:
                client = self._client_for()
                async with client:
                    self._client = client
                    self.connected = True
                    self.connects += 1
                    await self._announce(client)
                    log.info("uplink connected to %s as %s (MQTT %s)", self._target, self.client_id, self.cfg.protocol)
                    # The backoff resets on the first acknowledged delivery, not here: a broker that
                    # accepts the connection and then refuses every publish must not be hammered.
                    await self._session(client)
            except (aiomqtt.MqttError, ssl.SSLError, OSError, ValueError) as exc:
                delay = self._backoff.next_delay_s()
                if self.connected:
                    what = "lost"
                else:
                    what = "cannot connect to"
                    self.connect_failures += 1
                detail = str(exc) or type(exc).__name__
                if isinstance(exc, OSError) and exc.filename:  # a missing ca_file, cert_file or key_file
                    detail = f"{exc.strerror}: {exc.filename}"
                if isinstance(exc, PublishRefused):
                    what = "refused by"
                log.warning("uplink %s %s (%s); data stays in the spool; retrying in %.1fs",
                            what, self._target, detail, delay, extra={"every_attempt": True})
                self.connected = False
                self._client = None
                await asyncio.sleep(delay)
            finally:
                self.connected = False
                self._client = None
                if client is not None:
                    client.forget_disconnect()

    async def _announce(self, client: AckClient) -> None:
        """Metadata first, then the birth: a consumer that sees a birth naming a config digest finds
        the metadata of that same config already retained."""
        refused_lately = (self._meta_refused_at is not None
                          and time.monotonic() - self._meta_refused_at < META_RETRY_AFTER_REFUSAL_S)
        if self._meta is not None and not refused_lately:
            payload = json.dumps(self._meta).encode()
            try:
                reason = await client.publish_acked(self.meta_topic, payload, retain=True)
            except aiomqtt.MqttError:
                # The link died under the metadata: a broker that refuses it may close the link before
                # its PUBACK is read. Skipping it for a while costs a late description, never data.
                self._meta_refused_at = time.monotonic()
                raise
            if reason is not None and reason.is_failure:
                # Data matters more than its description (e.g. an ACL or a message size cap): some
                # brokers also drop the link after a refusal (mosquitto over TLS), so the next
                # connections skip the metadata for a while instead of losing every one to it.
                self._meta_refused_at = time.monotonic()
                log.warning("uplink: broker refused the metadata message on %s (%s, %d bytes); frames still "
                            "flow, the metadata is offered again in %.0f min or after a reload",
                            self.meta_topic, reason, len(payload), META_RETRY_AFTER_REFUSAL_S / 60)
        reason = await client.publish_acked(self.status_topic, json.dumps(self._birth).encode(), retain=True)
        if reason is not None and reason.is_failure:
            raise PublishRefused(f"broker refused the birth message on {self.status_topic}: {reason}")

    def update_config(self, config_digest: str, meta: dict[str, object] | None) -> None:
        """A reload changed the config but not [uplink]: publish the new metadata and birth now on the
        live connection (a later connection publishes them anyway). Never waits: a reload must not
        hang on a dead link."""
        self._birth["config"] = config_digest
        self._meta = meta
        self._meta_refused_at = None  # a new config may well fit where the old one was refused
        client = self._client
        if client is None:
            return
        if self._meta_task is not None:
            self._meta_task.cancel()

        async def announce() -> None:
            try:
                await self._announce(client)
            except (aiomqtt.MqttError, OSError) as exc:  # the next connection announces again
                log.info("uplink: metadata after reload not published (%s); it goes out at the next connection",
                         exc)

        self._meta_task = asyncio.get_running_loop().create_task(announce())

    async def announce_offline(self) -> None:
        """On a clean shutdown the will is not sent; say it ourselves, best effort."""
        client = self._client
        if client is not None:
            offline = json.dumps({"state": "offline", **self._identity}).encode()
            await client.publish_acked(self.status_topic, offline, retain=True)

    async def _session(self, client: AckClient) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch(client))
                tg.create_task(self._flush_acks())
                await self._send(client, tg)
        except BaseExceptionGroup as group:
            # A refusal explains the lost link better than the lost link itself (a broker may close
            # the connection right after refusing a publish): report it first.
            lost = sorted((e for e in group.exceptions if isinstance(e, aiomqtt.MqttError)),
                          key=lambda e: not isinstance(e, PublishRefused))
            if lost:
                raise lost[0] from None
            raise

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        # The message iterator raises MqttError as soon as the connection drops; that ends the
        # session's task group, including publishes still waiting for a PUBACK that will never come.
        async for _ in client.messages:
            pass

    async def _send(self, client: AckClient, tg: asyncio.TaskGroup) -> None:
        cfg = self.cfg
        window = asyncio.Semaphore(cfg.inflight)
        live_from = await self.spool.last_seq()  # frames after this were made during this session
        backlog_cursor, live_cursor, event_cursor = 0, live_from, 0
        backlog: collections.deque[tuple[int, int, int, bytes]] = collections.deque()
        live: collections.deque[tuple[int, int, int, bytes]] = collections.deque()
        sent_backlog = sent_live = 0
        backlog_done = False
        while True:
            self.spool.changed.clear()  # cleared before the queries: an append after them still wakes us
            for event_id, payload in await self.spool.pending_events(event_cursor, cfg.inflight):
                await window.acquire()
                tg.create_task(self._publish(client, window, self.events_topic, payload, event_id=event_id))
                event_cursor = event_id
            if not live:
                live.extend(await self.spool.pending_with_points(live_cursor, cfg.inflight))
            if not backlog and not backlog_done:
                rows = [r for r in await self.spool.pending_with_points(backlog_cursor, cfg.inflight)
                        if r[0] <= live_from]
                backlog.extend(rows)
                backlog_done = not rows
            if not live and not backlog:
                await self.spool.changed.wait()
                continue
            # Pick the next frame: live when the backlog is done, when live has waited too long, or
            # when the backlog has had its share of the window; else the oldest backlog frame.
            take_live = bool(live) and (
                not backlog
                or time.time_ns() - live[0][1] > cfg.live_max_delay
                or sent_backlog > cfg.backlog_share * (sent_backlog + sent_live)
            )
            seq, _, points, data = live.popleft() if take_live else backlog.popleft()
            if take_live:
                live_cursor, sent_live = seq, sent_live + 1
            else:
                backlog_cursor, sent_backlog = seq, sent_backlog + 1
            await window.acquire()
            tg.create_task(self._publish(client, window, self.topic, data, seq=seq, points=points))

    async def _publish(self, client: AckClient, window: asyncio.Semaphore, topic: str, data: bytes,
                       seq: int | None = None, event_id: int | None = None, points: int = 0) -> None:
        try:
            reason = await client.publish_acked(topic, data)
        finally:
            window.release()
        if reason is not None and reason.is_failure:
            self.refused += 1
            what = f"frame {seq}" if seq is not None else f"event {event_id}"
            raise PublishRefused(f"broker refused {what} on {topic}: {reason}")
        if self._backoff.attempt:
            self._backoff.reset()
        if seq is not None:
            self.frames_out += 1
            self.points_out += points
            self.bytes_out += len(data)
            self._acked.append(seq)
        else:
            assert event_id is not None
            self.events_out += 1
            self._acked_events.append(event_id)
        self._ack_event.set()

    async def _flush_acks(self) -> None:
        """Delete acknowledged frames in groups: one spool transaction for many PUBACKs."""
        while True:
            await self._ack_event.wait()
            self._ack_event.clear()
            await self.flush_acks()

    async def flush_acks(self) -> None:
        if self._acked or self._acked_events:
            seqs, self._acked = self._acked, []
            events, self._acked_events = self._acked_events, []
            await self.spool.delete(seqs, events)
