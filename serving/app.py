"""The failure-prediction REST API that ERP/CMMS systems call.

Routes (operation ids in brackets stay stable for generated clients)::

    POST /v1/predictions           [create_predictions]  classify windows of raw acceleration
    POST /v1/predictions/binary    [create_predictions_binary]  the same, raw float32 body
    GET  /v1/models/current        [get_current_model]   the served model's public card
    GET  /v1/models                [list_models]         registry versions, newest first, paged
    GET  /v1/models/{version}      [get_model]           one version's public card
    PUT  /v1/assets/{asset_id}     [put_asset]           register or update an asset
    GET  /v1/assets/{asset_id}     [get_asset]           one asset
    GET  /v1/assets                [list_assets]         the assets the key can see
    PUT  /v1/baselines/{asset_id}  [fit_baseline]        fit an asset's healthy baseline
    GET  /v1/baselines/{asset_id}  [get_baseline]        describe it
    PUT  /v1/webhooks/{webhook_id} [put_webhook]         create or replace a signed webhook
    GET  /v1/webhooks/{webhook_id} [get_webhook]         one webhook (never its secret)
    GET  /v1/webhooks              [list_webhooks]       the tenant's webhooks
    DELETE /v1/webhooks/{id}       [delete_webhook]      delete one no rule targets
    PUT  /v1/rules/{rule_id}       [put_rule]            create or replace a maintenance rule
    GET  /v1/rules/{rule_id}       [get_rule]            one rule
    GET  /v1/rules                 [list_rules]          the tenant's rules
    DELETE /v1/rules/{rule_id}     [delete_rule]         delete one
    GET  /v1/maintenance-requests  [list_maintenance_requests]  requests rules opened
    GET  /v1/maintenance-requests/{id}        [get_maintenance_request]  one request
    POST /v1/maintenance-requests/{id}/close  [close_maintenance_request]  close; label the span
    GET  /v1/labels                [list_labels]         labels of closed requests, by cursor
    GET  /v1/dead-letters          [list_dead_letters]   deliveries given up on
    POST /v1/dead-letters/{id}/retry  [retry_dead_letter]  queue one again
    GET  /health                   [get_health]          liveness; says whether a model is loaded
    GET  /ready                    [get_ready]           200 once a verified model is loaded
    GET  /metrics                  [get_metrics]         Prometheus text format (serving.metrics)

Every ``/v1`` route needs an API key (:mod:`serving.auth`): 401 without a valid one, 403
outside its permissions or sites, 429 over its rate. The model is loaded from the registry in
the lifespan, never at import. Domain errors become HTTP errors here only: invalid input 422,
too many windows 422, unknown asset 422, ``measured_at`` ahead of the clock 422, body too
large 413, no model 503.

A prediction naming an asset is also one point of the asset's condition history, dated by
``measured_at`` (the receive time by default): its response adds the ISO zone, anomaly score
and bearing evidence (:mod:`serving.explain`, docs/serving-explanations.md) and the asset's
health state and remaining useful life (:mod:`serving.health`, docs/serving-rul.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import AwareDatetime, BaseModel, Field

from models.registry import FileRegistry
from models.signing import load_public_key
from serving import assets_api, baselines_api, models_api, webhooks_api, workorders_api
from serving.auth import (
    AUTH_ERRORS,
    KeyDep,
    RateLimiter,
    check_site,
    openapi_with_api_keys,
    require,
)
from serving.delivery import DeliveryWorker, policy_from
from serving.errors import InvalidInputError, ModelNotLoadedError
from serving.explain import explain, load_baseline
from serving.health import measurement_time, track
from serving.inputs import Windows, stack_windows, to_units
from serving.integration import run_rules
from serving.lifecycle import RegistryWatcher
from serving.metrics import MetricsMiddleware, ServingMetrics
from serving.middleware import BodySizeLimitMiddleware
from serving.predictor import LoadedModel, Predictor
from serving.routing import JsonBodyRoute
from serving.schemas import (
    WINDOW_TAGS,
    ErrorResponse,
    FieldError,
    HealthResponse,
    ModelPublic,
    PredictionRequest,
    PredictionResponse,
    Units,
)
from serving.settings import ServeSettings, get_settings
from serving.state import ApiKey, Permission, SqliteStateStore, StateStore

logger = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 20
"""Validation errors listed in one response; a batch full of NaN would otherwise list all."""


def _package_version() -> str:
    try:
        return version("fedpm")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


# --- dependencies ---------------------------------------------------------------------------


async def get_predictor(request: Request) -> Predictor:
    """The application's predictor (it may hold no model yet)."""
    predictor: Predictor = request.app.state.predictor
    return predictor


PredictorDep = Annotated[Predictor, Depends(get_predictor)]


async def get_loaded_model(predictor: PredictorDep) -> LoadedModel:
    """The model now served; ``503`` when none is loaded."""
    try:
        return predictor.current()
    except ModelNotLoadedError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc


LoadedModelDep = Annotated[LoadedModel, Depends(get_loaded_model)]

# --- routes ---------------------------------------------------------------------------------

_ERRORS: dict[int | str, dict[str, Any]] = {
    status.HTTP_503_SERVICE_UNAVAILABLE: {"model": ErrorResponse, "description": "No model"},
}
_AUTHED_ERRORS: dict[int | str, dict[str, Any]] = {**_ERRORS, **AUTH_ERRORS}
_INPUT_ERRORS: dict[int | str, dict[str, Any]] = {
    **_AUTHED_ERRORS,
    status.HTTP_413_CONTENT_TOO_LARGE: {"model": ErrorResponse, "description": "Body too large"},
    status.HTTP_422_UNPROCESSABLE_CONTENT: {"model": ErrorResponse, "description": "Bad input"},
}

router = APIRouter(route_class=JsonBodyRoute)


def _predict(
    request: Request,
    windows: Windows,
    sample_rate_hz: float,
    units: str,
    asset_id: str | None,
    contiguous: bool,
    measured_at: datetime | None,
    key: ApiKey,
) -> PredictionResponse:
    """Predict (and explain, for an asset): the part shared by the JSON and binary routes."""
    predictor, settings, store = _services(request)
    received_at = time.time()
    try:
        measured = measurement_time(measured_at, received_at)
    except InvalidInputError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    asset = None
    if asset_id is not None:
        asset = store.get_asset(key.tenant, asset_id)
        if asset is None:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"unknown asset '{asset_id}': register it with PUT /v1/assets/"
                f"{asset_id} first, or leave asset_id out",
            )
        check_site(key, asset.site)
    limit = settings.max_windows_per_request
    if len(windows) > limit:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{len(windows)} windows in one request; the limit is {limit}."
            " Split the batch into several requests.",
        )
    try:
        result = predictor.predict(windows, sample_rate_hz, units)
    except ModelNotLoadedError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    except InvalidInputError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc
    metrics: ServingMetrics = request.app.state.metrics
    metrics.windows.inc(len(windows))
    if asset is None:
        return PredictionResponse.from_result(result, asset_id=asset_id)
    card = result.model.card
    baseline, note = load_baseline(
        store.get_baseline(key.tenant, asset.asset_id), card.sha256, card.label
    )
    windows_g = to_units(stack_windows(windows), units, "g")
    found = explain(
        asset,
        windows_g,
        sample_rate_hz,
        result.prediction.embedding,
        baseline,
        note,
        contiguous=contiguous,
    )
    rul = track(store, key.tenant, asset.asset_id, windows_g, sample_rate_hz, measured, received_at)
    response = PredictionResponse.from_result(result, asset_id, (asset, found), rul)
    worker: DeliveryWorker | None = getattr(request.app.state, "delivery_worker", None)
    run_rules(  # maintenance rules: one small transaction, no network I/O (serving.integration)
        store,
        asset,
        response,
        measured_at=measured,
        window_s=windows_g.shape[-1] / sample_rate_hz,
        contiguous=contiguous,
        metrics=metrics,
        wake=None if worker is None else worker.wake,
    )
    return response


#: Samples a request may hold to be scored on the event loop rather than in a worker thread.
#: Handing a request to the thread pool and back costs about a millisecond on a busy 2-core
#: host, several times the onnxruntime call for one 2,048-sample window (0.1-0.2 ms);
#: 65,536 samples (32 such windows) score in about 2 ms. Requests naming an asset always go
#: to a thread: they read and write the asset's history and rules in SQLite.
INLINE_MAX_SAMPLES = 65_536


def _services(request: Request) -> tuple[Predictor, ServeSettings, StateStore]:
    """The application's predictor, settings and state store.

    Read from the application here rather than declared as three dependencies: FastAPI
    resolves each dependency per request, a measurable share of a one-window prediction.
    """
    state = request.app.state
    return state.predictor, state.settings, state.state_store


def _sample_count(windows: Sequence[Any]) -> int:
    """Samples in JSON windows, each a list of samples or a list of channels of samples."""
    return sum(
        sum(len(c) for c in w) if w and isinstance(w[0], Sequence) else len(w) for w in windows
    )


async def _answer(inline: bool, predict: Callable[[], PredictionResponse]) -> PredictionResponse:
    """``predict()`` on the event loop when ``inline``, else in a worker thread."""
    if inline:
        return predict()
    return await anyio.to_thread.run_sync(predict)


@router.post(
    "/v1/predictions",
    tags=["predictions"],
    summary="Classify vibration windows",
    responses=_INPUT_ERRORS,
)
async def create_predictions(
    request: Request,
    payload: PredictionRequest,
    key: Annotated[ApiKey, Depends(require(Permission.PREDICT))],
) -> PredictionResponse:
    """Predict the failure class of each window with the current model.

    Windows at another sample rate than the model's are resampled when they cover the same
    duration; ``m/s^2`` samples are converted to ``g``. An ``asset_id`` must name an asset of
    the key's tenant on one of its sites. The response names the model version and sha256
    that answered.
    """
    return await _answer(
        payload.asset_id is None and _sample_count(payload.windows) <= INLINE_MAX_SAMPLES,
        partial(
            _predict,
            request,
            payload.windows,
            payload.sample_rate_hz,
            payload.units,
            payload.asset_id,
            payload.contiguous,
            payload.measured_at,
            key,
        ),
    )


class BinaryQuery(BaseModel):
    """The query of ``POST /v1/predictions/binary``: the body's shape and what it measures.

    One model rather than nine separate query parameters: FastAPI validates it in one pydantic
    call instead of resolving each parameter on its own (a measurable share of a one-window
    prediction, docs/serving-performance.md); the OpenAPI parameters are the same.
    """

    sample_rate_hz: float = Field(gt=0, le=1_000_000, allow_inf_nan=False)
    windows: int = Field(ge=1, le=100_000, description="Windows in the body.")
    samples: int = Field(ge=1, le=10_000_000, description="Samples per channel.")
    channels: int = Field(default=1, ge=1, le=16, description="Channels per window.")
    units: Units = "g"
    asset_id: str | None = Field(default=None, min_length=1, max_length=200)
    contiguous: bool = False
    measured_at: AwareDatetime | None = Field(
        default=None, description="When the windows were measured (ISO 8601 with a time zone)."
    )


_BINARY_BODY = {
    "requestBody": {
        "required": True,
        "description": "windows x channels x samples little-endian float32 values, window by "
        "window, channel by channel (C order)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post(
    "/v1/predictions/binary",
    tags=["predictions"],
    summary="Classify vibration windows sent as raw float32",
    responses={
        **_INPUT_ERRORS,
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE: {"model": ErrorResponse, "description": "Type"},
    },
    openapi_extra=_BINARY_BODY,
)
async def create_predictions_binary(
    request: Request,
    key: Annotated[ApiKey, Depends(require(Permission.PREDICT))],
    shape: Annotated[BinaryQuery, Query()],
) -> PredictionResponse:
    """Like ``create_predictions``, with the samples as a compact binary body.

    The body is ``windows * channels * samples`` little-endian float32 values (4 bytes each),
    in C order: window 0 channel 0, window 0 channel 1, ... It is about 5x smaller than the
    same windows as JSON and needs no number parsing. The shape is declared in the query, and a
    body of another length is refused with the length expected.
    """
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/octet-stream":
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            "send the samples as 'Content-Type: application/octet-stream' (raw little-endian"
            f" float32), not {media or 'no content type'!r}",
        )
    body = await request.body()
    windows, channels, samples = shape.windows, shape.channels, shape.samples
    expected = windows * channels * samples * 4
    if len(body) != expected:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"the body holds {len(body)} bytes; windows={windows} x channels={channels} x"
            f" samples={samples} float32 values are {expected} bytes",
        )
    x = np.frombuffer(body, dtype="<f4").reshape(windows, channels, samples)
    return await _answer(
        shape.asset_id is None and x.size <= INLINE_MAX_SAMPLES,
        partial(
            _predict,
            request,
            x.astype(np.float64),
            shape.sample_rate_hz,
            shape.units,
            shape.asset_id,
            shape.contiguous,
            shape.measured_at,
            key,
        ),
    )


@router.get(
    "/v1/models/current",
    tags=["models"],
    summary="The model now served",
    responses=_AUTHED_ERRORS,
)
async def get_current_model(model: LoadedModelDep, key: KeyDep) -> ModelPublic:
    """Return the public card of the model that answers predictions."""
    return ModelPublic.from_card(model.card)


@router.get("/health", tags=["health"], summary="Liveness")
async def get_health(predictor: PredictorDep) -> HealthResponse:
    """Answer ``200`` while the process runs, and say whether a model is loaded."""
    model = predictor.model
    return HealthResponse(
        status="ok",
        model_loaded=model is not None,
        model_version=None if model is None else model.card.label,
    )


@router.get("/ready", tags=["health"], summary="Readiness", responses=_ERRORS)
async def get_ready(model: LoadedModelDep) -> HealthResponse:
    """Answer ``200`` once a verified model is loaded, ``503`` before."""
    return HealthResponse(status="ready", model_loaded=True, model_version=model.card.label)


@router.get(
    "/metrics",
    tags=["health"],
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
def get_metrics(request: Request, predictor: PredictorDep) -> Response:
    """Requests, latency histograms, errors by kind, windows, and the model served."""
    metrics: ServingMetrics = request.app.state.metrics
    model = predictor.model
    metrics.set_model(
        None if model is None else model.card.label, None if model is None else model.card.sha256
    )
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


# --- error bodies ---------------------------------------------------------------------------


def _public_loc(loc: Sequence[Any]) -> list[str | int]:
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    if len(parts) > 2 and parts[0] == "windows" and parts[2] in WINDOW_TAGS:
        del parts[2]  # which window form pydantic tried ('windows', 3, 'single_channel', 17)
    return parts


def _loc_text(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text or "request body"


_NOT_AN_OBJECT = frozenset({"model_type", "model_attributes_type", "dict_type"})


def _describe(error: dict[str, Any]) -> tuple[list[str | int], str]:
    kind = error.get("type")
    if kind == "json_invalid":
        reason = error.get("ctx", {}).get("error", "")
        at = error["loc"][-1]
        where = f" (at character {at})" if isinstance(at, int) and at > 0 else ""
        return [], f"not valid JSON: {reason}{where}"
    loc = _public_loc(error.get("loc", ()))
    if not loc and kind in _NOT_AN_OBJECT:
        return [], "must be a JSON object, sent with 'Content-Type: application/json'"
    msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    return loc, msg


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 body for a request that fails schema validation, without echoing the input."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    fields = []
    for error in errors[:MAX_REPORTED_ERRORS]:
        loc, msg = _describe(error)
        fields.append(FieldError(loc=loc, msg=msg, type=str(error.get("type", "value_error"))))
    if fields:
        detail = f"{_loc_text(fields[0].loc)}: {fields[0].msg}"
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more problem(s))"
    else:
        detail = "invalid request"
    body = ErrorResponse(detail=detail, errors=fields)
    return JSONResponse(body.model_dump(), status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


# --- factory --------------------------------------------------------------------------------


def _operation_id(route: APIRoute) -> str:
    return route.name


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """Build the API; the model is loaded when the application starts (lifespan).

    Parameters
    ----------
    settings
        Settings to use; ``None`` reads them from the environment (:func:`get_settings`).
    """
    settings = settings or get_settings()
    predictor = Predictor()
    verify_key = (
        None if settings.model_verify_key is None else load_public_key(settings.model_verify_key)
    )
    metrics = ServingMetrics()
    state_store = SqliteStateStore(settings.state_path)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = RegistryWatcher(
            FileRegistry(settings.registry_dir),
            predictor,
            metrics,
            poll_s=settings.model_poll_s,
            onnx_threads=settings.onnx_threads,
            verify_key=verify_key,
        )
        await watcher.check()  # the first load, before the first request
        if predictor.model is None:
            logger.warning("starting without a model, not ready")
        task = asyncio.create_task(watcher.run()) if settings.model_poll_s > 0 else None
        delivery = None
        if settings.delivery_enabled:  # webhook outbox (serving.delivery)
            app.state.delivery_worker = DeliveryWorker(
                state_store, policy_from(settings), metrics, egress=settings.egress_policy()
            )
            delivery = asyncio.create_task(app.state.delivery_worker.run())
        # Everything loaded so far (torch, onnx, pydantic schemas, the model) lives as long as
        # the process: move it out of the cyclic collector's generations, so that a collection
        # during a request does not walk it (the slowest 1 % of one-window predictions,
        # docs/serving-performance.md).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if delivery is not None:
                delivery.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await delivery
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            state_store.close()

    app = FastAPI(
        title="FedPM failure prediction",
        version=_package_version(),
        summary="Failure-class predictions from raw vibration windows, for ERP/CMMS systems.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    app.state.predictor = predictor
    app.state.state_store = state_store
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
    app.state.metrics = metrics
    app.include_router(router)
    app.include_router(assets_api.router)
    app.include_router(baselines_api.router)
    app.include_router(models_api.router)  # after router: /v1/models/current wins
    app.include_router(webhooks_api.router)
    app.include_router(workorders_api.router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    # outermost, so answers of the body-size limit (413) are counted too
    routes = [
        *router.routes,
        *assets_api.router.routes,
        *baselines_api.router.routes,
        *models_api.router.routes,
        *webhooks_api.router.routes,
        *workorders_api.router.routes,
    ]
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)
    app.openapi = openapi_with_api_keys(app, routes)  # type: ignore[method-assign]
    return app
