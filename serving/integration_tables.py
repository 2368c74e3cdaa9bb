"""The integration's tables: their schema, column lists and row conversions.

The column lists name the columns in the order the converters read them, so a query written as
``f"SELECT {REQUEST_COLUMNS} ..."`` and its converter cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import cast

from serving.integration_types import (
    Label,
    MaintenanceRequest,
    OutboxItem,
    OutboxStatus,
    PayloadFormat,
    Rule,
    RuleCondition,
    Webhook,
)

FAILURE_CODES_SCHEMA = """
CREATE TABLE IF NOT EXISTS failure_codes (
    tenant TEXT NOT NULL, code TEXT NOT NULL, fault_class TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, code)
) WITHOUT ROWID;
"""
"""A tenant's own failure codes (state schema 4): code (upper case) -> FedPM class."""

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
"""Tables of the integration (state schema 3: ``serving.state`` migrates older files)."""

REQUEST_COLUMNS = (
    "request_id, tenant, asset_id, site, fault, status, rule_id, webhook_id, priority,"
    " opened_at, updated_at, first_window_at, last_window_at, windows,"
    " max_failure_probability, iso_zone, anomaly_score, model_version, closed_at,"
    " failure_code, fault_class, work_order_id"
)
OUTBOX_COLUMNS = (
    "outbox_id, tenant, webhook_id, request_id, event, idempotency_key, body, content_type,"
    " status, attempts, next_attempt_at, created_at, age_from, last_status, last_error,"
    " delivered_at"
)
WEBHOOK_COLUMNS = (
    "tenant, webhook_id, url, format, secret, headers, settings, enabled, description,"
    " created_at, updated_at"
)


def _opt_float(value: object) -> float | None:
    return None if value is None else float(cast(float, value))


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def webhook_from(row: Sequence[object]) -> Webhook:
    """A webhook from a row of WEBHOOK_COLUMNS."""
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


def rule_document(rule: Rule) -> str:
    """A rule's condition and settings as the JSON stored in ``rules.document``."""
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


def rule_from(row: Sequence[object]) -> Rule:
    """A rule from a ``rules`` row."""
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


def request_row(r: MaintenanceRequest) -> tuple[object, ...]:
    """A request's values in REQUEST_COLUMNS order."""
    return tuple(r.__dict__.values())


def request_from(row: Sequence[object]) -> MaintenanceRequest:
    """A request from a row of REQUEST_COLUMNS."""
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


def outbox_from(row: Sequence[object]) -> OutboxItem:
    """An outbox item from a row of OUTBOX_COLUMNS."""
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


def label_from(row: Sequence[object]) -> Label:
    """A label from a ``labels`` row."""
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
