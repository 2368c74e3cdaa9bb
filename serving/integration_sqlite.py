"""SQLite implementation of :class:`~serving.integration_types.IntegrationStore`.

:class:`SqliteIntegrationMixin` is mixed into :class:`serving.state.SqliteStateStore`, which
gives it one connection and ``_tx()`` (``BEGIN IMMEDIATE`` under a lock) and ``_query()``. All
tables are in :data:`INTEGRATION_SCHEMA` (state schema 2). One open request per (tenant, asset,
fault) is a partial unique index, so two writers cannot both open one; one outbox row per
(request, event, webhook) is a unique index, so a request is queued for a webhook once.

Claiming the outbox (:meth:`SqliteIntegrationMixin.claim_outbox`) takes due rows whose lease
has expired and writes the claimant and a lease expiry in the same ``BEGIN IMMEDIATE``
transaction, so replicas sharing the file never hold one row at once. A PostgreSQL version
would claim with ``SELECT ... FOR UPDATE SKIP LOCKED`` (docs/erp-integration.md).
"""

# ruff: noqa: S608  (f-strings only splice the constant column lists below; values are bound)
from __future__ import annotations

import json
import math
import secrets
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, cast

from serving.integration_types import (
    OPENED_EVENT,
    AssetView,
    Closure,
    DeliveryResult,
    IntegrationConflictError,
    IntegrationNotFoundError,
    Label,
    MaintenanceRequest,
    OutboxItem,
    OutboxStatus,
    PayloadFormat,
    Renderer,
    RequestStatus,
    Rule,
    RuleCondition,
    Webhook,
    WindowObservation,
)
from serving.rules import in_scope, window_fault

INTEGRATION_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    tenant TEXT NOT NULL, webhook_id TEXT NOT NULL, url TEXT NOT NULL, format TEXT NOT NULL,
    secret TEXT NOT NULL, headers TEXT NOT NULL, settings TEXT NOT NULL,
    enabled INTEGER NOT NULL, description TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, webhook_id)
);
CREATE TABLE IF NOT EXISTS rules (
    tenant TEXT NOT NULL, rule_id TEXT NOT NULL, document TEXT NOT NULL,
    webhook_id TEXT NOT NULL, enabled INTEGER NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, rule_id)
);
CREATE TABLE IF NOT EXISTS rule_streaks (
    tenant TEXT NOT NULL, rule_id TEXT NOT NULL, asset_id TEXT NOT NULL,
    count INTEGER NOT NULL, first_at REAL NOT NULL, last_at REAL NOT NULL,
    PRIMARY KEY (tenant, rule_id, asset_id)
);
CREATE TABLE IF NOT EXISTS maintenance_requests (
    request_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, asset_id TEXT NOT NULL,
    site TEXT NOT NULL, fault TEXT NOT NULL, status TEXT NOT NULL, rule_id TEXT NOT NULL,
    webhook_id TEXT NOT NULL, priority INTEGER NOT NULL, opened_at REAL NOT NULL,
    updated_at REAL NOT NULL, first_window_at REAL NOT NULL, last_window_at REAL NOT NULL,
    windows INTEGER NOT NULL, max_failure_probability REAL NOT NULL, iso_zone TEXT,
    anomaly_score REAL, model_version TEXT NOT NULL, closed_at REAL, failure_code TEXT,
    fault_class TEXT, work_order_id TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS one_open_request
    ON maintenance_requests (tenant, asset_id, fault) WHERE status = 'open';
CREATE INDEX IF NOT EXISTS requests_by_tenant ON maintenance_requests (tenant, opened_at);
CREATE TABLE IF NOT EXISTS outbox (
    outbox_id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL,
    webhook_id TEXT NOT NULL, request_id TEXT NOT NULL, event TEXT NOT NULL,
    idempotency_key TEXT NOT NULL, body BLOB NOT NULL, content_type TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL, next_attempt_at REAL NOT NULL,
    created_at REAL NOT NULL, age_from REAL NOT NULL, last_status INTEGER,
    last_error TEXT NOT NULL, delivered_at REAL, lease_owner TEXT, lease_until REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_once ON outbox (request_id, event, webhook_id);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS labels (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, site TEXT NOT NULL,
    asset_id TEXT NOT NULL, label TEXT NOT NULL, start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL, failure_code TEXT, request_id TEXT NOT NULL,
    work_order_id TEXT, created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_by_tenant ON labels (tenant, seq);
"""
"""Tables of the integration (state schema 2; schema 1 files gain them on open)."""

_REQUEST_COLUMNS = (
    "request_id, tenant, asset_id, site, fault, status, rule_id, webhook_id, priority,"
    " opened_at, updated_at, first_window_at, last_window_at, windows,"
    " max_failure_probability, iso_zone, anomaly_score, model_version, closed_at,"
    " failure_code, fault_class, work_order_id"
)
_OUTBOX_COLUMNS = (
    "outbox_id, tenant, webhook_id, request_id, event, idempotency_key, body, content_type,"
    " status, attempts, next_attempt_at, created_at, age_from, last_status, last_error,"
    " delivered_at"
)
_WEBHOOK_COLUMNS = (
    "tenant, webhook_id, url, format, secret, headers, settings, enabled, description,"
    " created_at, updated_at"
)


def idempotency_key(request_id: str, event: str) -> str:
    """The ``Idempotency-Key`` of an event of a request: the same on every attempt."""
    return f"{request_id}:{event}"


class SqliteIntegrationMixin:
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
                f"INSERT OR REPLACE INTO webhooks ({_WEBHOOK_COLUMNS})"
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
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE tenant = ? AND webhook_id = ?",
            (tenant, webhook_id),
        )
        return _webhook(rows[0]) if rows else None

    def list_webhooks(self, tenant: str) -> list[Webhook]:
        """A tenant's webhooks, by id."""
        rows = self._query(
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE tenant = ? ORDER BY webhook_id",
            (tenant,),
        )
        return [_webhook(r) for r in rows]

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
                    _rule_document(stored),
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
        return _rule(rows[0]) if rows else None

    def list_rules(self, tenant: str) -> list[Rule]:
        """A tenant's rules, by id."""
        rows = self._query("SELECT * FROM rules WHERE tenant = ? ORDER BY rule_id", (tenant,))
        return [_rule(r) for r in rows]

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
                _rule(r)
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
            f"SELECT {_REQUEST_COLUMNS} FROM maintenance_requests WHERE tenant = ?"
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
                f"INSERT INTO maintenance_requests ({_REQUEST_COLUMNS})"
                f" VALUES ({', '.join('?' * 22)})",
                _request_row(request),
            )
            return request
        old = _request(row)
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
            f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE tenant = ? AND webhook_id = ?",
            (rule.tenant, rule.webhook_id),
        ).fetchone()
        if row is None:  # put_rule and delete_webhook keep this from happening
            return
        body, content_type = render(request, asset, _webhook(row))
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
            f"SELECT {_REQUEST_COLUMNS} FROM maintenance_requests"
            " WHERE tenant = ? AND request_id = ?",
            (tenant, request_id),
        )
        return _request(rows[0]) if rows else None

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
        sql = f"SELECT {_REQUEST_COLUMNS} FROM maintenance_requests WHERE tenant = ?"
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
        return [_request(r) for r in self._query(sql, tuple(args))]

    def close_request(
        self, tenant: str, request_id: str, closure: Closure, label_asset_id: str
    ) -> tuple[MaintenanceRequest, Label | None]:
        """Close an open request; record a label when the closure names a class."""
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_REQUEST_COLUMNS} FROM maintenance_requests"
                " WHERE tenant = ? AND request_id = ?",
                (tenant, request_id),
            ).fetchone()
            if row is None:
                raise IntegrationNotFoundError(
                    f"no maintenance request '{request_id}' in this tenant"
                )
            old = _request(row)
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
        return [_label(r) for r in self._query(sql, tuple(args))]

    # --- outbox ---------------------------------------------------------------------------

    def claim_outbox(
        self, owner: str, now: float, limit: int, lease_s: float
    ) -> list[tuple[OutboxItem, Webhook | None]]:
        """Lease up to ``limit`` due pending rows to ``owner`` (with their webhook, if any)."""
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE status = 'pending'"
                " AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until <= ?)"
                " ORDER BY next_attempt_at, outbox_id LIMIT ?",
                (now, now, limit),
            ).fetchall()
            claimed = []
            for row in rows:
                item = _outbox(row)
                conn.execute(
                    "UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE outbox_id = ?",
                    (owner, now + lease_s, item.outbox_id),
                )
                hook = conn.execute(
                    f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks WHERE tenant = ? AND webhook_id = ?",
                    (item.tenant, item.webhook_id),
                ).fetchone()
                claimed.append((item, None if hook is None else _webhook(hook)))
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
            return cur.rowcount == 1

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
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE tenant = ? AND status = 'dead'"
            " ORDER BY outbox_id DESC LIMIT ?",
            (tenant, limit),
        )
        return [_outbox(r) for r in rows]

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
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE outbox_id = ?", (outbox_id,)
            ).fetchone()
        return _outbox(row)

    def outbox_counts(self) -> dict[str, int]:
        """Outbox rows by status, over all tenants."""
        counts = {"pending": 0, "delivered": 0, "dead": 0}
        for status, n in self._query("SELECT status, count(*) FROM outbox GROUP BY status"):
            counts[str(status)] = int(cast(int, n))
        return counts


# --- row conversions ------------------------------------------------------------------------


def _opt_float(value: object) -> float | None:
    return None if value is None else float(cast(float, value))


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _webhook(row: Sequence[object]) -> Webhook:
    return Webhook(
        tenant=str(row[0]),
        webhook_id=str(row[1]),
        url=str(row[2]),
        format=cast(PayloadFormat, str(row[3])),
        secret=str(row[4]),
        headers=dict(json.loads(str(row[5]))),
        settings=dict(json.loads(str(row[6]))),
        enabled=bool(row[7]),
        description=str(row[8]),
        created_at=float(cast(float, row[9])),
        updated_at=float(cast(float, row[10])),
    )


def _rule_document(rule: Rule) -> str:
    c = rule.condition
    return json.dumps(
        {
            "failure_probability_gte": c.failure_probability_gte,
            "iso_zones": sorted(c.iso_zones),
            "anomaly_score_gte": c.anomaly_score_gte,
            "predicted_classes": sorted(c.predicted_classes),
            "match": c.match,
            "consecutive": rule.consecutive,
            "priority": rule.priority,
            "sites": sorted(rule.sites),
            "asset_ids": sorted(rule.asset_ids),
            "description": rule.description,
        },
        sort_keys=True,
    )


def _rule(row: Sequence[object]) -> Rule:
    doc = json.loads(str(row[2]))
    return Rule(
        tenant=str(row[0]),
        rule_id=str(row[1]),
        condition=RuleCondition(
            failure_probability_gte=doc["failure_probability_gte"],
            iso_zones=frozenset(doc["iso_zones"]),
            anomaly_score_gte=doc["anomaly_score_gte"],
            predicted_classes=frozenset(doc["predicted_classes"]),
            match=doc["match"],
        ),
        webhook_id=str(row[3]),
        consecutive=int(doc["consecutive"]),
        priority=int(doc["priority"]),
        sites=frozenset(doc["sites"]),
        asset_ids=frozenset(doc["asset_ids"]),
        enabled=bool(row[4]),
        description=str(doc["description"]),
        created_at=float(cast(float, row[5])),
        updated_at=float(cast(float, row[6])),
    )


def _request_row(r: MaintenanceRequest) -> tuple[object, ...]:
    return tuple(r.__dict__.values())


def _request(row: Sequence[object]) -> MaintenanceRequest:
    return MaintenanceRequest(
        request_id=str(row[0]),
        tenant=str(row[1]),
        asset_id=str(row[2]),
        site=str(row[3]),
        fault=str(row[4]),
        status="closed" if row[5] == "closed" else "open",
        rule_id=str(row[6]),
        webhook_id=str(row[7]),
        priority=int(cast(int, row[8])),
        opened_at=float(cast(float, row[9])),
        updated_at=float(cast(float, row[10])),
        first_window_at=float(cast(float, row[11])),
        last_window_at=float(cast(float, row[12])),
        windows=int(cast(int, row[13])),
        max_failure_probability=float(cast(float, row[14])),
        iso_zone=_opt_str(row[15]),
        anomaly_score=_opt_float(row[16]),
        model_version=str(row[17]),
        closed_at=_opt_float(row[18]),
        failure_code=_opt_str(row[19]),
        fault_class=_opt_str(row[20]),
        work_order_id=_opt_str(row[21]),
    )


def _outbox(row: Sequence[object]) -> OutboxItem:
    return OutboxItem(
        outbox_id=int(cast(int, row[0])),
        tenant=str(row[1]),
        webhook_id=str(row[2]),
        request_id=str(row[3]),
        event=str(row[4]),
        idempotency_key=str(row[5]),
        body=bytes(cast(bytes, row[6])),
        content_type=str(row[7]),
        status=cast(OutboxStatus, str(row[8])),
        attempts=int(cast(int, row[9])),
        next_attempt_at=float(cast(float, row[10])),
        created_at=float(cast(float, row[11])),
        age_from=float(cast(float, row[12])),
        last_status=None if row[13] is None else int(cast(int, row[13])),
        last_error=str(row[14]),
        delivered_at=_opt_float(row[15]),
    )


def _label(row: Sequence[object]) -> Label:
    return Label(
        seq=int(cast(int, row[0])),
        tenant=str(row[1]),
        site=str(row[2]),
        asset_id=str(row[3]),
        label=str(row[4]),
        start_ns=int(cast(int, row[5])),
        end_ns=int(cast(int, row[6])),
        failure_code=_opt_str(row[7]),
        request_id=str(row[8]),
        work_order_id=_opt_str(row[9]),
        created_at=float(cast(float, row[10])),
    )
