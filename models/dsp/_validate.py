"""Argument checks shared by the signal-processing modules.

Every public function of `models.dsp` validates its arguments at the top with these helpers
and raises `SignalError` with a message that names the argument. The helpers return the
normalised value (a builtin ``float``, a non-negative axis, a ``float64`` array) so callers
never re-check.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import numpy.typing as npt

from models.errors import SignalError

__all__ = [
    "Band",
    "FloatArray",
    "check_axis",
    "check_band",
    "check_signal",
    "out_dtype",
    "positive_finite",
    "positive_int",
]

FloatArray = npt.NDArray[np.floating[Any]]
"""A real floating-point array (``float32`` or ``float64``)."""

Band = tuple[float, float]
"""A frequency band ``(low, high)`` in Hz."""


def positive_finite(name: str, value: object) -> float:
    """Return `value` as a float if it is a real, positive, finite number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SignalError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise SignalError(f"{name} must be positive and finite, got {value!r}")
    return number


def positive_int(name: str, value: object, minimum: int = 1) -> int:
    """Return `value` as an int if it is an integer not below `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SignalError(f"{name} must be an int, got {value!r}")
    number = int(value)
    if number < minimum:
        raise SignalError(f"{name} must be at least {minimum}, got {value!r}")
    return number


def check_axis(ndim: int, axis: object) -> int:
    """Return `axis` normalised to ``0 <= axis < ndim``."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise SignalError(f"axis must be an int, got {axis!r}")
    number = int(axis)
    if not -ndim <= number < ndim:
        raise SignalError(f"axis {axis} is out of range for an array of {ndim} dimensions")
    return number % ndim


def out_dtype(x: npt.ArrayLike) -> np.dtype[Any]:
    """Return ``float32`` for ``float32`` input and ``float64`` for anything else."""
    dtype = np.asarray(x).dtype
    return np.dtype(np.float32) if dtype == np.float32 else np.dtype(np.float64)


def check_signal(
    x: npt.ArrayLike, axis: object, min_samples: int = 1
) -> tuple[npt.NDArray[np.float64], np.dtype[Any], int]:
    """Validate a real signal and return it as float64, its output dtype and the axis.

    Parameters
    ----------
    x : array_like
        Real numeric (float, int or unsigned) samples, at least 1-D, finite, non-empty.
    axis : int
        Time axis of `x`.
    min_samples : int, optional
        Fewest samples accepted along `axis`.

    Returns
    -------
    tuple
        ``(x as float64, output dtype, axis in [0, ndim))``; the output dtype is ``float32`` for
        ``float32`` input and ``float64`` otherwise.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise SignalError(f"x must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise SignalError("x must have at least one dimension")
    ax = check_axis(arr.ndim, axis)
    if arr.size == 0:
        raise SignalError("x must not be empty")
    if arr.shape[ax] < min_samples:
        raise SignalError(
            f"x has {arr.shape[ax]} samples along axis {ax}; at least {min_samples} are needed"
        )
    if not np.all(np.isfinite(arr)):
        raise SignalError("x contains NaN or infinite values")
    return arr.astype(np.float64, copy=False), out_dtype(arr), ax


def check_band(band: object, fs: float, *, closed: bool = False) -> Band:
    """Validate a ``(low, high)`` band in Hz against the Nyquist frequency ``fs / 2``.

    With ``closed=False`` (filters) the band must lie strictly inside: ``0 < low < high < fs/2``.
    With ``closed=True`` (integrating a spectrum) the edges may touch: ``0 <= low < high <= fs/2``.
    """
    try:
        low, high = (float(edge) for edge in band)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise SignalError(f"band must be a (low, high) pair in Hz, got {band!r}") from exc
    nyquist = fs / 2.0
    inside = (0.0 <= low < high <= nyquist) if closed else (0.0 < low < high < nyquist)
    if not inside:
        relation = "0 <= low < high <= fs/2" if closed else "0 < low < high < fs/2"
        raise SignalError(f"band must satisfy {relation} = {nyquist} Hz, got {band!r}")
    return low, high
