"""aiomqtt's client, plus the one thing it throws away: the PUBACK reason code.

Under MQTT 5 a broker that refuses a publish (an ACL that denies the topic, a quota) still answers
with a PUBACK, whose reason code says "not authorized". Counting that as delivered would delete the
frame from the spool and lose it, so the uplink must see the code. aiomqtt 2.x drops it in
`_on_publish`; this subclass records it per message id. It leans on aiomqtt internals, which is why
pyproject pins aiomqtt below 3 and why it lives alone in this module.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode


class AckClient(aiomqtt.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._puback_reasons: dict[int, ReasonCode] = {}

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Any) -> None:
        self._puback_reasons[mid] = reason_code  # before the waiter wakes up and looks for it
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_acked(self, topic: str, payload: bytes, retain: bool = False) -> ReasonCode | None:
        """QoS 1 publish that waits for the PUBACK however long it takes and returns its reason code.

        Waiting has no timeout on purpose: a publish is over only when the broker answers or the
        connection dies. A dead connection raises MqttError here, so every caller (the birth and
        metadata announcements too, not only the session's publishes, which a watcher task ends)
        is woken: some brokers close the link right after refusing a publish (mosquitto over TLS
        does), and a waiter nobody wakes would stall the uplink with frames waiting in the spool.
        """
        info = self._client.publish(topic, payload, 1, retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        if not info.is_published():
            confirmation = asyncio.Event()
            with self._pending_call(info.mid, confirmation, self._pending_publishes):
                # The disconnect wakes the same event (no extra task: a PUBACK read together with the
                # broker's close must still win over the session's watcher, or its reason is lost).
                disconnected = self._disconnected

                def wake(_: object) -> None:
                    confirmation.set()

                disconnected.add_done_callback(wake)
                try:
                    await confirmation.wait()
                finally:
                    disconnected.remove_done_callback(wake)
            if not info.is_published() and info.mid not in self._puback_reasons:
                raise aiomqtt.MqttError("connection lost before the broker acknowledged the publish")
        return self._puback_reasons.pop(info.mid, None)

    def forget_disconnect(self) -> None:
        """Retrieve the disconnect reason aiomqtt stores, so asyncio does not log it as never retrieved."""
        fut = self._disconnected
        if fut.done() and not fut.cancelled():
            fut.exception()
