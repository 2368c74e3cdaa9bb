"""paho-mqtt clients configured the way every edge-agent process needs them.

MQTT v5, callback API version 2, credentials and TLS from settings, reconnection with a
capped exponential backoff (``reconnect_delay_set``), and a first connection that retries
until a deadline and then raises :class:`BrokerUnreachableError` (exit code 12).

TLS (``mqtt_tls = true``) always verifies the broker: its certificate must chain to
``mqtt_ca_file`` (or to the system's CAs when unset) and name ``mqtt_host`` (DNS or IP
subject alternative name). The client authenticates with username and password, with a
client certificate (``mqtt_cert_file`` and ``mqtt_key_file``), or both. A broker whose
certificate fails verification is refused at once: retrying cannot fix it.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.errors import BrokerUnreachableError, ConfigError
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
        client.tls_set_context(tls_context(settings))
    client.reconnect_delay_set(min_delay=1, max_delay=settings.reconnect_max_delay_s)
    client.enable_logger(logging.getLogger(f"paho.{client_id}"))
    return client


def tls_context(settings: AgentSettings) -> ssl.SSLContext:
    """The client-side TLS context of ``settings``: server verified, hostname checked.

    Raises
    ------
    ConfigError
        The CA file, client certificate or key cannot be read or is not valid PEM, or the key
        does not match the certificate.
    """
    ca_file = settings.mqtt_ca_file
    for role, path in (
        ("mqtt_ca_file", ca_file),
        ("mqtt_cert_file", settings.mqtt_cert_file),
        ("mqtt_key_file", settings.mqtt_key_file),
    ):
        if path is not None:
            _check_readable(role, path)
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=None if ca_file is None else str(ca_file)
        )
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"mqtt_ca_file {ca_file} holds no usable CA certificate: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.mqtt_cert_file is not None and settings.mqtt_key_file is not None:
        try:
            context.load_cert_chain(str(settings.mqtt_cert_file), str(settings.mqtt_key_file))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"cannot load the MQTT client certificate {settings.mqtt_cert_file} with key "
                f"{settings.mqtt_key_file} (PEM, unencrypted key matching the certificate): {exc}"
            ) from exc
    return context


def _check_readable(role: str, path: Path) -> None:
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ConfigError(f"{role} {path} cannot be read: {exc.strerror or exc}") from exc


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
        except ssl.SSLCertVerificationError as exc:
            raise BrokerUnreachableError(
                f"MQTT broker {settings.mqtt_host}:{settings.mqtt_port} failed TLS verification "
                f"({exc.verify_message or exc}); check mqtt_ca_file "
                f"({settings.mqtt_ca_file or 'system CAs'}) and that mqtt_host matches the "
                "broker certificate's names"
            ) from exc
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
