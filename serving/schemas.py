"""Request and response bodies of the REST API, kept apart from the internal types.

Changing a field here changes the public contract that generated ERP/CMMS clients rely on;
:class:`~models.registry.ModelCard` and :class:`~models.runtime.Prediction` may change freely.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from pydantic import (
    AllowInfNan,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
)

from models.registry import ModelCard
from serving.explain import Explanation
from serving.health import RemainingUsefulLife
from serving.predictor import BatchResult
from serving.state import Asset

Sample = Annotated[float, Strict(), AllowInfNan(False)]
"""One acceleration sample: a finite JSON number (not a string, not NaN or Infinity)."""

SINGLE_CHANNEL = "single_channel"
MULTI_CHANNEL = "multi_channel"
WINDOW_TAGS = frozenset({SINGLE_CHANNEL, MULTI_CHANNEL})
"""Names pydantic puts in error locations to say which window form it validated."""


def _window_form(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], list):
        return MULTI_CHANNEL
    return SINGLE_CHANNEL


Window = Annotated[
    Annotated[list[Sample], Tag(SINGLE_CHANNEL)]
    | Annotated[list[list[Sample]], Tag(MULTI_CHANNEL)],
    Discriminator(_window_form),
]
"""A window: one list of samples (single channel), or one list of samples per channel."""

Units = Literal["g", "m/s^2"]


class PredictionRequest(BaseModel):
    """Windows of raw acceleration to classify."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "asset_id": "pump-17/de-bearing",
                    "sample_rate_hz": 12000,
                    "units": "g",
                    "windows": [[0.012, -0.034, 0.051, 0.007]],
                }
            ]
        },
    )

    sample_rate_hz: Annotated[float, Strict(), AllowInfNan(False)] = Field(
        gt=0,
        le=1_000_000,
        description="Sample rate of every window, in Hz. Windows at another rate than the "
        "model's are resampled when they cover the same duration.",
    )
    units: Units = Field(default="g", description="Units of the samples.")
    windows: list[Window] = Field(
        min_length=1,
        description="Windows to classify, all the same shape: each a list of samples (one "
        "channel) or a list of channels, each a list of samples. The length must match "
        "`window_samples` of GET /v1/models/current at its `sample_rate_hz`, or cover the "
        "same duration at another rate.",
    )
    asset_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="A registered asset of the caller's tenant (PUT /v1/assets/{asset_id}); "
        "its evidence (ISO zone, anomaly score, bearing defect frequencies) is added.",
    )
    contiguous: bool = Field(
        default=False,
        description="The windows follow each other without gaps, in time order: the bearing "
        "evidence analyses them as one signal (it needs 10 shaft turns).",
    )
    measured_at: AwareDatetime | None = Field(
        default=None,
        description="When the windows were measured, ISO 8601 with a time zone "
        "(2026-03-01T08:00:00Z); the receive time when absent. With an asset_id, the request "
        "is one point of the asset's history for its health indicator and remaining useful "
        "life: out-of-order times are fine (a batch upload), the same time again replaces that "
        "point, a time more than 5 minutes ahead of the server's clock is refused.",
    )


class WindowEvidence(BaseModel):
    """Condition indicators and the anomaly score of one window of a registered asset."""

    rms_g: float | None = Field(default=None, description="RMS acceleration, g.")
    kurtosis: float | None = Field(default=None, description="Kurtosis (3 for Gaussian noise).")
    crest_factor: float | None = Field(default=None, description="Peak / RMS.")
    velocity_rms_mm_s: float | None = Field(
        default=None, description="Velocity RMS over 10 Hz-1 kHz, mm/s."
    )
    iso_zone: Literal["A", "B", "C", "D"] | None = Field(
        default=None, description="ISO 10816-3 / 20816-3 zone for the asset's group and mounting."
    )
    anomaly_score: float | None = Field(
        default=None,
        description="Mahalanobis distance of the window's embedding from the asset's healthy "
        "baseline; null without a baseline for the model served.",
    )
    anomalous: bool | None = Field(
        default=None, description="anomaly_score above the baseline's calibrated threshold."
    )


class WindowPrediction(BaseModel):
    """The model's verdict on one window."""

    predicted_class: str = Field(description="Most probable class.")
    probabilities: dict[str, float] = Field(description="Probability per class; sums to 1.")
    failure_probability: float = Field(
        ge=0, le=1, description="Probability of any class other than 'normal'."
    )
    evidence: WindowEvidence | None = Field(
        default=None, description="Present when the request names a registered asset."
    )


class BearingEvidence(BaseModel):
    """Envelope analysis of the request's windows for the asset's bearing."""

    verdict: Literal["inner_race", "outer_race", "ball", "cage", "none"]
    defect_frequency: Literal["BPFI", "BPFO", "BSF", "FTF"] | None = Field(
        description="The defect frequency that stands out, when a defect is called."
    )
    defect_hz: float | None = Field(description="Where its line was found, Hz.")
    score_db: float | None = Field(description="Its evidence, dB over the local noise floor.")
    threshold_db: float = Field(description="Score a defect needs to be called, dB.")
    scores_db: dict[str, float] = Field(description="Evidence of every defect, dB.")
    expected_hz: dict[str, float] = Field(description="Kinematic defect frequencies, Hz.")
    band_hz: list[float] | None = Field(description="Band demodulated, Hz.")
    signal_s: float = Field(description="Seconds of signal analysed.")


class AssetExplanation(BaseModel):
    """The asset-level part of an explained prediction."""

    asset_id: str
    site: str
    anomaly_threshold: float | None = Field(
        description="Baseline threshold at its calibrated false-alarm rate; null without one."
    )
    baseline_note: str | None = Field(description="Why there is no anomaly score, if not.")
    bearing: BearingEvidence | None
    bearing_note: str | None = Field(description="Why there is no bearing evidence, if not.")


class PredictionResponse(BaseModel):
    """Predictions for every window of a request, in order."""

    model_config = ConfigDict(protected_namespaces=())

    model_version: str = Field(description="Registry version that answered, e.g. 'v3'.")
    model_sha256: str = Field(description="sha256 of the model file that answered.")
    asset_id: str | None = None
    predictions: list[WindowPrediction]
    explanation: AssetExplanation | None = Field(
        default=None, description="Present when the request names a registered asset."
    )
    remaining_useful_life: RemainingUsefulLife | None = Field(
        default=None,
        description="The asset's health state and remaining useful life after this "
        "measurement; present when the request names a registered asset.",
    )

    @classmethod
    def from_result(
        cls,
        result: BatchResult,
        asset_id: str | None = None,
        explained: tuple[Asset, Explanation] | None = None,
        rul: RemainingUsefulLife | None = None,
    ) -> PredictionResponse:
        """Build the response from the predictor's result (and the asset's evidence)."""
        card, pred = result.model.card, result.prediction
        names = pred.class_names
        evidence: list[WindowEvidence | None] = [None] * len(pred.predicted)
        explanation = None
        if explained is not None:
            asset, found = explained
            evidence = [WindowEvidence(**asdict(w)) for w in found.windows]
            explanation = AssetExplanation(
                asset_id=asset.asset_id,
                site=asset.site,
                anomaly_threshold=found.anomaly_threshold,
                baseline_note=found.baseline_note,
                bearing=None if found.bearing is None else BearingEvidence(**found.bearing),
                bearing_note=found.bearing_note,
            )
        rows = [
            WindowPrediction(
                predicted_class=predicted,
                probabilities={name: float(p) for name, p in zip(names, probs, strict=True)},
                failure_probability=min(max(fail, 0.0), 1.0),
                evidence=ev,
            )
            for predicted, probs, fail, ev in zip(
                pred.predicted,
                pred.probabilities,
                result.failure_probability,
                evidence,
                strict=True,
            )
        ]
        return cls(
            model_version=card.label,
            model_sha256=card.sha256,
            asset_id=asset_id,
            predictions=rows,
            explanation=explanation,
            remaining_useful_life=rul,
        )


class ModelPublic(BaseModel):
    """The public view of the served model's registry card."""

    version: str = Field(description="Registry version, e.g. 'v3'.")
    created_at: str
    sha256: str
    run_id: str
    server_round: int
    sites: list[str]
    metrics: dict[str, float]
    site_metrics: dict[str, dict[str, float]]
    class_names: list[str]
    sample_rate_hz: float
    window_samples: int
    channels: int
    units: str

    @classmethod
    def from_card(cls, card: ModelCard) -> ModelPublic:
        """Public view of ``card``."""
        meta = card.metadata
        return cls(
            version=card.label,
            created_at=card.created_at,
            sha256=card.sha256,
            run_id=card.run_id,
            server_round=card.server_round,
            sites=list(card.sites),
            metrics=dict(card.metrics),
            site_metrics={site: dict(m) for site, m in card.site_metrics.items()},
            class_names=list(meta.class_names),
            sample_rate_hz=meta.sample_rate_hz,
            window_samples=meta.window_samples,
            channels=meta.channels,
            units=meta.units,
        )


class HealthResponse(BaseModel):
    """Liveness and readiness of the process."""

    model_config = ConfigDict(protected_namespaces=())

    status: Literal["ok", "ready"]
    model_loaded: bool
    model_version: str | None = None


class FieldError(BaseModel):
    """One problem with one part of the request."""

    loc: list[str | int] = Field(description="Where: e.g. ['windows', 0, 5].")
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Body of every error response."""

    detail: str = Field(description="What went wrong, for a person.")
    errors: list[FieldError] = Field(
        default_factory=list, description="Per-field problems (validation errors only)."
    )
