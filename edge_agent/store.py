"""The site's local store: windows, labels, scores and counters in one SQLite file.

Ingestion and training meet only here: the ingest worker writes windows and labels, the
inference worker writes scores, and the Flower ClientApp opens the file ``readonly=True`` to
read labelled windows. The file is in WAL mode (readers never block the writer and see only
committed transactions), ``synchronous=NORMAL`` (a committed transaction survives a process
crash; a power cut may lose the last few) and every write is one ``BEGIN IMMEDIATE``
transaction, so several processes may write with ``busy_timeout`` serialising them.
The schema lives in :mod:`edge_agent.schema`.

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

import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from edge_agent.errors import SchemaError, StoreError
from edge_agent.records import (
    LE_F32,
    FloatArray,
    LabelledWindows,
    Score,
    SensorState,
    StoredWindow,
    conform,
    to_blob,
    window_from_row,
)
from edge_agent.schema import MIGRATIONS, SCHEMA_VERSION, seq_from_db, seq_to_db
from models.errors import SignalError
from models.windows import Window

__all__ = ["LabelledWindows", "LocalStore", "Score", "SensorState", "StoredWindow", "conform"]

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000


def _statements(script: str) -> Iterator[str]:
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""
    if buffer.strip():
        raise StoreError("schema script ends inside a statement")


class LocalStore:
    """A local store at ``path`` (created on first open unless ``readonly``).

    Raises
    ------
    StoreError
        The file cannot be opened, is not a FedPM store, or a write fails.
    SchemaError
        The file was written by a newer agent.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        try:
            self._conn = self._connect()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        try:
            self._prepare()
        except BaseException:
            self._conn.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            if not self.path.is_file():
                raise StoreError(f"no store at {self.path}")
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return conn

    def _prepare(self) -> None:
        try:
            if self.readonly:
                self._conn.execute("PRAGMA query_only = ON")
            else:
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"store {self.path} cannot use WAL mode (got {mode})")
                self._conn.execute("PRAGMA synchronous = NORMAL")
                self._conn.execute("PRAGMA foreign_keys = ON")
            version = self._user_version()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path} is not a usable SQLite store: {exc}") from exc
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"store {self.path} has schema {version}; this agent knows up to {SCHEMA_VERSION}"
            )
        if version < SCHEMA_VERSION:
            if self.readonly:
                raise StoreError(f"store {self.path} is not initialised (schema {version})")
            self._migrate()

    def _user_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        with self._write() as conn:
            version = self._user_version()  # another process may have migrated meanwhile
            for step in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[step]):
                    conn.execute(statement)
                logger.info("store %s migrated to schema %d", self.path, step + 1)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise StoreError(f"store {self.path} is open read-only")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot start a write on {self.path}: {exc}") from exc
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"write to {self.path} failed: {exc}") from exc
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._conn
        except sqlite3.Error as exc:
            raise StoreError(f"read from {self.path} failed: {exc}") from exc

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` write transaction (committed on exit, rolled back on error).

        For modules that keep their own tables in the store (:mod:`edge_agent.outbox`).
        """
        return self._write()

    def reader(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """The connection for reads, with SQLite errors raised as :class:`StoreError`."""
        return self._read()

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
        """Store what one frame completed, in one transaction.

        Inserts the frame's complete windows per channel, saves each channel's unfinished
        window (``partials``; ``None`` clears it), moves the sensor's sequence position to
        ``seq`` (so a redelivery after a restart is recognised) and adds ``counters``.
        """
        now = time.time_ns()
        with self._write() as conn:
            ids = self._insert_windows(conn, asset_id, sensor_id, windows)
            for channel, part in (partials or {}).items():
                key = (asset_id, sensor_id, channel)
                if part is None:
                    conn.execute(
                        "DELETE FROM partials WHERE asset_id = ? AND sensor_id = ? AND channel = ?",
                        key,
                    )
                else:
                    conn.execute(
                        "INSERT OR REPLACE INTO partials (asset_id, sensor_id, channel, start_ns,"
                        " sample_rate_hz, samples) VALUES (?, ?, ?, ?, ?, ?)",
                        (*key, part.start_ns, part.sample_rate_hz, to_blob(part.samples)),
                    )
            conn.execute(
                "INSERT INTO sensors (asset_id, sensor_id, last_seq, last_end_ns, updated_ns)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (asset_id, sensor_id) DO UPDATE SET"
                " last_seq = excluded.last_seq, last_end_ns = excluded.last_end_ns,"
                " updated_ns = excluded.updated_ns",
                (asset_id, sensor_id, seq_to_db(seq), end_ns, now),
            )
            self._bump(conn, "counters", counters or {}, now)
            return ids

    def _insert_windows(
        self,
        conn: sqlite3.Connection,
        asset_id: str,
        sensor_id: str,
        windows: Mapping[int, Sequence[Window]],
    ) -> list[int]:
        now = time.time_ns()
        ids = []
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

    # --- plumbing -------------------------------------------------------------------------

    def journal_mode(self) -> str:
        """SQLite journal mode of the file (``wal``)."""
        with self._read() as conn:
            return str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()

    def schema_version(self) -> int:
        """``PRAGMA user_version`` of the file."""
        with self._read():
            return self._user_version()

    def _scalar(self, sql: str) -> int:
        with self._read() as conn:
            return int(conn.execute(sql).fetchone()[0])

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._conn.close()

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
