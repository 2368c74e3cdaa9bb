"""paho-mqtt clients configured the way every edge-agent process needs them.

MQTT v5, callback API version 2, credentials and TLS from settings, reconnection with a
capped exponential backoff (``reconnect_delay_set``), and a first connection that retries
until a deadline and then raises :class:`BrokerUnreachableError` (exit code 12).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.errors import BrokerUnreachableError
from edge_agent.settings import AgentSettings

logger = logging.getLogger(__name__)

KEEPALIVE_S = 30


def make_client(settings: AgentSettings, client_id: str) -> mqtt.Client:
    """A paho client (not yet connected) for ``client_id``."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    if settings.mqtt_username is not None and settings.mqtt_password is not None:
        client.username_pw_set(settings.mqtt_username, settings.mqtt_password.get_secret_value())
    if settings.mqtt_tls:
        ca = str(settings.mqtt_ca_file) if settings.mqtt_ca_file is not None else None
        client.tls_set(ca_certs=ca)
    client.reconnect_delay_set(min_delay=1, max_delay=settings.reconnect_max_delay_s)
    client.enable_logger(logging.getLogger(f"paho.{client_id}"))
    return client


def session_properties(expiry_s: int) -> Properties:
    """CONNECT properties asking the broker to keep our session ``expiry_s`` seconds."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = expiry_s
    return props


def connect(
    client: mqtt.Client,
    settings: AgentSettings,
    *,
    clean_start: bool,
    properties: Properties | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> bool:
    """Open the TCP connection and send CONNECT, retrying until ``connect_timeout_s``.

    Returns ``False`` if ``stop_requested()`` became true while waiting, ``True`` once
    connected (the CONNACK is handled by the client's network loop).

    Raises
    ------
    BrokerUnreachableError
        No connection before the deadline.
    """
    deadline = time.monotonic() + settings.connect_timeout_s
    delay = 0.1
    while True:
        try:
            client.connect(
                settings.mqtt_host,
                settings.mqtt_port,
                keepalive=KEEPALIVE_S,
                clean_start=clean_start,
                properties=properties,
            )
            return True
        except OSError as exc:
            if time.monotonic() + delay > deadline:
                raise BrokerUnreachableError(
                    f"MQTT broker {settings.mqtt_host}:{settings.mqtt_port} unreachable for "
                    f"{settings.connect_timeout_s:g} s: {exc}"
                ) from exc
            logger.info("broker not reachable yet (%s); retrying in %.1f s", exc, delay)
        end = time.monotonic() + delay
        while time.monotonic() < end:
            if stop_requested():
                return False
            time.sleep(0.05)
        delay = min(delay * 2, 2.0)
