"""The site's local store: windows, labels, scores, counters and dead letters in one SQLite file.

Ingestion and training meet only here: the ingest worker writes windows and labels, the
inference worker writes scores, and the Flower ClientApp opens the file ``readonly=True`` to
read labelled windows. Connection, transactions, group commit (:meth:`LocalStore.batch`), the
disk budget and agent alarms are in :mod:`edge_agent.store_base`; the schema in
:mod:`edge_agent.schema`; the design in ``docs/edge-store.md``.

Examples
--------
>>> import tempfile, numpy as np
>>> from models.windows import Window
>>> with LocalStore(tempfile.mkdtemp() + "/s.sqlite") as store:
...     store.add_windows("pump-1", "acc-1", 0, [Window(0, 1000.0, np.zeros(16, np.float32))])
...     store.count_windows()
[1]
1
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from edge_agent.errors import StoreError, StoreFullError
from edge_agent.integrity import quarantine, quick_check
from edge_agent.records import (
    LE_F32,
    AlarmRecord,
    DeadLetter,
    FloatArray,
    LabelledWindows,
    Score,
    SensorState,
    StoredWindow,
    conform,
    to_blob,
    window_from_row,
)
from edge_agent.schema import seq_from_db, seq_to_db
from edge_agent.store_base import INTEGRITY_SUBJECT, STORE_SUBJECT, StoreBase
from models.errors import SignalError
from models.windows import Window

if TYPE_CHECKING:
    from edge_agent.settings import AgentSettings

__all__ = [
    "INTEGRITY_SUBJECT",
    "STORE_SUBJECT",
    "AlarmRecord",
    "DeadLetter",
    "LabelledWindows",
    "LocalStore",
    "Score",
    "SensorState",
    "StoredWindow",
    "conform",
]

logger = logging.getLogger(__name__)

_Deferred = tuple[
    dict[tuple[str, str, int], Window | None],
    dict[tuple[str, str], tuple[int, int]],
    dict[str, int],
]

MAX_TOPIC_CHARS = 512
MAX_DETAIL_CHARS = 1000


def _limits(settings: AgentSettings) -> dict[str, Any]:
    return {
        "budget_bytes": settings.store_budget_bytes,
        "min_free_bytes": settings.store_min_free_bytes,
        "dead_letter_max_rows": settings.dead_letter_max_rows,
        "dead_letter_max_payload_bytes": settings.dead_letter_max_payload_bytes,
    }


class LocalStore(StoreBase):
    """A local store at ``path`` (created on first open unless ``readonly``).

    Parameters
    ----------
    path
        The SQLite file.
    readonly
        Open for reading only (the Flower ClientApp); no budget is enforced.
    budget_bytes
        Most bytes the store's files (database, WAL, WAL index) may ever take; ``None``: no
        limit. Old rows are evicted to stay under it (see :mod:`edge_agent.budget`).
    min_free_bytes
        Below this much free disk space ingestion degrades (needs ``budget_bytes``).
    dead_letter_max_rows, dead_letter_max_payload_bytes
        Refused messages kept for inspection, and how much of each one.
    degraded_windows
        Raw windows kept while degraded (scored ones are evicted first).
    space_check_interval_s
        How often the free disk space is looked at (it is also looked at on open).

    Raises
    ------
    StoreError
        The file cannot be opened, is not a FedPM store, or a write fails.
    SchemaError
        The file was written by a newer agent.
    StoreFullError
        A write does not fit the budget even after eviction, or the disk is full.
    ValueError
        A limit is negative, or the budget is under 1 MiB.
    """

    # Rows that record_frame defers to the commit (see there): each channel's unfinished
    # window, each sensor's (seq, end_ns) and counter increments. Set by _restore_deferred.
    _partials: dict[tuple[str, str, int], Window | None]
    _positions: dict[tuple[str, str], tuple[int, int]]
    _counts: dict[str, int]

    @classmethod
    def from_settings(
        cls, settings: AgentSettings, *, readonly: bool = False, checked: bool = False
    ) -> LocalStore:
        """The store of ``settings.store_path`` with the settings' budget and limits.

        ``checked=True`` runs the start-up integrity check first (:meth:`open_checked`; for
        the supervisor only, before any worker opens the file).
        """
        if checked:
            return cls.open_checked(settings.store_path, **_limits(settings))
        return cls(settings.store_path, readonly=readonly, **_limits(settings))

    @classmethod
    def open_checked(cls, path: str | Path, **kwargs: Any) -> LocalStore:
        """Open the store after ``PRAGMA quick_check``; quarantine it first if it is corrupt.

        For the supervisor at start-up, before any other process opens the file: a corrupt
        file is moved aside (:func:`edge_agent.integrity.quarantine`), a fresh store takes its
        place and the agent alarm ``store_integrity`` is raised. ``kwargs`` go to the
        constructor.
        """
        path = Path(path)
        try:
            problems = quick_check(path)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot check store {path}: {exc}") from exc
        moved = quarantine(path) if problems else None
        store = cls(path, **kwargs)
        if moved is not None:
            store.raise_agent_alarm(
                INTEGRITY_SUBJECT,
                {"condition": "corrupt", "problems": problems, "quarantined": str(moved)},
            )
        return store

    # --- windows --------------------------------------------------------------------------

    def add_windows(
        self, asset_id: str, sensor_id: str, channel: int, windows: Sequence[Window]
    ) -> list[int]:
        """Insert one channel's windows (samples in g) in one transaction; return their ids."""
        with self._write() as conn:
            return self._insert_windows(conn, asset_id, sensor_id, {channel: windows})

    def record_frame(
        self,
        asset_id: str,
        sensor_id: str,
        *,
        seq: int,
        end_ns: int,
        windows: Mapping[int, Sequence[Window]],
        partials: Mapping[int, Window | None] | None = None,
        counters: Mapping[str, int] | None = None,
    ) -> list[int]:
        """Store what one frame completed, in one transaction (or in the current batch).

        Inserts the frame's complete windows per channel, saves each channel's unfinished
        window (``partials``; ``None`` clears it), moves the sensor's sequence position to
        ``seq`` (so a redelivery after a restart is recognised) and adds ``counters``. With a
        disk budget the oldest raw windows are evicted first to make room; when the disk turns
        out to be full the store degrades and, outside a batch, tries once more.

        The windows are inserted at once; the unfinished windows, the position and the
        counters are kept in memory and written when the transaction commits, once per
        channel and sensor however many frames the batch holds (the last value wins), in the
        same transaction as the windows. So a committed frame's samples are always either in
        a window row or in its channel's partial row, and a rolled-back batch leaves nothing.
        Inside a batch no savepoint is taken: a frame refused by the budget
        (:class:`StoreFullError` before anything of it is written) leaves the batch intact,
        while an SQLite error half-way through a frame fails the whole batch at its end.
        Reads of those tables through this store inside the batch see the deferred rows.
        """
        args = (asset_id, sensor_id, seq, end_ns, windows, partials or {}, counters or {})
        try:
            if self._depth:
                return self._record_frame(*args)
            with self._write():
                return self._record_frame(*args)
        except StoreFullError:
            if self._depth or self._guard.degraded != "disk_full":
                raise
            logger.warning("disk full while storing a frame; retrying degraded")
            with self._write():
                return self._record_frame(*args)

    def _record_frame(
        self,
        asset_id: str,
        sensor_id: str,
        seq: int,
        end_ns: int,
        windows: Mapping[int, Sequence[Window]],
        partials: Mapping[int, Window | None],
        counters: Mapping[str, int],
    ) -> list[int]:
        conn = self._conn
        if self._broken or not conn.in_transaction:
            raise StoreError(f"a write of this batch on {self.path} failed; rolled back")
        if self._depth == 1 and self._plan is not None:
            self._split_if_large(conn)
        sizes = [4 * len(p.samples) for p in partials.values() if p is not None]
        sizes += [4 * len(w.samples) for batch in windows.values() for w in batch]
        try:
            self._charge(conn, sizes)  # StoreFullError here: nothing of the frame written
            ids = self._insert_windows(conn, asset_id, sensor_id, windows, charged=True)
        except StoreFullError:
            self._room = None
            raise
        except sqlite3.Error as exc:
            self._broken = True  # the frame may be half-written: the batch must not commit
            raise self._translate(exc) from exc
        except BaseException:
            self._broken = True
            raise
        for channel, part in partials.items():
            self._partials[(asset_id, sensor_id, channel)] = part
        self._positions[(asset_id, sensor_id)] = (seq, end_ns)
        bumps = self._counts
        for name, n in counters.items():
            bumps[name] = bumps.get(name, 0) + n
        return ids

    def _write_deferred(self, conn: sqlite3.Connection) -> None:
        partials, positions, counts = self._partials, self._positions, self._counts
        if not (partials or positions or counts):
            return
        self._partials, self._positions, self._counts = {}, {}, {}
        gone = [key for key, part in partials.items() if part is None]
        if gone:
            conn.executemany(
                "DELETE FROM partials WHERE asset_id = ? AND sensor_id = ? AND channel = ?", gone
            )
        kept = [
            (*key, part.start_ns, part.sample_rate_hz, to_blob(part.samples))
            for key, part in partials.items()
            if part is not None
        ]
        if kept:
            conn.executemany(
                "INSERT OR REPLACE INTO partials (asset_id, sensor_id, channel, start_ns,"
                " sample_rate_hz, samples) VALUES (?, ?, ?, ?, ?, ?)",
                kept,
            )
        now = time.time_ns()
        if positions:
            conn.executemany(
                "INSERT INTO sensors (asset_id, sensor_id, last_seq, last_end_ns, updated_ns)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (asset_id, sensor_id) DO UPDATE SET"
                " last_seq = excluded.last_seq, last_end_ns = excluded.last_end_ns,"
                " updated_ns = excluded.updated_ns",
                [(a, s, seq_to_db(q), e, now) for (a, s), (q, e) in positions.items()],
            )
        self._bump(conn, "counters", counts, now)

    def _deferred_snapshot(self) -> object:
        return (dict(self._partials), dict(self._positions), dict(self._counts))

    def _restore_deferred(self, snapshot: object) -> None:
        if snapshot is None:
            self._partials, self._positions, self._counts = {}, {}, {}
        else:
            self._partials, self._positions, self._counts = cast(_Deferred, snapshot)

    def _see_deferred(self) -> None:
        """Write the deferred rows now, so that a read inside a batch sees them."""
        if self._depth and not self._broken and self._conn.in_transaction:
            try:
                self._write_deferred(self._conn)
            except sqlite3.Error as exc:
                self._broken = True
                raise self._translate(exc) from exc

    def _insert_windows(
        self,
        conn: sqlite3.Connection,
        asset_id: str,
        sensor_id: str,
        windows: Mapping[int, Sequence[Window]],
        *,
        charged: bool = False,
    ) -> list[int]:
        now = time.time_ns()
        ids: list[int] = []
        if not charged:
            self._charge(conn, [4 * len(w.samples) for batch in windows.values() for w in batch])
        for channel, batch in windows.items():
            for w in batch:
                cur = conn.execute(
                    "INSERT INTO windows (asset_id, sensor_id, channel, start_ns, end_ns,"
                    " sample_rate_hz, n_samples, samples, created_ns)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        asset_id,
                        sensor_id,
                        channel,
                        w.start_ns,
                        w.end_ns,
                        w.sample_rate_hz,
                        len(w.samples),
                        to_blob(w.samples),
                        now,
                    ),
                )
                ids.append(int(cur.lastrowid or 0))
        if ids:
            if self._guard.window_count is not None:
                self._guard.window_count += len(ids)
            self._trim_ring(conn)
        return ids

    def unscored_windows(self, after_id: int, limit: int = 256) -> list[StoredWindow]:
        """Windows with ``id > after_id`` and no score yet, oldest first, at most ``limit``."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, asset_id, sensor_id, channel, start_ns, end_ns, sample_rate_hz,"
                " samples FROM windows AS w WHERE id > ? AND NOT EXISTS"
                " (SELECT 1 FROM scores AS s WHERE s.window_id = w.id) ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [window_from_row(row) for row in rows]

    def count_windows(self) -> int:
        """Number of stored windows."""
        return self._scalar("SELECT count(*) FROM windows")

    def partial_windows(self) -> dict[tuple[str, str, int], Window]:
        """Each (asset, sensor, channel)'s unfinished window saved by :meth:`record_frame`."""
        self._see_deferred()
        with self._read() as conn:
            rows = conn.execute(
                "SELECT asset_id, sensor_id, channel, start_ns, sample_rate_hz, samples"
                " FROM partials"
            ).fetchall()
        return {
            (a, s, c): Window(t, fs, np.frombuffer(blob, dtype=LE_F32).astype(np.float32))
            for a, s, c, t, fs, blob in rows
        }

    def sensor_states(self) -> dict[tuple[str, str], SensorState]:
        """Last stored sequence position per (asset, sensor)."""
        self._see_deferred()
        with self._read() as conn:
            rows = conn.execute(
                "SELECT asset_id, sensor_id, last_seq, last_end_ns FROM sensors"
            ).fetchall()
        return {(a, s): SensorState(seq_from_db(q), e) for a, s, q, e in rows}

    # --- labels ---------------------------------------------------------------------------

    def add_label(
        self,
        asset_id: str,
        label: str,
        start_ns: int,
        end_ns: int,
        *,
        sensor_id: str | None = None,
        source: str = "operator",
    ) -> int:
        """Record that ``asset_id`` (or one sensor of it) was in state ``label`` over a span.

        An identical label event (same asset, sensor, label and span) is stored once; its id
        is returned again.
        """
        if end_ns <= start_ns:
            raise StoreError(f"label span must be positive: [{start_ns}, {end_ns}]")
        with self._write() as conn:
            row = conn.execute(
                "SELECT id FROM labels WHERE asset_id = ? AND ifnull(sensor_id, '') = ?"
                " AND label = ? AND start_ns = ? AND end_ns = ?",
                (asset_id, sensor_id or "", label, start_ns, end_ns),
            ).fetchone()
            if row is not None:
                return int(row[0])
            cur = conn.execute(
                "INSERT INTO labels (asset_id, sensor_id, label, start_ns, end_ns, source,"
                " received_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (asset_id, sensor_id, label, start_ns, end_ns, source, time.time_ns()),
            )
            return int(cur.lastrowid or 0)

    def count_labels(self) -> int:
        """Number of stored label events."""
        return self._scalar("SELECT count(*) FROM labels")

    def labelled_windows(
        self, class_names: Sequence[str], sample_rate_hz: float, window_samples: int
    ) -> LabelledWindows:
        """Windows lying entirely inside a label of one of ``class_names``, ready to train on.

        A window matches a label of the same asset (and of the same sensor when the label
        names one) whose ``[start_ns, end_ns]`` contains it. A window inside labels of two
        different classes is ambiguous and left out. Windows recorded at another rate are
        resampled to ``sample_rate_hz``; every window is cropped or zero-padded to
        ``window_samples``. ``y`` indexes ``class_names``; rows are in window-id order.
        """
        classes = {name: i for i, name in enumerate(class_names)}
        matches: dict[int, list[tuple[Any, ...]]] = {}
        if classes:
            sql = (
                "SELECT w.id, w.sensor_id, w.channel, w.start_ns, w.sample_rate_hz, w.samples,"
                " l.id, l.label FROM labels AS l JOIN windows AS w ON w.asset_id = l.asset_id"
                " AND (l.sensor_id IS NULL OR w.sensor_id = l.sensor_id)"
                " AND w.start_ns >= l.start_ns AND w.end_ns <= l.end_ns"
                " WHERE l.label IN (SELECT value FROM json_each(?)) ORDER BY w.id, l.id"
            )
            with self._read() as conn:
                rows = conn.execute(sql, (json.dumps(list(classes)),))
                for row in rows:
                    matches.setdefault(row[0], []).append(row)
        xs: list[FloatArray] = []
        ys: list[int] = []
        groups: list[int] = []
        starts: list[int] = []
        group_ids: dict[tuple[int, str, int], int] = {}
        skipped = 0
        for found in matches.values():
            if len({row[7] for row in found}) > 1:
                skipped += 1
                continue
            _, sensor_id, channel, start_ns, fs, blob, label_id, label = found[0]
            raw = np.frombuffer(blob, dtype=LE_F32).astype(np.float32)
            try:
                xs.append(conform(raw, fs, sample_rate_hz, window_samples))
            except SignalError:
                skipped += 1
                continue
            ys.append(classes[label])
            groups.append(group_ids.setdefault((label_id, sensor_id, channel), len(group_ids)))
            starts.append(start_ns)
        if skipped:
            logger.warning("left out %d ambiguous or unresamplable labelled windows", skipped)
        x = np.stack(xs)[:, np.newaxis, :] if xs else np.zeros((0, 1, window_samples), np.float32)
        return LabelledWindows(
            x=np.ascontiguousarray(x, dtype=np.float32),
            y=np.asarray(ys, dtype=np.int64),
            group=np.asarray(groups, dtype=np.int64),
            start_ns=np.asarray(starts, dtype=np.int64),
        )

    # --- scores ---------------------------------------------------------------------------

    def add_scores(self, rows: Sequence[Score]) -> None:
        """Insert (or replace) scores in one transaction."""
        with self._write() as conn:
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
                    for s in rows
                ],
            )

    def scores(self, window_id: int) -> list[Score]:
        """Every model's score of one window."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT window_id, model_version, predicted, failure_probability, probabilities,"
                " scored_ns FROM scores WHERE window_id = ? ORDER BY model_version",
                (window_id,),
            ).fetchall()
        return [Score(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in rows]

    def count_scores(self) -> int:
        """Number of stored scores (all model versions)."""
        return self._scalar("SELECT count(*) FROM scores")

    def last_scored_window_id(self) -> int:
        """Highest window id holding a score, 0 if none."""
        return self._scalar("SELECT ifnull(max(window_id), 0) FROM scores")

    # --- counters -------------------------------------------------------------------------

    def add_rejects(self, counts: Mapping[str, int]) -> None:
        """Add to the per-reason counters of refused messages."""
        with self._write() as conn:
            self._bump(conn, "rejects", counts, time.time_ns())

    def record_reject(
        self,
        reason: str,
        *,
        topic: str = "",
        detail: str = "",
        payload: bytes | bytearray | memoryview | None = None,
    ) -> None:
        """Count one refused message and, given its ``payload``, keep it as a dead letter.

        The dead letter holds the topic, reason, detail and the payload's first
        ``dead_letter_max_payload_bytes`` bytes; beyond ``dead_letter_max_rows`` the oldest
        dead letters are removed.
        """
        now = time.time_ns()
        with self._write() as conn:
            self._bump(conn, "rejects", {reason: 1}, now)
            if payload is None or self._dead_letter_rows == 0:
                return
            kept = bytes(payload[: self._dead_letter_bytes])
            self._charge(conn, [len(kept) + len(topic) + len(detail)])
            cur = conn.execute(
                "INSERT INTO dead_letters (received_ns, topic, reason, detail, payload_bytes,"
                " payload) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    now,
                    topic[:MAX_TOPIC_CHARS],
                    reason,
                    detail[:MAX_DETAIL_CHARS],
                    len(payload),
                    kept,
                ),
            )
            conn.execute(
                "DELETE FROM dead_letters WHERE id <= ?",
                (int(cur.lastrowid or 0) - self._dead_letter_rows,),
            )

    def dead_letters(self, limit: int = 100, *, reason: str | None = None) -> list[DeadLetter]:
        """The newest ``limit`` dead letters (of one ``reason`` if given), newest first."""
        sql = (
            "SELECT id, received_ns, topic, reason, detail, payload_bytes, payload"
            " FROM dead_letters WHERE ? IS NULL OR reason = ? ORDER BY id DESC LIMIT ?"
        )
        with self._read() as conn:
            rows = conn.execute(sql, (reason, reason, limit)).fetchall()
        return [DeadLetter(*row) for row in rows]

    def count_dead_letters(self) -> int:
        """Number of kept dead letters."""
        return self._scalar("SELECT count(*) FROM dead_letters")

    def rejects(self) -> dict[str, int]:
        """Refused messages per reason."""
        with self._read() as conn:
            return dict(conn.execute("SELECT reason, count FROM rejects").fetchall())

    def add_counters(self, counts: Mapping[str, int]) -> None:
        """Add to named event counters (``seq_gaps``, ``frames``, ...)."""
        with self._write() as conn:
            self._bump(conn, "counters", counts, time.time_ns())

    def counters(self) -> dict[str, int]:
        """Named event counters."""
        self._see_deferred()
        with self._read() as conn:
            return dict(conn.execute("SELECT name, value FROM counters").fetchall())

    @staticmethod
    def _bump(conn: sqlite3.Connection, table: str, counts: Mapping[str, int], now: int) -> None:
        if table == "rejects":
            sql = (
                "INSERT INTO rejects (reason, count, last_ns) VALUES (?, ?, ?) ON CONFLICT"
                " (reason) DO UPDATE SET count = count + excluded.count, last_ns = excluded.last_ns"
            )
            conn.executemany(sql, [(k, n, now) for k, n in counts.items() if n])
        else:
            sql = (
                "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name)"
                " DO UPDATE SET value = value + excluded.value"
            )
            conn.executemany(sql, [(k, n) for k, n in counts.items() if n])
