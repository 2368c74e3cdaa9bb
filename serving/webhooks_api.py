"""Routes for a tenant's webhooks and maintenance rules (permission ``manage_webhooks``).

Operation ids: ``put_webhook``, ``get_webhook``, ``list_webhooks``, ``delete_webhook``,
``put_rule``, ``get_rule``, ``list_rules``, ``delete_rule``. Webhooks and rules belong to the
tenant, not to a site, so managing them needs a key not limited to sites (``403`` otherwise);
a rule's ``sites`` and ``asset_ids`` say which assets it watches. A webhook's secret is returned
once, in the answer that generated it; header values never.
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response, status

from serving.assets_api import StoreDep
from serving.auth import AUTH_ERRORS, require
from serving.integration_schemas import (
    ID_PATTERN,
    RuleIn,
    RuleList,
    RuleOut,
    WebhookIn,
    WebhookList,
    WebhookOut,
)
from serving.integration_types import (
    IntegrationConflictError,
    IntegrationNotFoundError,
    Rule,
    Webhook,
)
from serving.routing import JsonBodyRoute
from serving.schemas import ErrorResponse
from serving.settings import ServeSettings
from serving.state import ApiKey, Permission

router = APIRouter(route_class=JsonBodyRoute)

_RESPONSES: dict[int | str, dict[str, object]] = {
    **AUTH_ERRORS,
    status.HTTP_404_NOT_FOUND: {"model": ErrorResponse, "description": "Not found"},
    status.HTTP_422_UNPROCESSABLE_CONTENT: {"model": ErrorResponse, "description": "Bad input"},
}
_CONFLICT: dict[int | str, dict[str, object]] = {
    **_RESPONSES,
    status.HTTP_409_CONFLICT: {"model": ErrorResponse, "description": "In use"},
}
WebhookId = Annotated[str, Path(pattern=ID_PATTERN, description="The caller's own id.")]
RuleId = Annotated[str, Path(pattern=ID_PATTERN, description="The caller's own id.")]


async def tenant_manager(
    key: Annotated[ApiKey, Depends(require(Permission.MANAGE_WEBHOOKS))],
) -> ApiKey:
    """The caller's key: it must hold ``manage_webhooks`` and cover every site (``403``)."""
    if key.sites:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "webhooks and rules belong to the whole tenant: use a key not limited to sites",
        )
    return key


ManagerDep = Annotated[ApiKey, Depends(tenant_manager)]


# --- webhooks -------------------------------------------------------------------------------


@router.put(
    "/v1/webhooks/{webhook_id}",
    tags=["webhooks"],
    summary="Create or replace a webhook",
    responses={**_RESPONSES, 201: {"model": WebhookOut, "description": "Created"}},
)
def put_webhook(
    webhook_id: WebhookId,
    body: WebhookIn,
    request: Request,
    response: Response,
    store: StoreDep,
    key: ManagerDep,
) -> WebhookOut:
    """Create (``201``, with the secret when generated) or replace (``200``) a webhook.

    Every delivery is signed with the secret (``FedPM-Signature: t=...,v1=...``, HMAC-SHA256
    over ``t.body``; docs/erp-integration.md). An update without ``secret`` keeps the old one.
    A URL whose host is or resolves to a loopback, private, link-local or reserved address is
    refused (``422``) unless the operator allows its network (``webhook_allowed_networks``).
    """
    settings: ServeSettings = request.app.state.settings
    refusal = settings.egress_policy().check_url(body.url)
    if refusal is not None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"url: {refusal}")
    existing = store.get_webhook(key.tenant, webhook_id)
    generated = None
    secret = body.secret
    if secret is None and existing is None:
        secret = generated = f"whsec_{secrets.token_urlsafe(32)}"
    now = time.time()
    stored, created = store.put_webhook(
        Webhook(
            tenant=key.tenant,
            webhook_id=webhook_id,
            url=body.url,
            format=body.format,
            secret=secret or "",
            headers=dict(body.headers),
            settings=dict(body.settings),
            enabled=body.enabled,
            description=body.description,
            created_at=now,
            updated_at=now,
        )
    )
    if created:
        response.status_code = status.HTTP_201_CREATED
    return WebhookOut.from_webhook(stored, generated)


@router.get(
    "/v1/webhooks/{webhook_id}", tags=["webhooks"], summary="One webhook", responses=_RESPONSES
)
def get_webhook(webhook_id: WebhookId, store: StoreDep, key: ManagerDep) -> WebhookOut:
    """Return a webhook of the tenant, without its secret or header values."""
    hook = store.get_webhook(key.tenant, webhook_id)
    if hook is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no webhook '{webhook_id}' in this tenant")
    return WebhookOut.from_webhook(hook)


@router.get(
    "/v1/webhooks", tags=["webhooks"], summary="The tenant's webhooks", responses=AUTH_ERRORS
)
def list_webhooks(store: StoreDep, key: ManagerDep) -> WebhookList:
    """List the tenant's webhooks, by id."""
    return WebhookList(
        webhooks=[WebhookOut.from_webhook(h) for h in store.list_webhooks(key.tenant)]
    )


@router.delete(
    "/v1/webhooks/{webhook_id}",
    tags=["webhooks"],
    summary="Delete a webhook",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_CONFLICT,
)
def delete_webhook(webhook_id: WebhookId, store: StoreDep, key: ManagerDep) -> Response:
    """Delete a webhook no rule targets (``409`` names the rules that do).

    Deliveries still queued for it are dead-lettered when their turn comes.
    """
    try:
        store.delete_webhook(key.tenant, webhook_id)
    except IntegrationNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except IntegrationConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- rules ----------------------------------------------------------------------------------


@router.put(
    "/v1/rules/{rule_id}",
    tags=["rules"],
    summary="Create or replace a maintenance rule",
    responses={**_RESPONSES, 201: {"model": RuleOut, "description": "Created"}},
)
def put_rule(
    rule_id: RuleId, body: RuleIn, response: Response, store: StoreDep, key: ManagerDep
) -> RuleOut:
    """Create (``201``) or replace (``200``) a rule; its webhook must exist (``404``).

    After ``consecutive`` matching windows of an asset in scope, a maintenance request is
    opened for the asset and fault (or the open one updated) and sent to the webhook.
    """
    now = time.time()
    try:
        stored, created = store.put_rule(
            Rule(
                tenant=key.tenant,
                rule_id=rule_id,
                condition=body.when.to_condition(),
                webhook_id=body.webhook_id,
                consecutive=body.consecutive,
                priority=body.priority,
                sites=frozenset(body.sites),
                asset_ids=frozenset(body.asset_ids),
                enabled=body.enabled,
                description=body.description,
                created_at=now,
                updated_at=now,
            )
        )
    except IntegrationNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    if created:
        response.status_code = status.HTTP_201_CREATED
    return RuleOut.from_rule(stored)


@router.get("/v1/rules/{rule_id}", tags=["rules"], summary="One rule", responses=_RESPONSES)
def get_rule(rule_id: RuleId, store: StoreDep, key: ManagerDep) -> RuleOut:
    """Return a rule of the tenant."""
    rule = store.get_rule(key.tenant, rule_id)
    if rule is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no rule '{rule_id}' in this tenant")
    return RuleOut.from_rule(rule)


@router.get("/v1/rules", tags=["rules"], summary="The tenant's rules", responses=AUTH_ERRORS)
def list_rules(store: StoreDep, key: ManagerDep) -> RuleList:
    """List the tenant's rules, by id."""
    return RuleList(rules=[RuleOut.from_rule(r) for r in store.list_rules(key.tenant)])


@router.delete(
    "/v1/rules/{rule_id}",
    tags=["rules"],
    summary="Delete a rule",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_RESPONSES,
)
def delete_rule(rule_id: RuleId, store: StoreDep, key: ManagerDep) -> Response:
    """Delete a rule and its window counters; requests it opened stay as they are."""
    try:
        store.delete_rule(key.tenant, rule_id)
    except IntegrationNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return Response(status_code=status.HTTP_204_NO_CONTENT)
