"""Routes for maintenance requests, the labels closed ones leave, and dead letters.

Operation ids: ``list_maintenance_requests``, ``get_maintenance_request``,
``close_maintenance_request``, ``list_labels``, ``list_dead_letters``, ``retry_dead_letter``.
Reading requests and labels needs any key of the tenant and is limited to its sites; closing a
request needs ``manage_webhooks`` on the request's site; dead letters are the tenant's
(``manage_webhooks``, a key not limited to sites).

Closing with a failure code (mapped by :mod:`models.failure_codes`) or a FedPM class records a
label over the fault span, which ``fedpm edge-labels pull`` brings to the site's store for the
next federated round (docs/erp-integration.md).
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status

from models.failure_codes import resolve_failure_code
from serving.assets_api import StoreDep
from serving.auth import AUTH_ERRORS, KeyDep, check_site, require
from serving.integration_schemas import (
    REQUEST_ID_PATTERN,
    CloseRequestIn,
    CloseResponse,
    DeadLetterList,
    DeadLetterOut,
    FailureCodesIn,
    FailureCodesOut,
    LabelOut,
    LabelPage,
    MaintenanceRequestList,
    MaintenanceRequestOut,
    unix_time,
)
from serving.integration_types import (
    Closure,
    IntegrationConflictError,
    IntegrationNotFoundError,
    MaintenanceRequest,
)
from serving.routing import JsonBodyRoute
from serving.schemas import ErrorResponse
from serving.state import NAME_RE, ApiKey, Permission, StateStore
from serving.webhooks_api import ManagerDep

router = APIRouter(route_class=JsonBodyRoute)

_RESPONSES: dict[int | str, dict[str, object]] = {
    **AUTH_ERRORS,
    status.HTTP_404_NOT_FOUND: {"model": ErrorResponse, "description": "Not found"},
    status.HTTP_422_UNPROCESSABLE_CONTENT: {"model": ErrorResponse, "description": "Bad input"},
}
RequestId = Annotated[str, Path(pattern=REQUEST_ID_PATTERN, description="mr_ and 24 hex digits.")]
MAX_PAGE = 1000


def _visible(store: StateStore, key: ApiKey, request_id: str) -> MaintenanceRequest:
    found = store.get_request(key.tenant, request_id)
    if found is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no maintenance request '{request_id}' in this tenant"
        )
    check_site(key, found.site)
    return found


@router.get(
    "/v1/maintenance-requests",
    tags=["maintenance"],
    summary="Maintenance requests opened by rules",
    responses=_RESPONSES,
)
def list_maintenance_requests(
    store: StoreDep,
    key: KeyDep,
    status_filter: Annotated[
        Literal["open", "closed"] | None, Query(alias="status", description="open or closed")
    ] = None,
    asset_id: Annotated[str | None, Query(pattern=NAME_RE.pattern)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> MaintenanceRequestList:
    """List the tenant's requests on the key's sites, newest first."""
    found = store.list_requests(
        key.tenant, status=status_filter, asset_id=asset_id, sites=key.sites, limit=limit
    )
    return MaintenanceRequestList(requests=[MaintenanceRequestOut.from_request(r) for r in found])


@router.get(
    "/v1/maintenance-requests/{request_id}",
    tags=["maintenance"],
    summary="One maintenance request",
    responses=_RESPONSES,
)
def get_maintenance_request(
    request_id: RequestId, store: StoreDep, key: KeyDep
) -> MaintenanceRequestOut:
    """Return a request of the tenant, on a site the key is scoped to."""
    return MaintenanceRequestOut.from_request(_visible(store, key, request_id))


@router.post(
    "/v1/maintenance-requests/{request_id}/close",
    tags=["maintenance"],
    summary="Close a maintenance request (and label the fault span)",
    responses={
        **_RESPONSES,
        status.HTTP_409_CONFLICT: {"model": ErrorResponse, "description": "Already closed"},
    },
)
def close_maintenance_request(
    request_id: RequestId,
    body: CloseRequestIn,
    store: StoreDep,
    key: Annotated[ApiKey, Depends(require(Permission.MANAGE_WEBHOOKS))],
) -> CloseResponse:
    """Close an open request, freeing its asset and fault for a new one.

    A ``fault_class``, or a ``failure_code`` that maps to one (the tenant's own codes, set with
    ``PUT /v1/failure-codes``, then the defaults: BRG-OR -> outer_race, NFF -> normal ...),
    records a label over the fault span (default: the first to the last
    triggering window) for the asset's site; an unknown code without a class is a ``422``.
    Closing twice is a ``409``.
    """
    found = _visible(store, key, request_id)
    fault_class = body.fault_class
    if fault_class is None and body.failure_code is not None:
        try:
            fault_class = resolve_failure_code(
                body.failure_code, store.get_failure_codes(key.tenant)
            )
        except KeyError as exc:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"{exc.args[0]}; or give fault_class with the code",
            ) from exc
    asset = store.get_asset(key.tenant, found.asset_id)
    label_asset = (
        found.asset_id if asset is None else asset.attributes.get("edge_asset_id", found.asset_id)
    )
    closure = Closure(
        closed_at=time.time() if body.closed_at is None else unix_time(body.closed_at),
        failure_code=body.failure_code,
        fault_class=fault_class,
        work_order_id=body.work_order_id,
        span_start=None if body.span_start is None else unix_time(body.span_start),
        span_end=None if body.span_end is None else unix_time(body.span_end),
    )
    try:
        closed, label = store.close_request(key.tenant, request_id, closure, label_asset)
    except IntegrationNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except IntegrationConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return CloseResponse(
        request=MaintenanceRequestOut.from_request(closed),
        label=None if label is None else LabelOut.from_label(label),
    )


@router.get(
    "/v1/labels",
    tags=["maintenance"],
    summary="Labels from closed maintenance requests, for the sites",
    responses=_RESPONSES,
)
def list_labels(
    store: StoreDep,
    key: KeyDep,
    site: Annotated[str | None, Query(pattern=NAME_RE.pattern)] = None,
    after: Annotated[int, Query(ge=0, le=2**62, description="Cursor: last seq seen.")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> LabelPage:
    """Labels after the cursor ``after``, oldest first, on ``site`` or every site of the key.

    Pass ``next_cursor`` back as ``after`` until the page is empty.
    """
    if site is not None:
        check_site(key, site)
    sites = frozenset({site}) if site is not None else key.sites
    labels = store.list_labels(key.tenant, sites, after, limit)
    return LabelPage(
        labels=[LabelOut.from_label(label) for label in labels],
        next_cursor=labels[-1].seq if labels else after,
    )


@router.get(
    "/v1/dead-letters",
    tags=["maintenance"],
    summary="Deliveries given up on",
    responses=_RESPONSES,
)
def list_dead_letters(
    store: StoreDep,
    key: ManagerDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> DeadLetterList:
    """List the tenant's dead letters (permanent errors, or retries exhausted), newest first."""
    items = store.list_dead_letters(key.tenant, limit)
    return DeadLetterList(dead_letters=[DeadLetterOut.from_item(i) for i in items])


@router.post(
    "/v1/dead-letters/{dead_letter_id}/retry",
    tags=["maintenance"],
    summary="Send a dead letter again",
    responses=_RESPONSES,
)
def retry_dead_letter(
    request: Request,
    dead_letter_id: Annotated[int, Path(ge=1, le=2**62)],
    store: StoreDep,
    key: ManagerDep,
) -> DeadLetterOut:
    """Queue a dead letter again, due now, with a fresh attempt budget and the same key."""
    try:
        item = store.retry_dead_letter(key.tenant, dead_letter_id, time.time())
    except IntegrationNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    worker = getattr(request.app.state, "delivery_worker", None)
    if worker is not None:
        worker.wake()
    return DeadLetterOut.from_item(item)


@router.put(
    "/v1/failure-codes",
    tags=["maintenance"],
    summary="Set the tenant's own failure codes",
    responses=_RESPONSES,
)
def put_failure_codes(body: FailureCodesIn, store: StoreDep, key: ManagerDep) -> FailureCodesOut:
    """Replace the tenant's failure codes: its CMMS's codes -> FedPM classes.

    SAP damage codes and Maximo failure codes are each company's own catalogue; this map lets a
    close name the code the planner chose (``DMG-0815``) and still label the fault span with
    the FedPM class (``outer_race``). The tenant's codes win over FedPM's defaults; an empty
    map removes them.
    """
    store.put_failure_codes(key.tenant, body.codes, time.time())
    return FailureCodesOut.of(store.get_failure_codes(key.tenant))


@router.get(
    "/v1/failure-codes",
    tags=["maintenance"],
    summary="The failure codes a close resolves",
    responses=_RESPONSES,
)
def get_failure_codes(store: StoreDep, key: KeyDep) -> FailureCodesOut:
    """The tenant's own failure codes, and FedPM's defaults that apply where they are silent."""
    return FailureCodesOut.of(store.get_failure_codes(key.tenant))
