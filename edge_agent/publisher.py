"""Publish asset health: every state change at once, otherwise at most once per interval.

:class:`HealthPublisher` decides *when* (latest value wins; a pending update goes out when
its asset's interval has passed), a :class:`HealthSink` does the sending: :class:`MqttHealthSink`
publishes retained QoS 1 messages, :class:`MemoryHealthSink` records them for tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import paho.mqtt.client as mqtt

from edge_agent import topics
from edge_agent.messages import Health

logger = logging.getLogger(__name__)


class HealthSink(Protocol):
    """Where health messages go (retained, QoS 1)."""

    def publish(self, topic: str, payload: bytes) -> None:
        """Send one retained message."""


class MemoryHealthSink:
    """In-memory twin of :class:`MqttHealthSink`: keeps every message sent."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes) -> None:
        """Record one message."""
        self.messages.append((topic, payload))


class MqttHealthSink:
    """Publish retained QoS 1 messages with a connected (or reconnecting) paho client.

    While the broker is away paho queues the messages and sends them after reconnecting.
    """

    def __init__(self, client: mqtt.Client) -> None:
        self._client = client

    def publish(self, topic: str, payload: bytes) -> None:
        """Queue one retained QoS 1 message."""
        info = self._client.publish(topic, payload, qos=1, retain=True)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            logger.warning("health publish on %s failed: %s", topic, mqtt.error_string(info.rc))


class HealthPublisher:
    """Rate-limit health messages per asset.

    Parameters
    ----------
    sink
        Where messages go.
    site_id
        Site of the topics.
    min_interval_s
        Least time between two messages of one asset that do not change its state.
    clock
        Monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        sink: HealthSink,
        site_id: str,
        min_interval_s: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._site = site_id
        self._interval = min_interval_s
        self._clock = clock
        self._sent_at: dict[str, float] = {}
        self._pending: dict[str, Health] = {}
        self._latest: dict[str, Health] = {}

    def offer(self, health: Health, *, changed: bool) -> None:
        """Send ``health`` now if its state changed or the interval has passed, else hold it."""
        asset = health.asset_id
        self._latest[asset] = health
        last = self._sent_at.get(asset)
        if changed or last is None or self._clock() - last >= self._interval:
            self._send(health)
        else:
            self._pending[asset] = health

    def flush(self) -> None:
        """Send held messages whose asset's interval has passed."""
        now = self._clock()
        for asset, health in list(self._pending.items()):
            if now - self._sent_at.get(asset, -float("inf")) >= self._interval:
                self._send(health)

    def republish_all(self) -> None:
        """Send the latest message of every asset again (after a reconnection)."""
        for health in list(self._latest.values()):
            self._send(health)

    def _send(self, health: Health) -> None:
        self._pending.pop(health.asset_id, None)
        self._sent_at[health.asset_id] = self._clock()
        self._sink.publish(topics.health_topic(self._site, health.asset_id), health.to_payload())
