"""A persistent-session MQTT consumer for tests: the way a cloud ingest would subscribe."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt

from tests.conftest import wait_for


class Consumer:
    def __init__(self, port: int, topic: str = "edge/+/data", client_id: str = "test-consumer",
                 tls_ca: str | None = None, username: str | None = None, password: str | None = None):
        self.payloads: list[bytes] = []
        self.by_topic: dict[str, list[bytes]] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(0.1, 1)  # the broker may be killed and restarted under us
        if tls_ca:
            self.client.tls_set(ca_certs=tls_ca)
        if username:
            self.client.username_pw_set(username, password)
        topics = [(t, 1) for t in topic.split(",")]
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topics)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        wait_for(self._subscribed.is_set, 10, "the consumer's subscription")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if msg.topic.endswith("/data"):
                self.payloads.append(bytes(msg.payload))
            self.by_topic.setdefault(msg.topic, []).append(bytes(msg.payload))

    def received(self) -> list[bytes]:
        with self._lock:
            return list(self.payloads)

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return list(self.by_topic.get(topic, []))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
