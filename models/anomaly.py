"""Per-asset anomaly score: Mahalanobis distance from the asset's own healthy baseline.

An asset's healthy windows, reduced to vectors (the model's ``embedding`` output, or condition
features), give a baseline: their mean, and a Ledoit-Wolf shrunk covariance (Ledoit & Wolf,
"A well-conditioned estimator for large-dimensional covariance matrices", J. Multivar. Anal.
88(2):365-411, 2004), which stays invertible with fewer windows than dimensions and for
embedding channels that never fire on healthy windows. The score of a window is its
Mahalanobis distance from the mean (about ``sqrt(d)`` for a healthy window of ``d`` features,
larger for a window unlike the baseline); it does not depend on the features' common unit. As
for deep features in Rippel et al. (ICPR 2020), the covariance is shrunk towards a multiple of
the identity, which assumes columns of comparable spread: scale hand-made features in different
units (g, a dimensionless kurtosis) to comparable spread first.

Threshold. The latest ``holdout_fraction`` of the healthy windows (rows in time order) is kept
out of the fit and scored; the threshold is their ``ceil((n + 1)(1 - rate))``-th smallest score
(split-conformal quantile). For a new window exchangeable with the held-out ones (same machine,
same mix of operating conditions), the probability that it scores above the threshold is at most
``rate``, and on average at least ``rate - 1 / (n + 1)``.

How many windows. That quantile exists only for ``n >= ceil(1 / rate) - 1`` held-out windows:
99 for a 1 % false-alarm rate, 19 for 5 % (329 and 62 windows in all with the default 30 %
held out; `min_windows`). That minimum gives the right rate *on average over baselines*; one
baseline's actual rate varies around it with a standard deviation of about
``sqrt(rate (1 - rate) / (n + 2))``: 1 point at 1 % with 99 held-out windows (so 0 to 3 % is
common), 0.3 points with 1,000. For a rate within about +-30 % of the chosen one, hold out
``10 / rate`` windows (1,000 at 1 %: about 3,300 windows of 2,048 samples, 9.4 min at 12 kHz).

The baseline is only valid for the features it was fitted on: after a new model version the
embeddings change and the baseline must be refitted. ``source`` records what produced them
(for example the model file's sha256).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> healthy = rng.normal([1.0, 3.0], 0.5, size=(400, 2))
>>> baseline = AnomalyBaseline.fit(healthy, false_alarm_rate=0.01)
>>> baseline.is_anomalous([[1.0, 3.0], [1.0, 4.0], [3.0, 3.0]]).tolist()
[False, False, True]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, ValidationError

from models.errors import AnomalyError

Float64Array = npt.NDArray[np.float64]

#: Fewest windows the mean and covariance are fitted on (besides the held-out ones).
MIN_FIT_WINDOWS = 20
_KIND: Final = "fedpm-anomaly-baseline"


def ledoit_wolf(x: npt.ArrayLike) -> tuple[Float64Array, float]:
    """Ledoit-Wolf shrunk covariance of the rows of ``x``, and the shrinkage intensity.

    ``(1 - s) S + s mu I`` with ``S`` the (1/n) sample covariance, ``mu = trace(S) / d`` and
    the intensity ``s`` in [0, 1] that minimises the expected squared Frobenius error, as
    estimated in Ledoit & Wolf (2004), section 3 (the estimate scikit-learn's ``LedoitWolf``
    gives; scikit-learn is not a FedPM dependency).

    Parameters
    ----------
    x
        Observations shaped (n, d), n >= 2.

    Returns
    -------
    covariance, shrinkage
        (d, d) covariance in the units of ``x`` squared, and ``s``.

    Examples
    --------
    >>> cov, s = ledoit_wolf([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    >>> cov.tolist(), s
    ([[0.5, 0.0], [0.0, 0.5]], 0.0)
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise AnomalyError(f"need observations shaped (n >= 2, d), got {arr.shape}")
    n, d = arr.shape
    centred = arr - arr.mean(axis=0)
    sample = centred.T @ centred / n
    mu = float(np.trace(sample)) / d
    # delta: squared distance of S to the target; beta: the estimation error of S, both in
    # the normalised Frobenius norm ||A||^2 = trace(A A') / d.
    target_gap = sample - mu * np.eye(d)
    delta = float(np.sum(target_gap * target_gap)) / d
    squared = centred * centred
    beta = float(np.sum(squared.T @ squared) / n - np.sum(sample * sample)) / (n * d)
    shrinkage = 0.0 if delta <= 0.0 else min(max(beta, 0.0), delta) / delta
    return (1.0 - shrinkage) * sample + shrinkage * mu * np.eye(d), shrinkage


def min_windows(false_alarm_rate: float = 0.01, holdout_fraction: float = 0.3) -> int:
    """Fewest healthy windows `AnomalyBaseline.fit` accepts for this rate and held-out part.

    Examples
    --------
    >>> min_windows(0.01, 0.3), min_windows(0.05, 0.3)
    (329, 62)
    """
    _check_rates(false_alarm_rate, holdout_fraction)
    # no smaller n holds out enough windows; from there both counts only grow with n
    needed = math.ceil((1.0 - false_alarm_rate) / false_alarm_rate - 1e-9)  # held out
    n = max(MIN_FIT_WINDOWS, math.floor((needed - 0.5) / holdout_fraction))
    while not _enough(n, false_alarm_rate, holdout_fraction):
        n += 1
    return n


def _check_rates(false_alarm_rate: float, holdout_fraction: float) -> None:
    if not (math.isfinite(false_alarm_rate) and 0.0 < false_alarm_rate <= 0.5):
        raise AnomalyError(f"false_alarm_rate must be in (0, 0.5], got {false_alarm_rate}")
    if not (math.isfinite(holdout_fraction) and 0.0 < holdout_fraction < 1.0):
        raise AnomalyError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")


def _holdout_size(n: int, holdout_fraction: float) -> int:
    return round(n * holdout_fraction)


def _quantile_rank(n_holdout: int, false_alarm_rate: float) -> int:
    """1-based rank of the threshold among ``n_holdout`` sorted held-out scores."""
    # the small tolerance keeps e.g. 100 * 0.99 = 99.00000000000001 from rounding up to 100
    return math.ceil((n_holdout + 1) * (1.0 - false_alarm_rate) - 1e-9)


def _enough(n: int, false_alarm_rate: float, holdout_fraction: float) -> bool:
    n_holdout = _holdout_size(n, holdout_fraction)
    n_fit = n - n_holdout
    return n_fit >= MIN_FIT_WINDOWS and 1 <= _quantile_rank(n_holdout, false_alarm_rate) <= (
        n_holdout
    )


def _rows(values: npt.ArrayLike, width: int | None = None) -> Float64Array:
    """Validate feature rows: 2-D (1-D is one row), finite, of ``width`` columns if given."""
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise AnomalyError(f"feature rows must be numbers: {exc}") from exc
    if x.ndim == 1:
        x = x[np.newaxis]
    if x.ndim != 2 or x.shape[1] == 0:
        raise AnomalyError(f"feature rows must be shaped (windows, features), got {x.shape}")
    if width is not None and x.shape[1] != width:
        raise AnomalyError(f"the baseline has {width} features, these rows have {x.shape[1]}")
    if not np.isfinite(x).all():
        raise AnomalyError("feature rows contain NaN or Inf")
    return x


class _Document(BaseModel):
    """The JSON form of an :class:`AnomalyBaseline`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["fedpm-anomaly-baseline"]
    schema_version: Literal[1]
    source: str
    false_alarm_rate: float
    threshold: float
    shrinkage: float
    n_fit: int
    n_holdout: int
    mean: list[float]
    covariance: list[list[float]]


@dataclass(frozen=True, eq=False)
class AnomalyBaseline:
    """One asset's healthy baseline and calibrated alarm threshold (see the module docstring).

    Build it with :meth:`fit` or :meth:`from_json`; the fields are its JSON content.

    Attributes
    ----------
    mean
        Per-feature mean of the healthy fit windows (feature units).
    covariance
        Shrunk covariance of the features, (d, d), in feature units squared.
    shrinkage
        Ledoit-Wolf intensity in [0, 1] (1: features treated as uncorrelated).
    threshold
        Scores above it are anomalous (dimensionless, a Mahalanobis distance).
    false_alarm_rate
        The rate the threshold was calibrated for.
    n_fit, n_holdout
        Windows used for the mean and covariance, and for the threshold.
    source
        What produced the features (e.g. a model's sha256); the baseline is valid only for it.
    """

    mean: Float64Array
    covariance: Float64Array
    shrinkage: float
    threshold: float
    false_alarm_rate: float
    n_fit: int
    n_holdout: int
    source: str = ""
    _cholesky: Float64Array = field(init=False, repr=False)

    def __post_init__(self) -> None:
        d = self.mean.shape[0] if self.mean.ndim == 1 else 0
        if d == 0 or self.covariance.shape != (d, d):
            raise AnomalyError("mean and covariance do not describe the same features")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.covariance).all()):
            raise AnomalyError("the baseline holds non-finite values")
        if not np.allclose(self.covariance, self.covariance.T, rtol=0.0, atol=1e-9):
            raise AnomalyError("the covariance is not symmetric")
        try:
            cholesky = np.linalg.cholesky(self.covariance)
        except np.linalg.LinAlgError as exc:
            raise AnomalyError("the covariance is not positive definite") from exc
        if not (math.isfinite(self.threshold) and self.threshold >= 0.0):
            raise AnomalyError(f"threshold must be finite and >= 0, got {self.threshold}")
        object.__setattr__(self, "_cholesky", cholesky)

    @classmethod
    def fit(
        cls,
        embeddings: npt.ArrayLike,
        false_alarm_rate: float = 0.01,
        holdout_fraction: float = 0.3,
        *,
        source: str = "",
    ) -> AnomalyBaseline:
        """Fit the baseline on healthy windows' feature rows, in time order.

        Parameters
        ----------
        embeddings
            (windows, features) from healthy operation: the model's ``embedding`` output or
            condition features. The first rows fit the mean and covariance, the latest
            ``holdout_fraction`` calibrate the threshold.
        false_alarm_rate
            Wanted probability that a healthy window is flagged, in (0, 0.5].
        holdout_fraction
            Share of the windows held out for the threshold, in (0, 1).
        source
            What produced the features, stored with the baseline.

        Raises
        ------
        AnomalyError
            Too few windows for the rate (`min_windows`), NaN or Inf, windows without any
            spread, or rates out of range.
        """
        _check_rates(false_alarm_rate, holdout_fraction)
        x = _rows(embeddings)
        n = len(x)
        if not _enough(n, false_alarm_rate, holdout_fraction):
            n_needed = min_windows(false_alarm_rate, holdout_fraction)
            raise AnomalyError(
                f"{n} healthy windows are too few for a {false_alarm_rate:g} false-alarm rate "
                f"with holdout_fraction {holdout_fraction:g}: need at least {n_needed}"
            )
        n_holdout = _holdout_size(n, holdout_fraction)
        fit_rows, held_out = x[: n - n_holdout], x[n - n_holdout :]
        mean = fit_rows.mean(axis=0)
        if not fit_rows.var(axis=0).any():
            raise AnomalyError("the healthy windows are all identical: no spread to measure from")
        covariance, shrinkage = ledoit_wolf(fit_rows)
        partial = cls(mean, covariance, shrinkage, 0.0, false_alarm_rate, len(fit_rows), 0)
        scores = np.sort(partial.score(held_out))
        threshold = float(scores[_quantile_rank(n_holdout, false_alarm_rate) - 1])
        return cls(
            mean,
            covariance,
            shrinkage,
            threshold,
            false_alarm_rate,
            len(fit_rows),
            n_holdout,
            source,
        )

    @property
    def n_features(self) -> int:
        """Width of the feature rows this baseline scores."""
        return int(self.mean.shape[0])

    def score(self, embeddings: npt.ArrayLike) -> Float64Array:
        """Mahalanobis distance of each row from the healthy mean (dimensionless).

        ``embeddings`` is shaped (windows, n_features), or (n_features,) for one window.

        Raises
        ------
        AnomalyError
            Rows of another width, or NaN or Inf.
        """
        z = _rows(embeddings, self.n_features) - self.mean
        whitened = np.linalg.solve(self._cholesky, z.T)
        distances: Float64Array = np.sqrt(np.sum(whitened * whitened, axis=0))
        return distances

    def is_anomalous(self, embeddings: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """True for each row that scores above the threshold."""
        flags: npt.NDArray[np.bool_] = self.score(embeddings) > self.threshold
        return flags

    def to_json(self) -> str:
        """Serialise as JSON (floats round-trip exactly)."""
        return _Document(
            kind=_KIND,
            schema_version=1,
            source=self.source,
            false_alarm_rate=self.false_alarm_rate,
            threshold=self.threshold,
            shrinkage=self.shrinkage,
            n_fit=self.n_fit,
            n_holdout=self.n_holdout,
            mean=self.mean.tolist(),
            covariance=self.covariance.tolist(),
        ).model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> AnomalyBaseline:
        """Parse and validate a baseline written by :meth:`to_json`.

        Raises
        ------
        AnomalyError
            Not a baseline document, or one whose arrays are inconsistent.
        """
        try:
            doc = _Document.model_validate_json(text)
        except ValidationError as exc:
            raise AnomalyError(f"not an anomaly baseline: {exc}") from exc
        try:
            covariance = np.array(doc.covariance, dtype=np.float64)
        except ValueError as exc:  # ragged rows
            raise AnomalyError("the covariance is not a square matrix") from exc
        return cls(
            np.array(doc.mean, dtype=np.float64),
            covariance,
            doc.shrinkage,
            doc.threshold,
            doc.false_alarm_rate,
            doc.n_fit,
            doc.n_holdout,
            doc.source,
        )
