"""Inference worker: score stored windows with the current model and publish asset health.

It runs in its own process so that model execution never starves the ingest worker's MQTT
loop (on this project a busy thread next to paho cut its message rate by 64 %). The worker
reads windows by id from the store (:meth:`LocalStore.unscored_windows`), conforms them to
the model's rate and length, runs the model in batches, stores the scores, feeds each
asset's :class:`HealthTracker` in window order and publishes through a
:class:`HealthPublisher`. Every ``model_poll_s`` it asks its :class:`ModelSlot` for a newer
verified model. It keeps scoring while the broker is away (paho queues the health messages).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from types import FrameType
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.errors import EdgeAgentError, ExitCode
from edge_agent.health import HealthTracker
from edge_agent.logs import configure_logging
from edge_agent.messages import Health
from edge_agent.model_slot import LoadedModel, ModelSlot
from edge_agent.mqtt import KEEPALIVE_S, make_client
from edge_agent.publisher import HealthPublisher, MqttHealthSink
from edge_agent.settings import AgentSettings
from edge_agent.store import LocalStore, Score, StoredWindow, conform
from models.errors import ModelFormatError, SignalError
from models.metadata import NORMAL_CLASS

logger = logging.getLogger(__name__)

IDLE_SLEEP_S = 0.2


class Scorer:
    """Score the store's unscored windows in id order and drive per-asset health.

    Parameters
    ----------
    store
        The local store (writable: scores are written).
    slot
        Source of the current model.
    publisher
        Where health messages go.
    settings
        ``site_id``, ``inference_batch``, ``alarm_persistence`` and ``fault_threshold``.
    """

    def __init__(
        self,
        store: LocalStore,
        slot: ModelSlot,
        publisher: HealthPublisher,
        settings: AgentSettings,
    ) -> None:
        self._store = store
        self._slot = slot
        self._publisher = publisher
        self._settings = settings
        self._trackers: dict[str, HealthTracker] = {}
        self.cursor = store.last_scored_window_id()

    def step(self) -> int:
        """Score at most one batch; return how many windows were consumed (0: idle)."""
        model = self._slot.current
        if model is None:
            return 0
        rows = self._store.unscored_windows(self.cursor, limit=self._settings.inference_batch)
        if not rows:
            return 0
        meta = model.card.metadata
        usable: list[StoredWindow] = []
        batch: list[np.ndarray[Any, np.dtype[np.float32]]] = []
        for row in rows:
            try:
                x = conform(
                    row.samples, row.sample_rate_hz, meta.sample_rate_hz, meta.window_samples
                )
            except SignalError as exc:
                logger.warning("window %d cannot be fed to the model: %s", row.id, exc)
                continue
            if np.isfinite(x).all():
                usable.append(row)
                batch.append(x)
        if usable:
            self._score(model, usable, np.stack(batch)[:, np.newaxis, :])
        self.cursor = rows[-1].id
        return len(rows)

    def _score(self, model: LoadedModel, rows: list[StoredWindow], x: np.ndarray[Any, Any]) -> None:
        try:
            prediction = model.classifier.predict(x)
        except ModelFormatError as exc:
            first, last = rows[0].id, rows[-1].id
            logger.error("model v%d failed on windows %d..%d: %s", model.version, first, last, exc)
            return
        names = prediction.class_names
        failure = prediction.failure_probability(NORMAL_CLASS)
        predicted = prediction.predicted
        now = time.time_ns()
        scores = []
        for i, row in enumerate(rows):
            probabilities = {
                n: float(p) for n, p in zip(names, prediction.probabilities[i], strict=True)
            }
            scores.append(
                Score(row.id, model.version, predicted[i], float(failure[i]), probabilities, now)
            )
        self._store.add_scores(scores)
        for row, score in zip(rows, scores, strict=True):
            self._track(row, score)

    def _track(self, row: StoredWindow, score: Score) -> None:
        tracker = self._trackers.get(row.asset_id)
        if tracker is None:
            tracker = HealthTracker(
                self._settings.alarm_persistence,
                normal_class=NORMAL_CLASS,
                fault_threshold=self._settings.fault_threshold,
            )
            self._trackers[row.asset_id] = tracker
        update = tracker.update(score.predicted, score.failure_probability)
        if update.changed:
            logger.info(
                "asset %s is now %s (%s, p_fail=%.2f)",
                row.asset_id,
                update.state,
                score.predicted,
                score.failure_probability,
            )
        health = Health(
            site=self._settings.site_id,
            asset_id=row.asset_id,
            state=update.state,
            predicted_class=score.predicted,
            failure_probability=score.failure_probability,
            probabilities=dict(score.probabilities),
            model_version=score.model_version,
            window_start_ns=row.start_ns,
            ts_ns=time.time_ns(),
        )
        self._publisher.offer(health, changed=update.changed)


class InferenceWorker:
    """The inference process's loop: poll the registry, score, publish, until stopped."""

    def __init__(self, settings: AgentSettings, store: LocalStore, registry_dir: str) -> None:
        self._settings = settings
        self._stopping = False
        self._reconnected = False
        self._client = make_client(settings, settings.inference_client_id)
        self._client.on_connect = self._on_connect
        self.publisher = HealthPublisher(
            MqttHealthSink(self._client), settings.site_id, settings.health_min_interval_s
        )
        self.slot = ModelSlot(registry_dir)
        self.scorer = Scorer(store, self.slot, self.publisher, settings)

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
        else:
            self._reconnected = True  # the main loop republishes the latest health

    def run(self) -> None:
        """Loop until :meth:`stop`."""
        s = self._settings
        self._client.connect_async(s.mqtt_host, s.mqtt_port, keepalive=KEEPALIVE_S)
        self._client.loop_start()
        next_poll = 0.0
        try:
            while not self._stopping:
                if time.monotonic() >= next_poll:
                    self.slot.poll()
                    next_poll = time.monotonic() + s.model_poll_s
                if self._reconnected:
                    self._reconnected = False
                    self.publisher.republish_all()
                scored = self.scorer.step()
                self.publisher.flush()
                if not scored:
                    time.sleep(IDLE_SLEEP_S)
        finally:
            self._client.loop_stop()
            self._client.disconnect()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current batch (safe from a signal handler)."""
        self._stopping = True


def inference_main(settings: AgentSettings) -> ExitCode:
    """Run the inference worker until SIGTERM/SIGINT; return its exit code."""
    if settings.registry_dir is None:
        logger.info("no registry configured: inference is off")
        return ExitCode.SUCCESS
    try:
        with LocalStore(settings.store_path) as store:
            worker = InferenceWorker(settings, store, str(settings.registry_dir))

            def _on_signal(signum: int, frame: FrameType | None) -> None:
                logger.info("inference stopping (signal %d)", signum)
                worker.stop()

            signal.signal(signal.SIGTERM, _on_signal)
            signal.signal(signal.SIGINT, _on_signal)
            worker.run()
            _ignore_signals()  # a late second signal must not interrupt the shutdown
    except EdgeAgentError as exc:
        logger.error("inference failed: %s", exc)
        return exc.exit_code
    logger.info("inference stopped")
    return ExitCode.SUCCESS


def _ignore_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_inference(settings: AgentSettings) -> None:
    """Process entry point (``multiprocessing`` target): configure logging, run, exit."""
    configure_logging(settings.log_level, json_lines=settings.log_json)
    sys.exit(int(inference_main(settings)))
