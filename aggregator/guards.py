"""Guards on a round's training replies: pure functions over numpy arrays, no Flower, no I/O.

Every strategy (``aggregator.strategy.GuardedStrategy``) screens the replies of a round
through :func:`screen_replies` before Flower's aggregation sees them:

1. **Structure**: a reply must carry exactly the global model's array names, with the same
   shapes and dtypes (a site running another model version, or a corrupted update, is refused
   instead of failing or silently broadcasting inside the aggregation).
2. **Finite values**: one NaN or Inf would poison every coordinate of an average.
3. **Sample count**: ``num-examples`` must be a positive finite number; it is clipped to
   ``max_examples``. FedAvg weights each update by the count the site reports about itself, so
   without a cap one site claiming a billion windows would *be* the global model.
4. **Update norm**: ``||w_site - w_global||`` far above the round's other updates is refused.
   The threshold, ``median + k * max(1.4826 * MAD, floor_fraction * median)``, is built from
   the median and the median absolute deviation, which the outliers themselves barely move
   (a mean and standard deviation would be dragged up by the very update they should catch).
   The ``floor_fraction * median`` term keeps the threshold sane with 2-3 replies, whose MAD
   can be near zero when two honest sites happen to agree. With fewer than
   ``MIN_REPLIES_FOR_NORM_TEST`` structurally valid replies no norm is refused: with two
   replies the median is their mean and nothing says which one is the outlier.

:func:`enough_replies` then decides whether the round counts: the accepted replies must be at
least ``min_fraction`` of the sampled sites, else the global model stays unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

MIN_REPLIES_FOR_NORM_TEST = 3
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation

Arrays = Mapping[str, npt.NDArray[np.generic]]
ArraySpec = dict[str, tuple[tuple[int, ...], np.dtype[np.generic]]]


@dataclass(frozen=True)
class GuardConfig:
    """Thresholds of the guards (run config keys in brackets).

    Parameters
    ----------
    max_examples : int
        Cap on a reply's self-reported ``num-examples`` [``max-examples-per-site``].
    norm_outlier_mads : float
        ``k`` of the update-norm test; 0 turns the test off [``norm-outlier-mads``].
    norm_floor_fraction : float
        Smallest spread the norm test assumes, as a fraction of the median norm.
    min_reply_fraction : float
        Accepted replies needed, as a fraction of the sampled sites [``min-reply-fraction``].
    """

    max_examples: int = 100_000
    norm_outlier_mads: float = 5.0
    norm_floor_fraction: float = 0.5
    min_reply_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.max_examples < 1:
            raise ValueError(f"max_examples must be >= 1, got {self.max_examples}")
        if not math.isfinite(self.norm_outlier_mads) or self.norm_outlier_mads < 0:
            raise ValueError(f"norm_outlier_mads must be >= 0, got {self.norm_outlier_mads}")
        if not math.isfinite(self.norm_floor_fraction) or self.norm_floor_fraction < 0:
            raise ValueError(f"norm_floor_fraction must be >= 0, got {self.norm_floor_fraction}")
        if not 0 < self.min_reply_fraction <= 1:
            raise ValueError(f"min_reply_fraction must be in (0, 1], got {self.min_reply_fraction}")


@dataclass(frozen=True)
class Candidate:
    """One training reply as the guards see it.

    Parameters
    ----------
    site : str
        Who sent it (for the reasons logged and recorded).
    arrays : Mapping[str, numpy.ndarray] or None
        The model the site trained; ``None`` when the reply carried no usable ArrayRecord.
    num_examples : float or None
        The site's self-reported training examples; ``None`` when absent.
    metric_keys : frozenset of str
        Names of the metrics the reply reports.
    """

    site: str
    arrays: Arrays | None
    num_examples: float | None
    metric_keys: frozenset[str] = frozenset()


@dataclass
class Screening:
    """Outcome of :func:`screen_replies`.

    ``accepted`` indexes the candidates that passed, ``weights`` their (clipped) example counts
    in the same order, ``rejected`` maps a refused candidate's index to the reason, ``clipped``
    lists the indexes whose count was capped and ``norms`` the update norm of each candidate
    that was structurally valid.
    """

    accepted: list[int] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    clipped: list[int] = field(default_factory=list)
    norms: dict[int, float] = field(default_factory=dict)


def spec_of(arrays: Arrays) -> ArraySpec:
    """Names, shapes and dtypes of a model's arrays (the reference replies are checked against)."""
    return {k: (tuple(np.shape(v)), np.asarray(v).dtype) for k, v in arrays.items()}


def structure_problem(spec: ArraySpec, arrays: Arrays) -> str | None:
    """Why ``arrays`` do not match ``spec`` or hold non-finite values; ``None`` when they fit.

    Examples
    --------
    >>> import numpy as np
    >>> spec = spec_of({"w": np.zeros(3, np.float32)})
    >>> structure_problem(spec, {"w": np.array([1.0, np.nan, 0.0], np.float32)})
    "array 'w' holds NaN or Inf"
    """
    missing = sorted(set(spec) - set(arrays))
    extra = sorted(set(arrays) - set(spec))
    if missing or extra:
        return f"array names differ from the global model (missing {missing}, unexpected {extra})"
    for name, (shape, dtype) in spec.items():
        value = np.asarray(arrays[name])
        if value.shape != shape:
            return f"array {name!r} shaped {value.shape}, the global model's is {shape}"
        if value.dtype != dtype:
            return f"array {name!r} has dtype {value.dtype}, the global model's is {dtype}"
        if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
            return f"array {name!r} holds NaN or Inf"
    return None


def update_norm(global_arrays: Arrays, arrays: Arrays) -> float:
    """Euclidean norm of ``arrays - global_arrays`` over the floating-point arrays.

    Integer arrays (BatchNorm's ``num_batches_tracked``) count batches, not weights, and are
    left out.
    """
    total = 0.0
    for name, ref in global_arrays.items():
        ref_arr = np.asarray(ref)
        if not np.issubdtype(ref_arr.dtype, np.inexact):
            continue
        diff = np.asarray(arrays[name], dtype=np.float64) - ref_arr.astype(np.float64)
        total += float(np.dot(diff.ravel(), diff.ravel()))
    return math.sqrt(total)


def norm_outliers(norms: Sequence[float], k: float, floor_fraction: float = 0.5) -> list[bool]:
    """Which norms lie above ``median + k * max(1.4826 * MAD, floor_fraction * median)``.

    Nothing is flagged with fewer than ``MIN_REPLIES_FOR_NORM_TEST`` norms or when ``k`` is 0.

    Examples
    --------
    >>> norm_outliers([1.0, 1.1, 0.9, 1.05, 40.0], k=5)
    [False, False, False, False, True]
    """
    if k <= 0 or len(norms) < MIN_REPLIES_FOR_NORM_TEST:
        return [False] * len(norms)
    values = np.asarray(norms, dtype=np.float64)
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median)))
    spread = max(MAD_TO_SIGMA * mad, floor_fraction * median)
    limit = median + k * spread
    return [bool(v > limit) for v in values]


def clip_examples(num_examples: float, cap: int) -> int:
    """A reply's example count as an integer in ``[1, cap]``; raises on a non-positive count."""
    if not math.isfinite(num_examples) or num_examples < 1:
        raise ValueError(f"num-examples must be a finite count >= 1, got {num_examples}")
    return min(int(num_examples), cap)


def _majority(keys: Sequence[frozenset[str]]) -> frozenset[str]:
    """The most common metric-name set (ties: the first seen)."""
    counts: dict[frozenset[str], int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    return max(counts, key=lambda k: counts[k])


def screen_replies(
    spec: ArraySpec | None,
    global_arrays: Arrays | None,
    candidates: Sequence[Candidate],
    config: GuardConfig,
) -> Screening:
    """Apply the guards to one round's replies (see the module docstring).

    With ``spec`` and ``global_arrays`` ``None`` (evaluation replies) only the sample count and
    the metric names are checked. Replies whose metric names differ from the majority's are
    refused too: Flower's aggregation needs every reply to report the same metrics.
    """
    result = Screening()
    weights: dict[int, int] = {}
    for i, cand in enumerate(candidates):
        problem: str | None = None
        if spec is not None:
            problem = (
                "reply carries no model arrays (exactly one ArrayRecord expected)"
                if cand.arrays is None
                else structure_problem(spec, cand.arrays)
            )
        if problem is None:
            try:
                weights[i] = clip_examples(
                    float("nan") if cand.num_examples is None else cand.num_examples,
                    config.max_examples,
                )
            except ValueError as exc:
                problem = str(exc)
        if problem is not None:
            result.rejected[i] = problem
            continue
        if cand.num_examples is not None and cand.num_examples > config.max_examples:
            result.clipped.append(i)
        result.norms[i] = (
            update_norm(global_arrays, cand.arrays)
            if global_arrays is not None and cand.arrays is not None
            else 0.0
        )
    valid = list(result.norms)
    if valid:
        expected = _majority([candidates[i].metric_keys for i in valid])
        for i in valid:
            if candidates[i].metric_keys != expected:
                result.rejected[i] = (
                    f"metric names {sorted(candidates[i].metric_keys)} differ from the other "
                    f"replies' {sorted(expected)}"
                )
        valid = [i for i in valid if i not in result.rejected]
    flags = norm_outliers(
        [result.norms[i] for i in valid], config.norm_outlier_mads, config.norm_floor_fraction
    )
    median = float(np.median([result.norms[i] for i in valid])) if valid else 0.0
    for i, outlier in zip(valid, flags, strict=True):
        if outlier:
            result.rejected[i] = (
                f"update norm {result.norms[i]:.4g} is far above the round's median {median:.4g}"
            )
        else:
            result.accepted.append(i)
            result.weights.append(weights[i])
    result.clipped = [i for i in result.clipped if i in result.accepted]
    return result


def enough_replies(accepted: int, sampled: int, min_fraction: float) -> bool:
    """Whether ``accepted`` of ``sampled`` replies make a round count (at least one, always).

    Examples
    --------
    >>> enough_replies(1, 3, 0.5), enough_replies(2, 3, 0.5), enough_replies(0, 0, 0.5)
    (False, True, False)
    """
    needed = max(1, math.ceil(min_fraction * sampled - 1e-9))
    return accepted >= needed
