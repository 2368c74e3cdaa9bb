"""Ingest worker process: the MQTT side of ingestion, feeding an ``Ingestor``.

A paho client with a persistent session (stable client id, ``clean_start=False``, a session
expiry interval) whose ``on_message`` calls the ingestor, in ``loop_forever`` on the process's
main thread. The QoS 1 acknowledgement follows the store's commit, so a frame is acknowledged
only once stored; a store failure ends the process (exit 11) without acknowledging, and the
broker redelivers the frame to the restarted agent, whose persisted sequence positions drop
what it already has.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent import topics
from edge_agent.errors import EdgeAgentError, ExitCode
from edge_agent.ingest import Ingestor
from edge_agent.logs import configure_logging
from edge_agent.mqtt import connect, make_client, session_properties
from edge_agent.settings import AgentSettings
from edge_agent.store import LocalStore

logger = logging.getLogger(__name__)


class IngestClient:
    """The MQTT side of the ingest worker (paho, persistent session, ``loop_forever``)."""

    def __init__(
        self,
        settings: AgentSettings,
        ingestor: Ingestor,
        on_ready: Callable[[], None] = lambda: None,
    ) -> None:
        self._settings = settings
        self._ingestor = ingestor
        self._on_ready = on_ready
        self._stopping = False
        self._client = make_client(settings, settings.ingest_client_id)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if reason_code.is_failure:
            logger.error("broker refused the connection: %s", reason_code)
            return
        site = self._settings.site_id
        filters = [topics.frames_filter(site), topics.labels_filter(site)]
        client.subscribe([(f, SubscribeOptions(qos=1)) for f in filters])
        logger.info(
            "connected to %s:%d (session present: %s); subscribed to %s",
            self._settings.mqtt_host,
            self._settings.mqtt_port,
            flags.session_present,
            filters,
        )

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Any,
    ) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            logger.error("broker refused our subscriptions: %s", refused)
        else:
            self._on_ready()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Any,
    ) -> None:
        if not self._stopping:
            logger.warning("lost the broker (%s); reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = "<not UTF-8>"
        self._ingestor.handle(topic, msg.payload)

    def run(self) -> None:
        """Connect and process messages until :meth:`stop`."""
        connected = connect(
            self._client,
            self._settings,
            clean_start=False,
            properties=session_properties(self._settings.session_expiry_s),
            stop_requested=lambda: self._stopping,
        )
        if not connected:
            return
        if self._stopping:  # a stop that raced the connection
            self._client.disconnect()
        self._client.loop_forever(retry_first_connection=True)

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler: disconnects off-thread)."""
        self._stopping = True
        threading.Thread(target=self._client.disconnect, name="ingest-stop", daemon=True).start()


def ingest_main(settings: AgentSettings, on_ready: Callable[[], None] = lambda: None) -> ExitCode:
    """Run the ingest worker until SIGTERM/SIGINT; return its exit code.

    ``on_ready`` is called (from the MQTT thread) when the subscriptions are acknowledged.
    """
    try:
        with LocalStore(settings.store_path) as store:
            ingestor = Ingestor(store, settings.site_id, settings.window_samples)
            client = IngestClient(settings, ingestor, on_ready)

            def _on_signal(signum: int, frame: FrameType | None) -> None:
                logger.info("ingest stopping (signal %d)", signum)
                client.stop()

            signal.signal(signal.SIGTERM, _on_signal)
            signal.signal(signal.SIGINT, _on_signal)
            client.run()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a late second signal must not
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupt the shutdown
    except EdgeAgentError as exc:
        logger.error("ingest failed: %s", exc)
        return exc.exit_code
    logger.info("ingest stopped")
    return ExitCode.SUCCESS


def run_ingest(settings: AgentSettings, on_ready: Callable[[], None] = lambda: None) -> None:
    """Process entry point (``multiprocessing`` target): configure logging, run, exit."""
    configure_logging(settings.log_level, json_lines=settings.log_json)
    sys.exit(int(ingest_main(settings, on_ready)))
