"""Simulated accelerometer gateway: streams a site's assets as sensor frames over MQTT.

It publishes what a plant gateway would: first a backlog (the last ``backlog_s`` seconds each
sensor buffered, sent as fast as the broker takes it, followed by the operators' condition labels
for that period), then, if asked, a live stream in real time. Frames use the binary codec of
:mod:`models.frame`; labels are JSON events on ``fedpm/v1/{site}/{asset}/labels``.

Like a plant gateway it rides out a broker outage: the client keeps a persistent session
(stable client id, ``clean_start=False``), reconnects every ``reconnect_max_delay_s`` at most,
and the live stream goes on publishing QoS 1 frames into paho's unbounded outgoing queue,
which paho sends once the broker is back. :meth:`SiteSensors.wait_acknowledged` tells when
the broker has acknowledged everything published.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fedpm.scenario import SiteSpec
from models.frame import Frame, encode_binary, frame_topic
from models.simulator import BearingSignalStream, FaultMode

logger = logging.getLogger(__name__)

SENSOR_ID = "de"  # one drive-end accelerometer per asset
FRAME_SAMPLES = 1024
SESSION_EXPIRY_S = 86_400


def backlog_frames(
    seconds: float, sample_rate_hz: float, frame_samples: int = FRAME_SAMPLES
) -> int:
    """How many frames per asset a backlog of ``seconds`` is published as."""
    return max(1, round(seconds * sample_rate_hz / frame_samples))


def label_topic(site: str, asset_id: str) -> str:
    """Topic on which maintenance and operator label events arrive."""
    return f"fedpm/v1/{site}/{asset_id}/labels"


@dataclass
class _AssetStream:
    asset_id: str
    mode: FaultMode
    severity: float
    stream: BearingSignalStream
    seq: int = 0


class SiteSensors:
    """Publishes one site's sensor frames; run :meth:`run` in its own process.

    ``username``/``password`` authenticate to the broker; ``ca_file`` turns TLS on (the broker's
    CA), with ``cert_file``/``key_file`` as the gateway's client certificate.
    """

    def __init__(
        self,
        site: SiteSpec,
        host: str,
        port: int,
        *,
        frame_samples: int = FRAME_SAMPLES,
        client_id: str | None = None,
        reconnect_max_delay_s: int = 2,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        self.site = site
        self.frame_samples = frame_samples
        profile = site.profile()
        self.fs = profile.sample_rate_hz
        rng = np.random.default_rng(site.seed)
        self.assets = [
            _AssetStream(a.asset_id, a.mode, a.severity, BearingSignalStream(profile, rng))
            for a in site.assets
        ]
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"fedpm-sensors-{site.site_id}",
            protocol=mqtt.MQTTv5,
        )
        self.client.max_inflight_messages_set(100)
        self.client.max_queued_messages_set(0)  # unlimited: nothing dropped while offline
        self.client.reconnect_delay_set(min_delay=1, max_delay=reconnect_max_delay_s)
        self.client.on_publish = self._on_publish
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_file is not None:  # TLS; a client certificate too when the broker asks for one
            context = ssl.create_default_context(cafile=str(ca_file))
            if cert_file is not None:
                context.load_cert_chain(cert_file, key_file)
            self.client.tls_set_context(context)
        self.host, self.port = host, port
        self.published = 0
        self._lock = threading.Condition()
        self._sent = 0  # QoS 1 messages handed to paho (frames and labels)
        self._acknowledged = 0  # of those, PUBACKed by the broker

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        with self._lock:
            self._acknowledged += 1
            self._lock.notify_all()

    def _publish(
        self, topic: str, payload: bytes | str, properties: Properties | None = None
    ) -> mqtt.MQTTMessageInfo:
        with self._lock:
            self._sent += 1
        return self.client.publish(topic, payload, qos=1, properties=properties)

    def wait_acknowledged(self, timeout_s: float) -> bool:
        """Wait until the broker has acknowledged every message published so far.

        Returns ``False`` if some are still unacknowledged after ``timeout_s`` seconds.
        """
        with self._lock:
            return self._lock.wait_for(lambda: self._acknowledged >= self._sent, timeout_s)

    def connect(self) -> None:
        """Connect and start paho's network thread."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect(self.host, self.port, keepalive=30, clean_start=False, properties=props)
        self.client.loop_start()

    def close(self) -> None:
        """Disconnect cleanly."""
        self.client.disconnect()
        self.client.loop_stop()

    def _publish_frames(self, start_ns: int) -> list[mqtt.MQTTMessageInfo]:
        infos = []
        for asset in self.assets:
            samples = asset.stream.next(self.frame_samples, asset.mode, asset.severity)
            frame = Frame(
                asset_id=asset.asset_id,
                sensor_id=SENSOR_ID,
                seq=asset.seq,
                timestamp_ns=start_ns,
                sample_rate_hz=self.fs,
                units="g",
                samples=samples,
                channel_names=("acc",),
            )
            asset.seq += 1
            topic = frame_topic(self.site.site_id, asset.asset_id, SENSOR_ID)
            infos.append(self._publish(topic, encode_binary(frame)))
        self.published += len(infos)
        return infos

    def publish_label(self, asset_id: str, label: str, start_ns: int, end_ns: int) -> None:
        """Publish an operator label event for ``[start_ns, end_ns)``."""
        event = {
            "v": 1,
            "asset_id": asset_id,
            "sensor_id": SENSOR_ID,
            "label": label,
            "start_ns": start_ns,
            "end_ns": end_ns,
            "source": "operator",
        }
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = "application/json"
        info = self._publish(label_topic(self.site.site_id, asset_id), json.dumps(event), props)
        info.wait_for_publish(timeout=30)

    def backlog(self, seconds: float) -> int:
        """Publish ``seconds`` of buffered history per asset, then its labels; returns end ns."""
        frame_ns = round(self.frame_samples * 1e9 / self.fs)
        n_frames = backlog_frames(seconds, self.fs, self.frame_samples)
        start_ns = time.time_ns() - n_frames * frame_ns
        t_ns = start_ns
        pending: list[mqtt.MQTTMessageInfo] = []
        for _ in range(n_frames):
            pending += self._publish_frames(t_ns)
            t_ns += frame_ns
            if len(pending) >= 90:  # flow control: never more than ~100 unacknowledged
                for info in pending:
                    info.wait_for_publish(timeout=30)
                pending.clear()
        for info in pending:
            info.wait_for_publish(timeout=30)
        for asset in self.assets:
            self.publish_label(asset.asset_id, asset.mode, start_ns, t_ns)
        logger.info("%s: backlog of %d frames published", self.site.site_id, self.published)
        return t_ns

    def live(self, next_ns: int, stop: threading.Event, duration_s: float | None = None) -> None:
        """Stream frames in real time from ``next_ns`` until ``stop`` is set.

        Publishing never waits for the broker: while it is away, frames queue in the client
        and go out after the reconnection, in order.
        """
        frame_s = self.frame_samples / self.fs
        started = time.monotonic()
        frames = 0
        while not stop.is_set():
            if duration_s is not None and time.monotonic() - started >= duration_s:
                break
            self._publish_frames(next_ns)
            next_ns += round(frame_s * 1e9)
            frames += 1
            delay = started + frames * frame_s - time.monotonic()
            if delay > 0:
                stop.wait(delay)
