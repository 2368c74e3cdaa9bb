"""Where predictions meet the maintenance rules: one small transaction per predicted asset.

:func:`run_rules` is called by the prediction routes after an asset's windows are predicted
and explained. It turns each window into a :class:`WindowObservation` (a time, the predicted
class, the failure probability, the ISO zone and anomaly score) and hands them to the state
store, which advances the rules' counters and opens or updates requests and their outbox rows
in one SQLite transaction. No network I/O: the delivery worker sends them later.

Window times: ``measured_at`` (the request's, default the time it was received) is the start
of the first window; with ``contiguous`` windows, window ``i`` starts ``i`` window lengths
later, otherwise every window of the request is taken at ``measured_at``.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

from serving.adapters import render
from serving.errors import ServingError
from serving.integration_types import AssetView, IntegrationStore, WindowObservation
from serving.metrics import ServingMetrics
from serving.rules import NORMAL_CLASS
from serving.schemas import PredictionResponse
from serving.state import Asset

logger = logging.getLogger(__name__)


def observations(
    response: PredictionResponse, measured_at: float, window_s: float, contiguous: bool
) -> list[WindowObservation]:
    """The rules' view of each predicted window of a response, in order."""
    found = []
    for i, window in enumerate(response.predictions):
        start = measured_at + (i * window_s if contiguous else 0.0)
        faults = {k: p for k, p in window.probabilities.items() if k != NORMAL_CLASS}
        evidence = window.evidence
        found.append(
            WindowObservation(
                start=start,
                end=start + window_s,
                predicted_class=window.predicted_class,
                failure_probability=window.failure_probability,
                top_fault=max(faults, key=faults.__getitem__) if faults else "unknown",
                iso_zone=None if evidence is None else evidence.iso_zone,
                anomaly_score=None if evidence is None else evidence.anomaly_score,
                model_version=response.model_version,
            )
        )
    return found


def asset_view(asset: Asset) -> AssetView:
    """What the payload adapters know of an asset (its ``external_ids``)."""
    return AssetView(asset.asset_id, asset.site, asset.description, dict(asset.attributes))


def run_rules(
    store: IntegrationStore,
    asset: Asset,
    response: PredictionResponse,
    *,
    measured_at: float | None,
    window_s: float,
    contiguous: bool,
    metrics: ServingMetrics,
    wake: Callable[[], None] | None = None,
) -> None:
    """Evaluate the tenant's rules on the response's windows; never fails the prediction.

    A store error is logged and counted (``fedpm_serving_rule_errors_total``): the caller still
    gets its prediction.
    """
    now = time.time()
    seen = observations(response, now if measured_at is None else measured_at, window_s, contiguous)
    try:
        touched = store.observe_windows(asset.tenant, asset_view(asset), seen, render, now)
    except (ServingError, sqlite3.Error):
        metrics.rule_errors.inc()
        logger.exception("rules of tenant %s not evaluated for %s", asset.tenant, asset.asset_id)
        return
    opened = [r for r in touched if r.opened_at == now]
    if opened:
        metrics.maintenance_requests.inc(len(opened))
        if wake is not None:
            wake()
