"""Condition-monitoring feature sets, as named presets sized for the node's CPU.

Like tsfresh's ``MinimalFCParameters`` / ``EfficientFCParameters`` /
``ComprehensiveFCParameters``, a preset names a fixed, ordered list of features, so a model
trained on one node reads the same columns on another. Costs for ``n`` samples:

``minimal``
    4 time-domain indicators, a few passes over the data: ``O(n)``. For the smallest nodes or
    the highest rates.
``efficient``
    ``minimal`` plus the other time-domain shape indicators, the power in eight equal bands
    of ``[0, fs/2]`` (Welch, 1024-sample segments) and the velocity RMS for ISO 10816-3:
    one Welch PSD and one FFT, ``O(n log n)``.
``full``
    ``efficient`` plus the kurtogram's most impulsive band (levels up to 4) and its kurtosis,
    and the envelope evidence (dB) of each bearing defect (`models.dsp.diagnosis.diagnose`):
    two kurtograms (each about as costly as 16 FFTs of the window), a band-pass, a Hilbert
    transform and the line search. The defect scores need `rpm` and `bearing` (NaN without
    them) and a window long enough to resolve the shaft harmonics (``n >= 8 fs / fr``, e.g.
    0.27 s at 1800 rpm).

Names are stable: ``band_power_<i>`` is the power in g**2 of the ``i``-th eighth of
``[0, fs/2]``; ``velocity_rms_mm_s`` covers 10 Hz to ``min(1000 Hz, fs/2)``. Units: g for
``rms``/``peak``/``peak_to_peak``, g**2 for band powers, mm/s for velocity, Hz for band edges,
dB for defect scores, dimensionless otherwise (kurtosis is Pearson's, 3 for Gaussian noise).

Examples
--------
>>> import numpy as np
>>> x = np.sin(2 * np.pi * 50.0 * np.arange(12_000) / 12_000.0)
>>> features = extract(x, 12_000.0, "minimal")
>>> {name: round(value, 3) for name, value in features.items()}
{'rms': 0.707, 'peak': 1.0, 'crest_factor': 1.414, 'kurtosis': 1.5}
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from models.bearing import BearingGeometry
from models.dsp import time_domain
from models.dsp._validate import check_signal, positive_finite
from models.dsp.defects import DEFECTS
from models.dsp.diagnosis import diagnose
from models.dsp.kurtogram import kurtogram
from models.dsp.severity import velocity_rms
from models.dsp.spectral import band_power
from models.errors import SignalError

__all__ = ["PRESETS", "Preset", "extract", "extract_array", "feature_names"]

Preset = Literal["minimal", "efficient", "full"]

_N_BANDS = 8
_MINIMAL = ("rms", "peak", "crest_factor", "kurtosis")
_EFFICIENT = (
    *_MINIMAL,
    "peak_to_peak",
    "skewness",
    "shape_factor",
    "impulse_factor",
    *(f"band_power_{i}" for i in range(_N_BANDS)),
    "velocity_rms_mm_s",
)
_FULL = (
    *_EFFICIENT,
    "sk_band_low_hz",
    "sk_band_high_hz",
    "sk_max",
    *(f"envelope_{defect}_db" for defect in DEFECTS),
)

PRESETS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"minimal": _MINIMAL, "efficient": _EFFICIENT, "full": _FULL}
)
"""Feature names of each preset, in column order."""

_TIME_DOMAIN = {
    "rms": time_domain.rms,
    "peak": time_domain.peak,
    "crest_factor": time_domain.crest_factor,
    "kurtosis": time_domain.kurtosis,
    "peak_to_peak": time_domain.peak_to_peak,
    "skewness": time_domain.skewness,
    "shape_factor": time_domain.shape_factor,
    "impulse_factor": time_domain.impulse_factor,
}


def feature_names(preset: Preset) -> tuple[str, ...]:
    """Return the feature names of `preset`, in column order.

    Examples
    --------
    >>> feature_names("minimal")
    ('rms', 'peak', 'crest_factor', 'kurtosis')
    """
    if preset not in PRESETS:
        raise SignalError(f"unknown preset {preset!r}: use one of {', '.join(get_args(Preset))}")
    return PRESETS[preset]


def _full_features(
    rows: npt.NDArray[np.float64],
    fs: float,
    rpm: float | None,
    bearing: BearingGeometry | None,
) -> npt.NDArray[np.float64]:
    """Kurtogram and defect-evidence columns for each row of a 2-D (slices, time) array."""
    result = kurtogram(rows, fs, max_level=4, axis=-1)
    bands, sk = result.best()
    scores = np.full((rows.shape[0], len(DEFECTS)), np.nan)
    if rpm is not None and bearing is not None:
        for i, row in enumerate(rows):
            evidence = diagnose(row, fs, rpm, bearing).evidence
            scores[i] = [item.score_db for item in evidence]
    return np.column_stack([bands, sk, scores])


def extract_array(
    x: npt.ArrayLike,
    fs: float,
    preset: Preset = "efficient",
    rpm: float | None = None,
    bearing: BearingGeometry | None = None,
    axis: int = -1,
) -> npt.NDArray[np.float64]:
    """Compute a preset's features for every slice of `x` along `axis`.

    Parameters
    ----------
    x : array_like
        Acceleration in g, finite; ``efficient`` and ``full`` need at least 32 samples.
    fs : float
        Sampling frequency in Hz; ``efficient`` and ``full`` need ``fs > 20`` Hz.
    preset : {"minimal", "efficient", "full"}, optional
        Feature set, see the module docstring.
    rpm : float, optional
        Shaft speed in rev/min, for the ``full`` preset's defect scores.
    bearing : BearingGeometry, optional
        Bearing geometry, for the ``full`` preset's defect scores.
    axis : int, optional
        Time axis, the last by default.

    Returns
    -------
    numpy.ndarray
        ``float64`` array shaped like `x` with `axis` replaced by a last axis of
        ``len(feature_names(preset))`` features, in that order.

    Raises
    ------
    SignalError
        On an unknown preset, bad arguments, or (``full`` with `rpm` and `bearing`) a window
        too short to resolve the shaft harmonics.
    """
    names = feature_names(preset)
    fs = positive_finite("fs", fs)
    if rpm is not None:
        rpm = positive_finite("rpm", rpm)
    arr, _, ax = check_signal(x, axis, min_samples=1 if preset == "minimal" else 32)
    moved = np.moveaxis(arr, ax, -1)
    columns = [
        np.asarray(_TIME_DOMAIN[name](moved), dtype=np.float64)
        for name in names
        if name in _TIME_DOMAIN
    ]
    if preset != "minimal":
        if fs <= 20.0:
            raise SignalError(f"fs must exceed 20 Hz for the {preset!r} preset, got {fs}")
        edges = np.linspace(0.0, fs / 2.0, _N_BANDS + 1)
        bands = [(float(lo), float(hi)) for lo, hi in itertools.pairwise(edges)]
        powers = band_power(moved, fs, bands)
        columns += [np.asarray(powers[..., i], dtype=np.float64) for i in range(_N_BANDS)]
        columns.append(np.asarray(velocity_rms(moved, fs, (10.0, min(1_000.0, fs / 2.0)))))
    table = np.stack(columns, axis=-1)
    if preset == "full":
        rows = moved.reshape(-1, moved.shape[-1])
        extra = _full_features(rows, fs, rpm, bearing).reshape(*moved.shape[:-1], -1)
        table = np.concatenate([table, extra], axis=-1)
    return np.asarray(table, dtype=np.float64)


def extract(
    x: npt.ArrayLike,
    fs: float,
    preset: Preset = "efficient",
    rpm: float | None = None,
    bearing: BearingGeometry | None = None,
) -> dict[str, float]:
    """Compute a preset's features for one 1-D signal, as ``{name: value}`` in column order.

    See `extract_array` for the parameters; `x` must be 1-D here.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal(12_000)
    >>> features = extract(x, 12_000.0, "efficient")
    >>> len(features), round(features["kurtosis"], 1)
    (17, 3.0)
    """
    if np.ndim(x) != 1:
        raise SignalError(f"extract takes a 1-D signal, got {np.ndim(x)} dimensions")
    values = extract_array(x, fs, preset, rpm, bearing)
    return {name: float(value) for name, value in zip(feature_names(preset), values, strict=True)}
