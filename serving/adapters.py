"""Payload adapters: a maintenance request as FedPM JSON, an SAP notification, a Maximo WO.

Pure functions of (request, asset, webhook). The webhook's ``format`` picks one:

- ``json``: FedPM's own event, ``schema: "fedpm.maintenance_request/v1"`` (fields are only
  ever added within a version);
- ``sap``: the body of ``POST .../API_MAINTNOTIFICATION/MaintenanceNotification`` (OData v2,
  SAP S/4HANA), with dates as ``/Date(ms)/`` and times as ``PThhHmmMssS``;
- ``maximo``: the body of ``POST .../oslc/os/mxwo`` (lean JSON, IBM Maximo).

Where the ERP's keys come from (docs/erp-integration.md): the asset's ``external_ids``
(``sap_equipment`` or ``sap_functional_location``, ``sap_plant``, ``maximo_assetnum``,
``maximo_siteid``, ``maximo_location``), then the webhook's ``settings`` (``sap_plant``,
``sap_notification_type``, ``sap_work_center``, ``sap_reported_by``, ``maximo_siteid``,
``maximo_orgid``, ``maximo_worktype``, ``maximo_status``), then FedPM's own asset id and site.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Final

from serving.integration_types import AssetView, MaintenanceRequest, Webhook

JSON_SCHEMA: Final = "fedpm.maintenance_request/v1"
SAP_TEXT_MAX: Final = 40
"""``NotificationText`` is the notification's short text, ``QMTXT``: 40 characters."""
MAXIMO_DESCRIPTION_MAX: Final = 100
"""``WORKORDER.DESCRIPTION`` is ALN 100 in a standard Maximo data dictionary."""
SAP_SETTINGS: Final = frozenset(
    {"sap_notification_type", "sap_plant", "sap_work_center", "sap_reported_by"}
)
MAXIMO_SETTINGS: Final = frozenset(
    {"maximo_siteid", "maximo_orgid", "maximo_worktype", "maximo_status"}
)
EXTERNAL_ID_KEYS: Final = frozenset(
    {
        "sap_equipment",
        "sap_functional_location",
        "sap_plant",
        "maximo_assetnum",
        "maximo_siteid",
        "maximo_location",
        "edge_asset_id",
    }
)
"""Keys an asset's ``external_ids`` may hold."""
_FAULT_WORDS: Final = {
    "inner_race": "inner race",
    "outer_race": "outer race",
    "ball": "rolling element",
    "cage": "cage",
    "vibration_severity": "high vibration",
    "anomaly": "anomalous vibration",
}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _fault_text(fault: str) -> str:
    return _FAULT_WORDS.get(fault, fault.replace("_", " "))


def short_text(request: MaintenanceRequest, limit: int) -> str:
    """A one-line title, cut to ``limit`` characters (with an ellipsis when cut)."""
    text = f"FedPM: {_fault_text(request.fault)} on {request.asset_id}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def long_text(request: MaintenanceRequest) -> str:
    """What FedPM saw, for the notification's or work order's long text."""
    lines = [
        f"FedPM maintenance request {request.request_id} (rule {request.rule_id}).",
        f"Asset {request.asset_id} at site {request.site}: suspected {_fault_text(request.fault)}.",
        f"Triggering windows: {request.windows}, from {_iso(request.first_window_at)}"
        f" to {_iso(request.last_window_at)}.",
        f"Highest failure probability: {request.max_failure_probability:.2f}.",
    ]
    if request.iso_zone is not None:
        lines.append(f"ISO 10816/20816 zone: {request.iso_zone}.")
    if request.anomaly_score is not None:
        lines.append(f"Anomaly score: {request.anomaly_score:.2f}.")
    if request.model_version:
        lines.append(f"Model: {request.model_version}.")
    lines.append(
        "Close it with POST /v1/maintenance-requests/"
        f"{request.request_id}/close and a failure code, so the sites learn from it."
    )
    return "\n".join(lines)


def json_payload(request: MaintenanceRequest, asset: AssetView) -> dict[str, Any]:
    """FedPM's own event (``fedpm.maintenance_request/v1``)."""
    return {
        "schema": JSON_SCHEMA,
        "event": "maintenance_request.opened",
        "tenant": request.tenant,
        "request": {
            "id": request.request_id,
            "asset_id": request.asset_id,
            "site": request.site,
            "fault": request.fault,
            "priority": request.priority,
            "rule_id": request.rule_id,
            "opened_at": _iso(request.opened_at),
            "first_window_at": _iso(request.first_window_at),
            "last_window_at": _iso(request.last_window_at),
            "windows": request.windows,
            "max_failure_probability": request.max_failure_probability,
            "iso_zone": request.iso_zone,
            "anomaly_score": request.anomaly_score,
            "model_version": request.model_version,
        },
        "asset": {
            "asset_id": asset.asset_id,
            "site": asset.site,
            "description": asset.description,
            "external_ids": dict(sorted(asset.external_ids.items())),
        },
        "close_url": f"/v1/maintenance-requests/{request.request_id}/close",
    }


def _sap_date(t: float) -> tuple[str, str]:
    moment = datetime.fromtimestamp(t, UTC)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    date = f"/Date({int(midnight.timestamp()) * 1000})/"
    time = f"PT{moment.hour:02d}H{moment.minute:02d}M{moment.second:02d}S"
    return date, time


def sap_payload(
    request: MaintenanceRequest, asset: AssetView, settings: dict[str, str]
) -> dict[str, Any]:
    """An ``API_MAINTNOTIFICATION`` ``MaintenanceNotification`` entity to create."""
    ids = asset.external_ids
    if "sap_equipment" in ids:
        technical_object, kind = ids["sap_equipment"], "EAMS_EQUI"
    elif "sap_functional_location" in ids:
        technical_object, kind = ids["sap_functional_location"], "EAMS_FL"
    else:
        technical_object, kind = asset.asset_id, "EAMS_EQUI"
    date, time = _sap_date(request.first_window_at)
    body: dict[str, Any] = {
        "NotificationType": settings.get("sap_notification_type", "M2"),
        "NotificationText": short_text(request, SAP_TEXT_MAX),
        "MaintNotifLongTextForEdit": long_text(request),
        "TechnicalObject": technical_object,
        "TechObjIsEquipOrFuncnlLoc": kind,
        "MaintPriority": str(request.priority),
        "MalfunctionStartDate": date,
        "MalfunctionStartTime": time,
        "NotificationTimeZone": "UTC",
    }
    plant = ids.get("sap_plant") or settings.get("sap_plant")
    if plant:
        body["MaintenancePlanningPlant"] = plant
    if settings.get("sap_work_center"):
        body["MainWorkCenter"] = settings["sap_work_center"]
    if settings.get("sap_reported_by"):
        body["ReportedByUser"] = settings["sap_reported_by"]
    return body


def maximo_payload(
    request: MaintenanceRequest, asset: AssetView, settings: dict[str, str]
) -> dict[str, Any]:
    """An ``mxwo`` work order to create (lean JSON: attribute names without prefixes)."""
    ids = asset.external_ids
    body: dict[str, Any] = {
        "description": short_text(request, MAXIMO_DESCRIPTION_MAX),
        "description_longdescription": long_text(request),
        "assetnum": ids.get("maximo_assetnum", asset.asset_id),
        "siteid": ids.get("maximo_siteid") or settings.get("maximo_siteid") or asset.site,
        "worktype": settings.get("maximo_worktype", "CM"),
        "wopriority": request.priority,
        "status": settings.get("maximo_status", "WAPPR"),
        "reportdate": _iso(request.opened_at),
        "externalrefid": request.request_id,
        "sourcesysid": "FEDPM",
    }
    if settings.get("maximo_orgid"):
        body["orgid"] = settings["maximo_orgid"]
    if ids.get("maximo_location"):
        body["location"] = ids["maximo_location"]
    return body


def render(request: MaintenanceRequest, asset: AssetView, webhook: Webhook) -> tuple[bytes, str]:
    """The delivery body and its content type, in the webhook's format."""
    if webhook.format == "sap":
        payload = sap_payload(request, asset, webhook.settings)
    elif webhook.format == "maximo":
        payload = maximo_payload(request, asset, webhook.settings)
    else:
        payload = json_payload(request, asset)
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return body, "application/json"


MAXIMO_RETURN_HEADERS: Final = {"properties": "wonum,siteid"}
"""Asks Maximo's OSLC API to answer a create with the new work order's number."""
REFERENCE_MAX: Final = 100
"""Longest document number kept (``work_order_id``'s limit on close)."""


def request_headers(fmt: str) -> dict[str, str]:
    """Headers a format's receiver needs besides FedPM's own (Maximo: what to answer with)."""
    return dict(MAXIMO_RETURN_HEADERS) if fmt == "maximo" else {}


def created_reference(fmt: str, body: bytes) -> str | None:
    """The document number a receiver answered a delivery with, or None.

    - ``sap``: the new notification's ``MaintenanceNotification`` (OData v2 ``{"d": {...}}``,
      or v4 without the ``d``);
    - ``maximo``: ``wonum`` (returned because the delivery asks with ``properties``);
    - ``json``: ``work_order_id``, if the receiver answers with one.

    Examples
    --------
    >>> created_reference("sap", b'{"d": {"MaintenanceNotification": "10004711"}}')
    '10004711'
    >>> created_reference("maximo", b'{"wonum": "1203", "siteid": "BEDFORD"}')
    '1203'
    >>> created_reference("json", b"") is None
    True
    """
    field = {"sap": "MaintenanceNotification", "maximo": "wonum"}.get(fmt, "work_order_id")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(document, dict) and isinstance(document.get("d"), dict):
        document = document["d"]
    value = document.get(field) if isinstance(document, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or len(value) > REFERENCE_MAX:
        return None
    return value.strip()
