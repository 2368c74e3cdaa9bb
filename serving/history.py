"""Storage of each asset's condition history and health baseline (SQL and row types).

Every prediction for a registered asset adds one :class:`HistoryPoint`: the request's
condition features (``models.health_indicator.FEATURE_NAMES``, the median over its windows)
at its ``measured_at`` time. :mod:`serving.health` turns the history into a health indicator,
a state and a remaining useful life. The tables below are created by the state store's schema
migration to version 2 (:mod:`serving.state`); this module holds their SQL so the store's
methods stay one-liners.

Bounded per asset: when an asset holds more than ``max_points`` points, the older half of its
history is thinned (every second point dropped, the oldest kept), so the recent past stays at
full resolution and older stretches get sparser by halves; an asset never holds more than
``max_points`` rows (about 150 bytes each). A point with the same ``measured_at`` as a stored
one replaces it, so re-sending a batch is idempotent.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

HISTORY_MAX_POINTS = 1024
"""Points kept per asset before the older half is thinned."""

HISTORY_SCHEMA = """
CREATE TABLE IF NOT EXISTS asset_history (
    tenant TEXT NOT NULL,
    asset_id TEXT NOT NULL,
    measured_at REAL NOT NULL,
    received_at REAL NOT NULL,
    sample_rate_hz REAL NOT NULL,
    window_samples INTEGER NOT NULL,
    windows INTEGER NOT NULL,
    rms REAL NOT NULL,
    kurtosis REAL NOT NULL,
    crest_factor REAL NOT NULL,
    envelope_energy REAL NOT NULL,
    PRIMARY KEY (tenant, asset_id, measured_at)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS health_baselines (
    tenant TEXT NOT NULL,
    asset_id TEXT NOT NULL,
    source TEXT NOT NULL,
    sample_rate_hz REAL NOT NULL,
    window_samples INTEGER NOT NULL,
    points INTEGER NOT NULL,
    until REAL NOT NULL,
    document TEXT NOT NULL,
    fitted_at REAL NOT NULL,
    PRIMARY KEY (tenant, asset_id)
);
"""
"""Tables of the history (schema step 2; idempotent)."""


@dataclass(frozen=True)
class HistoryPoint:
    """One measurement of an asset: condition features at a time (Unix seconds)."""

    tenant: str
    asset_id: str
    measured_at: float
    received_at: float
    sample_rate_hz: float
    window_samples: int
    windows: int
    features: tuple[float, ...]


@dataclass(frozen=True)
class Series:
    """An asset's history after an insert, for the health indicator.

    ``measured_at`` (Unix s, ascending) and ``features`` (one row per point, in
    ``FEATURE_NAMES`` order) hold the points with the inserted point's sample rate and window
    length only (the features depend on both); ``total`` counts every point of the asset.
    """

    measured_at: npt.NDArray[np.float64]
    features: npt.NDArray[np.float64]
    total: int


@dataclass(frozen=True)
class StoredHealthBaseline:
    """An asset's health-indicator baseline (:func:`serving.health.baseline_to_json`).

    ``source`` is ``"history"`` (fitted from the first history points) or ``"windows"``
    (fitted from healthy windows sent to ``PUT /v1/baselines/{asset_id}``); ``until`` is the
    time (Unix s) up to which points count as baseline; alarms are looked for after it.
    """

    tenant: str
    asset_id: str
    source: str
    sample_rate_hz: float
    window_samples: int
    points: int
    until: float
    document: str
    fitted_at: float


def thinned(measured_at: list[float], max_points: int) -> list[float]:
    """Times to drop so a history of ``measured_at`` (ascending) fits ``max_points``.

    Nothing while it fits; else every second point of the older half, keeping the oldest.

    Examples
    --------
    >>> thinned([float(t) for t in range(9)], 8)
    [1.0, 3.0]
    """
    if len(measured_at) <= max_points:
        return []
    older = measured_at[: len(measured_at) - max_points // 2]
    return older[1::2]


def _point(row: tuple[object, ...]) -> HistoryPoint:
    return HistoryPoint(
        tenant=str(row[0]),
        asset_id=str(row[1]),
        measured_at=float(str(row[2])),
        received_at=float(str(row[3])),
        sample_rate_hz=float(str(row[4])),
        window_samples=int(str(row[5])),
        windows=int(str(row[6])),
        features=tuple(float(str(v)) for v in row[7:11]),
    )


def select_history(conn: sqlite3.Connection, tenant: str, asset_id: str) -> list[HistoryPoint]:
    """An asset's history, oldest first (one indexed range scan)."""
    rows = conn.execute(
        "SELECT * FROM asset_history WHERE tenant = ? AND asset_id = ? ORDER BY measured_at",
        (tenant, asset_id),
    ).fetchall()
    return [_point(r) for r in rows]


def insert_point(
    conn: sqlite3.Connection, point: HistoryPoint, max_points: int = HISTORY_MAX_POINTS
) -> Series:
    """Store ``point`` (replacing one at the same time), thin, return the comparable series.

    Three statements: the insert, one select of numbers only (read straight into an array),
    and a delete only when the history overflows.
    """
    if len(point.features) != 4:
        raise ValueError(f"a history point has 4 features, not {len(point.features)}")
    conn.execute(
        "INSERT OR REPLACE INTO asset_history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            point.tenant,
            point.asset_id,
            point.measured_at,
            point.received_at,
            point.sample_rate_hz,
            point.window_samples,
            point.windows,
            *point.features,
        ),
    )
    rows = conn.execute(
        "SELECT measured_at, sample_rate_hz, window_samples, rms, kurtosis, crest_factor,"
        " envelope_energy FROM asset_history WHERE tenant = ? AND asset_id = ?"
        " ORDER BY measured_at",
        (point.tenant, point.asset_id),
    ).fetchall()
    table = np.array(rows, dtype=np.float64).reshape(-1, 7)
    drop = thinned(table[:, 0].tolist(), max_points)
    if drop:
        conn.executemany(
            "DELETE FROM asset_history WHERE tenant = ? AND asset_id = ? AND measured_at = ?",
            [(point.tenant, point.asset_id, t) for t in drop],
        )
        table = table[~np.isin(table[:, 0], drop)]
    same = (table[:, 1] == point.sample_rate_hz) & (table[:, 2] == point.window_samples)
    return Series(measured_at=table[same, 0], features=table[same, 3:], total=len(table))


def replace_health_baseline(conn: sqlite3.Connection, baseline: StoredHealthBaseline) -> None:
    """Store an asset's health baseline, replacing the previous one."""
    conn.execute(
        "INSERT OR REPLACE INTO health_baselines VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            baseline.tenant,
            baseline.asset_id,
            baseline.source,
            baseline.sample_rate_hz,
            baseline.window_samples,
            baseline.points,
            baseline.until,
            baseline.document,
            baseline.fitted_at,
        ),
    )


def select_health_baseline(
    conn: sqlite3.Connection, tenant: str, asset_id: str
) -> StoredHealthBaseline | None:
    """An asset's health baseline, or None."""
    row = conn.execute(
        "SELECT * FROM health_baselines WHERE tenant = ? AND asset_id = ?", (tenant, asset_id)
    ).fetchone()
    if row is None:
        return None
    return StoredHealthBaseline(
        tenant=str(row[0]),
        asset_id=str(row[1]),
        source=str(row[2]),
        sample_rate_hz=float(row[3]),
        window_samples=int(row[4]),
        points=int(row[5]),
        until=float(row[6]),
        document=str(row[7]),
        fitted_at=float(row[8]),
    )
