"""What one scored batch writes to the local store, in one transaction.

Scores, the windows' features, the health state changes (``alarms`` rows with
``source='asset'`` and the evidence as JSON), the telemetry points for the outbox and the
inference counters go in together: a crash leaves either all of a batch or none of it, and the
next run re-scores the windows of a batch that was lost.

Inference counters, for the metrics exporter: ``inference_batches``, ``inference_windows``,
``inference_latency_us_sum`` (model run time) and the cumulative histogram buckets
``inference_latency_le_<ms>`` for :data:`LATENCY_BUCKETS_MS` plus ``inference_latency_le_inf``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from edge_agent import outbox
from edge_agent.messages import Health, HealthState
from edge_agent.outbox import append_lines
from edge_agent.records import Score

LATENCY_BUCKETS_MS: Final = (5, 10, 25, 50, 100, 250, 500, 1000, 2500)


@dataclass(frozen=True)
class FeatureRow:
    """The features of one window (``features`` table)."""

    window_id: int
    asset_id: str
    sensor_id: str
    channel: int
    start_ns: int
    values: Mapping[str, float]


@dataclass(frozen=True)
class StateChange:
    """One asset's health state change (``alarms`` table, ``source='asset'``)."""

    ts_ns: int
    asset_id: str
    state: HealthState
    detail: Mapping[str, Any]


@dataclass
class ScoredBatch:
    """Everything one batch writes."""

    scores: list[Score] = field(default_factory=list)
    features: list[FeatureRow] = field(default_factory=list)
    changes: list[StateChange] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


def latency_counters(latency_us: int, windows: int) -> dict[str, int]:
    """The counters one model run of ``windows`` windows taking ``latency_us`` adds.

    Examples
    --------
    >>> c = latency_counters(30_000, 64)
    >>> c["inference_latency_le_25"], c["inference_latency_le_50"], c["inference_latency_le_inf"]
    (0, 1, 1)
    """
    counters = {
        "inference_batches": 1,
        "inference_windows": windows,
        "inference_latency_us_sum": latency_us,
        "inference_latency_le_inf": 1,
    }
    for ms in LATENCY_BUCKETS_MS:
        counters[f"inference_latency_le_{ms}"] = int(latency_us <= ms * 1000)
    return counters


def window_lines(
    health: Health, sensor_id: str, channel: int, features: Mapping[str, float]
) -> list[str]:
    """Telemetry of one scored window: its features and its score, at the window's start."""
    lines = []
    if features:
        lines.append(
            outbox.feature_point(
                site=health.site,
                asset=health.asset_id,
                sensor=sensor_id,
                channel=channel,
                features=features,
                ts_ns=health.window_start_ns,
            )
        )
    lines.append(
        outbox.score_point(
            site=health.site,
            asset=health.asset_id,
            sensor=sensor_id,
            model_version=health.model_version,
            predicted=health.predicted_class,
            failure_probability=health.failure_probability,
            ts_ns=health.window_start_ns,
            anomaly_score=health.anomaly_score,
            probabilities=health.probabilities,
        )
    )
    return lines


def change_line(health: Health, previous_state: str) -> str:
    """Telemetry of a health state change, with the evidence the point can carry."""
    ev = health.evidence
    return outbox.health_point(
        site=health.site,
        asset=health.asset_id,
        state=health.state,
        ts_ns=health.ts_ns,
        previous_state=previous_state,
        evidence={
            "cause": health.cause,
            "predicted_class": health.predicted_class,
            "anomaly_score": health.anomaly_score,
            "iso_zone": None if ev is None else ev.iso_zone,
            "velocity_rms_mm_s": None if ev is None else ev.velocity_rms_mm_s,
            "defect": None if ev is None else ev.defect,
            "defect_frequency": None if ev is None else ev.defect_frequency,
            "defect_hz": None if ev is None else ev.defect_hz,
        },
    )


def write_batch(conn: sqlite3.Connection, batch: ScoredBatch, outbox_max_rows: int) -> None:
    """Write ``batch`` inside the caller's transaction (``LocalStore.transaction()``)."""
    conn.executemany(
        "INSERT OR REPLACE INTO scores (window_id, model_version, predicted,"
        " failure_probability, probabilities, scored_ns) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (
                s.window_id,
                s.model_version,
                s.predicted,
                float(s.failure_probability),
                json.dumps({k: float(v) for k, v in s.probabilities.items()}),
                s.scored_ns,
            )
            for s in batch.scores
        ],
    )
    conn.executemany(
        "INSERT OR REPLACE INTO features (window_id, asset_id, sensor_id, channel, start_ns,"
        " values_json) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (f.window_id, f.asset_id, f.sensor_id, f.channel, f.start_ns, json.dumps(f.values))
            for f in batch.features
        ],
    )
    conn.executemany(
        "INSERT INTO alarms (ts_ns, source, subject, state, detail) VALUES (?, 'asset', ?, ?, ?)",
        [(c.ts_ns, c.asset_id, c.state, json.dumps(c.detail)) for c in batch.changes],
    )
    if batch.lines:
        append_lines(conn, batch.lines, outbox_max_rows)
    conn.executemany(
        "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name)"
        " DO UPDATE SET value = value + excluded.value",
        list(batch.counters.items()),
    )


def last_states(conn: sqlite3.Connection) -> dict[str, HealthState]:
    """Each asset's latest recorded health state (to resume after a restart)."""
    rows = conn.execute(
        "SELECT subject, state FROM alarms WHERE id IN"
        " (SELECT max(id) FROM alarms WHERE source = 'asset' GROUP BY subject)"
    ).fetchall()
    return {str(a): s for a, s in rows if s in ("normal", "warning", "alarm")}


def state_changes(conn: sqlite3.Connection, asset_id: str) -> Sequence[tuple[str, dict[str, Any]]]:
    """An asset's recorded state changes, oldest first, as (state, evidence detail)."""
    rows = conn.execute(
        "SELECT state, detail FROM alarms WHERE source = 'asset' AND subject = ? ORDER BY id",
        (asset_id,),
    ).fetchall()
    return [(str(s), json.loads(d)) for s, d in rows]
