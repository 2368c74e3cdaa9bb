# ruff: noqa: S608  (f-strings only splice the constant column lists; values are bound)
"""The outbox half of the integration state on SQLite: leases, results, dead letters.

:class:`SqliteOutboxMixin` is mixed into :class:`serving.state.SqliteStateStore` (through
:class:`serving.integration_sqlite.SqliteIntegrationMixin`), which gives it ``_tx()`` and
``_query()``. Claiming (:meth:`SqliteOutboxMixin.claim_outbox`) takes due rows whose lease has
expired and writes the claimant and a lease expiry in one ``BEGIN IMMEDIATE`` transaction, so
replicas sharing the file never hold one row at once; a result is recorded only by the lease's
holder. A PostgreSQL version claims with ``SELECT ... FOR UPDATE SKIP LOCKED``
(docs/erp-integration.md).
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, cast

from serving.integration_tables import OUTBOX_COLUMNS, WEBHOOK_COLUMNS, outbox_from, webhook_from
from serving.integration_types import (
    DeliveryResult,
    IntegrationNotFoundError,
    OutboxItem,
    OutboxStatus,
    Webhook,
)


class SqliteOutboxMixin:
    """The outbox table of the serving state file (see the module docstring)."""

    if TYPE_CHECKING:

        def _tx(self) -> AbstractContextManager[sqlite3.Connection]: ...

        def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]: ...

    def claim_outbox(
        self, owner: str, now: float, limit: int, lease_s: float
    ) -> list[tuple[OutboxItem, Webhook | None]]:
        """Lease up to ``limit`` due pending rows to ``owner`` (with their webhook, if any)."""
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE status = 'pending'"
                " AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until <= ?)"
                " ORDER BY next_attempt_at, outbox_id LIMIT ?",
                (now, now, limit),
            ).fetchall()
            claimed = []
            for row in rows:
                item = outbox_from(row)
                conn.execute(
                    "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE outbox_id = ?",
                    (owner, now + lease_s, item.outbox_id),
                )
                hook = conn.execute(
                    f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE tenant = ? AND webhook_id = ?",
                    (item.tenant, item.webhook_id),
                ).fetchone()
                claimed.append((item, None if hook is None else webhook_from(hook)))
        return claimed

    def finish_delivery(
        self, outbox_id: int, owner: str, result: DeliveryResult, now: float
    ) -> bool:
        """Record an attempt's result if ``owner`` still holds the lease; whether it did."""
        status: OutboxStatus = "pending" if result.outcome == "retry" else result.outcome
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE outbox SET status = ?, attempts = attempts + 1, next_attempt_at = ?,"
                " last_status = ?, last_error = ?, delivered_at = ?, lease_owner = NULL,"
                " lease_until = NULL WHERE outbox_id = ? AND lease_owner = ?"
                " AND status = 'pending'",
                (
                    status,
                    now if result.next_attempt_at is None else result.next_attempt_at,
                    result.status_code,
                    result.error[:1000],
                    now if result.outcome == "delivered" else None,
                    outbox_id,
                    owner,
                ),
            )
            if cur.rowcount != 1:
                return False
            if result.outcome == "delivered" and result.reference is not None:
                # the ERP's document number, until the close names the work order itself
                conn.execute(
                    "UPDATE maintenance_requests SET work_order_id = ? WHERE work_order_id IS NULL"
                    " AND (tenant, request_id) ="
                    " (SELECT tenant, request_id FROM outbox WHERE outbox_id = ?)",
                    (result.reference, outbox_id),
                )
            return True

    def release_outbox(self, outbox_id: int, owner: str, next_attempt_at: float) -> None:
        """Give a leased row back (its webhook is disabled, or the worker is stopping)."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE outbox SET next_attempt_at = ?, lease_owner = NULL, lease_until = NULL"
                " WHERE outbox_id = ? AND lease_owner = ?",
                (next_attempt_at, outbox_id, owner),
            )

    def list_dead_letters(self, tenant: str, limit: int = 100) -> list[OutboxItem]:
        """A tenant's dead letters, newest first."""
        rows = self._query(
            f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE tenant = ? AND status = 'dead'"
            " ORDER BY outbox_id DESC LIMIT ?",
            (tenant, limit),
        )
        return [outbox_from(r) for r in rows]

    def retry_dead_letter(self, tenant: str, outbox_id: int, now: float) -> OutboxItem:
        """Put a dead letter back in the outbox, due now, with a fresh attempt budget."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?,"
                " age_from = ?, lease_owner = NULL, lease_until = NULL"
                " WHERE tenant = ? AND outbox_id = ? AND status = 'dead'",
                (now, now, tenant, outbox_id),
            )
            if cur.rowcount == 0:
                raise IntegrationNotFoundError(f"no dead letter {outbox_id} in this tenant")
            row = conn.execute(
                f"SELECT {OUTBOX_COLUMNS} FROM outbox WHERE outbox_id = ?", (outbox_id,)
            ).fetchone()
        return outbox_from(row)

    def outbox_next_due(self) -> float | None:
        """When the earliest pending row can next be claimed (due, lease over); None if none."""
        rows = self._query(
            "SELECT MIN(MAX(next_attempt_at, COALESCE(lease_until, 0))) FROM outbox"
            " WHERE status = 'pending'"
        )
        due = rows[0][0] if rows else None
        return None if due is None else float(cast(float, due))

    def outbox_counts(self) -> dict[str, int]:
        """Outbox rows by status, over all tenants."""
        counts = {"pending": 0, "delivered": 0, "dead": 0}
        for status, n in self._query("SELECT status, count(*) FROM outbox GROUP BY status"):
            counts[str(status)] = int(cast(int, n))
        return counts
