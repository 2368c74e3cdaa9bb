"""Inference worker: score stored windows with the current model and publish asset health.

It runs in its own process so that model execution never starves the ingest worker's MQTT
loop (on this project a busy thread next to paho cut its message rate by 64 %). The worker
reads windows by id from the store (:meth:`LocalStore.unscored_windows`), conforms them to
the model's rate and length, runs the model in batches, and for each window in order:

* scores it against the asset's healthy baseline for this model version
  (:mod:`edge_agent.baselines`; absent until fitted);
* computes its evidence (:mod:`edge_agent.evidence`: condition indicators and ISO zone on every
  window, the envelope defect analysis on flagged and every Nth window);
* feeds the asset's :class:`HealthTracker` (model verdict and anomaly flag).

A batch's scores, features, state changes (``alarms``, with the evidence), telemetry points
(when ``influx_url`` is set) and inference counters are written in one transaction
(:mod:`edge_agent.results`); then the health messages go out through a
:class:`HealthPublisher`. Every ``model_poll_s`` it asks its :class:`ModelSlot` for a newer
verified model. It keeps scoring while the broker is away (paho queues the health messages).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections import Counter
from types import FrameType
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.baselines import BaselineBook
from edge_agent.errors import EdgeAgentError, ExitCode
from edge_agent.evidence import EvidenceExtractor, window_features
from edge_agent.health import HealthTracker, HealthUpdate
from edge_agent.logs import configure_logging
from edge_agent.messages import Health, HealthState
from edge_agent.model_slot import LoadedModel, ModelSlot
from edge_agent.mqtt import KEEPALIVE_S, make_client
from edge_agent.publisher import HealthPublisher, MqttHealthSink
from edge_agent.results import (
    FeatureRow,
    ScoredBatch,
    StateChange,
    change_line,
    last_states,
    latency_counters,
    window_lines,
    write_batch,
)
from edge_agent.settings import AgentSettings
from edge_agent.store import LocalStore, Score, StoredWindow, conform
from models.anomaly import AnomalyBaseline
from models.errors import AnomalyError, SignalError
from models.metadata import NORMAL_CLASS
from models.runtime import Prediction

logger = logging.getLogger(__name__)

IDLE_SLEEP_S = 0.2


class Scorer:
    """Score the store's unscored windows in id order and drive per-asset health.

    Parameters
    ----------
    store
        The local store (writable: scores, features, alarms, outbox, baselines are written).
    slot
        Source of the current model.
    publisher
        Where health messages go.
    settings
        ``site_id``, ``inference_batch``, ``alarm_persistence``, ``fault_threshold``,
        ``assets``, ``anomaly_false_alarm_rate``, ``baseline_min_windows``, ``influx_url``
        and ``outbox_max_rows``.
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
        self._evidence = EvidenceExtractor(settings.assets)
        self.baselines = BaselineBook(
            store,
            false_alarm_rate=settings.anomaly_false_alarm_rate,
            baseline_min_windows=settings.baseline_min_windows,
        )
        with store.reader() as conn:
            states = last_states(conn)
        self._trackers: dict[str, HealthTracker] = {
            asset: self._new_tracker(state) for asset, state in states.items()
        }
        self.cursor = store.last_scored_window_id()

    def _new_tracker(self, state: HealthState = "normal") -> HealthTracker:
        return HealthTracker(
            self._settings.alarm_persistence,
            normal_class=NORMAL_CLASS,
            fault_threshold=self._settings.fault_threshold,
            state=state,
        )

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
        if usable and not self._score(model, usable, np.stack(batch)[:, np.newaxis, :]):
            return 0  # the model was rolled back: the next one scores these windows
        self.cursor = rows[-1].id
        return len(rows)

    def _score(self, model: LoadedModel, rows: list[StoredWindow], x: np.ndarray[Any, Any]) -> bool:
        """Score, store and publish one batch; ``False`` if the model failed to run."""
        started = time.perf_counter_ns()
        try:
            prediction = model.classifier.predict(x)
        except Exception as exc:  # ModelFormatError, or onnxruntime's own runtime errors
            first, last = rows[0].id, rows[-1].id
            logger.error("model v%d failed on windows %d..%d: %s", model.version, first, last, exc)
            self._slot.report_failure(model.version, exc)
            return False
        latency_us = (time.perf_counter_ns() - started) // 1000
        out = ScoredBatch(counters=latency_counters(latency_us, len(rows)))
        anomaly = self._anomaly_scores(model, rows, prediction)
        names = prediction.class_names
        failure = prediction.failure_probability(NORMAL_CLASS)
        predicted = prediction.predicted
        now = time.time_ns()
        messages: list[tuple[Health, bool]] = []
        for i, row in enumerate(rows):
            probabilities = {
                n: float(p) for n, p in zip(names, prediction.probabilities[i], strict=True)
            }
            score = Score(
                row.id, model.version, predicted[i], float(failure[i]), probabilities, now
            )
            out.scores.append(score)
            messages.append(self._track(row, score, anomaly[i], out))
        with self._store.transaction() as conn:
            write_batch(conn, out, self._settings.outbox_max_rows)
        for health, changed in messages:
            self._publisher.offer(health, changed=changed)
        return True

    def _anomaly_scores(
        self, model: LoadedModel, rows: list[StoredWindow], prediction: Prediction
    ) -> list[tuple[float, AnomalyBaseline] | None]:
        """Each window's anomaly score and the baseline behind it (``None``: no baseline)."""
        result: list[tuple[float, AnomalyBaseline] | None] = [None] * len(rows)
        for asset, n in Counter(row.asset_id for row in rows).items():
            baseline = self.baselines.get(asset, model, n)
            if baseline is None:
                continue
            idx = [i for i, row in enumerate(rows) if row.asset_id == asset]
            try:
                scores = baseline.score(prediction.embedding[idx])
            except AnomalyError as exc:
                logger.warning("cannot score %s against its baseline: %s", asset, exc)
                continue
            for i, value in zip(idx, scores, strict=True):
                result[i] = (float(value), baseline)
        return result

    def _track(
        self,
        row: StoredWindow,
        score: Score,
        anomaly: tuple[float, AnomalyBaseline] | None,
        out: ScoredBatch,
    ) -> tuple[Health, bool]:
        tracker = self._trackers.get(row.asset_id)
        if tracker is None:
            tracker = self._trackers[row.asset_id] = self._new_tracker()
        anomaly_score = None if anomaly is None else anomaly[0]
        threshold = None if anomaly is None else anomaly[1].threshold
        anomalous = (
            anomaly_score is not None and threshold is not None and anomaly_score > threshold
        )
        before = tracker.state
        update = tracker.update(score.predicted, score.failure_probability, anomalous=anomalous)
        flagged = anomalous or tracker.is_faulty(score.predicted, score.failure_probability)
        try:
            features = window_features(row.samples, row.sample_rate_hz)
        except SignalError:
            features = {}
        envelope = self._evidence.observe(
            row.asset_id,
            (row.asset_id, row.sensor_id, row.channel),
            row.samples,
            row.sample_rate_hz,
            row.start_ns,
            row.end_ns,
            flagged=flagged,
        )
        if envelope is not None:
            features.update({f"envelope_{d}_db": v for d, v in envelope.scores_db.items()})
        evidence = self._evidence.evidence(row.asset_id, features)
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
            cause=update.cause,
            anomaly_score=anomaly_score,
            anomaly_threshold=threshold,
            evidence=evidence,
        )
        out.features.append(
            FeatureRow(row.id, row.asset_id, row.sensor_id, row.channel, row.start_ns, features)
        )
        if update.changed:
            self._record_change(row, health, before, update, out)
        if self._settings.influx_url is not None:
            out.lines.extend(window_lines(health, row.sensor_id, row.channel, features))
        return health, update.changed

    def _record_change(
        self,
        row: StoredWindow,
        health: Health,
        before: str,
        update: HealthUpdate,
        out: ScoredBatch,
    ) -> None:
        logger.info(
            "asset %s is now %s (%s, %s, p_fail=%.2f, anomaly=%s)",
            row.asset_id,
            update.state,
            update.cause or "cleared",
            health.predicted_class,
            health.failure_probability,
            "n/a" if health.anomaly_score is None else f"{health.anomaly_score:.2f}",
        )
        detail = health.model_dump(
            mode="json",
            include={
                "cause",
                "predicted_class",
                "failure_probability",
                "model_version",
                "window_start_ns",
                "anomaly_score",
                "anomaly_threshold",
                "evidence",
            },
        )
        detail.update(previous_state=before, window_id=row.id)
        out.changes.append(StateChange(health.ts_ns, row.asset_id, update.state, detail))
        if self._settings.influx_url is not None:
            out.lines.append(change_line(health, before))


class InferenceWorker:
    """The inference process's loop: poll the registry, score, publish, until stopped."""

    def __init__(self, settings: AgentSettings, store: LocalStore) -> None:
        self._settings = settings
        self._stopping = False
        self._reconnected = False
        self._client = make_client(settings, settings.inference_client_id)
        self._client.on_connect = self._on_connect
        self.publisher = HealthPublisher(
            MqttHealthSink(self._client), settings.site_id, settings.health_min_interval_s
        )
        self.slot = ModelSlot.from_settings(settings)
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
            self.slot.close()
            self._client.loop_stop()
            self._client.disconnect()

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current batch (safe from a signal handler)."""
        self._stopping = True


def inference_main(settings: AgentSettings) -> ExitCode:
    """Run the inference worker until SIGTERM/SIGINT; return its exit code."""
    if not settings.models_enabled:
        logger.info("no model source configured: inference is off")
        return ExitCode.SUCCESS
    try:
        with LocalStore.from_settings(settings) as store:
            worker = InferenceWorker(settings, store)

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
    """Process entry point (``multiprocessing`` target): configure logging, run, exit.

    The worker lowers its own CPU priority (``inference_nice``): when the node is short of CPU,
    ingestion (which must not fall behind the broker) goes first and scoring catches up from
    the store afterwards.
    """
    configure_logging(settings.log_level, json_lines=settings.log_json)
    if settings.inference_nice:
        os.nice(settings.inference_nice)
    sys.exit(int(inference_main(settings)))
