"""JSON messages the edge agent exchanges on MQTT (wire schemas, separate from store types).

Versioning. ``v`` is 1 for both messages. Fields are only ever *added* to a version, always
optional; a reader must ignore fields it does not know. The health message gained
``cause``, ``anomaly_score``, ``anomaly_threshold`` and ``evidence`` this way (all ``null``
where the analytics have nothing to say); a label event gained ``failure_code``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_agent.errors import MessageRejected
from models.failure_codes import resolve_failure_code

ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
MAX_LABEL_BYTES = 4096
HealthState = Literal["normal", "warning", "alarm"]
HealthCause = Literal["model", "anomaly"]
IsoZone = Literal["A", "B", "C", "D"]
DefectSymbol = Literal["BPFI", "BPFO", "BSF", "FTF"]


class LabelEvent(BaseModel):
    """An operator's (or CMMS's) statement of what an asset was doing over a time span.

    Published on ``fedpm/v1/{site}/{asset}/labels``; ``sensor_id`` absent means every sensor
    of the asset. ``start_ns`` and ``end_ns`` are UNIX ns, ``start_ns < end_ns``. A work-order
    closure may give a CMMS ``failure_code`` instead of ``label``: the label is then the class
    the code stands for (:mod:`models.failure_codes`); an unknown code is refused. When
    both are given, ``label`` is used and the code kept for the record.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    v: Literal[1]
    asset_id: str = Field(pattern=ID_PATTERN)
    label: str = Field(pattern=ID_PATTERN)
    start_ns: int = Field(ge=0, lt=1 << 63)
    end_ns: int = Field(ge=0, lt=1 << 63)
    sensor_id: str | None = Field(default=None, pattern=ID_PATTERN)
    source: str = Field(default="operator", min_length=1, max_length=64)
    failure_code: str | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="before")
    @classmethod
    def _label_from_failure_code(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("label") is None:
            code = data.get("failure_code")
            if isinstance(code, str) and code.strip():
                try:
                    return {**data, "label": resolve_failure_code(code)}
                except KeyError as exc:
                    raise ValueError(str(exc.args[0])) from None
        return data

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
            ``label_too_large``, ``label_json`` (not JSON) or ``label_schema`` (wrong fields,
            or an unknown failure code).
        """
        if len(payload) > MAX_LABEL_BYTES:
            raise MessageRejected("label_too_large", f"label event of {len(payload)} bytes")
        try:
            return cls.model_validate_json(payload)
        except ValidationError as exc:
            kinds = {err["type"] for err in exc.errors()}
            reason = "label_json" if "json_invalid" in kinds else "label_schema"
            raise MessageRejected(reason, f"invalid label event: {exc}") from exc


class Evidence(BaseModel):
    """Why the analytics see an asset the way they do, from its latest window.

    Condition indicators of the window: ``rms_g``, ``kurtosis`` (Pearson, 3 for Gaussian
    noise), ``crest_factor``, the velocity RMS in mm/s over 10 Hz to ``min(1000 Hz, fs/2)``
    and its ISO 10816-3 / 20816-3 ``iso_zone`` for the asset's machine group and mounting
    (absent for windows sampled below 200 Hz; an indicator undefined for the window, such as
    the kurtosis of a constant signal, is absent too). The envelope analysis runs on a few
    windows only (see :mod:`edge_agent.evidence`), so its result is carried until the next one:
    ``envelope_window_start_ns`` says which window it comes from. ``defect`` names the defect
    the envelope spectrum shows (``none`` below the 12 dB threshold), ``defect_frequency``
    its line (BPFI, BPFO, BSF for a ball, FTF for the cage), ``defect_hz`` the fundamental
    found and ``defect_score_db`` its height above the local floor. All envelope fields are
    absent when the asset has no ``bearing`` and ``rpm`` configured or no envelope has run.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    rms_g: float | None = None
    kurtosis: float | None = None
    crest_factor: float | None = None
    velocity_rms_mm_s: float | None = None
    iso_zone: IsoZone | None = None
    defect: Literal["inner_race", "outer_race", "ball", "cage", "none"] | None = None
    defect_frequency: DefectSymbol | None = None
    defect_hz: float | None = None
    defect_score_db: float | None = None
    envelope_window_start_ns: int | None = None


class Health(BaseModel):
    """Retained health message of one asset on ``fedpm/v1/{site}/{asset}/health``.

    ``cause`` says what holds the asset out of ``normal``: the model's fault classes
    (``model``) or an anomaly score above the asset's baseline threshold (``anomaly``);
    ``null`` when normal. ``anomaly_score`` (Mahalanobis distance of the window's embedding
    from the asset's healthy baseline) and ``anomaly_threshold`` are ``null`` until the
    baseline for the running model version is fitted.
    """

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
    cause: HealthCause | None = None
    anomaly_score: float | None = None
    anomaly_threshold: float | None = None
    evidence: Evidence | None = None

    def to_payload(self) -> bytes:
        """Compact UTF-8 JSON."""
        return self.model_dump_json().encode()
