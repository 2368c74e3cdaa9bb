"""Turn windows as an API caller sends them into the batch a model takes.

Pure functions, no I/O or logging. Every refusal raises a subclass of
:class:`~serving.errors.InvalidInputError` whose message tells the caller what to send instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from models.errors import SignalError
from models.metadata import ModelMetadata
from models.windows import fit_length, resample
from serving.errors import InvalidInputError, ResampleError, ShapeError

STANDARD_GRAVITY = 9.80665
"""Metres per second squared in one g (standard gravity, CGPM 1901)."""

G_PER_UNIT: dict[str, float] = {"g": 1.0, "m/s^2": 1.0 / STANDARD_GRAVITY}
"""Acceleration units the API accepts, with the number of g in one unit."""

MAX_ABS_G = 1e6
"""Largest sample magnitude accepted, in g: beyond any accelerometer, and far from overflowing
the model's float32 arithmetic."""

RESAMPLE_TOLERANCE_SAMPLES = 1.0
"""How far a resampled window's length may miss the model's before it is refused."""

RawWindow = Sequence[float] | Sequence[Sequence[float]]
"""One window: samples of a single channel, or one list of samples per channel."""

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]

Windows = Sequence[RawWindow] | npt.NDArray[np.floating[Any]]
"""A request's windows: JSON lists, or an array (batch, channels, samples) from a binary body."""


def stack_windows(windows: Windows) -> FloatArray:
    """Stack windows into one array shaped (batch, channels, samples).

    Parameters
    ----------
    windows
        Each window is a flat list of samples (one channel) or a list of channel lists.

    Returns
    -------
    numpy.ndarray
        float64, (batch, channels, samples), in the units the samples were given in.

    Raises
    ------
    ShapeError
        Empty batch, empty window, channels of unequal length, or windows of unequal shape.
    """
    if isinstance(windows, np.ndarray):  # a binary body, already shaped
        if windows.ndim != 3 or 0 in windows.shape:
            raise ShapeError(
                f"windows must be shaped (batch, channels, samples), got {windows.shape}"
            )
        return windows.astype(np.float64, copy=False)
    if not windows:
        raise ShapeError("'windows' is empty: send at least one window")
    arrays = [_window_array(i, w) for i, w in enumerate(windows)]
    first = arrays[0].shape
    for i, arr in enumerate(arrays[1:], start=1):
        if arr.shape != first:
            raise ShapeError(
                f"window {i} has {_describe(arr.shape)} but window 0 has {_describe(first)};"
                " every window in a request needs the same shape"
            )
    return np.stack(arrays)


def _window_array(index: int, window: RawWindow) -> FloatArray:
    try:
        arr = np.asarray(window, dtype=np.float64)
    except ValueError:  # numpy refuses ragged nested lists
        lengths = [len(ch) if isinstance(ch, Sequence) else 1 for ch in window]
        raise ShapeError(
            f"window {index}: channels have different lengths {lengths}; every channel of a"
            " window needs the same number of samples"
        ) from None
    if arr.ndim == 1:
        arr = arr[np.newaxis]
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ShapeError(f"window {index} holds no samples")
    return arr


def _describe(shape: tuple[int, ...]) -> str:
    channels, samples = shape
    return f"{channels} channel(s) of {samples} samples"


def to_units(x: FloatArray, from_units: str, to_units: str) -> FloatArray:
    """Convert accelerations between units in :data:`G_PER_UNIT` (``m/s^2`` to ``g`` etc.).

    >>> float(to_units(np.array([9.80665]), "m/s^2", "g")[0])
    1.0
    """
    for unit in (from_units, to_units):
        if unit not in G_PER_UNIT:
            raise InvalidInputError(
                f"unsupported units {unit!r}; use one of {', '.join(map(repr, G_PER_UNIT))}"
            )
    if from_units == to_units:
        return x
    return x * (G_PER_UNIT[from_units] / G_PER_UNIT[to_units])


def conform_rate(x: FloatArray, sample_rate_hz: float, metadata: ModelMetadata) -> Float32Array:
    """Resample windows (..., samples) at ``sample_rate_hz`` onto the model's rate and length.

    Returns float32 windows of exactly ``metadata.window_samples`` samples.

    Windows at the model's rate must have exactly its length. At another rate the window must
    cover the same time: its length times ``model_rate / sample_rate_hz`` must land within
    :data:`RESAMPLE_TOLERANCE_SAMPLES` of the model's length; the result is then resampled with
    a polyphase anti-aliasing filter (:func:`models.windows.resample`) and cropped or padded
    to the exact length.

    Raises
    ------
    ShapeError
        A window of the wrong length at the model's own rate.
    ResampleError
        A window that does not cover the model's window duration, or a rate ratio that has no
        small rational approximation.
    """
    fs_model, n_model = metadata.sample_rate_hz, metadata.window_samples
    n_in = x.shape[-1]
    model_window = f"{n_model} samples at {fs_model:g} Hz ({1000 * n_model / fs_model:.4g} ms)"
    if sample_rate_hz == fs_model:
        if n_in != n_model:
            raise ShapeError(f"windows have {n_in} samples; the model takes {model_window}")
        return x.astype(np.float32)
    ratio = fs_model / sample_rate_hz
    needed = n_model / ratio
    if needed < 1:
        raise ResampleError(
            f"{sample_rate_hz:g} Hz is too low a sample rate for a model of {model_window}"
        )
    if abs(n_in * ratio - n_model) > RESAMPLE_TOLERANCE_SAMPLES:
        raise ResampleError(
            f"windows of {n_in} samples at {sample_rate_hz:g} Hz last "
            f"{1000 * n_in / sample_rate_hz:.4g} ms, but the model takes {model_window}; "
            f"at {sample_rate_hz:g} Hz send windows of {needed:.0f} samples"
        )
    try:
        y = resample(x, sample_rate_hz, fs_model, axis=-1)
    except SignalError as exc:
        raise ResampleError(
            f"cannot resample {sample_rate_hz:g} Hz to the model's {fs_model:g} Hz: {exc}"
        ) from exc
    return fit_length(y, n_model, axis=-1)


def prepare_batch(
    windows: Windows, sample_rate_hz: float, units: str, metadata: ModelMetadata
) -> Float32Array:
    """Validate, resample and convert request windows into the model's input batch.

    Parameters
    ----------
    windows
        Request windows (see :func:`stack_windows`).
    sample_rate_hz
        Sample rate of every window, in Hz.
    units
        Units of the samples, a key of :data:`G_PER_UNIT`.
    metadata
        The model's input contract.

    Returns
    -------
    numpy.ndarray
        float32, (batch, metadata.channels, metadata.window_samples), in the model's units.

    Raises
    ------
    InvalidInputError
        Anything the model cannot take; the message says what was expected.
    """
    if not (np.isfinite(sample_rate_hz) and sample_rate_hz > 0):
        raise InvalidInputError(f"sample_rate_hz must be positive and finite: {sample_rate_hz}")
    x = stack_windows(windows)
    if not np.isfinite(x).all():
        raise InvalidInputError(f"{_first_bad(~np.isfinite(x))} contains NaN or infinite samples")
    if x.shape[1] != metadata.channels:
        raise ShapeError(
            f"windows have {x.shape[1]} channel(s); the model takes {metadata.channels}"
        )
    x = to_units(x, units, metadata.units)
    too_large = np.abs(x) > MAX_ABS_G / G_PER_UNIT[metadata.units]
    if too_large.any():
        raise InvalidInputError(
            f"{_first_bad(too_large)} has samples beyond ±{MAX_ABS_G:,.0f} g; check the units"
        )
    return conform_rate(x, sample_rate_hz, metadata)


def _first_bad(bad: npt.NDArray[np.bool_]) -> str:
    index = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0]
    return f"window {int(index)}"
