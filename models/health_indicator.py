"""Health indicator of one asset against its own healthy baseline, with a persistent alarm.

A time-ordered series of records (1-D acceleration in g, sampled at ``fs``) is reduced to four
condition features per record (`FEATURE_NAMES`). The first ``N`` records, taken as healthy,
give the baseline: isolated one-record transients (knocks) are left out, the rest give the
mean, standard deviation and a Ledoit-Wolf shrunk covariance of the features (Ledoit & Wolf,
J. Multivar. Anal. 88(2), 2004). The health indicator of a record is its Mahalanobis distance
from that baseline, in units of the baseline's own spread (about ``sqrt(4) = 2`` while
healthy, growing with damage). Damage raises all four features, so a feature below its healthy
mean (a lighter load, a quieter sensor) counts at most two spreads: the indicator is
one-sided in effect and does not alarm when the machine runs more gently. (Clipping at one
spread instead distorts the healthy distribution enough to double the false-alarm rate.)

The alarm threshold comes from the baseline's own spread at a chosen per-record false-alarm
rate: the leave-one-out distances of the baseline records (each scored against a baseline
fitted without it, so they are out-of-sample draws) are fitted with a gamma law (a scaled
chi-square when the features are Gaussian), and the threshold is its ``1 - rate`` quantile.
An alarm is raised only after ``k`` consecutive records above the threshold
(`alarm_indices`).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> healthy = rng.normal([1.0, 3.0, 4.0, 0.1], 0.01, size=(20, 4))
>>> baseline = fit_baseline(healthy, false_alarm_rate=0.01)
>>> bool(baseline.indicator(np.array([[1.5, 6.0, 8.0, 0.5]]))[0] > baseline.threshold)
True
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from models.anomaly import ledoit_wolf
from models.dsp import time_domain
from models.dsp.envelope import envelope
from models.errors import SignalError

__all__ = [
    "FEATURE_NAMES",
    "MIN_BASELINE_RECORDS",
    "HealthAssessment",
    "HealthBaseline",
    "HealthState",
    "alarm_indices",
    "assess",
    "condition_feature_rows",
    "condition_features",
    "feature_matrix",
    "first_alarm_index",
    "fit_baseline",
    "health_states",
    "isolated_transients",
    "upper_limit",
]

FloatArray = npt.NDArray[np.float64]
HealthState = Literal["baseline", "normal", "warning", "alarm"]

FEATURE_NAMES: tuple[str, ...] = ("rms", "kurtosis", "crest_factor", "envelope_energy")
MIN_BASELINE_RECORDS = 8
_MAD_TO_SIGMA = 1.4826  # MAD of a normal law times this is its standard deviation
_DROP_Z = 2.0  # a feature below its healthy mean counts at most this many spreads
_TRANSIENT_Z = 6.0  # robust z-score beyond which a lone record counts as a transient
_DEFAULT_ENVELOPE_BAND = (2.0, 500.0)  # covers FTF ... a few harmonics of BPFI at ~30 Hz shaft


def _real(name: str, value: float, low: float, high: float) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and low <= value <= high):
        raise SignalError(f"{name} must be a finite number in [{low}, {high}], got {value!r}")
    return float(value)


def _count(name: str, value: int, low: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise SignalError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _record(x: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.size < 64 or arr.dtype.kind not in "fiu":
        raise SignalError(f"a record must be a real 1-D array of >= 64 samples, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise SignalError("record contains NaN or infinite values")
    return arr.astype(np.float64)


def condition_features(
    x: npt.ArrayLike,
    fs: float,
    demod_band: tuple[float, float] | None = None,
    envelope_band: tuple[float, float] = _DEFAULT_ENVELOPE_BAND,
) -> FloatArray:
    """Compute the condition features of one record, in `FEATURE_NAMES` order.

    The record's mean (sensor offset) is removed first. Features: RMS in g; kurtosis
    (Pearson, 3 for Gaussian noise; `models.dsp.time_domain`); crest factor ``max|x| / rms``;
    envelope-band energy in g**2, the mean square of the Hilbert envelope of `x` band-passed to
    `demod_band`, counted over envelope frequencies in `envelope_band` (where the defect
    frequencies and their first harmonics lie; Randall & Antoni, MSSP 25(2), 2011).

    Parameters
    ----------
    x : array_like
        1-D acceleration in g, at least 64 samples, finite.
    fs : float
        Sampling frequency in Hz.
    demod_band : tuple of float, optional
        Band-pass before demodulation in Hz; ``(0.1 fs, 0.4 fs)`` by default, where structural
        resonances excited by defect strikes usually lie.
    envelope_band : tuple of float, optional
        Envelope frequencies in Hz whose energy is counted, ``(2, 500)`` by default.

    Returns
    -------
    numpy.ndarray
        ``float64`` array of shape ``(4,)``.

    Raises
    ------
    SignalError
        On an invalid record, `fs` or band.

    Examples
    --------
    A 3 kHz carrier with 50 % amplitude modulation at 100 Hz has RMS 0.75 g and an envelope
    ``1 + 0.5 cos`` whose AC part has mean square 0.125 g**2:

    >>> import numpy as np
    >>> fs = 12_000.0
    >>> t = np.arange(12_000) / fs
    >>> x = (1 + 0.5 * np.cos(2 * np.pi * 100 * t)) * np.cos(2 * np.pi * 3_000 * t)
    >>> np.round(condition_features(x, fs), 3).tolist()
    [0.75, 2.802, 2.0, 0.125]
    """
    features, usable = condition_feature_rows(
        _record(x)[np.newaxis, :], fs, demod_band, envelope_band
    )
    if not usable[0]:
        raise SignalError("record is constant: its condition features are undefined")
    row: FloatArray = features[0]
    return row


def condition_feature_rows(
    records: npt.ArrayLike,
    fs: float,
    demod_band: tuple[float, float] | None = None,
    envelope_band: tuple[float, float] = _DEFAULT_ENVELOPE_BAND,
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """`condition_features` of every row of a ``(n_records, samples)`` array, in one pass.

    The same numbers as calling `condition_features` on each row, computed with one
    band-pass, one Hilbert transform and one FFT over the whole batch: a few times faster for
    the handful of windows of one serving request (one filter design and one set of initial
    conditions instead of one per window).

    Returns
    -------
    features : numpy.ndarray
        ``float64`` array of shape ``(n_records, 4)``; rows of constant records are NaN.
    usable : numpy.ndarray
        ``bool`` array of shape ``(n_records,)``: False where a record is constant (its
        features are undefined).

    Raises
    ------
    SignalError
        On an invalid `records` (not 2-D real, under 64 samples, NaN or Inf), `fs` or band.
    """
    fs = _real("fs", fs, 1e-9, math.inf)
    arr = np.asarray(records)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] < 64 or arr.dtype.kind not in "fiu":
        raise SignalError(
            f"records must be a real (n_records, samples) array with n_records >= 1 and"
            f" >= 64 samples, got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise SignalError("records contain NaN or infinite values")
    arr = arr.astype(np.float64)
    arr = arr - arr.mean(axis=1, keepdims=True)
    band = demod_band if demod_band is not None else (0.1 * fs, 0.4 * fs)
    low, high = (_real("envelope_band", float(f), 0.0, fs / 2) for f in envelope_band)
    if low >= high:
        raise SignalError(f"envelope_band must be (low, high) with low < high, got {envelope_band}")
    level = time_domain.rms(arr, axis=1).astype(np.float64)
    usable = level > 0.0
    out = np.full((arr.shape[0], 4), np.nan)
    if not usable.any():
        return out, usable
    kept = arr[usable]
    out[usable, 0] = level[usable]
    out[usable, 1] = time_domain.kurtosis(kept, axis=1)  # Pearson's
    out[usable, 2] = time_domain.crest_factor(kept, axis=1)
    env = envelope(kept, fs, band=band, axis=1).astype(np.float64)
    env -= env.mean(axis=1, keepdims=True)
    n = env.shape[1]
    power = np.abs(np.fft.rfft(env, axis=1)) ** 2 / n**2
    power[:, 1 : (n + 1) // 2] *= 2.0  # one-sided: every bin but DC and Nyquist twice
    freqs = np.fft.rfftfreq(n, d=1.0 / fs)
    out[usable, 3] = power[:, (freqs >= low) & (freqs <= high)].sum(axis=1)
    return out, usable


def feature_matrix(
    records: Sequence[npt.ArrayLike], fs: float, demod_band: tuple[float, float] | None = None
) -> FloatArray:
    """Stack `condition_features` of each record into an ``(n_records, 4)`` array."""
    if len(records) == 0:
        raise SignalError("records must not be empty")
    return np.stack([condition_features(x, fs, demod_band) for x in records])


def _features(features: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise SignalError(f"features must be a non-empty (records, features) array: {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise SignalError("features contain NaN or infinite values")
    return arr


@dataclass(frozen=True)
class _Fit:
    center: FloatArray
    scale: FloatArray
    precision: FloatArray
    shrinkage: float

    def distance(self, features: FloatArray) -> FloatArray:
        z = np.maximum((features - self.center) / self.scale, -_DROP_Z)
        squared = np.einsum("ij,jk,ik->i", z, self.precision, z)
        return np.asarray(np.sqrt(np.maximum(squared, 0.0)), dtype=np.float64)


def _fit(features: FloatArray) -> _Fit:
    center = features.mean(axis=0)
    floor = 1e-9 * np.maximum(np.abs(center), 1e-12)
    scale = np.maximum(features.std(axis=0, ddof=1), floor)
    cov, shrinkage = ledoit_wolf((features - center) / scale)
    if float(np.trace(cov)) <= 0.0:
        cov = np.eye(features.shape[1])
    return _Fit(center, scale, np.asarray(np.linalg.pinv(cov), dtype=np.float64), shrinkage)


def isolated_transients(features: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Mark records far from the others (a robust z-score beyond 6) whose neighbours are not.

    Such one-record outliers (a knock from nearby machinery, a cable glitch) cannot raise an
    alarm under a persistence of 2 or more, so they are left out of the baseline fit instead of
    inflating its spread. Runs of 2 or more outlying records (a change of load) are kept.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.r_[np.linspace(0.9, 1.1, 9), 50.0, np.linspace(0.9, 1.1, 9)][:, None]
    >>> np.flatnonzero(isolated_transients(x)).tolist()
    [9]
    """
    arr = _features(features)
    center = np.median(arr, axis=0)
    mad = _MAD_TO_SIGMA * np.median(np.abs(arr - center), axis=0)
    z = np.abs(arr - center) / np.maximum(mad, 1e-12 * np.maximum(np.abs(center), 1e-12))
    out = z.max(axis=1) > _TRANSIENT_Z
    before = np.r_[False, out[:-1]]
    after = np.r_[out[1:], False]
    return np.asarray(out & ~before & ~after)


@dataclass(frozen=True)
class HealthBaseline:
    """A healthy baseline: mean and shrunk covariance of the features, alarm threshold.

    Attributes
    ----------
    center, scale : numpy.ndarray
        Per-feature mean and standard deviation of the baseline records (transients left out).
    precision : numpy.ndarray
        Inverse of the shrunk covariance of the standardised baseline features.
    shrinkage : float
        Ledoit-Wolf shrinkage intensity in [0, 1] (1: features treated as independent).
    threshold : float
        Alarm threshold on the indicator for the per-record `false_alarm_rate`.
    typical : float
        Median leave-one-out indicator of the baseline records (the healthy level).
    loo_indicator : numpy.ndarray
        Leave-one-out indicator of each baseline record kept in the fit.
    excluded : tuple of int
        Baseline records left out as isolated transients (see `isolated_transients`).
    false_alarm_rate : float
        Per-record probability of exceeding `threshold` while healthy (design value).
    """

    center: FloatArray
    scale: FloatArray
    precision: FloatArray
    shrinkage: float
    threshold: float
    typical: float
    loo_indicator: FloatArray
    excluded: tuple[int, ...]
    false_alarm_rate: float

    def indicator(self, features: npt.ArrayLike) -> FloatArray:
        """Health indicator of each row of `features`: Mahalanobis distance from the baseline.

        Dimensionless, in units of the baseline's spread; shape ``(n_records,)``. Standardised
        deviations below -2 count as -2 (see the module docstring).
        """
        arr = _features(features)
        if arr.shape[1] != self.center.size:
            raise SignalError(f"expected {self.center.size} features, got {arr.shape[1]}")
        return _Fit(self.center, self.scale, self.precision, self.shrinkage).distance(arr)


def fit_baseline(features: npt.ArrayLike, false_alarm_rate: float = 0.01) -> HealthBaseline:
    """Learn the healthy baseline and its alarm threshold from healthy records' features.

    Isolated transients are left out (`isolated_transients`); the rest give the mean, the
    standard deviations and the Ledoit-Wolf shrunk covariance. Each kept record is scored
    against a baseline fitted without it; a gamma law fitted by maximum likelihood to these
    squared leave-one-out distances (a scaled chi-square when the features are Gaussian) gives
    the threshold as the square root of its ``1 - false_alarm_rate`` quantile.

    Parameters
    ----------
    features : array_like
        ``(n_records, n_features)`` features of healthy records, in time order, at least
        `MIN_BASELINE_RECORDS` of them.
    false_alarm_rate : float, optional
        Per-record probability in (0, 0.5] that a healthy record exceeds the threshold.

    Returns
    -------
    HealthBaseline

    Raises
    ------
    SignalError
        On too few records, non-finite features or a rate outside (0, 0.5].
    """
    arr = _features(features)
    rate = _real("false_alarm_rate", false_alarm_rate, 1e-9, 0.5)
    if arr.shape[0] < MIN_BASELINE_RECORDS:
        raise SignalError(
            f"the baseline needs >= {MIN_BASELINE_RECORDS} records, got {arr.shape[0]}"
        )
    transient = isolated_transients(arr)
    kept = arr[~transient]
    n = kept.shape[0]
    full = _fit(kept)
    others = ~np.eye(n, dtype=bool)
    loo = np.array([_fit(kept[others[i]]).distance(kept[i : i + 1])[0] for i in range(n)])
    return HealthBaseline(
        center=full.center,
        scale=full.scale,
        precision=full.precision,
        shrinkage=full.shrinkage,
        threshold=math.sqrt(_gamma_quantile(loo**2, 1.0 - rate)),
        typical=float(np.median(loo)),
        loo_indicator=loo,
        excluded=tuple(int(i) for i in np.flatnonzero(transient)),
        false_alarm_rate=rate,
    )


def _gamma_quantile(x: FloatArray, q: float) -> float:
    """`q` quantile of a gamma law (location 0) fitted to positive `x` by maximum likelihood.

    The shape ``k`` solves ``log k - digamma(k) = log mean(x) - mean(log x)`` (Minka's start,
    then Newton steps); the scale is ``mean(x) / k``.
    """
    x = np.maximum(x, 1e-300)
    mean = float(x.mean())
    s = math.log(mean) - float(np.mean(np.log(x)))
    if s <= 1e-12:  # (nearly) equal values: no spread to extrapolate from
        return float(x.max())
    k = (3.0 - s + math.sqrt((s - 3.0) ** 2 + 24.0 * s)) / (12.0 * s)
    for _ in range(20):
        step = (math.log(k) - float(special.digamma(k)) - s) / (
            1.0 / k - float(special.polygamma(1, k))
        )
        k = max(k - step, k / 10.0)
        if abs(step) < 1e-10 * k:
            break
    return float(stats.gamma.ppf(q, k, scale=mean / k))


def upper_limit(values: npt.ArrayLike, false_alarm_rate: float = 0.01) -> float:
    """One-sided alarm limit on a single feature from its healthy values (the classic method).

    Isolated transients are left out as in `fit_baseline`; the limit is the upper Gaussian
    prediction bound ``mean + t(1 - rate, n - 1) * std * sqrt(1 + 1/n)`` of the rest.

    Examples
    --------
    >>> round(upper_limit([1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0, 2.0], 0.05), 3)
    3.519
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise SignalError("values must be 1-D")
    rate = _real("false_alarm_rate", false_alarm_rate, 1e-9, 0.5)
    if arr.size < MIN_BASELINE_RECORDS:
        raise SignalError(f"the baseline needs >= {MIN_BASELINE_RECORDS} records, got {arr.size}")
    kept = arr[~isolated_transients(arr[:, None])]
    n = kept.size
    spread = float(kept.std(ddof=1)) * math.sqrt(1.0 + 1.0 / n)
    return float(kept.mean()) + float(stats.t.ppf(1.0 - rate, n - 1)) * spread


def _indicator_array(indicator: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(indicator, dtype=np.float64)
    if arr.ndim != 1 or not np.all(np.isfinite(arr)):
        raise SignalError("indicator must be a finite 1-D array")
    return arr


def alarm_indices(
    indicator: npt.ArrayLike, threshold: float, persistence: int = 3, start: int = 0
) -> list[int]:
    """Indices at which the persistence rule raises an alarm.

    An alarm is raised at the record that completes a run of `persistence` consecutive records
    above `threshold`, counted from index `start`; the rule re-arms once a record falls back to
    or below the threshold.

    Examples
    --------
    >>> alarm_indices([0, 5, 5, 5, 5, 0, 5, 5, 5], threshold=1.0, persistence=3)
    [3, 8]
    """
    arr = _indicator_array(indicator)
    k = _count("persistence", persistence, 1)
    first = _count("start", start, 0)
    alarms, run = [], 0
    for i in range(first, arr.size):
        run = run + 1 if arr[i] > threshold else 0
        if run == k:
            alarms.append(i)
    return alarms


def first_alarm_index(
    indicator: npt.ArrayLike, threshold: float, persistence: int = 3, start: int = 0
) -> int | None:
    """Index of the first alarm of `alarm_indices`, or None when there is none.

    Examples
    --------
    >>> first_alarm_index([0, 5, 0, 5, 5, 5], threshold=1.0, persistence=3) is None
    False
    >>> first_alarm_index([0, 5, 0, 5, 5, 0], threshold=1.0, persistence=3) is None
    True
    """
    alarms = alarm_indices(indicator, threshold, persistence, start)
    return alarms[0] if alarms else None


def health_states(
    indicator: npt.ArrayLike, threshold: float, persistence: int, n_baseline: int
) -> list[HealthState]:
    """State of each record: ``baseline`` (learning), ``normal``, ``warning`` or ``alarm``.

    ``warning`` is a record above the threshold before the persistence rule fires; from the
    first alarm on, the state stays ``alarm`` (latched until someone acknowledges it).
    """
    arr = _indicator_array(indicator)
    alarm = first_alarm_index(arr, threshold, persistence, start=n_baseline)
    states: list[HealthState] = []
    for i, value in enumerate(arr):
        if i < n_baseline:
            states.append("baseline")
        elif alarm is not None and i >= alarm:
            states.append("alarm")
        else:
            states.append("warning" if value > threshold else "normal")
    return states


@dataclass(frozen=True)
class HealthAssessment:
    """Features, indicator, states and first alarm of a series of records."""

    features: FloatArray
    baseline: HealthBaseline
    indicator: FloatArray
    states: list[HealthState]
    first_alarm: int | None
    persistence: int


def assess(
    features: npt.ArrayLike,
    n_baseline: int,
    false_alarm_rate: float = 0.01,
    persistence: int = 3,
) -> HealthAssessment:
    """Fit the baseline on the first `n_baseline` rows of `features` and assess every row.

    Alarms are looked for only after the baseline records.

    Raises
    ------
    SignalError
        On invalid arguments, or fewer records than ``n_baseline + 1``.
    """
    arr = _features(features)
    n = _count("n_baseline", n_baseline, MIN_BASELINE_RECORDS)
    k = _count("persistence", persistence, 1)
    if arr.shape[0] <= n:
        raise SignalError(f"{arr.shape[0]} records leave none after a baseline of {n}")
    baseline = fit_baseline(arr[:n], false_alarm_rate)
    hi = baseline.indicator(arr)
    return HealthAssessment(
        features=arr,
        baseline=baseline,
        indicator=hi,
        states=health_states(hi, baseline.threshold, k, n),
        first_alarm=first_alarm_index(hi, baseline.threshold, k, start=n),
        persistence=k,
    )
