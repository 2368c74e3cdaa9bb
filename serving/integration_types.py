"""The ERP/CMMS integration's internal types and the storage interface they live behind.

Webhooks (where maintenance requests are sent, in which payload format), rules (when a
predicted window of an asset counts towards a request), maintenance requests (at most one open
per tenant, asset and fault), the outbox (one row per request and webhook, delivered at least
once), and the labels closed requests leave for the sites' next federated round.

:class:`IntegrationStore` is the part of :class:`serving.state.StateStore` these need; the
SQLite implementation is :class:`serving.integration_sqlite.SqliteIntegrationMixin`. API schemas
are separate (:mod:`serving.integration_schemas`).

Exception tree::

    ServingError
    └── IntegrationError         integration state that cannot be stored or read
        ├── IntegrationNotFoundError  no such webhook, rule, request or dead letter   -> HTTP 404
        └── IntegrationConflictError  refused by the state (closed twice, in use)     -> HTTP 409
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from serving.errors import ServingError

PayloadFormat = Literal["json", "sap", "maximo"]
RequestStatus = Literal["open", "closed"]
OutboxStatus = Literal["pending", "delivered", "dead"]
DeliveryOutcome = Literal["delivered", "retry", "dead"]
OPENED_EVENT = "maintenance_request.opened"
"""The one event delivered today: a maintenance request was opened."""


class IntegrationError(ServingError):
    """Integration state that cannot be stored or read."""


class IntegrationNotFoundError(IntegrationError):
    """No such webhook, rule, maintenance request or dead letter in the tenant."""


class IntegrationConflictError(IntegrationError):
    """A change the current state refuses (a request closed twice, a webhook still in use)."""


@dataclass(frozen=True)
class Webhook:
    """Where a tenant's maintenance requests are delivered, and how.

    ``secret`` signs every delivery (HMAC-SHA256); it is stored retrievable because signing
    needs it, and never returned by the API after creation. ``headers`` are sent with every
    delivery (e.g. the ERP's own authorization) and are never returned either. ``settings`` are
    the payload adapter's fixed values (SAP notification type and plant, Maximo work type ...).
    """

    tenant: str
    webhook_id: str
    url: str
    format: PayloadFormat = "json"
    secret: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    enabled: bool = True
    description: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class RuleCondition:
    """What one predicted window must show; ``match`` says whether any or all criteria count.

    Unset criteria (None, empty) are not checked; at least one is set.
    """

    failure_probability_gte: float | None = None
    iso_zones: frozenset[str] = frozenset()
    anomaly_score_gte: float | None = None
    predicted_classes: frozenset[str] = frozenset()
    match: Literal["any", "all"] = "any"


@dataclass(frozen=True)
class Rule:
    """Open a maintenance request after ``consecutive`` matching windows of an asset in scope.

    Scope: assets on one of ``sites`` or named in ``asset_ids``; both empty means every asset
    of the tenant. ``priority`` 1 is the most urgent, 4 the least.
    """

    tenant: str
    rule_id: str
    condition: RuleCondition
    webhook_id: str
    consecutive: int = 1
    priority: int = 3
    sites: frozenset[str] = frozenset()
    asset_ids: frozenset[str] = frozenset()
    enabled: bool = True
    description: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class WindowObservation:
    """One predicted window of an asset, as the rules see it.

    ``start``/``end`` are UNIX seconds; ``top_fault`` is the most probable class other than
    ``normal`` (the fault a failure-probability rule names).
    """

    start: float
    end: float
    predicted_class: str
    failure_probability: float
    top_fault: str
    iso_zone: str | None = None
    anomaly_score: float | None = None
    model_version: str = ""


@dataclass(frozen=True)
class MaintenanceRequest:
    """A request for maintenance on one asset for one fault; times are UNIX seconds."""

    request_id: str
    tenant: str
    asset_id: str
    site: str
    fault: str
    status: RequestStatus
    rule_id: str
    webhook_id: str
    priority: int
    opened_at: float
    updated_at: float
    first_window_at: float
    last_window_at: float
    windows: int
    max_failure_probability: float
    iso_zone: str | None = None
    anomaly_score: float | None = None
    model_version: str = ""
    closed_at: float | None = None
    failure_code: str | None = None
    fault_class: str | None = None
    work_order_id: str | None = None


@dataclass(frozen=True)
class Closure:
    """How a maintenance request was closed (by the CMMS's work order).

    ``fault_class`` is the FedPM class found (from the failure code when not given); with one,
    closing records a label over ``span_start``-``span_end`` (UNIX s; default: the request's
    first to last triggering window).
    """

    closed_at: float
    failure_code: str | None = None
    fault_class: str | None = None
    work_order_id: str | None = None
    span_start: float | None = None
    span_end: float | None = None


@dataclass(frozen=True)
class Label:
    """A label for the sites' stores: the asset was in state ``label`` over a span (UNIX ns)."""

    seq: int
    tenant: str
    site: str
    asset_id: str
    label: str
    start_ns: int
    end_ns: int
    failure_code: str | None
    request_id: str
    work_order_id: str | None
    created_at: float


@dataclass(frozen=True)
class OutboxItem:
    """One delivery of one event of one request to one webhook (UNIX s times)."""

    outbox_id: int
    tenant: str
    webhook_id: str
    request_id: str
    event: str
    idempotency_key: str
    body: bytes
    content_type: str
    status: OutboxStatus
    attempts: int
    next_attempt_at: float
    created_at: float
    age_from: float
    last_status: int | None = None
    last_error: str = ""
    delivered_at: float | None = None


@dataclass(frozen=True)
class DeliveryResult:
    """What one delivery attempt came to; ``next_attempt_at`` for a retry."""

    outcome: DeliveryOutcome
    status_code: int | None = None
    error: str = ""
    next_attempt_at: float | None = None
    reference: str | None = None
    """The ERP's number for what the delivery created (SAP notification, Maximo work order)."""


Renderer = Callable[[MaintenanceRequest, "AssetView", Webhook], tuple[bytes, str]]
"""Payload adapter: (request, asset, webhook) -> (body, content type)."""


@dataclass(frozen=True)
class AssetView:
    """What a payload adapter knows about the asset (``external_ids``: ERP/CMMS keys)."""

    asset_id: str
    site: str
    description: str = ""
    external_ids: dict[str, str] = field(default_factory=dict)


class IntegrationStore(Protocol):
    """Storage of webhooks, rules, maintenance requests, the outbox and labels.

    Every method is one transaction and safe to call from many threads; with a database shared
    by several replicas, :meth:`claim_outbox` must hand a row to one claimant at a time.
    """

    def put_webhook(self, webhook: Webhook) -> tuple[Webhook, bool]:
        """Create or replace a webhook (an empty secret keeps the old one); (stored, created)."""

    def get_webhook(self, tenant: str, webhook_id: str) -> Webhook | None:
        """One webhook of a tenant, or None."""

    def list_webhooks(self, tenant: str) -> list[Webhook]:
        """A tenant's webhooks, by id."""

    def delete_webhook(self, tenant: str, webhook_id: str) -> None:
        """Delete a webhook no rule targets (IntegrationConflictError otherwise)."""

    def put_rule(self, rule: Rule) -> tuple[Rule, bool]:
        """Create or replace a rule (its window counters restart); (stored, created)."""

    def get_rule(self, tenant: str, rule_id: str) -> Rule | None:
        """One rule of a tenant, or None."""

    def list_rules(self, tenant: str) -> list[Rule]:
        """A tenant's rules, by id."""

    def delete_rule(self, tenant: str, rule_id: str) -> None:
        """Delete a rule and its window counters."""

    def observe_windows(
        self,
        tenant: str,
        asset: AssetView,
        observations: Sequence[WindowObservation],
        render: Renderer,
        now: float,
    ) -> list[MaintenanceRequest]:
        """Run the tenant's rules over an asset's new windows, in one transaction.

        Advance each rule's consecutive-window counter; where one reaches its rule's count,
        open a request for the (asset, fault), or update the open one, and queue its delivery
        to the rule's webhook once. Return the requests opened or updated.
        """

    def get_request(self, tenant: str, request_id: str) -> MaintenanceRequest | None:
        """One maintenance request, or None."""

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

    def close_request(
        self, tenant: str, request_id: str, closure: Closure, label_asset_id: str
    ) -> tuple[MaintenanceRequest, Label | None]:
        """Close an open request; record a label when the closure names a class."""

    def put_failure_codes(self, tenant: str, codes: Mapping[str, str], now: float) -> None:
        """Replace a tenant's failure codes (upper-case code -> FedPM class) with ``codes``."""

    def get_failure_codes(self, tenant: str) -> dict[str, str]:
        """A tenant's own failure codes (upper-case code -> FedPM class)."""

    def list_labels(
        self, tenant: str, sites: frozenset[str], after: int, limit: int
    ) -> list[Label]:
        """Labels after sequence number ``after`` on ``sites`` (empty: all), oldest first."""

    def claim_outbox(
        self, owner: str, now: float, limit: int, lease_s: float
    ) -> list[tuple[OutboxItem, Webhook | None]]:
        """Lease up to ``limit`` due pending rows to ``owner`` (with their webhook, if any)."""

    def finish_delivery(
        self, outbox_id: int, owner: str, result: DeliveryResult, now: float
    ) -> bool:
        """Record an attempt's result if ``owner`` still holds the lease; whether it did."""

    def release_outbox(self, outbox_id: int, owner: str, next_attempt_at: float) -> None:
        """Give a leased row back (its webhook is disabled, or the worker is stopping)."""

    def list_dead_letters(self, tenant: str, limit: int = 100) -> list[OutboxItem]:
        """A tenant's dead letters, newest first."""

    def retry_dead_letter(self, tenant: str, outbox_id: int, now: float) -> OutboxItem:
        """Put a dead letter back in the outbox, due now, with a fresh attempt budget."""

    def outbox_counts(self) -> dict[str, int]:
        """Outbox rows by status, over all tenants."""

    def outbox_next_due(self) -> float | None:
        """When the earliest pending row can next be claimed (due, lease over); None if none."""
