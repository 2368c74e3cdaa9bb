"""Disk budget of the local store: how its bytes are shared between the SQLite files.

A store in WAL mode is three files: the database, its write-ahead log (``-wal``) and the
WAL index (``-shm``). :func:`plan_budget` splits ``budget_bytes`` between them so that their
sum never exceeds the budget:

* the WAL gets an allowance ``wal_bytes`` (1/8 of the budget, 512 KiB to 256 MiB). SQLite
  checkpoints it after every ``wal_autocheckpoint_pages`` pages and truncates it back to
  ``journal_size_limit`` bytes once restarted; the store refuses to begin a transaction when
  the WAL cannot be brought back under ``wal_bytes - 2 * max_txn_bytes`` (a reader holding an
  old snapshot for very long), and splits a batch whose payload reaches ``max_txn_bytes``;
* the WAL index gets 32 KiB per 4,000 WAL frames, plus one spare;
* the database file gets the rest, as a hard cap on ``PRAGMA page_count`` (``db_pages``). The
  file only grows when the page count does, and pages freed by deletions are reused, so the
  store keeps ``reserve_pages`` allocatable (free or below the cap) by evicting old rows.

Examples
--------
>>> plan = plan_budget(8 << 20)
>>> plan.wal_bytes, plan.db_pages, plan.reserve_pages
(1048576, 1776, 111)
>>> plan.db_pages * plan.page_size + plan.wal_bytes + plan.shm_bytes <= 8 << 20
True
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_WAL_BYTES = 512 << 10
MAX_WAL_BYTES = 256 << 20
SHM_CHUNK_BYTES = 32 << 10
FRAMES_PER_SHM_CHUNK = 4000  # 4,096 less the header's share, rounded down
WAL_FRAME_HEADER = 24
WAL_FILE_HEADER = 32

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BudgetPlan:
    """How a store's disk budget is shared between its files (all sizes in bytes)."""

    budget_bytes: int
    page_size: int
    wal_bytes: int
    shm_bytes: int
    db_pages: int
    reserve_pages: int
    wal_autocheckpoint_pages: int
    journal_size_limit: int
    max_txn_bytes: int

    @property
    def db_bytes(self) -> int:
        """Largest size of the database file."""
        return self.db_pages * self.page_size


def plan_budget(budget_bytes: int, page_size: int = 4096) -> BudgetPlan:
    """Share ``budget_bytes`` between the database, its WAL and the WAL index.

    Raises
    ------
    ValueError
        The budget is too small to hold a usable store (under 1 MiB) or the page size is not
        a power of two in [512, 65536].
    """
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise ValueError(f"page_size must be a power of two in [512, 65536], got {page_size}")
    if budget_bytes < 1 << 20:
        raise ValueError(f"store budget must be at least 1 MiB, got {budget_bytes} bytes")
    wal = min(max(budget_bytes // 8, MIN_WAL_BYTES), MAX_WAL_BYTES)
    frame = page_size + WAL_FRAME_HEADER
    shm = SHM_CHUNK_BYTES * (wal // frame // FRAMES_PER_SHM_CHUNK + 2)
    db_pages = (budget_bytes - wal - shm) // page_size
    return BudgetPlan(
        budget_bytes=budget_bytes,
        page_size=page_size,
        wal_bytes=wal,
        shm_bytes=shm,
        db_pages=db_pages,
        reserve_pages=max(16, db_pages // 16),
        wal_autocheckpoint_pages=max(8, wal // 8 // frame),
        journal_size_limit=wal // 8,
        max_txn_bytes=wal // 8,
    )


def store_files(path: str | Path) -> tuple[Path, Path, Path]:
    """The database, WAL and WAL-index files of the store at ``path``."""
    db = Path(path)
    return db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")


def file_bytes(path: Path) -> int:
    """Size of ``path`` in bytes, 0 when it does not exist."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def files_bytes(path: str | Path) -> int:
    """Total size of the store's files (database + WAL + WAL index) in bytes."""
    return sum(file_bytes(p) for p in store_files(path))


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system holding ``path`` (its folder when it does not exist)."""
    where = Path(path)
    while not where.exists() and where != where.parent:
        where = where.parent
    return shutil.disk_usage(where).free


def pages_for(nbytes: int, page_size: int) -> int:
    """Pages a row holding ``nbytes`` of payload may need (overflow chain and its leaf share)."""
    return -(-nbytes // (page_size - 4)) + 1


def page_counts(conn: sqlite3.Connection) -> tuple[int, int]:
    """``(page_count, freelist_count)`` as the current transaction sees them."""
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    return pages, free


#: What eviction removes, in order: oldest raw windows, then the oldest dead letters, then
#: (only when nothing else is left) the oldest telemetry points and features. Labels, alarms,
#: baselines, scores of kept windows, sensor positions, partial windows and counters are never
#: evicted. Each entry: table, counter, rows per step.
EVICTION_ORDER: tuple[tuple[str, str, int], ...] = (
    ("windows", "windows_evicted", 64),
    ("dead_letters", "dead_letters_evicted", 256),
    ("outbox", "outbox_dropped", 1024),
    ("features", "features_evicted", 1024),
)
_KEYS = {"windows": "id", "dead_letters": "id", "outbox": "id", "features": "window_id"}


def evict_oldest(conn: sqlite3.Connection, rows_hint: int) -> tuple[str, int] | None:
    """Delete the oldest rows of the first non-empty table of :data:`EVICTION_ORDER`.

    At most ``rows_hint`` rows (and at most the table's step) go, inside the caller's
    transaction, and are added to the table's counter. Returns ``(table, rows)``, or ``None``
    when nothing is left to evict.
    """
    for table, counter, step in EVICTION_ORDER:
        key = _KEYS[table]
        limit = max(1, min(rows_hint, step))
        cur = conn.execute(
            f"DELETE FROM {table} WHERE {key} IN"  # noqa: S608 - fixed table names
            f" (SELECT {key} FROM {table} ORDER BY {key} LIMIT ?)",
            (limit,),
        )
        if cur.rowcount > 0:
            bump_counter(conn, counter, cur.rowcount)
            return table, cur.rowcount
    return None


def evict_windows(conn: sqlite3.Connection, count: int, *, scored_first: bool) -> int:
    """Delete ``count`` raw windows (scored ones first if asked, then the oldest)."""
    order = (
        "EXISTS (SELECT 1 FROM scores AS s WHERE s.window_id = w.id) DESC, " if scored_first else ""
    )
    cur = conn.execute(
        f"DELETE FROM windows WHERE id IN (SELECT id FROM windows AS w"  # noqa: S608
        f" ORDER BY {order}id LIMIT ?)",
        (count,),
    )
    if cur.rowcount > 0:
        bump_counter(conn, "windows_evicted", cur.rowcount)
    return max(cur.rowcount, 0)


def bump_counter(conn: sqlite3.Connection, name: str, value: int) -> None:
    """Add ``value`` to the named counter inside the caller's transaction."""
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT (name)"
        " DO UPDATE SET value = value + excluded.value",
        (name, value),
    )


#: A disk-full condition (SQLITE_FULL) is held at least this long before it may clear.
DISK_FULL_HOLD_S = 60.0


class SpaceGuard:
    """Degraded-mode state of one store connection: low free disk space, or a full disk.

    ``check_space`` looks at the free space at most once per ``interval_s``; below
    ``min_free_bytes`` the store degrades (``low_disk``); it recovers at 5/4 of that (a
    hysteresis, so the alarm does not flap). ``enter("disk_full", ...)`` is called when SQLite
    reports SQLITE_FULL. Each change leaves ``pending`` set to the agent alarm to record
    (``("raised" | "cleared", detail)``) until the store has written it.
    """

    def __init__(
        self,
        min_free_bytes: int,
        degraded_windows: int,
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_free_bytes = min_free_bytes
        self.degraded_windows = degraded_windows
        self.interval_s = interval_s
        self._clock = clock
        self.degraded: str | None = None
        self.since = 0.0
        self.checked = -math.inf
        self.pending: tuple[str, dict[str, Any]] | None = None
        self.frozen_pages: int | None = None  # page cap while the disk is full
        self.window_count: int | None = None  # raw windows while degraded, None: unknown

    def check_space(self, path: Path, *, force: bool = False) -> None:
        """Degrade or recover according to the free space beside ``path``."""
        now = self._clock()
        if not force and now - self.checked < self.interval_s:
            return
        self.checked = now
        free = free_bytes(path)
        detail = {"free_bytes": free, "min_free_bytes": self.min_free_bytes}
        if free < self.min_free_bytes:
            self.enter("low_disk", detail)
        elif (
            self.degraded is not None
            and free >= self.min_free_bytes * 5 // 4
            and (self.degraded != "disk_full" or now - self.since >= DISK_FULL_HOLD_S)
        ):
            self.leave(detail)

    def enter(self, reason: str, detail: Mapping[str, Any]) -> None:
        """Degrade (no-op when already degraded)."""
        if self.degraded is not None:
            return
        self.degraded, self.since = reason, self._clock()
        self.frozen_pages = self.window_count = None
        self.pending = ("raised", {"condition": reason, **detail})
        logger.warning(
            "store degraded (%s): %s; keeping only the newest raw windows", reason, detail
        )

    def leave(self, detail: Mapping[str, Any]) -> None:
        """Recover from the degraded mode."""
        logger.warning("store recovered from %s: %s", self.degraded, detail)
        self.degraded = None
        self.frozen_pages = self.window_count = None
        self.pending = ("cleared", {"condition": "ok", **detail})

    def forget_counts(self) -> None:
        """A transaction was rolled back: counts taken inside it are void."""
        self.window_count = None
