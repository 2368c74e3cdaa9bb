"""JSON messages the edge agent exchanges on MQTT (wire schemas, separate from store types)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_agent.errors import MessageRejected

ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
MAX_LABEL_BYTES = 4096
HealthState = Literal["normal", "warning", "alarm"]


class LabelEvent(BaseModel):
    """An operator's (or CMMS's) statement of what an asset was doing over a time span.

    Published on ``fedpm/v1/{site}/{asset}/labels``; ``sensor_id`` absent means every sensor
    of the asset. ``start_ns`` and ``end_ns`` are UNIX ns, ``start_ns < end_ns``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    v: Literal[1]
    asset_id: str = Field(pattern=ID_PATTERN)
    label: str = Field(pattern=ID_PATTERN)
    start_ns: int = Field(ge=0, lt=1 << 63)
    end_ns: int = Field(ge=0, lt=1 << 63)
    sensor_id: str | None = Field(default=None, pattern=ID_PATTERN)
    source: str = Field(default="operator", min_length=1, max_length=64)

    @model_validator(mode="after")
    def _ordered(self) -> LabelEvent:
        if self.end_ns <= self.start_ns:
            raise ValueError("end_ns must be after start_ns")
        return self

    @classmethod
    def parse(cls, payload: bytes | bytearray) -> LabelEvent:
        """Decode and validate a label-event payload.

        Raises
        ------
        MessageRejected
            ``label_too_large``, ``label_json`` (not JSON) or ``label_schema`` (wrong fields).
        """
        if len(payload) > MAX_LABEL_BYTES:
            raise MessageRejected("label_too_large", f"label event of {len(payload)} bytes")
        try:
            return cls.model_validate_json(payload)
        except ValidationError as exc:
            kinds = {err["type"] for err in exc.errors()}
            reason = "label_json" if "json_invalid" in kinds else "label_schema"
            raise MessageRejected(reason, f"invalid label event: {exc}") from exc


class Health(BaseModel):
    """Retained health message of one asset on ``fedpm/v1/{site}/{asset}/health``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    site: str
    asset_id: str
    state: HealthState
    predicted_class: str
    failure_probability: float
    probabilities: dict[str, float]
    model_version: int
    window_start_ns: int
    ts_ns: int

    def to_payload(self) -> bytes:
        """Compact UTF-8 JSON."""
        return self.model_dump_json().encode()
