"""An asset's health indicator, state and remaining useful life, from its prediction history.

Each prediction for a registered asset is one measurement: the median over the request's
windows (first channel, in g) of the condition features of ``models.health_indicator`` is
stored with the request's ``measured_at`` as one history point (:mod:`serving.history`). Then,
as ``fedpm health`` does offline:

1. the health baseline is the asset's first :data:`HEALTH_BASELINE_POINTS` points (fitted once,
   when there are enough), unless one was fitted explicitly from healthy windows sent to
   ``PUT /v1/baselines/{asset_id}`` (:func:`fit_from_windows`);
2. the health indicator of every point is its distance from that baseline; an alarm is
   :data:`PERSISTENCE` consecutive points above the threshold after the baseline, latched;
3. once the alarm is up, ``models.rul.estimate_rul`` fits the exponential degradation trend
   from the alarm's run to the point and gives the remaining useful life in hours with its
   10-90 % interval, or no number and the reason (too few points, no rising trend, ...).

Points are compared like with like: only points with the request's sample rate and window
length count, since the features depend on both. Why one point per request rather than per
window, and what it costs: ``docs/serving-rul.md``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from models.errors import SignalError
from models.health_indicator import (
    HealthBaseline,
    HealthState,
    condition_feature_rows,
    first_alarm_index,
    fit_baseline,
    health_states,
)
from models.rul import estimate_rul
from serving.errors import InvalidInputError
from serving.history import HistoryPoint, Series, StoredHealthBaseline
from serving.state import StateStore

HEALTH_BASELINE_POINTS = 20
"""History points the baseline is fitted from when none was given (``fedpm health`` uses 20)."""
FALSE_ALARM_RATE = 0.01
"""Per-point probability that a healthy point exceeds the alarm threshold."""
PERSISTENCE = 3
"""Consecutive points above the threshold that raise the alarm."""
FAILURE_FACTOR = 1000.0
"""Failure threshold as a multiple of the alarm threshold (``fedpm health --failure-factor``)."""
INTERVAL = (0.1, 0.9)
"""Quantiles of the RUL interval."""
MAX_FUTURE_SKEW_S = 300.0
"""How far ``measured_at`` may lie ahead of the server's clock (clock skew), s."""

Source = Literal["history", "windows"]


class RemainingUsefulLife(BaseModel):
    """The asset's health after this measurement, and its remaining useful life if known."""

    measured_at: datetime = Field(description="Time of this measurement (UTC).")
    state: HealthState | None = Field(
        description="'baseline' (still learning the healthy level), 'normal', 'warning' (above "
        "the alarm threshold, not yet persistently) or 'alarm' (latched); null when this "
        "measurement could not be assessed (see reason)."
    )
    health_indicator: float | None = Field(
        description="Distance from the asset's healthy baseline, in units of its own spread "
        "(about 2 while healthy); null while the baseline is being collected."
    )
    alarm_threshold: float | None = Field(description="Indicator level of a warning.")
    failure_threshold: float | None = Field(
        description=f"Indicator level deemed failure: {FAILURE_FACTOR:g} x the alarm threshold."
    )
    alarm_at: datetime | None = Field(description="When the alarm was first raised.")
    rul_hours: float | None = Field(description="Remaining useful life, median, hours.")
    rul_lower_hours: float | None = Field(description="Lower end of the interval, hours.")
    rul_upper_hours: float | None = Field(
        description="Upper end of the interval, hours; null when unbounded (see reason)."
    )
    interval: list[float] = Field(description="Quantiles of the interval.")
    points_used: int | None = Field(description="History points the RUL estimate used.")
    history_points: int = Field(description="Comparable history points stored for the asset.")
    baseline_points: int | None = Field(description="Points (or windows) the baseline holds.")
    baseline_source: Source | None = Field(
        description="'history': the asset's first points; 'windows': PUT /v1/baselines."
    )
    reason: str | None = Field(description="Why a number is missing, for a person.")


def measurement_time(measured_at: datetime | None, received_at: float) -> float:
    """Unix time of a measurement: ``measured_at``, or the receive time when it is absent.

    Raises
    ------
    InvalidInputError
        A time before 1970, or more than :data:`MAX_FUTURE_SKEW_S` ahead of ``received_at``.
    """
    if measured_at is None:
        return received_at
    try:
        stamp = measured_at.timestamp()
    except (OverflowError, ValueError) as exc:
        raise InvalidInputError(f"measured_at {measured_at.isoformat()} is out of range") from exc
    if stamp < 0:
        raise InvalidInputError(f"measured_at {measured_at.isoformat()} is before 1970")
    if stamp > received_at + MAX_FUTURE_SKEW_S:
        ahead = stamp - received_at
        raise InvalidInputError(
            f"measured_at {measured_at.isoformat()} is {ahead:.0f} s ahead of the server's clock"
            f" (at most {MAX_FUTURE_SKEW_S:g} s of skew is accepted): check the sender's clock"
            " and time zone"
        )
    return stamp


def request_features(windows_g: npt.NDArray[np.float64], fs: float) -> tuple[float, ...] | None:
    """Median over windows (first channel, g at ``fs`` Hz) of their condition features.

    None when no window has features (every one constant, or shorter than 64 samples).
    """
    if windows_g.shape[-1] < 64:
        return None
    features, usable = condition_feature_rows(windows_g[:, 0, :], fs)
    if not usable.any():
        return None
    return tuple(float(v) for v in np.median(features[usable], axis=0))


def baseline_to_json(baseline: HealthBaseline) -> str:
    """JSON document of a health baseline (arrays as lists)."""
    return json.dumps(
        {
            "center": baseline.center.tolist(),
            "scale": baseline.scale.tolist(),
            "precision": baseline.precision.tolist(),
            "shrinkage": baseline.shrinkage,
            "threshold": baseline.threshold,
            "typical": baseline.typical,
            "loo_indicator": baseline.loo_indicator.tolist(),
            "excluded": list(baseline.excluded),
            "false_alarm_rate": baseline.false_alarm_rate,
        }
    )


def baseline_from_json(document: str) -> HealthBaseline:
    """The health baseline a :func:`baseline_to_json` document holds."""
    d = json.loads(document)
    return HealthBaseline(
        center=np.asarray(d["center"], dtype=np.float64),
        scale=np.asarray(d["scale"], dtype=np.float64),
        precision=np.asarray(d["precision"], dtype=np.float64),
        shrinkage=float(d["shrinkage"]),
        threshold=float(d["threshold"]),
        typical=float(d["typical"]),
        loo_indicator=np.asarray(d["loo_indicator"], dtype=np.float64),
        excluded=tuple(int(i) for i in d["excluded"]),
        false_alarm_rate=float(d["false_alarm_rate"]),
    )


def fit_from_windows(
    tenant: str,
    asset_id: str,
    windows_g: npt.NDArray[np.float64],
    fs: float,
    until: float,
) -> StoredHealthBaseline:
    """A health baseline from healthy windows (one point per window), as PUT /v1/baselines.

    Raises
    ------
    SignalError
        Fewer than 8 windows with features, or features the fit cannot use.
    """
    features, usable = condition_feature_rows(windows_g[:, 0, :], fs)
    if not usable.any():
        raise SignalError("no window has condition features (all constant)")
    baseline = fit_baseline(features[usable], FALSE_ALARM_RATE)
    return StoredHealthBaseline(
        tenant=tenant,
        asset_id=asset_id,
        source="windows",
        sample_rate_hz=fs,
        window_samples=int(windows_g.shape[-1]),
        points=int(usable.sum()),
        until=until,
        document=baseline_to_json(baseline),
        fitted_at=time.time(),
    )


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _utc(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


@dataclass(frozen=True)
class _Answer:
    """Fields shared by every answer about one point."""

    measured_at: float
    history_points: int
    baseline: StoredHealthBaseline | None

    def build(self, reason: str | None, **fields: object) -> RemainingUsefulLife:
        values: dict[str, object] = {
            "state": None,
            "health_indicator": None,
            "alarm_threshold": None,
            "failure_threshold": None,
            "alarm_at": None,
            "rul_hours": None,
            "rul_lower_hours": None,
            "rul_upper_hours": None,
            "points_used": None,
            **fields,
        }
        return RemainingUsefulLife.model_validate(
            {
                **values,
                "measured_at": _utc(self.measured_at),
                "interval": list(INTERVAL),
                "history_points": self.history_points,
                "baseline_points": None if self.baseline is None else self.baseline.points,
                "baseline_source": None if self.baseline is None else self.baseline.source,
                "reason": reason,
            }
        )


def track(
    store: StateStore,
    tenant: str,
    asset_id: str,
    windows_g: npt.NDArray[np.float64],
    fs: float,
    measured_at: float,
    received_at: float,
) -> RemainingUsefulLife:
    """Add this request's measurement to the asset's history and assess it.

    ``windows_g`` is ``(windows, channels, samples)`` in g at ``fs`` Hz; times are Unix s.
    Store: one transaction (insert, select, a delete when thinning) and one select; a second
    transaction once, when the baseline is fitted from the history.
    """
    features = request_features(windows_g, fs)
    if features is None:
        answer = _Answer(measured_at, 0, None)
        return answer.build("no condition features: every window is constant")
    samples = int(windows_g.shape[-1])
    point = HistoryPoint(
        tenant, asset_id, measured_at, received_at, fs, samples, len(windows_g), features
    )
    series = store.add_history_point(point)
    count = len(series.measured_at)
    stored = store.get_health_baseline(tenant, asset_id)
    answer = _Answer(measured_at, count, stored)
    if stored is None:
        if count < HEALTH_BASELINE_POINTS:
            return answer.build(
                f"not enough history: {count} of {HEALTH_BASELINE_POINTS} baseline"
                " points (or fit a baseline with PUT /v1/baselines/{asset_id})",
                state="baseline",
            )
        try:
            fitted = fit_baseline(series.features[:HEALTH_BASELINE_POINTS], FALSE_ALARM_RATE)
        except SignalError as exc:
            return answer.build(f"no health baseline: {exc}", state="baseline")
        stored = StoredHealthBaseline(
            tenant=tenant,
            asset_id=asset_id,
            source="history",
            sample_rate_hz=fs,
            window_samples=samples,
            points=HEALTH_BASELINE_POINTS,
            until=float(series.measured_at[HEALTH_BASELINE_POINTS - 1]),
            document=baseline_to_json(fitted),
            fitted_at=time.time(),
        )
        store.put_health_baseline(stored)
        answer = _Answer(measured_at, count, stored)
    if (stored.sample_rate_hz, stored.window_samples) != (fs, samples):
        return answer.build(
            f"the health baseline was fitted on {stored.window_samples}-sample windows at"
            f" {stored.sample_rate_hz:g} Hz and this request sends {samples} at {fs:g} Hz; the"
            " features are not comparable: send windows like the baseline's, or fit it again"
            " with PUT /v1/baselines/{asset_id}"
        )
    try:
        return _assess_point(series, measured_at, baseline_from_json(stored.document), answer)
    except SignalError as exc:  # a degenerate baseline (e.g. identical points): say so, no 500
        return answer.build(f"no health assessment: {exc}")


def _assess_point(
    series: Series, measured_at: float, baseline: HealthBaseline, answer: _Answer
) -> RemainingUsefulLife:
    """State and RUL of the point at ``measured_at`` from the history up to it (pure)."""
    until = answer.baseline.until if answer.baseline is not None else -math.inf
    times_s = series.measured_at
    now = int(np.searchsorted(times_s, measured_at))
    hi = baseline.indicator(series.features)
    n_baseline = int(np.sum(times_s <= until))
    threshold = float(baseline.threshold)
    failure = FAILURE_FACTOR * threshold
    seen = hi[: now + 1]
    states = health_states(seen, threshold, PERSISTENCE, min(n_baseline, now + 1))
    state = states[now]
    common: dict[str, object] = {
        "state": state,
        "health_indicator": _finite(float(hi[now])),
        "alarm_threshold": _finite(threshold),
        "failure_threshold": _finite(failure),
    }
    if state == "baseline":
        return answer.build("this measurement is part of the health baseline", **common)
    if state == "normal":
        return answer.build(
            f"no degradation trend: health indicator {hi[now]:.2f} within its baseline"
            f" (alarm threshold {threshold:.2f})",
            **common,
        )
    if state == "warning":
        return answer.build(
            f"above the alarm threshold ({hi[now]:.2f} > {threshold:.2f}) but not yet in"
            f" {PERSISTENCE} consecutive measurements: no alarm, no RUL",
            **common,
        )
    alarm = first_alarm_index(seen, threshold, PERSISTENCE, start=min(n_baseline, now + 1))
    assert alarm is not None  # the state is 'alarm'
    start = alarm - PERSISTENCE + 1
    hours = (times_s - times_s[0]) / 3600.0
    estimate = estimate_rul(
        hours[: now + 1], seen, start, failure, baseline.typical, now=now, interval=INTERVAL
    )
    common["alarm_at"] = _utc(float(times_s[alarm]))
    if estimate.rul is None:
        return answer.build(f"no RUL: {estimate.reason}", **common)
    upper = _finite(estimate.upper)
    reason = None
    if estimate.rul == 0.0:
        reason = (
            f"the health indicator ({hi[now]:.4g}) has reached the failure threshold"
            f" ({failure:.4g}, {FAILURE_FACTOR:g} x the alarm threshold): failure is due now"
        )
    elif upper is None:
        share = round((1 - INTERVAL[1]) * 100)
        reason = (
            f"no upper bound: over {share} % of the trend's posterior draws never reach the"
            " failure threshold"
        )
    return answer.build(
        reason,
        **common,
        rul_hours=_finite(estimate.rul),
        rul_lower_hours=_finite(estimate.lower),
        rul_upper_hours=upper,
        points_used=estimate.n_points,
    )
