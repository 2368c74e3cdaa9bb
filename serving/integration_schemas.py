"""Request and response bodies of the ERP/CMMS integration routes (public contract).

Kept apart from the internal types (:mod:`serving.integration_types`) as
:mod:`serving.schemas` is from the predictor's. Times are ISO 8601 with a time zone on the way
in and UNIX seconds on the way out, like the rest of the API.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AllowInfNan,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from models.failure_codes import DEFAULT_FAILURE_CODES, normalise_code
from serving.adapters import MAXIMO_SETTINGS, SAP_SETTINGS
from serving.integration_types import (
    Label,
    MaintenanceRequest,
    OutboxItem,
    PayloadFormat,
    Rule,
    RuleCondition,
    Webhook,
)
from serving.state import NAME_RE

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
"""Webhook and rule ids: 1-64 letters, digits and . _ : - (no slash: one path segment)."""
REQUEST_ID_PATTERN = r"^mr_[0-9a-f]{24}$"
CLASS_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
_HEADER_NAME = r"^[A-Za-z0-9-]{1,64}$"
_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "idempotency-key", "user-agent"}
)
MIN_TIME_S = 0.0
MAX_TIME_S = 7_258_118_400.0  # 2200-01-01
Finite = Annotated[float, AllowInfNan(False)]


def unix_time(moment: datetime) -> float:
    """UNIX seconds of an aware datetime, refused outside 1970-2200."""
    t = moment.timestamp()
    if not MIN_TIME_S <= t < MAX_TIME_S:
        raise ValueError("must be between 1970 and 2200")
    return t


# --- webhooks -------------------------------------------------------------------------------


class WebhookIn(BaseModel):
    """A webhook to create or replace."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://cmms.example.com/fedpm/hooks",
                    "format": "json",
                    "headers": {"Authorization": "Bearer <token of the receiver>"},
                }
            ]
        },
    )

    url: str = Field(
        max_length=2000,
        description="http(s) URL the requests are POSTed to (https outside a private network).",
    )
    format: PayloadFormat = Field(
        default="json",
        description="Payload: FedPM JSON, an SAP API_MAINTNOTIFICATION notification, or a "
        "Maximo mxwo work order.",
    )
    secret: str | None = Field(
        default=None,
        min_length=16,
        max_length=256,
        description="HMAC-SHA256 key of the FedPM-Signature header. Left out: one is generated "
        "on creation and returned once; on an update the old one is kept.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        max_length=20,
        description="Extra headers sent with every delivery (e.g. the ERP's Authorization). "
        "Never returned.",
    )
    settings: dict[str, str] = Field(
        default_factory=dict,
        max_length=20,
        description="Adapter settings: sap_notification_type, sap_plant, sap_work_center, "
        "sap_reported_by (format sap); maximo_siteid, maximo_orgid, maximo_worktype, "
        "maximo_status (format maximo).",
    )
    enabled: bool = Field(default=True, description="False pauses deliveries; rows wait.")
    description: str = Field(default="", max_length=500)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("must not hold credentials: send them in 'headers'")
        if any(c.isspace() for c in value):
            raise ValueError("must not contain white space")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            lower = name.lower()
            if not re.fullmatch(_HEADER_NAME, name):
                raise ValueError(f"header name {name!r}: letters, digits and '-' only")
            if lower in _RESERVED_HEADERS or lower.startswith("fedpm-"):
                raise ValueError(f"header {name!r} is set by FedPM itself")
            if len(text) > 4096 or any(c in text for c in "\r\n\0"):
                raise ValueError(f"header {name!r}: at most 4096 characters, one line")
        return value

    @model_validator(mode="after")
    def _settings_fit_format(self) -> WebhookIn:
        allowed = {"sap": SAP_SETTINGS, "maximo": MAXIMO_SETTINGS}.get(self.format, frozenset())
        unknown = sorted(set(self.settings) - allowed)
        if unknown:
            known = ", ".join(sorted(allowed)) or "none"
            raise ValueError(f"settings {unknown} do not apply to format {self.format!r} ({known})")
        for key, text in self.settings.items():
            if not 1 <= len(text) <= 100:
                raise ValueError(f"setting {key!r} must be 1-100 characters")
        return self


class WebhookOut(BaseModel):
    """A webhook as stored; its secret and header values are never shown again."""

    webhook_id: str
    url: str
    format: PayloadFormat
    header_names: list[str] = Field(description="Names of the extra headers (values hidden).")
    settings: dict[str, str]
    enabled: bool
    description: str
    created_at: float
    updated_at: float
    secret: str | None = Field(
        default=None, description="The generated secret: only in the answer that created it."
    )

    @classmethod
    def from_webhook(cls, hook: Webhook, secret: str | None = None) -> WebhookOut:
        """Public view of a stored webhook (``secret`` only when just generated)."""
        return cls(
            webhook_id=hook.webhook_id,
            url=hook.url,
            format=hook.format,
            header_names=sorted(hook.headers),
            settings=dict(hook.settings),
            enabled=hook.enabled,
            description=hook.description,
            created_at=hook.created_at,
            updated_at=hook.updated_at,
            secret=secret,
        )


class WebhookList(BaseModel):
    """A tenant's webhooks."""

    webhooks: list[WebhookOut]


# --- rules ----------------------------------------------------------------------------------


class RuleConditionIn(BaseModel):
    """What one predicted window must show (unset criteria are not checked)."""

    model_config = ConfigDict(extra="forbid")

    failure_probability_gte: Finite | None = Field(default=None, ge=0, le=1)
    iso_zones: list[Literal["A", "B", "C", "D"]] = Field(default_factory=list, max_length=4)
    anomaly_score_gte: Finite | None = Field(default=None, ge=0, le=1e9)
    predicted_classes: list[Annotated[str, Field(pattern=CLASS_PATTERN)]] = Field(
        default_factory=list, max_length=32, description="Classes other than 'normal'."
    )
    match: Literal["any", "all"] = Field(
        default="any", description="A window matches when any (or all) set criteria hold."
    )

    @model_validator(mode="after")
    def _something_set(self) -> RuleConditionIn:
        if (
            self.failure_probability_gte is None
            and not self.iso_zones
            and self.anomaly_score_gte is None
            and not self.predicted_classes
        ):
            raise ValueError(
                "set at least one of failure_probability_gte, iso_zones, anomaly_score_gte,"
                " predicted_classes"
            )
        if "normal" in self.predicted_classes:
            raise ValueError("predicted_classes cannot hold 'normal'")
        return self

    def to_condition(self) -> RuleCondition:
        """The internal condition."""
        return RuleCondition(
            failure_probability_gte=self.failure_probability_gte,
            iso_zones=frozenset(self.iso_zones),
            anomaly_score_gte=self.anomaly_score_gte,
            predicted_classes=frozenset(self.predicted_classes),
            match=self.match,
        )


class RuleIn(BaseModel):
    """A rule to create or replace (its consecutive-window counters restart)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "when": {"failure_probability_gte": 0.8, "iso_zones": ["C", "D"]},
                    "consecutive": 3,
                    "webhook_id": "cmms",
                    "priority": 2,
                    "sites": ["plant-a"],
                }
            ]
        },
    )

    when: RuleConditionIn
    consecutive: int = Field(default=1, ge=1, le=10_000, description="Matching windows in a row.")
    webhook_id: str = Field(pattern=ID_PATTERN, description="Webhook the requests go to.")
    priority: int = Field(default=3, ge=1, le=4, description="1 very high ... 4 low.")
    sites: list[Annotated[str, Field(pattern=NAME_RE.pattern)]] = Field(
        default_factory=list, max_length=100
    )
    asset_ids: list[Annotated[str, Field(pattern=NAME_RE.pattern)]] = Field(
        default_factory=list, max_length=1000, description="With sites empty too: every asset."
    )
    enabled: bool = True
    description: str = Field(default="", max_length=500)


class RuleOut(RuleIn):
    """A rule as stored."""

    rule_id: str
    created_at: float
    updated_at: float

    @classmethod
    def from_rule(cls, rule: Rule) -> RuleOut:
        """Public view of a stored rule."""
        c = rule.condition
        return cls(
            rule_id=rule.rule_id,
            when=RuleConditionIn(
                failure_probability_gte=c.failure_probability_gte,
                iso_zones=sorted(c.iso_zones),  # type: ignore[arg-type]
                anomaly_score_gte=c.anomaly_score_gte,
                predicted_classes=sorted(c.predicted_classes),
                match=c.match,
            ),
            consecutive=rule.consecutive,
            webhook_id=rule.webhook_id,
            priority=rule.priority,
            sites=sorted(rule.sites),
            asset_ids=sorted(rule.asset_ids),
            enabled=rule.enabled,
            description=rule.description,
            created_at=rule.created_at,
            updated_at=rule.updated_at,
        )


class RuleList(BaseModel):
    """A tenant's rules."""

    rules: list[RuleOut]


# --- maintenance requests, labels, dead letters ----------------------------------------------


class MaintenanceRequestOut(BaseModel):
    """A maintenance request (times in UNIX seconds)."""

    request_id: str
    asset_id: str
    site: str
    fault: str = Field(description="Predicted class, vibration_severity or anomaly.")
    status: Literal["open", "closed"]
    rule_id: str
    webhook_id: str
    priority: int
    opened_at: float
    updated_at: float
    first_window_at: float = Field(description="Start of the first triggering window.")
    last_window_at: float = Field(description="End of the last triggering window.")
    windows: int = Field(description="Triggering windows so far.")
    max_failure_probability: float
    iso_zone: str | None
    anomaly_score: float | None
    model_version: str
    closed_at: float | None
    failure_code: str | None
    fault_class: str | None
    work_order_id: str | None

    @classmethod
    def from_request(cls, r: MaintenanceRequest) -> MaintenanceRequestOut:
        """Public view of a request."""
        fields = {k: v for k, v in r.__dict__.items() if k != "tenant"}
        return cls(**fields)


class MaintenanceRequestList(BaseModel):
    """Maintenance requests, newest first."""

    requests: list[MaintenanceRequestOut]


class CloseRequestIn(BaseModel):
    """How the work order ended. A failure code or a class records a label for the sites."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "failure_code": "BRG-OR",
                    "work_order_id": "4711",
                    "closed_at": "2026-03-02T10:00Z",
                }
            ]
        },
    )

    failure_code: str | None = Field(
        default=None, min_length=1, max_length=64, description="CMMS failure code (BRG-OR ...)."
    )
    fault_class: str | None = Field(
        default=None, pattern=CLASS_PATTERN, description="FedPM class; wins over the code."
    )
    closed_at: AwareDatetime | None = Field(default=None, description="Default: now.")
    work_order_id: str | None = Field(default=None, min_length=1, max_length=100)
    span_start: AwareDatetime | None = Field(
        default=None, description="Fault span start; default: the first triggering window."
    )
    span_end: AwareDatetime | None = Field(
        default=None, description="Fault span end; default: the end of the last one."
    )

    @model_validator(mode="after")
    def _times(self) -> CloseRequestIn:
        for moment in (self.closed_at, self.span_start, self.span_end):
            if moment is not None:
                unix_time(moment)
        if self.span_start and self.span_end and self.span_end <= self.span_start:
            raise ValueError("span_end must be after span_start")
        return self


class LabelOut(BaseModel):
    """A label for a site's store: the asset was in state ``label`` over [start_ns, end_ns]."""

    seq: int = Field(description="Cursor position: pass the last one as ?after=.")
    site: str
    asset_id: str = Field(description="The asset id the site knows (external_ids.edge_asset_id).")
    label: str
    start_ns: int
    end_ns: int
    failure_code: str | None
    request_id: str
    work_order_id: str | None
    created_at: float

    @classmethod
    def from_label(cls, label: Label) -> LabelOut:
        """Public view of a label."""
        return cls(**{k: v for k, v in label.__dict__.items() if k != "tenant"})


class CloseResponse(BaseModel):
    """The closed request, and the label it recorded (if a class was known)."""

    request: MaintenanceRequestOut
    label: LabelOut | None


class LabelPage(BaseModel):
    """Labels after a cursor, oldest first."""

    labels: list[LabelOut]
    next_cursor: int = Field(description="Pass as ?after= for the next page.")


class DeadLetterOut(BaseModel):
    """A delivery that was given up on."""

    dead_letter_id: int
    webhook_id: str
    request_id: str
    event: str
    idempotency_key: str
    attempts: int
    last_status: int | None
    last_error: str
    created_at: float

    @classmethod
    def from_item(cls, item: OutboxItem) -> DeadLetterOut:
        """Public view of an outbox row."""
        return cls(
            dead_letter_id=item.outbox_id,
            webhook_id=item.webhook_id,
            request_id=item.request_id,
            event=item.event,
            idempotency_key=item.idempotency_key,
            attempts=item.attempts,
            last_status=item.last_status,
            last_error=item.last_error,
            created_at=item.created_at,
        )


class DeadLetterList(BaseModel):
    """A tenant's dead letters, newest first."""

    dead_letters: list[DeadLetterOut]


FailureCode = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^\S+$")
]
FaultClass = Annotated[str, Field(pattern=CLASS_PATTERN)]


class FailureCodesIn(BaseModel):
    """A tenant's own failure codes: its CMMS's codes and the FedPM class each stands for."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"codes": {"DMG-0815": "outer_race", "DMG-0816": "inner_race"}}]
        },
    )

    codes: dict[FailureCode, FaultClass] = Field(
        max_length=1000,
        description="Failure code (matched case-insensitively) -> FedPM class. Replaces the "
        "tenant's previous codes; they win over the defaults.",
    )

    @field_validator("codes")
    @classmethod
    def _unique_codes(cls, value: dict[str, str]) -> dict[str, str]:
        normalised: dict[str, str] = {}
        for code, fault_class in value.items():
            key = normalise_code(code)
            if key in normalised and normalised[key] != fault_class:
                raise ValueError(f"code {key!r} is given twice with different classes")
            normalised[key] = fault_class
        return normalised


class FailureCodesOut(BaseModel):
    """The failure codes a close resolves: the tenant's own, then FedPM's defaults."""

    codes: dict[str, str] = Field(description="The tenant's own codes (upper case) -> class.")
    defaults: dict[str, str] = Field(description="FedPM's default codes -> class.")

    @classmethod
    def of(cls, codes: dict[str, str]) -> FailureCodesOut:
        """The answer for a tenant's codes."""
        return cls(codes=codes, defaults=dict(DEFAULT_FAILURE_CODES))
