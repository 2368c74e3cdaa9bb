"""Start-up integrity check of the local store, and quarantine of a corrupt file.

An unattended node cannot wait for someone to repair a corrupt SQLite file, and a corrupt
store must not silently lose more data, so :meth:`edge_agent.store.LocalStore.open_checked`
runs ``PRAGMA quick_check`` once at start-up (in the supervisor, before any worker opens the
file). A file that fails it is moved aside, with its WAL, as
``<name>.corrupt-<UTC time>`` (only the newest quarantined copy is kept, so a node that keeps
corrupting its disk cannot fill it), a fresh store is created in its place and an agent alarm
(subject ``store_integrity``) records what was found and where the copy lies.

``quick_check`` reads every page but skips the index-content cross-checks of
``integrity_check``: O(file size), about a second per GiB on an SSD.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from edge_agent.budget import store_files

logger = logging.getLogger(__name__)

#: SQLite primary result codes that mean the file itself is damaged (not "busy" or "no access").
_CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
MAX_PROBLEMS = 20


def quick_check(path: Path) -> list[str]:
    """Problems ``PRAGMA quick_check`` finds in the store at ``path`` (empty: healthy).

    A missing file is healthy (a fresh store will be created).

    Raises
    ------
    sqlite3.Error
        The file could not be checked for another reason than damage (locked, unreadable).
    """
    if not path.exists():
        return []
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.DatabaseError as exc:
        if _is_corruption(exc):
            return [str(exc)]
        raise
    try:
        rows = conn.execute(f"PRAGMA quick_check({MAX_PROBLEMS})").fetchall()
    except sqlite3.DatabaseError as exc:
        if _is_corruption(exc):
            return [str(exc)]
        raise
    finally:
        conn.close()
    found = [str(row[0]) for row in rows]
    return [] if found == ["ok"] else found


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _CORRUPTION_CODES


def quarantine(path: Path) -> Path:
    """Move the store at ``path`` (and its WAL) aside; return the quarantined file's path.

    Older quarantined copies of the same store are deleted first.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for old in path.parent.glob(f"{path.name}.corrupt-*"):
        old.unlink()
    db, wal, shm = store_files(path)
    db.replace(target)
    if wal.exists():
        wal.replace(target.with_name(target.name + "-wal"))
    shm.unlink(missing_ok=True)
    logger.error("store %s is corrupt; moved it to %s and started a fresh store", path, target)
    return target
