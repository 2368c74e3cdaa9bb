"""Connection, transactions and disk budget of the local store (:class:`StoreBase`).

The file is in WAL mode (readers never block the writer and see only committed
transactions), ``synchronous=NORMAL`` (a committed transaction survives a process crash; a
power cut may lose the last few) and every write is one ``BEGIN IMMEDIATE`` transaction, so
several processes may write with ``busy_timeout`` serialising them. Writes made inside
:meth:`StoreBase.batch` join one transaction as savepoints (group commit).

With a disk budget the store's files never pass it: see :mod:`edge_agent.budget` for how the
bytes are shared, and ``docs/edge-store.md`` for the whole design. The tables' own methods are
in :class:`edge_agent.store.LocalStore`.
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
from typing import Any, Self

from edge_agent.budget import (
    BudgetPlan,
    SpaceGuard,
    evict_oldest,
    evict_windows,
    file_bytes,
    files_bytes,
    page_counts,
    pages_for,
    plan_budget,
    store_files,
)
from edge_agent.errors import SchemaError, StoreError, StoreFullError
from edge_agent.records import AlarmRecord
from edge_agent.schema import MIGRATIONS, SCHEMA_VERSION

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
#: Longest wait for readers when the WAL must be checkpointed to stay in its allowance.
CHECKPOINT_WAIT_MS = 2_000
#: Agent-alarm subjects the store raises: disk space (degraded ingestion) and integrity.
STORE_SUBJECT = "store"
INTEGRITY_SUBJECT = "store_integrity"
#: Pages kept free while the disk is full (the file cannot grow, evictions make the room).
DISK_FULL_RESERVE_PAGES = 8


def _statements(script: str) -> Iterator[str]:
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""
    if buffer.strip():
        raise StoreError("schema script ends inside a statement")


class StoreBase:
    """Connection, transactions and disk budget of a local store (see :class:`LocalStore`).

    Every write runs in ``BEGIN IMMEDIATE`` (or, inside one, in a savepoint). With a budget,
    each transaction first makes room by evicting old rows (:func:`edge_agent.budget.
    evict_oldest`), is refused before ``COMMIT`` if it would still grow the database past its
    page cap, and looks at the WAL's size after it commits.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        readonly: bool = False,
        budget_bytes: int | None = None,
        min_free_bytes: int = 0,
        dead_letter_max_rows: int = 10_000,
        dead_letter_max_payload_bytes: int = 4096,
        degraded_windows: int = 64,
        space_check_interval_s: float = 5.0,
    ) -> None:
        if min(min_free_bytes, dead_letter_max_rows, dead_letter_max_payload_bytes) < 0:
            raise ValueError("store limits must not be negative")
        if degraded_windows < 1 or space_check_interval_s < 0:
            raise ValueError("degraded_windows must be >= 1 and space_check_interval_s >= 0")
        if budget_bytes is not None:
            plan_budget(budget_bytes)  # ValueError for a budget too small to hold a store
        self.path = Path(path)
        self.readonly = readonly
        self._budget_bytes = None if readonly else budget_bytes
        self._guard = SpaceGuard(min_free_bytes, degraded_windows, space_check_interval_s)
        self._dead_letter_rows = dead_letter_max_rows
        self._dead_letter_bytes = dead_letter_max_payload_bytes
        self._plan: BudgetPlan | None = None
        self._db_cap = 0  # most database pages: the plan's, or a larger file's own size
        self._depth = 0  # 0: no transaction; 1: the outer one; more: savepoints in it
        self._broken = False  # the outer transaction was lost; its batch must fail
        self._txn_bytes = 0
        self._wal_bytes = 0
        self._room: int | None = None  # pages still allocatable in this transaction, estimated
        self._room_cap = 0  # the page cap that estimate was made under
        self._recorded: tuple[str, dict[str, Any]] | None = None
        self._restore_deferred(None)  # nothing deferred yet
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
        if self._budget_bytes is not None:
            self._apply_budget(self._budget_bytes)

    def _apply_budget(self, budget_bytes: int) -> None:
        page_size = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
        try:
            plan = plan_budget(budget_bytes, page_size)
        except ValueError as exc:
            raise StoreError(f"store {self.path}: {exc}") from exc
        self._plan = plan
        self._conn.execute(f"PRAGMA wal_autocheckpoint = {plan.wal_autocheckpoint_pages}")
        self._conn.execute(f"PRAGMA journal_size_limit = {plan.journal_size_limit}")
        pages = int(self._conn.execute("PRAGMA page_count").fetchone()[0])
        if pages > plan.db_pages:  # written under a larger budget: it must not grow further
            logger.warning(
                "store %s holds %d pages, over the %d of its budget; it will not grow, and"
                " only an offline VACUUM shrinks it",
                self.path,
                pages,
                plan.db_pages,
            )
        self._db_cap = max(plan.db_pages, pages)
        self._guard.check_space(self.path, force=True)
        if self._guard.pending is None and self._guard.degraded is None:
            self._guard.pending = ("cleared", {"condition": "ok"})  # a stale alarm is cleared
        with self._write():
            pass  # records the alarm transition and evicts down to a reduced budget

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

    # --- transactions ---------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise StoreError(f"store {self.path} is open read-only")
        inner = self._savepoint() if self._depth else self._transaction()
        with inner as conn:
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        self._before_begin()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot start a write on {self.path}: {exc}") from exc
        self._depth, self._broken, self._txn_bytes, self._room = 1, False, 0, None
        try:
            self._on_begin(conn)
            yield conn
            if self._broken:
                raise StoreError(f"a write of this batch on {self.path} failed; rolled back")
            self._write_deferred(conn)
            self._before_commit(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._guard.forget_counts()
            self._restore_deferred(None)
            if isinstance(exc, sqlite3.Error):
                raise self._translate(exc) from exc
            raise
        finally:
            self._depth = 0
        self._after_commit()

    @contextmanager
    def _savepoint(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        if self._broken or not conn.in_transaction:
            raise StoreError(f"a write of this batch on {self.path} failed; rolled back")
        if self._depth == 1 and self._plan is not None:
            self._split_if_large(conn)
        name = f"fedpm_{self._depth}"
        conn.execute(f"SAVEPOINT {name}")
        deferred = self._deferred_snapshot()
        self._depth += 1
        try:
            yield conn
            conn.execute(f"RELEASE {name}")
        except BaseException as exc:
            self._room = None  # the rollback may bring evicted rows back
            self._restore_deferred(deferred)
            try:
                if not conn.in_transaction:  # SQLite gave up the whole transaction
                    raise sqlite3.OperationalError("transaction rolled back")
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
                self._guard.forget_counts()
            except sqlite3.Error:
                self._broken = True
            if isinstance(exc, sqlite3.Error):
                raise self._translate(exc) from exc
            raise
        finally:
            self._depth -= 1

    def _translate(self, exc: sqlite3.Error) -> StoreError:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL:
            self._guard.enter("disk_full", {"error": str(exc)})
            return StoreFullError(f"write to {self.path} failed, the disk is full: {exc}")
        return StoreError(f"write to {self.path} failed: {exc}")

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Group the store's writes into one transaction, committed when the block ends.

        Every write method called inside the block joins the transaction (as a savepoint, so
        a failed write that the caller handles leaves the rest intact); an exception leaving
        the block rolls back the whole batch. :meth:`LocalStore.record_frame`, the ingest hot
        path, joins without a savepoint and defers its small rows to the commit (see there).
        Nesting is safe (an inner batch is a savepoint).
        With a disk budget, a batch whose payload passes :attr:`max_batch_bytes` is committed
        in parts (each part atomic), so the WAL stays inside its allowance.

        Examples
        --------
        >>> import tempfile
        >>> from edge_agent.store import LocalStore
        >>> with LocalStore(tempfile.mkdtemp() + "/s.sqlite") as store:
        ...     with store.batch():
        ...         store.add_counters({"frames": 2})
        ...         store.add_rejects({"bad_magic": 1})
        ...     store.counters(), store.rejects()
        ({'frames': 2}, {'bad_magic': 1})
        """
        return self._batch()

    @contextmanager
    def _batch(self) -> Iterator[None]:
        with self._write():
            yield

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` write transaction (committed on exit, rolled back on error).

        For modules that keep their own tables in the store (:mod:`edge_agent.outbox`).
        Inside :meth:`batch` it joins the batch.
        """
        return self._write()

    def reader(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """The connection for reads, with SQLite errors raised as :class:`StoreError`."""
        return self._read()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._conn
        except sqlite3.Error as exc:
            raise StoreError(f"read from {self.path} failed: {exc}") from exc

    # --- disk budget (see edge_agent.budget) ---------------------------------------------

    def _before_begin(self) -> None:
        plan = self._plan
        if plan is None:
            return
        self._guard.check_space(self.path)
        limit = plan.wal_bytes - 3 * plan.max_txn_bytes
        self._wal_bytes = file_bytes(store_files(self.path)[1])  # one stat, ~3 us
        if self._wal_bytes > limit:
            self._checkpoint()
            if self._wal_bytes > limit:
                raise StoreFullError(
                    f"the WAL of {self.path} ({self._wal_bytes} bytes) cannot be checkpointed:"
                    " a reader has held an old snapshot for too long"
                )

    def _checkpoint(self) -> None:
        conn = self._conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot checkpoint {self.path}: {exc}") from exc
        finally:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._wal_bytes = file_bytes(store_files(self.path)[1])

    def _on_begin(self, conn: sqlite3.Connection) -> None:
        pending = self._guard.pending
        self._recorded = pending
        if pending is not None:
            self._set_agent_alarm(conn, STORE_SUBJECT, *pending)

    def _before_commit(self, conn: sqlite3.Connection) -> None:
        if self._plan is None:
            return
        self._make_room(conn, self._reserve_pages())
        pages, _ = page_counts(conn)
        cap = self._cap_pages(conn)
        if pages > cap:
            raise StoreFullError(
                f"the transaction would grow {self.path} to {pages} pages, over its cap of {cap}"
            )

    def _after_commit(self) -> None:
        if self._recorded is not None and self._guard.pending is self._recorded:
            self._guard.pending = None
        self._recorded = None

    def _split_if_large(self, conn: sqlite3.Connection) -> None:
        """Commit a batch's part once it holds ``max_txn_bytes``, and go on in a new one."""
        if self._plan is None or self._txn_bytes < self._plan.max_txn_bytes:
            return
        try:
            self._write_deferred(conn)
            self._before_commit(conn)
            conn.execute("COMMIT")
            self._after_commit()
            self._before_begin()
            conn.execute("BEGIN IMMEDIATE")
            self._txn_bytes, self._room = 0, None
            self._on_begin(conn)
        except BaseException as exc:
            self._broken = True
            self._restore_deferred(None)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._translate(exc) from exc
            raise

    def _cap_pages(self, conn: sqlite3.Connection) -> int:
        cap = self._db_cap
        if self._guard.degraded == "disk_full":  # the file cannot grow any more
            if self._guard.frozen_pages is None:
                self._guard.frozen_pages = page_counts(conn)[0]
            cap = min(cap, self._guard.frozen_pages)
        return cap

    def _make_room(self, conn: sqlite3.Connection, need_pages: int) -> int:
        """Evict old rows until ``need_pages`` pages can be written; return the room found."""
        cap = self._cap_pages(conn)
        while True:
            pages, free = page_counts(conn)
            room = cap - pages + free
            if room >= need_pages:
                return room
            evicted = evict_oldest(conn, max(1, (need_pages - room) // 4))
            if evicted is None:
                raise StoreFullError(
                    f"{self.path} has nothing left to evict for {need_pages} pages"
                    f" (cap {cap} pages, {pages} used)"
                )
            if evicted[0] == "windows":
                self._guard.window_count = None

    def _charge(self, conn: sqlite3.Connection, payload_bytes: Sequence[int]) -> None:
        """Make room for rows holding ``payload_bytes`` each (with the budget's reserve).

        The room measured (two ``PRAGMA`` statements) is kept for the rest of the transaction and
        each charge takes its pages from it; it is measured again (evicting as needed) only
        when the estimate no longer covers a charge and the reserve. The estimate only errs
        low: pages are over-counted (:func:`edge_agent.budget.pages_for`), writes that free
        pages are not credited, uncharged writes (counters, positions) are what the reserve
        is for, and :meth:`_before_commit` checks the real page count before ``COMMIT``.
        """
        self._txn_bytes += sum(payload_bytes)
        plan = self._plan
        if plan is None or not payload_bytes:
            return
        need = sum(pages_for(n, plan.page_size) for n in payload_bytes)
        reserve = self._reserve_pages()
        cap = self._cap_pages(conn)
        room = self._room
        if room is None or self._room_cap != cap or room < need + reserve:
            self._room = None
            room = self._make_room(conn, need + reserve)
            self._room_cap = cap
        self._room = room - need

    def _reserve_pages(self) -> int:
        assert self._plan is not None
        if self._guard.degraded == "disk_full":  # only freed pages are left to write into
            return min(self._plan.reserve_pages, DISK_FULL_RESERVE_PAGES)
        return self._plan.reserve_pages

    def _trim_ring(self, conn: sqlite3.Connection) -> None:
        """While degraded, keep only the newest ``degraded_windows`` raw windows."""
        guard = self._guard
        if self._plan is None or guard.degraded is None:
            return
        if guard.window_count is None:
            guard.window_count = int(conn.execute("SELECT count(*) FROM windows").fetchone()[0])
        excess = guard.window_count - guard.degraded_windows
        if excess > 0:
            guard.window_count -= evict_windows(conn, min(excess, 64), scored_first=True)

    # --- writes deferred to the end of a transaction (see LocalStore.record_frame) ---------

    def _write_deferred(self, conn: sqlite3.Connection) -> None:
        """Write what was deferred to the end of the transaction (before ``COMMIT``)."""

    def _deferred_snapshot(self) -> object:
        """What :meth:`_restore_deferred` needs to undo deferrals made inside a savepoint."""
        return None

    def _restore_deferred(self, snapshot: object) -> None:
        """Go back to ``snapshot`` (``None``: drop every deferred write; rolled back)."""

    @property
    def budget(self) -> BudgetPlan | None:
        """How the disk budget is shared between the store's files (``None``: no budget)."""
        return self._plan

    @property
    def max_batch_bytes(self) -> int | None:
        """Payload a batch may hold before it is committed in parts (``None``: no limit)."""
        return None if self._plan is None else self._plan.max_txn_bytes

    @property
    def degraded(self) -> str | None:
        """Why ingestion is degraded (``low_disk`` or ``disk_full``), ``None`` when it is not."""
        return self._guard.degraded

    def files_bytes(self) -> int:
        """Bytes the store's files take on disk now (database + WAL + WAL index)."""
        return files_bytes(self.path)

    # --- agent alarms ---------------------------------------------------------------------

    def raise_agent_alarm(self, subject: str, detail: Mapping[str, Any]) -> bool:
        """Record that the agent condition ``subject`` is raised; ``False`` if it already was.

        ``detail`` (JSON-serialisable) says what was found. Rows go to the ``alarms`` table
        with ``source='agent'``, for the agent to publish (:meth:`agent_alarms`).
        """
        with self._write() as conn:
            return self._set_agent_alarm(conn, subject, "raised", detail)

    def clear_agent_alarm(self, subject: str, detail: Mapping[str, Any] | None = None) -> bool:
        """Record that ``subject`` is cleared; ``False`` if it was not raised."""
        with self._write() as conn:
            return self._set_agent_alarm(conn, subject, "cleared", detail or {})

    def _set_agent_alarm(
        self, conn: sqlite3.Connection, subject: str, state: str, detail: Mapping[str, Any]
    ) -> bool:
        row = conn.execute(
            "SELECT state FROM alarms WHERE source = 'agent' AND subject = ?"
            " ORDER BY id DESC LIMIT 1",
            (subject,),
        ).fetchone()
        current = "cleared" if row is None else row[0]
        if current == state:
            return False
        conn.execute(
            "INSERT INTO alarms (ts_ns, source, subject, state, detail)"
            " VALUES (?, 'agent', ?, ?, ?)",
            (time.time_ns(), subject, state, json.dumps(dict(detail), default=str)),
        )
        return True

    def agent_alarms(self, after_id: int = 0, limit: int = 1000) -> list[AlarmRecord]:
        """Agent alarm rows with ``id > after_id``, oldest first (to publish in order)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, ts_ns, source, subject, state, detail FROM alarms"
                " WHERE source = 'agent' AND id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [AlarmRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def active_agent_alarms(self) -> dict[str, AlarmRecord]:
        """The raised agent alarms by subject (the latest row of each subject is ``raised``)."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, ts_ns, source, subject, state, detail FROM alarms AS a"
                " WHERE source = 'agent' AND id = (SELECT max(id) FROM alarms AS b"
                " WHERE b.source = 'agent' AND b.subject = a.subject) AND state = 'raised'"
            ).fetchall()
        return {r[3]: AlarmRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows}

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

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
