"""Ingest worker process: the MQTT side of ingestion, feeding an ``Ingestor`` in group commits.

A paho client with a persistent session (stable client id, ``clean_start=False``, a session
expiry interval) and **manual acknowledgement**: ``on_message`` only queues a message; the
worker hands the queued messages to the :class:`~edge_agent.ingest.Ingestor` inside one store
transaction (:meth:`LocalStore.batch`), commits, and only then sends the PUBACKs. A batch is
flushed when it holds ``batch_max`` messages, when its oldest message has waited
``batch_delay_s``, when the connection drops and on shutdown.

Everything runs on the process's main thread: the worker drives paho with ``client.loop()``
(a ``select`` of at most ``batch_delay_s``), so the store is only ever touched between network
reads, never concurrently with ``on_message``, and no second Python thread competes with the
network loop for the GIL. A flush takes milliseconds, far inside the 30 s keepalive.

The CONNECT packet asks the broker for at most ``receive_maximum`` unacknowledged QoS 1
messages (MQTT 5 Receive Maximum; without it Mosquitto allows 65,535). It is kept above
``batch_max`` so that the broker goes on sending while a batch is being committed.

Failure semantics: a crash or ``SIGKILL`` mid-batch acknowledges nothing, so the broker
redelivers the whole batch to the restarted worker, whose persisted sequence positions drop
what the store already holds (``duplicate`` / ``out_of_order`` rejects). Messages committed
while the connection was lost are not acknowledged either (their packet ids belong to the old
connection); their redelivery is dropped the same way. A store failure ends the process
(exit 11) without acknowledging the batch.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
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

#: Messages committed together (one SQLite transaction, then one PUBACK each).
BATCH_MAX_MESSAGES = 128
#: Longest a received message waits for its batch to be committed and acknowledged.
BATCH_MAX_DELAY_S = 0.05
#: Unacknowledged QoS 1 messages the broker may send us (MQTT 5 Receive Maximum).
RECEIVE_MAXIMUM = 512
#: ``select`` timeout while no batch is pending (bounds how late a stop request is seen).
IDLE_POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class _Pending:
    """A received message waiting for its batch to commit."""

    topic: str
    payload: bytes | bytearray
    mid: int
    qos: int
    connection: int  # which connection delivered it (packet ids are per connection)


class IngestClient:
    """The MQTT side of the ingest worker: manual acknowledgement after a group commit.

    Parameters
    ----------
    settings
        Broker, session and site settings.
    ingestor
        Turns messages into store rows; its store must be ``store``.
    store
        The store whose :meth:`LocalStore.batch` groups a flush into one transaction.
    on_ready
        Called once the subscriptions are acknowledged (the agent then announces ``online``).
    batch_max
        Messages per group commit; must be below ``receive_maximum``.
    batch_delay_s
        Longest wait of a message for its commit and acknowledgement, in seconds.
    receive_maximum
        Unacknowledged QoS 1 messages the broker may have in flight towards us.

    Raises
    ------
    ValueError
        ``batch_max`` is not in ``[1, receive_maximum)`` or ``batch_delay_s`` is not positive.
    """

    def __init__(
        self,
        settings: AgentSettings,
        ingestor: Ingestor,
        store: LocalStore,
        on_ready: Callable[[], None] = lambda: None,
        *,
        batch_max: int = BATCH_MAX_MESSAGES,
        batch_delay_s: float = BATCH_MAX_DELAY_S,
        receive_maximum: int = RECEIVE_MAXIMUM,
    ) -> None:
        if not 1 <= receive_maximum <= 65_535:
            raise ValueError(f"receive_maximum must be in [1, 65535], got {receive_maximum}")
        if not 1 <= batch_max < receive_maximum:
            raise ValueError(
                f"batch_max must be in [1, receive_maximum={receive_maximum}), got {batch_max}"
            )
        if not batch_delay_s > 0:
            raise ValueError(f"batch_delay_s must be positive, got {batch_delay_s}")
        self._settings = settings
        self._ingestor = ingestor
        self._store = store
        self._on_ready = on_ready
        self._batch_max = batch_max
        self._batch_delay_s = batch_delay_s
        self._receive_maximum = receive_maximum
        self._stopping = False
        self._connection = 0  # incremented on every disconnection
        self._pending: list[_Pending] = []
        self._oldest = 0.0  # monotonic arrival time of _pending[0]
        self._client = make_client(settings, settings.ingest_client_id)
        self._client.manual_ack_set(True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe

    # --- paho callbacks (network loop, same thread as the flushes) ---------------------------

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
        self._connection += 1  # what that connection delivered can no longer be acknowledged
        if not self._stopping:
            logger.warning("lost the broker (%s); reconnecting", reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = "<not UTF-8>"
        if not self._pending:
            self._oldest = time.monotonic()
        self._pending.append(_Pending(topic, msg.payload, msg.mid, msg.qos, self._connection))

    # --- group commit ---------------------------------------------------------------------

    def _flush(self) -> None:
        """Store the pending messages in one transaction, then acknowledge them.

        Raises
        ------
        StoreError
            The transaction failed; nothing of the batch is acknowledged.
        """
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        with self._store.batch():
            for item in batch:
                self._ingestor.handle(item.topic, item.payload)
        if not self._client.is_connected():
            return  # the redelivery on the next connection is dropped as a duplicate
        for item in batch:
            if item.qos > 0 and item.connection == self._connection:
                self._client.ack(item.mid, item.qos)

    def _flush_due(self) -> bool:
        return bool(self._pending) and (
            len(self._pending) >= self._batch_max
            or time.monotonic() - self._oldest >= self._batch_delay_s
        )

    def _poll_timeout(self) -> float:
        if not self._pending:
            return IDLE_POLL_S
        return max(0.0, self._oldest + self._batch_delay_s - time.monotonic())

    # --- the loop -------------------------------------------------------------------------

    def _connect_properties(self) -> Properties:
        props = session_properties(self._settings.session_expiry_s)
        props.ReceiveMaximum = self._receive_maximum
        return props

    def run(self) -> None:
        """Connect and process messages until :meth:`stop`; flush and acknowledge on the way out.

        Raises
        ------
        StoreError
            A batch could not be stored (it is not acknowledged).
        BrokerUnreachableError
            The first connection did not succeed within ``connect_timeout_s``.
        """
        connected = connect(
            self._client,
            self._settings,
            clean_start=False,
            properties=self._connect_properties(),
            stop_requested=lambda: self._stopping,
        )
        if not connected:
            return
        try:
            while not self._stopping:
                rc = self._client.loop(self._poll_timeout())
                if self._flush_due():
                    self._flush()
                if rc != mqtt.MQTT_ERR_SUCCESS and not self._stopping:
                    self._flush()  # stored now, acknowledged by the redelivery's duplicate
                    self._reconnect()
            self._flush()
        finally:
            with contextlib.suppress(OSError):
                self._client.disconnect()

    def _reconnect(self) -> None:
        """Reconnect with a capped exponential backoff until connected or stopped."""
        delay = 1.0
        while not self._stopping:
            self._sleep(delay)
            if self._stopping:
                return
            try:
                self._client.reconnect()
                return
            except OSError as exc:
                logger.info("broker still unreachable (%s); retrying in %.0f s", exc, delay)
                delay = min(delay * 2, float(self._settings.reconnect_max_delay_s))

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stopping and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))

    def stop(self) -> None:
        """Ask :meth:`run` to flush, acknowledge and return (safe from a signal handler)."""
        self._stopping = True


@contextlib.contextmanager
def _stop_on_signals(client: IngestClient) -> Iterator[None]:
    def _on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("ingest stopping (signal %d)", signum)
        client.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a late second signal must not
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupt the shutdown


def ingest_main(settings: AgentSettings, on_ready: Callable[[], None] = lambda: None) -> ExitCode:
    """Run the ingest worker until SIGTERM/SIGINT; return its exit code.

    ``on_ready`` is called when the subscriptions are acknowledged.
    """
    try:
        with LocalStore.from_settings(settings) as store:
            ingestor = Ingestor.from_settings(store, settings)
            client = IngestClient(settings, ingestor, store, on_ready)
            with _stop_on_signals(client):
                client.run()
    except EdgeAgentError as exc:
        logger.error("ingest failed: %s", exc)
        return exc.exit_code
    logger.info("ingest stopped")
    return ExitCode.SUCCESS


def run_ingest(settings: AgentSettings, on_ready: Callable[[], None] = lambda: None) -> None:
    """Process entry point (``multiprocessing`` target): configure logging, run, exit."""
    configure_logging(settings.log_level, json_lines=settings.log_json)
    sys.exit(int(ingest_main(settings, on_ready)))
