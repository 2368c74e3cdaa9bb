"""Durable telemetry outbox: InfluxDB points queued in the local store until delivered.

Producers (the inference worker) append line-protocol points in the same store as everything
else, so a point survives the sink, the network or the agent being down; the telemetry worker
(:mod:`edge_agent.telemetry`) reads them in id order, writes a batch, and deletes it only once
the sink acknowledged it. The outbox is bounded (``max_rows``): past that the oldest points are
dropped and counted (``outbox_dropped``), so a sink that never returns cannot fill the disk.
A point the sink refuses as malformed is moved to the store's dead letters (reason
``telemetry_rejected``, counted with the store's rejects), so it never blocks the points
behind it.

The agent's points are built by :func:`feature_point`, :func:`score_point` and
:func:`health_point`; ``docs/telemetry.md`` describes the schema.

Examples
--------
>>> import tempfile
>>> from edge_agent.store import LocalStore
>>> with LocalStore(tempfile.mkdtemp() + "/s.sqlite") as store:
...     box = Outbox(store, max_rows=1000)
...     _ = box.append([point_line("health", {"asset": "p1"}, {"state": "alarm"}, 5)])
...     [line for _, line in box.peek(10)], box.depth()
(['health,asset=p1 state="alarm" 5'], 1)
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Final

from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision

from edge_agent.store import LocalStore

FieldValue = float | int | str | bool

FEATURES: Final = "fedpm_features"
SCORES: Final = "fedpm_scores"
HEALTH: Final = "fedpm_health"
#: ``state_code`` of :func:`health_point`: a number that graphs and alert rules can use.
HEALTH_CODES: Final[Mapping[str, int]] = {"normal": 0, "warning": 1, "alarm": 2}
REJECTED_REASON: Final = "telemetry_rejected"
_HEALTH_FIELDS: Final = frozenset({"state", "state_code", "previous_state"})


def point_line(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue | None],
    ts_ns: int,
) -> str:
    """One InfluxDB line-protocol point (nanosecond timestamp), escaped by influxdb-client.

    Fields that are ``None``, NaN or infinite are left out (line protocol cannot carry them).

    Raises
    ------
    ValueError
        An empty measurement, tag key or tag value, a string field with a line break, a
        negative timestamp, or no field left to write (InfluxDB refuses a point without one).
    """
    if not measurement:
        raise ValueError("a point needs a measurement name")
    if ts_ns < 0:
        raise ValueError(f"point {measurement!r} has a negative timestamp {ts_ns}")
    for key, tag in tags.items():
        if not key or not tag:
            raise ValueError(f"point {measurement!r} has an empty tag {key!r}={tag!r}")
    kept: dict[str, FieldValue] = {}
    for key, value in fields.items():
        if not key:
            raise ValueError(f"point {measurement!r} has a field with an empty name")
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        if isinstance(value, str) and ("\n" in value or "\r" in value):
            raise ValueError(f"field {key!r} of point {measurement!r} holds a line break")
        kept[key] = value
    if not kept:
        raise ValueError(f"point {measurement!r} has no finite field")
    point = Point(measurement)  # type: ignore[no-untyped-call]  # untyped library
    point.time(ts_ns, WritePrecision.NS)  # type: ignore[no-untyped-call]
    for key, tag in sorted(tags.items()):
        point.tag(key, tag)  # type: ignore[no-untyped-call]
    for key, value in sorted(kept.items()):
        point.field(key, value)  # type: ignore[no-untyped-call]
    return str(point.to_line_protocol())  # type: ignore[no-untyped-call]


def feature_point(
    *,
    site: str,
    asset: str,
    sensor: str,
    channel: int,
    features: Mapping[str, float],
    ts_ns: int,
) -> str:
    """The features of one window (``fedpm_features``), stamped with the window's start.

    ``features`` maps names to values in the units their names say (``rms`` in g,
    ``velocity_rms_mm_s`` in mm/s, ``kurtosis`` and ``crest`` dimensionless, ...).
    """
    values = {name: float(value) for name, value in features.items()}
    tags = {"site": site, "asset": asset, "sensor": sensor, "channel": str(channel)}
    return point_line(FEATURES, tags, values, ts_ns)


def score_point(
    *,
    site: str,
    asset: str,
    sensor: str,
    model_version: int,
    predicted: str,
    failure_probability: float,
    ts_ns: int,
    anomaly_score: float | None = None,
    probabilities: Mapping[str, float] | None = None,
) -> str:
    """The model's verdict on one window (``fedpm_scores``), stamped with the window's start.

    Fields: ``predicted`` (class name), ``failure_probability``, ``anomaly_score`` when the
    asset has a baseline, and ``p_<class>`` for each class probability.
    """
    fields: dict[str, FieldValue | None] = {
        "predicted": predicted,
        "failure_probability": float(failure_probability),
        "anomaly_score": None if anomaly_score is None else float(anomaly_score),
    }
    for name, p in (probabilities or {}).items():
        fields[f"p_{name}"] = float(p)
    tags = {"site": site, "asset": asset, "sensor": sensor, "model_version": str(model_version)}
    return point_line(SCORES, tags, fields, ts_ns)


def health_point(
    *,
    site: str,
    asset: str,
    state: str,
    ts_ns: int,
    previous_state: str | None = None,
    evidence: Mapping[str, FieldValue | None] | None = None,
) -> str:
    """A change of an asset's health state (``fedpm_health``) with the evidence behind it.

    Fields: ``state``, ``state_code`` (:data:`HEALTH_CODES`), ``previous_state`` and each
    entry of ``evidence`` (``iso_zone``, ``velocity_rms_mm_s``, ``defect``, ...).

    Raises
    ------
    ValueError
        ``state`` is not a health state, or ``evidence`` reuses a field name of the point.
    """
    if state not in HEALTH_CODES:
        raise ValueError(f"health state must be one of {sorted(HEALTH_CODES)}, got {state!r}")
    clash = _HEALTH_FIELDS.intersection(evidence or {})
    if clash:
        raise ValueError(f"evidence may not use the field names {sorted(clash)}")
    fields: dict[str, FieldValue | None] = {
        "state": state,
        "state_code": HEALTH_CODES[state],
        "previous_state": previous_state,
        **(evidence or {}),
    }
    return point_line(HEALTH, {"site": site, "asset": asset}, fields, ts_ns)


def append_lines(conn: sqlite3.Connection, lines: Sequence[str], max_rows: int) -> int:
    """Append ``lines`` inside the caller's transaction; return how many old points were dropped.

    Raises
    ------
    ValueError
        A line is empty or holds a line break (one row must be one point); nothing is queued.
    """
    for line in lines:
        if not line.strip() or "\n" in line or "\r" in line:
            raise ValueError(f"an outbox line must be one non-empty point, got {line[:80]!r}")
    now = time.time_ns()
    conn.executemany(
        "INSERT INTO outbox (created_ns, line) VALUES (?, ?)", [(now, line) for line in lines]
    )
    excess = int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0]) - max_rows
    if excess <= 0:
        return 0
    conn.execute(
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (excess,)
    )
    _bump(conn, "outbox_dropped", excess)
    return excess


def _bump(conn: sqlite3.Connection, name: str, n: int) -> None:
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name)"
        " DO UPDATE SET value = value + excluded.value",
        (name, n),
    )


class Outbox:
    """The outbox table of one store.

    Parameters
    ----------
    store
        The site's local store (writable for :meth:`append`, :meth:`ack` and :meth:`reject`).
    max_rows
        Most points kept; the oldest beyond it are dropped and counted.
    """

    def __init__(self, store: LocalStore, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self._store = store
        self.max_rows = max_rows

    def append(self, lines: Sequence[str]) -> int:
        """Queue points in one transaction; return how many old points were dropped.

        Raises
        ------
        ValueError
            A line is empty or holds a line break; nothing is queued.
        """
        if not lines:
            return 0
        with self._store.transaction() as conn:
            return append_lines(conn, lines, self.max_rows)

    def peek(self, limit: int) -> list[tuple[int, str]]:
        """The oldest ``limit`` queued points as (id, line), in delivery order."""
        with self._store.reader() as conn:
            rows = conn.execute(
                "SELECT id, line FROM outbox ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [(int(i), str(line)) for i, line in rows]

    def ack(self, up_to_id: int, delivered: int = 0) -> None:
        """Forget every point with ``id <= up_to_id`` (the sink has them).

        ``delivered`` is added to the ``telemetry_sent`` counter in the same transaction.
        """
        with self._store.transaction() as conn:
            conn.execute("DELETE FROM outbox WHERE id <= ?", (up_to_id,))
            if delivered:
                _bump(conn, "telemetry_sent", delivered)

    def reject(self, point_id: int, detail: str) -> None:
        """Move one point the sink refused to the store's dead letters, in one transaction.

        The point leaves the outbox; :meth:`LocalStore.record_reject` counts it under reason
        ``telemetry_rejected`` and keeps it (topic ``outbox``, the sink's ``detail``) within
        the store's dead-letter limits.
        """
        with self._store.transaction() as conn:
            row = conn.execute("SELECT line FROM outbox WHERE id = ?", (point_id,)).fetchone()
            if row is None:
                return
            conn.execute("DELETE FROM outbox WHERE id = ?", (point_id,))
            self._store.record_reject(
                REJECTED_REASON, topic="outbox", detail=detail, payload=str(row[0]).encode()
            )

    def rejected(self, limit: int = 100) -> list[tuple[str, str]]:
        """The newest points the sink refused, as (line, the sink's reason), oldest first."""
        letters = self._store.dead_letters(limit, reason=REJECTED_REASON)
        return [(d.payload.decode(errors="replace"), d.detail) for d in reversed(letters)]

    def depth(self) -> int:
        """Points waiting for delivery."""
        with self._store.reader() as conn:
            return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
