"""Remaining useful life from a health indicator's exponential trend.

The degradation model reliability engineers use for bearings (Gebraeel, Lawley, Li & Ryan,
IIE Trans. 37(6), 2005):

    HI(t) = phi + theta * exp(beta * t + sigma * W(t)),    W a standard Wiener process

``phi`` is the healthy level of the indicator (known from the baseline), so
``y(t) = log(HI - phi)`` is a Wiener process with drift ``beta``: its increments over ``dt``
are ``N(beta dt, sigma**2 dt)``. ``beta`` is fitted by (weighted) least squares on the
increments of ``y`` since the alarm, ``sigma`` from their residuals. Failure is the indicator
reaching a failure threshold ``D``: the remaining useful life is the first passage of ``y``
from its current value to ``log(D - phi)``, inverse-Gaussian distributed with mean
``gap / beta`` and shape ``gap**2 / sigma**2`` (Si, Wang, Hu & Zhou, EJOR 213(1), 2011).

The interval is Bayesian: with the non-informative prior ``p(beta, sigma) ~ 1 / sigma`` the
posterior is normal-inverse-chi-square (Gelman et al., *Bayesian Data Analysis*, 3rd ed.,
section 3.2). Each posterior draw of ``(beta, sigma)`` gives one draw of the first-passage
time; the point estimate is their median, the interval their quantiles (10 % and 90 % by
default). Draws with a drift that is not positive count as never failing.

Why a Wiener process rather than independent noise around a fitted curve: real degradation
paths wander, and an exponential fitted with independent errors gives intervals far narrower
than the actual error (see ``docs/health-and-rul.md``); with increments, the spread grows
with the horizon as it should.

Times are in the series' own units (hours, records, ...); so are the results.

Examples
--------
An indicator that doubles every 10 h above a healthy level of 1 reaches 65 at t = 60 h; seen
up to t = 40 h, about 20 h remain:

>>> import numpy as np
>>> t = np.arange(0.0, 41.0, 2.0)
>>> hi = 1.0 + 2.0 ** (t / 10.0)
>>> est = estimate_rul(t, hi, start=0, failure_threshold=65.0, phi=1.0)
>>> round(est.rul, 1)
20.0
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.errors import SignalError

__all__ = ["MIN_POINTS", "ExponentialFit", "RulEstimate", "estimate_rul", "fit_exponential"]

FloatArray = npt.NDArray[np.float64]

MIN_POINTS = 5  # two parameters and a noise variance need a few degrees of freedom
_NEVER = 1e300  # stands for an infinite life inside the quantile computation


@dataclass(frozen=True)
class ExponentialFit:
    """Fit of ``log(HI - phi)`` as a Wiener process with drift, anchored at its last point.

    Attributes
    ----------
    phi : float
        Healthy level of the indicator (fixed, not fitted).
    log_theta : float
        ``log(HI - phi)`` at ``t = t_ref``, the current state.
    beta : float
        Drift (growth rate of ``log(HI - phi)``) per time unit.
    sigma : float
        Diffusion of ``log(HI - phi)`` per square-root time unit (0 for an exact exponential).
    t_ref : float
        Time of the last fitted point.
    n_points : int
        Number of points fitted (one more than the increments).
    span : float
        Time from the first to the last fitted point.
    """

    phi: float
    log_theta: float
    beta: float
    sigma: float
    t_ref: float
    n_points: int
    span: float

    def predict(self, t: npt.ArrayLike) -> FloatArray:
        """Median path ``phi + exp(log_theta + beta * (t - t_ref))`` at times `t`."""
        rel = np.asarray(t, dtype=np.float64) - self.t_ref
        return np.asarray(self.phi + np.exp(self.log_theta + self.beta * rel), dtype=np.float64)


@dataclass(frozen=True)
class RulEstimate:
    """Remaining useful life at `time`, or None with the `reason` it was not estimated.

    ``rul``, ``lower`` and ``upper`` are in the series' time units; ``upper`` is ``inf`` when
    more than ``1 - interval[1]`` of the posterior draws never reach the failure threshold.
    """

    time: float
    rul: float | None
    lower: float | None
    upper: float | None
    interval: tuple[float, float]
    failure_threshold: float
    n_points: int
    reason: str | None = None
    fit: ExponentialFit | None = None

    @property
    def failure_time(self) -> float | None:
        """Predicted failure time, ``time + rul``."""
        return None if self.rul is None else self.time + self.rul


def _series(times: npt.ArrayLike, indicator: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    t = np.asarray(times, dtype=np.float64)
    hi = np.asarray(indicator, dtype=np.float64)
    if t.ndim != 1 or t.shape != hi.shape or t.size == 0:
        raise SignalError("times and indicator must be non-empty 1-D arrays of equal length")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(hi))):
        raise SignalError("times and indicator must be finite")
    if np.any(np.diff(t) <= 0):
        raise SignalError("times must be strictly increasing")
    return t, hi


def _finite(name: str, value: float) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (ok and math.isfinite(value)):
        raise SignalError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def fit_exponential(times: npt.ArrayLike, indicator: npt.ArrayLike, phi: float) -> ExponentialFit:
    """Fit the model to the points whose indicator exceeds `phi`.

    The drift is the least-squares estimate on the increments ``dy`` of ``y = log(HI - phi)``
    weighted by ``1 / dt`` (``sum dy / sum dt``); ``sigma**2`` is the weighted residual mean
    square ``sum (dy - beta dt)**2 / dt / (m - 1)`` over the ``m`` increments.

    Raises
    ------
    SignalError
        On mismatched or non-finite input, or fewer than 3 points above `phi`.

    Examples
    --------
    >>> import numpy as np
    >>> fit = fit_exponential([0.0, 1.0, 2.0, 3.0], 1.0 + np.exp([0.0, 0.5, 1.0, 1.5]), 1.0)
    >>> round(fit.beta, 6), round(fit.sigma, 6), round(fit.log_theta, 6)
    (0.5, 0.0, 1.5)
    """
    t, hi = _series(times, indicator)
    phi = _finite("phi", phi)
    above = hi > phi
    if int(above.sum()) < 3:
        raise SignalError("the exponential fit needs >= 3 points above phi")
    t, y = t[above], np.log(hi[above] - phi)
    dt, dy = np.diff(t), np.diff(y)
    span = float(dt.sum())
    beta = float(dy.sum()) / span
    sigma2 = float(np.sum((dy - beta * dt) ** 2 / dt)) / (dy.size - 1)
    return ExponentialFit(phi, float(y[-1]), beta, math.sqrt(sigma2), float(t[-1]), t.size, span)


def _refuse(
    time: float, reason: str, threshold: float, interval: tuple[float, float], n: int
) -> RulEstimate:
    return RulEstimate(time, None, None, None, interval, threshold, n, reason)


def estimate_rul(
    times: npt.ArrayLike,
    indicator: npt.ArrayLike,
    start: int,
    failure_threshold: float,
    phi: float,
    now: int | None = None,
    min_points: int = MIN_POINTS,
    interval: tuple[float, float] = (0.1, 0.9),
    n_draws: int = 4000,
    seed: int = 0,
) -> RulEstimate:
    """Estimate the remaining useful life at record `now` from records ``start..now``.

    Parameters
    ----------
    times : array_like
        Strictly increasing record times, in any unit (the results are in that unit).
    indicator : array_like
        Health indicator of each record.
    start : int
        First record of the degradation trend (e.g. the alarm, or the start of its run).
    failure_threshold : float
        Indicator value at which the asset is deemed failed, above `phi`.
    phi : float
        Healthy level of the indicator (e.g. `HealthBaseline.typical`).
    now : int, optional
        Index of the current record; the last one by default. It must lie above `phi`.
    min_points : int, optional
        Fewest points above `phi` in ``start..now`` to estimate from (at least 3).
    interval : tuple of float, optional
        Lower and upper posterior quantiles reported, ``0 < low < 0.5 < high < 1``.
    n_draws : int, optional
        Posterior draws (at least 100).
    seed : int, optional
        Seed of the draws, for reproducible intervals.

    Returns
    -------
    RulEstimate
        With ``rul`` None and a `reason` when there are too few points, the current record is
        at the healthy level, or the trend does not rise; ``rul = 0`` when the indicator is
        already at or above `failure_threshold`.

    Raises
    ------
    SignalError
        On invalid arguments.
    """
    t, hi = _series(times, indicator)
    threshold = _finite("failure_threshold", failure_threshold)
    phi = _finite("phi", phi)
    last = t.size - 1 if now is None else now
    if not (0 <= start <= last < t.size) or min_points < 3 or n_draws < 100:
        raise SignalError(f"need 0 <= start <= now < {t.size}, min_points >= 3, n_draws >= 100")
    low, high = interval
    if not 0.0 < low < 0.5 < high < 1.0:
        raise SignalError(f"interval must be (low, high) with 0 < low < 0.5 < high < 1: {interval}")
    if threshold <= phi:
        raise SignalError(f"failure_threshold ({threshold}) must exceed phi ({phi})")
    t_now = float(t[last])
    window_t, window_hi = t[start : last + 1], hi[start : last + 1]
    n = int(np.sum(window_hi > phi))
    if n < min_points:
        reason = f"{n} post-alarm points above the healthy level, {min_points} needed"
        return _refuse(t_now, reason, threshold, interval, n)
    if hi[last] >= threshold:
        return RulEstimate(t_now, 0.0, 0.0, 0.0, interval, threshold, n)
    if hi[last] <= phi:
        reason = "the current record is back at the healthy level"
        return _refuse(t_now, reason, threshold, interval, n)
    fit = fit_exponential(window_t, window_hi, phi)
    if fit.beta <= 0.0:
        reason = f"the indicator is not rising since the alarm (beta = {fit.beta:.3g})"
        return RulEstimate(t_now, None, None, None, interval, threshold, n, reason, fit)
    draws = _first_passage_draws(fit, math.log(threshold - phi) - fit.log_theta, n_draws, seed)
    # Never-failing draws (inf) are capped for np.quantile, which interpolates inf into NaN.
    quantiles = np.quantile(np.minimum(draws, _NEVER), [low, 0.5, high])
    lo, mid, up = (math.inf if q >= _NEVER else float(q) for q in quantiles)
    if mid == math.inf:
        reason = "most posterior draws of the trend never reach the failure threshold"
        return RulEstimate(t_now, None, None, None, interval, threshold, n, reason, fit)
    return RulEstimate(t_now, mid, lo, up, interval, threshold, n, None, fit)


def _first_passage_draws(fit: ExponentialFit, gap: float, n_draws: int, seed: int) -> FloatArray:
    """Posterior-predictive draws of the time for ``log(HI - phi)`` to rise by `gap` > 0."""
    rng = np.random.default_rng(seed)
    dof = fit.n_points - 2  # increments minus the fitted drift
    if fit.sigma == 0.0:
        return np.full(n_draws, gap / fit.beta)
    sigma2 = fit.sigma**2 * dof / rng.chisquare(dof, n_draws)
    beta = fit.beta + np.sqrt(sigma2 / fit.span) * rng.standard_normal(n_draws)
    rising = beta > 0.0
    out = np.full(n_draws, math.inf)
    out[rising] = rng.wald(gap / beta[rising], gap**2 / sigma2[rising])
    return out
