"""SQLite implementation of :class:`~serving.integration_types.IntegrationStore`.

:class:`SqliteIntegrationMixin` is mixed into :class:`serving.state.SqliteStateStore`, which
gives it one connection and ``_tx()`` (``BEGIN IMMEDIATE`` under a lock) and ``_query()``.
The tables are :data:`~serving.integration_tables.INTEGRATION_SCHEMA` (state schema 3). One
open request per (tenant, asset, fault) is a partial unique index, so two writers cannot both
open one; one outbox row per (request, event, webhook) is a unique index, so a request is queued
for a webhook once.

The outbox's leases and results are in :mod:`serving.outbox_sqlite`, the tables and row
conversions in :mod:`serving.integration_tables`.
"""

# ruff: noqa: S608  (f-strings only splice the constant column lists; values are bound)
from __future__ import annotations

import json
import math
import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from serving.integration_tables import (
    REQUEST_COLUMNS,
    WEBHOOK_COLUMNS,
    label_from,
    request_from,
    request_row,
    rule_document,
    rule_from,
    webhook_from,
)
from serving.integration_types import (
    OPENED_EVENT,
    AssetView,
    Closure,
    IntegrationConflictError,
    IntegrationNotFoundError,
    Label,
    MaintenanceRequest,
    Renderer,
    RequestStatus,
    Rule,
    Webhook,
    WindowObservation,
)
from serving.outbox_sqlite import SqliteOutboxMixin
from serving.rules import in_scope, window_fault


def idempotency_key(request_id: str, event: str) -> str:
    """The ``Idempotency-Key`` of an event of a request: the same on every attempt."""
    return f"{request_id}:{event}"


class SqliteIntegrationMixin(SqliteOutboxMixin):
    """The integration tables of the serving state file (see the module docstring)."""

    if TYPE_CHECKING:

        def _tx(self) -> AbstractContextManager[sqlite3.Connection]: ...

        def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]: ...

    # --- webhooks -------------------------------------------------------------------------

    def put_webhook(self, webhook: Webhook) -> tuple[Webhook, bool]:
        """Create or replace a webhook (an empty secret keeps the old one); (stored, created)."""
        with self._tx() as conn:
            old = conn.execute(
                "SELECT created_at, secret FROM webhooks WHERE tenant = ? AND webhook_id = ?",
                (webhook.tenant, webhook.webhook_id),
            ).fetchone()
            created = old is None
            secret = webhook.secret or ("" if old is None else str(old[1]))
            if not secret:
                raise IntegrationConflictError("a new webhook needs a secret")
            stored = Webhook(
                **{
                    **webhook.__dict__,
                    "secret": secret,
                    "created_at": webhook.updated_at if old is None else float(old[0]),
                }
            )
            conn.execute(
                f"INSERT OR REPLACE INTO webhooks ({WEBHOOK_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    stored.tenant,
                    stored.webhook_id,
                    stored.url,
                    stored.format,
                    stored.secret,
                    json.dumps(stored.headers, sort_keys=True),
                    json.dumps(stored.settings, sort_keys=True),
                    int(stored.enabled),
                    stored.description,
                    stored.created_at,
                    stored.updated_at,
                ),
            )
        return stored, created

    def get_webhook(self, tenant: str, webhook_id: str) -> Webhook | None:
        """One webhook of a tenant, or None."""
        rows = self._query(
            f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE tenant = ? AND webhook_id = ?",
            (tenant, webhook_id),
        )
        return webhook_from(rows[0]) if rows else None

    def list_webhooks(self, tenant: str) -> list[Webhook]:
        """A tenant's webhooks, by id."""
        rows = self._query(
            f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE tenant = ? ORDER BY webhook_id",
            (tenant,),
        )
        return [webhook_from(r) for r in rows]

    def delete_webhook(self, tenant: str, webhook_id: str) -> None:
        """Delete a webhook no rule targets (IntegrationConflictError otherwise)."""
        with self._tx() as conn:
            users = [
                str(r[0])
                for r in conn.execute(
                    "SELECT rule_id FROM rules WHERE tenant = ? AND webhook_id = ?",
                    (tenant, webhook_id),
                )
            ]
            if users:
                raise IntegrationConflictError(
                    f"webhook '{webhook_id}' is the target of rule(s) {', '.join(users)}:"
                    " delete or retarget them first"
                )
            cur = conn.execute(
                "DELETE FROM webhooks WHERE tenant = ? AND webhook_id = ?", (tenant, webhook_id)
            )
            if cur.rowcount == 0:
                raise IntegrationNotFoundError(f"no webhook '{webhook_id}' in this tenant")

    # --- rules ----------------------------------------------------------------------------

    def put_rule(self, rule: Rule) -> tuple[Rule, bool]:
        """Create or replace a rule (its window counters restart); (stored, created)."""
        with self._tx() as conn:
            hook = conn.execute(
                "SELECT 1 FROM webhooks WHERE tenant = ? AND webhook_id = ?",
                (rule.tenant, rule.webhook_id),
            ).fetchone()
            if hook is None:
                raise IntegrationNotFoundError(
                    f"no webhook '{rule.webhook_id}' in this tenant: create it with"
                    f" PUT /v1/webhooks/{rule.webhook_id} first"
                )
            old = conn.execute(
                "SELECT created_at FROM rules WHERE tenant = ? AND rule_id = ?",
                (rule.tenant, rule.rule_id),
            ).fetchone()
            stored = Rule(
                **{
                    **rule.__dict__,
                    "created_at": rule.updated_at if old is None else float(old[0]),
                }
            )
            conn.execute(
                "INSERT OR REPLACE INTO rules VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    stored.tenant,
                    stored.rule_id,
                    rule_document(stored),
                    stored.webhook_id,
                    int(stored.enabled),
                    stored.created_at,
                    stored.updated_at,
                ),
            )
            conn.execute(
                "DELETE FROM rule_streaks WHERE tenant = ? AND rule_id = ?",
                (rule.tenant, rule.rule_id),
            )
        return stored, old is None

    def get_rule(self, tenant: str, rule_id: str) -> Rule | None:
        """One rule of a tenant, or None."""
        rows = self._query(
            "SELECT * FROM rules WHERE tenant = ? AND rule_id = ?", (tenant, rule_id)
        )
        return rule_from(rows[0]) if rows else None

    def list_rules(self, tenant: str) -> list[Rule]:
        """A tenant's rules, by id."""
        rows = self._query("SELECT * FROM rules WHERE tenant = ? ORDER BY rule_id", (tenant,))
        return [rule_from(r) for r in rows]

    def delete_rule(self, tenant: str, rule_id: str) -> None:
        """Delete a rule and its window counters."""
        with self._tx() as conn:
            cur = conn.execute(
                "DELETE FROM rules WHERE tenant = ? AND rule_id = ?", (tenant, rule_id)
            )
            if cur.rowcount == 0:
                raise IntegrationNotFoundError(f"no rule '{rule_id}' in this tenant")
            conn.execute(
                "DELETE FROM rule_streaks WHERE tenant = ? AND rule_id = ?", (tenant, rule_id)
            )

    # --- rules over predicted windows ------------------------------------------------------

    def observe_windows(
        self,
        tenant: str,
        asset: AssetView,
        observations: Sequence[WindowObservation],
        render: Renderer,
        now: float,
    ) -> list[MaintenanceRequest]:
        """Run the tenant's rules over an asset's new windows, in one transaction."""
        touched: dict[str, MaintenanceRequest] = {}
        watching = self._query(
            "SELECT 1 FROM rules WHERE tenant = ? AND enabled = 1 LIMIT 1", (tenant,)
        )
        if not observations or not watching:  # no write lock for tenants without rules
            return []
        with self._tx() as conn:
            rules = [
                rule_from(r)
                for r in conn.execute(
                    "SELECT * FROM rules WHERE tenant = ? AND enabled = 1 ORDER BY rule_id",
                    (tenant,),
                )
            ]
            for rule in rules:
                if not in_scope(rule, asset.asset_id, asset.site):
                    continue
                row = conn.execute(
                    "SELECT count, first_at FROM rule_streaks"
                    " WHERE tenant = ? AND rule_id = ? AND asset_id = ?",
                    (tenant, rule.rule_id, asset.asset_id),
                ).fetchone()
                count, first_at = (0, 0.0) if row is None else (int(row[0]), float(row[1]))
                for obs in observations:
                    fault = window_fault(rule.condition, obs)
                    if fault is None:
                        count = 0
                        continue
                    if count == 0:
                        first_at = obs.start
                    count += 1
                    if count >= rule.consecutive:
                        request = self._trigger(conn, rule, asset, fault, obs, first_at, now)
                        self._enqueue(conn, request, rule, asset, render, now)
                        touched[request.request_id] = request
                conn.execute(
                    "INSERT OR REPLACE INTO rule_streaks VALUES (?, ?, ?, ?, ?, ?)",
                    (tenant, rule.rule_id, asset.asset_id, count, first_at, now),
                )
        return list(touched.values())

    def _trigger(
        self,
        conn: sqlite3.Connection,
        rule: Rule,
        asset: AssetView,
        fault: str,
        obs: WindowObservation,
        first_at: float,
        now: float,
    ) -> MaintenanceRequest:
        row = conn.execute(
            f"SELECT {REQUEST_COLUMNS} FROM maintenance_requests WHERE tenant = ?"
            " AND asset_id = ? AND fault = ? AND status = 'open'",
            (rule.tenant, asset.asset_id, fault),
        ).fetchone()
        if row is None:
            request = MaintenanceRequest(
                request_id=f"mr_{secrets.token_hex(12)}",
                tenant=rule.tenant,
                asset_id=asset.asset_id,
                site=asset.site,
                fault=fault,
                status="open",
                rule_id=rule.rule_id,
                webhook_id=rule.webhook_id,
                priority=rule.priority,
                opened_at=now,
                updated_at=now,
                first_window_at=first_at,
                last_window_at=obs.end,
                windows=rule.consecutive,
                max_failure_probability=obs.failure_probability,
                iso_zone=obs.iso_zone,
                anomaly_score=obs.anomaly_score,
                model_version=obs.model_version,
            )
            conn.execute(
                f"INSERT INTO maintenance_requests ({REQUEST_COLUMNS})"
                f" VALUES ({', '.join('?' * 22)})",
                request_row(request),
            )
            return request
        old = request_from(row)
        request = MaintenanceRequest(
            **{
                **old.__dict__,
                "priority": min(old.priority, rule.priority),
                "updated_at": now,
                "last_window_at": max(old.last_window_at, obs.end),
                "windows": old.windows + 1,
                "max_failure_probability": max(
                    old.max_failure_probability, obs.failure_probability
                ),
                "iso_zone": obs.iso_zone or old.iso_zone,
                "anomaly_score": obs.anomaly_score
                if obs.anomaly_score is not None
                else old.anomaly_score,
                "model_version": obs.model_version or old.model_version,
            }
        )
        conn.execute(
            "UPDATE maintenance_requests SET priority = ?, updated_at = ?, last_window_at = ?,"
            " windows = ?, max_failure_probability = ?, iso_zone = ?, anomaly_score = ?,"
            " model_version = ? WHERE request_id = ?",
            (
                request.priority,
                now,
                request.last_window_at,
                request.windows,
                request.max_failure_probability,
                request.iso_zone,
                request.anomaly_score,
                request.model_version,
                request.request_id,
            ),
        )
        return request

    def _enqueue(
        self,
        conn: sqlite3.Connection,
        request: MaintenanceRequest,
        rule: Rule,
        asset: AssetView,
        render: Renderer,
        now: float,
    ) -> None:
        queued = conn.execute(
            "SELECT 1 FROM outbox WHERE request_id = ? AND event = ? AND webhook_id = ?",
            (request.request_id, OPENED_EVENT, rule.webhook_id),
        ).fetchone()
        if queued is not None:
            return
        row = conn.execute(
            f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE tenant = ? AND webhook_id = ?",
            (rule.tenant, rule.webhook_id),
        ).fetchone()
        if row is None:  # put_rule and delete_webhook keep this from happening
            return
        body, content_type = render(request, asset, webhook_from(row))
        conn.execute(
            "INSERT INTO outbox (tenant, webhook_id, request_id, event, idempotency_key, body,"
            " content_type, status, attempts, next_attempt_at, created_at, age_from,"
            " last_error) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, '')",
            (
                rule.tenant,
                rule.webhook_id,
                request.request_id,
                OPENED_EVENT,
                idempotency_key(request.request_id, OPENED_EVENT),
                body,
                content_type,
                now,
                now,
                now,
            ),
        )

    # --- maintenance requests and labels ---------------------------------------------------

    def get_request(self, tenant: str, request_id: str) -> MaintenanceRequest | None:
        """One maintenance request, or None."""
        rows = self._query(
            f"SELECT {REQUEST_COLUMNS} FROM maintenance_requests"
            " WHERE tenant = ? AND request_id = ?",
            (tenant, request_id),
        )
        return request_from(rows[0]) if rows else None

    def list_requests(
        self,
        tenant: str,
        *,
        status: RequestStatus | None = None,
        asset_id: str | None = None,
        sites: frozenset[str] = frozenset(),
        limit: int = 100,
    ) -> list[MaintenanceRequest]:
        """A tenant's requests, newest first, filtered."""
        sql = f"SELECT {REQUEST_COLUMNS} FROM maintenance_requests WHERE tenant = ?"
        args: list[object] = [tenant]
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        if asset_id is not None:
            sql += " AND asset_id = ?"
            args.append(asset_id)
        if sites:
            sql += " AND site IN (SELECT value FROM json_each(?))"
            args.append(json.dumps(sorted(sites)))
        sql += " ORDER BY opened_at DESC, request_id LIMIT ?"
        args.append(limit)
        return [request_from(r) for r in self._query(sql, tuple(args))]

    def close_request(
        self, tenant: str, request_id: str, closure: Closure, label_asset_id: str
    ) -> tuple[MaintenanceRequest, Label | None]:
        """Close an open request; record a label when the closure names a class."""
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {REQUEST_COLUMNS} FROM maintenance_requests"
                " WHERE tenant = ? AND request_id = ?",
                (tenant, request_id),
            ).fetchone()
            if row is None:
                raise IntegrationNotFoundError(
                    f"no maintenance request '{request_id}' in this tenant"
                )
            old = request_from(row)
            if old.status != "open":
                raise IntegrationConflictError(
                    f"maintenance request '{request_id}' was already closed"
                    f" (work order {old.work_order_id or 'unknown'})"
                )
            closed = MaintenanceRequest(
                **{
                    **old.__dict__,
                    "status": "closed",
                    "updated_at": closure.closed_at,
                    "closed_at": closure.closed_at,
                    "failure_code": closure.failure_code,
                    "fault_class": closure.fault_class,
                    "work_order_id": closure.work_order_id,
                }
            )
            conn.execute(
                "UPDATE maintenance_requests SET status = 'closed', updated_at = ?,"
                " closed_at = ?, failure_code = ?, fault_class = ?, work_order_id = ?"
                " WHERE request_id = ?",
                (
                    closure.closed_at,
                    closure.closed_at,
                    closure.failure_code,
                    closure.fault_class,
                    closure.work_order_id,
                    request_id,
                ),
            )
            if closure.fault_class is None:
                return closed, None
            start = old.first_window_at if closure.span_start is None else closure.span_start
            end = old.last_window_at if closure.span_end is None else closure.span_end
            start_ns, end_ns = math.floor(start * 1e9), math.ceil(end * 1e9)
            if end_ns <= start_ns:
                raise IntegrationConflictError("the label span must end after it starts")
            cur = conn.execute(
                "INSERT INTO labels (tenant, site, asset_id, label, start_ns, end_ns,"
                " failure_code, request_id, work_order_id, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    tenant,
                    old.site,
                    label_asset_id,
                    closure.fault_class,
                    start_ns,
                    end_ns,
                    closure.failure_code,
                    request_id,
                    closure.work_order_id,
                    closure.closed_at,
                ),
            )
            label = Label(
                seq=int(cur.lastrowid or 0),
                tenant=tenant,
                site=old.site,
                asset_id=label_asset_id,
                label=closure.fault_class,
                start_ns=start_ns,
                end_ns=end_ns,
                failure_code=closure.failure_code,
                request_id=request_id,
                work_order_id=closure.work_order_id,
                created_at=closure.closed_at,
            )
        return closed, label

    def put_failure_codes(self, tenant: str, codes: Mapping[str, str], now: float) -> None:
        """Replace a tenant's failure codes (upper-case code -> FedPM class) with ``codes``."""
        with self._tx() as conn:
            conn.execute("DELETE FROM failure_codes WHERE tenant = ?", (tenant,))
            conn.executemany(
                "INSERT INTO failure_codes VALUES (?, ?, ?, ?)",
                [(tenant, code, fault_class, now) for code, fault_class in codes.items()],
            )

    def get_failure_codes(self, tenant: str) -> dict[str, str]:
        """A tenant's own failure codes (upper-case code -> FedPM class)."""
        rows = self._query(
            "SELECT code, fault_class FROM failure_codes WHERE tenant = ? ORDER BY code", (tenant,)
        )
        return {str(code): str(fault_class) for code, fault_class in rows}

    def list_labels(
        self, tenant: str, sites: frozenset[str], after: int, limit: int
    ) -> list[Label]:
        """Labels after sequence number ``after`` on ``sites`` (empty: all), oldest first."""
        sql = "SELECT * FROM labels WHERE tenant = ? AND seq > ?"
        args: list[object] = [tenant, after]
        if sites:
            sql += " AND site IN (SELECT value FROM json_each(?))"
            args.append(json.dumps(sorted(sites)))
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        return [label_from(r) for r in self._query(sql, tuple(args))]
