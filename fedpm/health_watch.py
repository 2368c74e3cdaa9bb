"""Watch the edge agents' retained health messages and status (``fedpm/v1/{site}/...``)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

HEALTH_FILTER = "fedpm/v1/+/+/health"
STATUS_FILTER = "fedpm/v1/+/agent/status"


def _version(message: dict[str, Any]) -> int | None:
    """Registry version a health message names (``3``, ``"3"`` or ``"v3"``), if any."""
    raw = str(message.get("model_version", "")).lstrip("v")
    return int(raw) if raw.isdigit() else None


class HealthWatch:
    """Keeps the latest health message per (site, asset) and each agent's status."""

    def __init__(self, host: str, port: int) -> None:
        self.latest: dict[tuple[str, str], dict[str, Any]] = {}
        self.status: dict[str, str] = {}
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"fedpm-health-watch-{port}",
            protocol=mqtt.MQTTv5,
        )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe([(HEALTH_FILTER, 1), (STATUS_FILTER, 1)])

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if parts[3:] == ["agent", "status"]:
            with self._lock:
                self.status[parts[2]] = msg.payload.decode(errors="replace")
            return
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            return
        if len(parts) == 5 and isinstance(payload, dict):
            with self._lock:
                self.latest[(parts[2], parts[3])] = payload

    def start(self) -> None:
        """Connect and start the network thread."""
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()

    def wait_online(self, sites: list[str], timeout_s: float) -> None:
        """Wait until every site's agent said ``online`` (it has subscribed to its frames)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if all(self.status.get(s) == "online" for s in sites):
                    return
            time.sleep(0.1)
        with self._lock:
            missing = [s for s in sites if self.status.get(s) != "online"]
        raise TimeoutError(f"edge agents not online after {timeout_s} s: {', '.join(missing)}")

    def wait_for_version(
        self, version: int, assets: list[tuple[str, str]], timeout_s: float
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """Wait until every asset reported health from ``version``; return what was seen."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                snapshot = dict(self.latest)
            if all(_version(snapshot.get(a, {})) == version for a in assets):
                return snapshot
            time.sleep(0.2)
        with self._lock:
            return dict(self.latest)
