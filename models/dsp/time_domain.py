"""Time-domain condition indicators: level, peakiness and shape of a vibration signal.

Each function reduces `x` along `axis` and returns an array with that axis removed (a 0-d
array for 1-D input; ``float(result)`` gives the number). Output is ``float32`` for
``float32`` input and ``float64`` otherwise; the arithmetic is done in ``float64``.

Level indicators (`rms`, `peak`, `peak_to_peak`) are in the units of `x` (g in, g out); the
others are dimensionless ratios. Ratios and moments that are undefined, i.e. for a slice that
is identically zero (`crest_factor`, `shape_factor`, `impulse_factor`) or constant
(`kurtosis`, `skewness`), are NaN rather than an error, so one dead channel does not fail a
batch. Definitions follow Randall, *Vibration-based Condition Monitoring* (Wiley, 2011),
section 5.2, and Lei et al., MSSP 35 (2013), table 1.

Examples
--------
A sine of amplitude ``A`` has RMS ``A / sqrt(2)``, crest factor ``sqrt(2)`` and a Pearson
kurtosis of 1.5:

>>> import numpy as np
>>> x = 3.0 * np.sin(2 * np.pi * np.arange(1_000) / 100)
>>> round(float(rms(x)), 4), round(float(crest_factor(x)), 4), round(float(kurtosis(x)), 4)
(2.1213, 1.4142, 1.5)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from models.dsp._validate import FloatArray, check_signal

__all__ = [
    "crest_factor",
    "impulse_factor",
    "kurtosis",
    "peak",
    "peak_to_peak",
    "rms",
    "rms_kurtosis_crest",
    "shape_factor",
    "skewness",
]


def _finish(values: npt.NDArray[Any], dtype: np.dtype[Any]) -> FloatArray:
    return np.asarray(values, dtype=dtype)


def _ratio(num: npt.NDArray[np.float64], den: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``num / den`` with NaN where ``den`` is zero, without a warning."""
    safe = np.where(den > 0.0, den, 1.0)
    return np.asarray(np.where(den > 0.0, num / safe, np.nan), dtype=np.float64)


def _rms(arr: npt.NDArray[np.float64], axis: int) -> npt.NDArray[np.float64]:
    return np.asarray(np.sqrt(np.mean(np.square(arr), axis=axis)), dtype=np.float64)


def rms(x: npt.ArrayLike, axis: int = -1) -> FloatArray:
    """Root mean square, ``sqrt(mean(x**2))``, in the units of `x`.

    Parameters
    ----------
    x : array_like
        Real signal (e.g. acceleration in g), finite, non-empty.
    axis : int, optional
        Time axis, the last by default.

    Returns
    -------
    numpy.ndarray
        RMS per slice, `axis` removed, units of `x`. The mean is not removed first.

    Raises
    ------
    SignalError
        On empty, non-finite or non-real `x`, or an invalid `axis`.

    Examples
    --------
    >>> round(float(rms([3.0, -3.0, 3.0, -3.0])), 6)
    3.0
    """
    arr, dtype, ax = check_signal(x, axis)
    return _finish(_rms(arr, ax), dtype)


def peak(x: npt.ArrayLike, axis: int = -1) -> FloatArray:
    """Largest absolute value, ``max(|x|)``, in the units of `x`.

    Examples
    --------
    >>> float(peak([1.0, -4.0, 2.0]))
    4.0
    """
    arr, dtype, ax = check_signal(x, axis)
    return _finish(np.max(np.abs(arr), axis=ax), dtype)


def peak_to_peak(x: npt.ArrayLike, axis: int = -1) -> FloatArray:
    """Range, ``max(x) - min(x)``, in the units of `x`.

    Examples
    --------
    >>> float(peak_to_peak([1.0, -4.0, 2.0]))
    6.0
    """
    arr, dtype, ax = check_signal(x, axis)
    return _finish(np.ptp(arr, axis=ax), dtype)


def crest_factor(x: npt.ArrayLike, axis: int = -1) -> FloatArray:
    """Crest factor, ``peak / rms``, dimensionless; ``sqrt(2)`` for a sine, NaN for zeros.

    Examples
    --------
    >>> float(crest_factor([0.0, 0.0, 0.0, 2.0]))
    2.0
    """
    arr, dtype, ax = check_signal(x, axis)
    return _finish(_ratio(np.max(np.abs(arr), axis=ax), _rms(arr, ax)), dtype)


def shape_factor(x: npt.ArrayLike, axis: int = -1) -> FloatArray:
    """Shape factor, ``rms / mean(|x|)``, dimensionless; ``pi / (2 sqrt(2))`` for a sine.

    Examples
    --------
    >>> float(shape_factor([1.0, -1.0, 1.0, -1.0]))
    1.0
    """
    arr, dtype, ax = check_signal(x, axis)
    return _finish(_ratio(_rms(arr, ax), np.mean(np.abs(arr), axis=ax)), dtype)


def impulse_factor(x: npt.ArrayLike, axis: int = -1) -> FloatArray:
    """Impulse factor, ``peak / mean(|x|)``, dimensionless; ``pi / 2`` for a sine.

    Examples
    --------
    >>> float(impulse_factor([0.0, 0.0, 0.0, 2.0]))
    4.0
    """
    arr, dtype, ax = check_signal(x, axis)
    return _finish(_ratio(np.max(np.abs(arr), axis=ax), np.mean(np.abs(arr), axis=ax)), dtype)


def _standardised_moment(
    arr: npt.NDArray[np.float64], axis: int, order: int
) -> npt.NDArray[np.float64]:
    """``m_order / m2 ** (order / 2)`` per slice (biased), NaN for constant slices, no warnings.

    The same estimator as ``scipy.stats.skew`` / ``kurtosis`` with ``bias=True``, computed with
    numpy directly: scipy's wrappers cost about 1.7 ms a call on a 2048-sample window (mostly
    signature inspection), which made them most of the edge agent's per-window inference time.
    """
    centred = arr - arr.mean(axis=axis, keepdims=True)
    scale = np.max(np.abs(arr), axis=axis)
    spread = np.max(np.abs(centred), axis=axis)
    # A slice is constant when its deviations are at rounding level of its values.
    constant = spread <= 1e-12 * np.where(scale > 0.0, scale, 1.0)
    squared = centred * centred
    with np.errstate(divide="ignore", invalid="ignore"):  # constant slices become NaN below
        m2 = np.mean(squared, axis=axis)
        moment = squared * squared if order == 4 else squared * centred
        values = np.mean(moment, axis=axis) / m2 ** (order / 2)
    return np.where(constant, np.nan, values)


def kurtosis(x: npt.ArrayLike, axis: int = -1, *, fisher: bool = False) -> FloatArray:
    """Kurtosis, the fourth standardised moment (biased estimator, `scipy.stats.kurtosis`).

    Parameters
    ----------
    x : array_like
        Real signal, finite, non-empty.
    axis : int, optional
        Time axis, the last by default.
    fisher : bool, optional
        ``False`` (default) gives **Pearson's** kurtosis ``m4 / m2**2``: 3 for Gaussian noise,
        1.5 for a sine, large for impulsive bearing signals. ``True`` gives the excess
        (Fisher) kurtosis, Pearson minus 3.

    Returns
    -------
    numpy.ndarray
        Dimensionless kurtosis per slice, `axis` removed; NaN for a constant slice.

    Raises
    ------
    SignalError
        On empty, non-finite or non-real `x`, or an invalid `axis`.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.sin(2 * np.pi * np.arange(400) / 40)
    >>> round(float(kurtosis(x)), 6), round(float(kurtosis(x, fisher=True)), 6)
    (1.5, -1.5)
    """
    arr, dtype, ax = check_signal(x, axis)
    pearson = _standardised_moment(arr, ax, 4)
    return _finish(pearson - 3.0 if fisher else pearson, dtype)


def rms_kurtosis_crest(
    x: npt.ArrayLike, axis: int = -1
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """RMS, Pearson kurtosis and crest factor of `x` with one validation of it.

    The same values as ``rms(x, axis)``, ``kurtosis(x, axis)`` and ``crest_factor(x, axis)``
    (same arithmetic), for a caller that wants all three per window: `x` is checked and
    converted once and the RMS is computed once.

    Raises
    ------
    SignalError
        On empty, non-finite or non-real `x`, or an invalid `axis`.

    Examples
    --------
    >>> import numpy as np
    >>> x = 3.0 * np.sin(2 * np.pi * np.arange(1_000) / 100)
    >>> [round(float(v), 4) for v in rms_kurtosis_crest(x)]
    [2.1213, 1.5, 1.4142]
    """
    arr, dtype, ax = check_signal(x, axis)
    level = _rms(arr, ax)
    crest = _ratio(np.max(np.abs(arr), axis=ax), level)
    pearson = _standardised_moment(arr, ax, 4)
    return _finish(level, dtype), _finish(pearson, dtype), _finish(crest, dtype)


def skewness(x: npt.ArrayLike, axis: int = -1) -> FloatArray:
    """Skewness, the third standardised moment ``m3 / m2**1.5`` (`scipy.stats.skew`, biased).

    Zero for a symmetric signal (a sine, Gaussian noise); NaN for a constant slice.

    Examples
    --------
    >>> float(skewness([0.0, 0.0, 0.0, 1.0])) > 0
    True
    """
    arr, dtype, ax = check_signal(x, axis)
    return _finish(_standardised_moment(arr, ax, 3), dtype)
