"""Durable telemetry outbox: InfluxDB points queued in the local store until delivered.

Producers (the inference worker) append line-protocol points in the same store as everything
else, so a point survives the sink, the network or the agent being down; the telemetry worker
(:mod:`edge_agent.telemetry`) reads them in id order, writes a batch, and deletes it only once
the sink acknowledged it. The outbox is bounded (``max_rows``): past that the oldest points are
dropped and counted (``outbox_dropped``), so a sink that never returns cannot fill the disk.

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

import sqlite3
import time
from collections.abc import Mapping, Sequence

from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision

from edge_agent.store import LocalStore

FieldValue = float | int | str | bool


def point_line(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue],
    ts_ns: int,
) -> str:
    """One InfluxDB line-protocol point (nanosecond timestamp), escaped by influxdb-client.

    Raises
    ------
    ValueError
        No fields (InfluxDB refuses a point without one).
    """
    if not fields:
        raise ValueError(f"point {measurement!r} has no fields")
    point = Point(measurement)  # type: ignore[no-untyped-call]  # untyped library
    point.time(ts_ns, WritePrecision.NS)  # type: ignore[no-untyped-call]
    for key, tag in sorted(tags.items()):
        point.tag(key, tag)  # type: ignore[no-untyped-call]
    for key, value in sorted(fields.items()):
        point.field(key, value)  # type: ignore[no-untyped-call]
    return str(point.to_line_protocol())  # type: ignore[no-untyped-call]


def append_lines(conn: sqlite3.Connection, lines: Sequence[str], max_rows: int) -> int:
    """Append ``lines`` inside the caller's transaction; return how many old points were dropped."""
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
    conn.execute(
        "INSERT INTO counters (name, value) VALUES ('outbox_dropped', ?) ON CONFLICT (name)"
        " DO UPDATE SET value = value + excluded.value",
        (excess,),
    )
    return excess


class Outbox:
    """The outbox table of one store.

    Parameters
    ----------
    store
        The site's local store (writable for :meth:`append` and :meth:`ack`).
    max_rows
        Most points kept; the oldest beyond it are dropped and counted.
    """

    def __init__(self, store: LocalStore, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self._store = store
        self.max_rows = max_rows

    def append(self, lines: Sequence[str]) -> int:
        """Queue points in one transaction; return how many old points were dropped."""
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

    def ack(self, up_to_id: int) -> None:
        """Forget every point with ``id <= up_to_id`` (the sink has them)."""
        with self._store.transaction() as conn:
            conn.execute("DELETE FROM outbox WHERE id <= ?", (up_to_id,))

    def depth(self) -> int:
        """Points waiting for delivery."""
        with self._store.reader() as conn:
            return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
