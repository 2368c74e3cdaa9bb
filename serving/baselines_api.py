"""Routes for an asset's healthy baseline: fit it from windows, read what is stored.

``PUT /v1/baselines/{asset_id}`` (``fit_baseline``) takes healthy windows of the asset, runs
the served model on them and fits ``models.anomaly.AnomalyBaseline`` on their embeddings (mean
and shrunk covariance on the earlier 70 %, threshold from the later 30 % at the chosen
false-alarm rate). The baseline belongs to the model that fitted it: after a model update,
predictions say so and give no anomaly score until it is fitted again.
The same windows, one point each, also fit the asset's health-indicator baseline
(:func:`serving.health.fit_from_windows`), which belongs to no model and survives model
updates; it replaces one fitted from the asset's first history points.
``GET /v1/baselines/{asset_id}`` (``get_baseline``) describes it.
"""

from __future__ import annotations

import time
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from models.anomaly import AnomalyBaseline, min_windows
from models.errors import AnomalyError, SignalError
from serving.assets_api import StoreDep, visible_asset
from serving.auth import AUTH_ERRORS, KeyDep, require
from serving.errors import InvalidInputError, ModelNotLoadedError
from serving.health import baseline_from_json, fit_from_windows, measurement_time
from serving.history import StoredHealthBaseline
from serving.inputs import stack_windows, to_units
from serving.predictor import Predictor
from serving.routing import JsonBodyRoute
from serving.schemas import ErrorResponse, PredictionRequest
from serving.state import ApiKey, Permission, StoredBaseline

MAX_BASELINE_WINDOWS = 20_000
"""Largest number of windows one baseline request may carry (the body limit applies too)."""

router = APIRouter(tags=["baselines"], route_class=JsonBodyRoute)

_RESPONSES: dict[int | str, dict[str, object]] = {
    **AUTH_ERRORS,
    status.HTTP_404_NOT_FOUND: {"model": ErrorResponse, "description": "No such asset"},
    status.HTTP_413_CONTENT_TOO_LARGE: {"model": ErrorResponse, "description": "Body too large"},
    status.HTTP_422_UNPROCESSABLE_CONTENT: {"model": ErrorResponse, "description": "Bad input"},
    status.HTTP_503_SERVICE_UNAVAILABLE: {"model": ErrorResponse, "description": "No model"},
}


class BaselineRequest(PredictionRequest):
    """Healthy windows of one asset, in time order, and the false-alarm rate wanted."""

    model_config = ConfigDict(extra="forbid")

    false_alarm_rate: float = Field(
        default=0.01,
        ge=1e-6,  # smaller rates need more windows than a float can count (min_windows)
        lt=0.5,
        description="Share of healthy windows allowed to score above the threshold; it sets "
        "how many windows are needed (329 at 0.01, 62 at 0.05).",
    )


class BaselineOut(BaseModel):
    """An asset's stored baseline."""

    model_config = ConfigDict(protected_namespaces=())

    asset_id: str
    model_version: str = Field(description="Model whose embeddings the baseline describes.")
    model_sha256: str
    current: bool = Field(description="Fitted with the model now served.")
    windows: int = Field(description="Healthy windows it was fitted on.")
    false_alarm_rate: float
    threshold: float = Field(description="Anomaly scores above it are anomalous.")
    fitted_at: float = Field(description="Unix time, s.")
    health_points: int | None = Field(
        default=None,
        description="Points of the health-indicator baseline (one per healthy window when "
        "fitted here); null without one.",
    )
    health_source: str | None = Field(
        default=None, description="'windows' (fitted here) or 'history' (first history points)."
    )
    health_threshold: float | None = Field(
        default=None, description="Health indicator level of a warning."
    )


def _out(
    stored: StoredBaseline, predictor: Predictor, health: StoredHealthBaseline | None
) -> BaselineOut:
    model = predictor.model
    return BaselineOut(
        asset_id=stored.asset_id,
        model_version=stored.model_version,
        model_sha256=stored.model_sha256,
        current=model is not None and model.card.sha256 == stored.model_sha256,
        windows=stored.windows,
        false_alarm_rate=stored.false_alarm_rate,
        threshold=AnomalyBaseline.from_json(stored.document).threshold,
        fitted_at=stored.fitted_at,
        health_points=None if health is None else health.points,
        health_source=None if health is None else health.source,
        health_threshold=None if health is None else baseline_from_json(health.document).threshold,
    )


async def _predictor(request: Request) -> Predictor:
    """The application's predictor (it may hold no model yet)."""
    predictor: Predictor = request.app.state.predictor
    return predictor


@router.put(
    "/v1/baselines/{asset_id:anypath}",
    summary="Fit an asset's healthy baseline",
    responses=_RESPONSES,
)
async def fit_baseline(
    asset_id: str,
    body: BaselineRequest,
    store: StoreDep,
    key: Annotated[ApiKey, Depends(require(Permission.MANAGE_ASSETS))],
    predictor: Annotated[Predictor, Depends(_predictor)],
) -> BaselineOut:
    """Fit the baseline from healthy windows of the asset (in time order) with the served model.

    Replaces the asset's previous baseline. Too few windows for the false-alarm rate is a 422
    that says how many are needed.
    """
    asset = visible_asset(store, key, asset_id)
    if body.asset_id is not None and body.asset_id != asset_id:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"asset_id in the body ({body.asset_id}) differs from the path ({asset_id})",
        )
    if len(body.windows) > MAX_BASELINE_WINDOWS:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{len(body.windows)} windows; a baseline takes at most {MAX_BASELINE_WINDOWS}",
        )
    needed = min_windows(body.false_alarm_rate)
    if len(body.windows) < needed:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{len(body.windows)} windows are too few for a false-alarm rate of"
            f" {body.false_alarm_rate:g}: send at least {needed} healthy windows, or accept a"
            " higher rate",
        )

    try:  # history points up to the last healthy window count as baseline; none without a time
        until = 0.0 if body.measured_at is None else measurement_time(body.measured_at, time.time())
    except InvalidInputError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc

    def fit() -> tuple[StoredBaseline, StoredHealthBaseline | None]:
        result = predictor.predict(body.windows, body.sample_rate_hz, body.units)
        card = result.model.card
        baseline = AnomalyBaseline.fit(
            result.prediction.embedding, body.false_alarm_rate, source=card.sha256
        )
        return StoredBaseline(
            tenant=key.tenant,
            asset_id=asset.asset_id,
            model_sha256=card.sha256,
            model_version=card.label,
            document=baseline.to_json(),
            windows=len(body.windows),
            false_alarm_rate=body.false_alarm_rate,
            fitted_at=time.time(),
        ), _health(key.tenant, asset.asset_id, body, until)

    try:
        stored, health = await anyio.to_thread.run_sync(fit)
    except ModelNotLoadedError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    except (InvalidInputError, AnomalyError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    store.put_baseline(stored)
    if health is not None:
        store.put_health_baseline(health)
    return _out(stored, predictor, store.get_health_baseline(key.tenant, asset.asset_id))


@router.get(
    "/v1/baselines/{asset_id:anypath}",
    summary="An asset's healthy baseline",
    responses={**AUTH_ERRORS, 404: {"model": ErrorResponse, "description": "None fitted"}},
)
def get_baseline(
    asset_id: str,
    store: StoreDep,
    key: KeyDep,
    predictor: Annotated[Predictor, Depends(_predictor)],
) -> BaselineOut:
    """Describe the asset's baseline: which model fitted it, on how many windows, threshold."""
    asset = visible_asset(store, key, asset_id)
    stored = store.get_baseline(key.tenant, asset.asset_id)
    if stored is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no baseline fitted for '{asset_id}'")
    return _out(stored, predictor, store.get_health_baseline(key.tenant, asset.asset_id))


def _health(
    tenant: str, asset_id: str, body: BaselineRequest, until: float
) -> StoredHealthBaseline | None:
    """The health baseline of the same windows, or None when they give none (all constant)."""
    windows_g = to_units(stack_windows(body.windows), body.units, "g")
    try:
        return fit_from_windows(tenant, asset_id, windows_g, body.sample_rate_hz, until)
    except SignalError:
        return None
