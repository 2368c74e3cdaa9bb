"""Envelope analysis: band-pass, Hilbert envelope and envelope spectrum.

Bearing defects excite structural resonances with short impulses repeated at the defect
frequency. Band-passing around a resonance and demodulating with the Hilbert transform turns
that impulse train into a low-frequency envelope whose spectrum shows lines at the defect
frequency and its harmonics (Randall & Antoni, "Rolling element bearing diagnostics - A
tutorial", MSSP 25(2), 2011, section 3.2).

Output arrays keep ``float32`` for ``float32`` input and are ``float64`` otherwise.

Examples
--------
A 3 kHz carrier amplitude-modulated at 100 Hz with depth 0.5 has an envelope spectrum line of
amplitude 0.5 at 100 Hz:

>>> import numpy as np
>>> fs = 12_000.0
>>> t = np.arange(12_000) / fs
>>> x = (1 + 0.5 * np.cos(2 * np.pi * 100 * t)) * np.cos(2 * np.pi * 3_000 * t)
>>> freqs, amp = envelope_spectrum(x, fs)
>>> float(freqs[np.argmax(amp)]), round(float(amp.max()), 3)
(100.0, 0.5)
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import signal

from models.errors import SignalError

__all__ = ["envelope", "envelope_spectrum", "peak_to_floor_db"]

FloatArray = npt.NDArray[np.floating[Any]]

_BUTTER_ORDER = 4  # band-pass order; sosfiltfilt doubles it (zero phase)


def _positive_finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SignalError(f"{name} must be a real number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise SignalError(f"{name} must be positive and finite, got {value!r}")
    return float(value)


def _check_signal(
    x: npt.ArrayLike, axis: int
) -> tuple[npt.NDArray[np.float64], np.dtype[Any], int]:
    """Return `x` as float64, the output dtype and the normalised axis."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise SignalError(f"x must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise SignalError("x must have at least one dimension")
    if not -arr.ndim <= axis < arr.ndim:
        raise SignalError(f"axis {axis} is out of range for an array of {arr.ndim} dimensions")
    if arr.size == 0:
        raise SignalError("x must not be empty")
    if not np.all(np.isfinite(arr)):
        raise SignalError("x contains NaN or infinite values")
    out_dtype = np.dtype(np.float32) if arr.dtype == np.float32 else np.dtype(np.float64)
    return arr.astype(np.float64, copy=False), out_dtype, axis % arr.ndim


def _check_band(band: tuple[float, float], fs: float) -> tuple[float, float]:
    try:
        low, high = (float(edge) for edge in band)
    except (TypeError, ValueError) as exc:
        raise SignalError(f"band must be a (low, high) pair in Hz, got {band!r}") from exc
    if not (0.0 < low < high < fs / 2.0):
        raise SignalError(f"band must satisfy 0 < low < high < fs/2 = {fs / 2.0} Hz, got {band!r}")
    return low, high


def _bandpass(x: npt.NDArray[np.float64], fs: float, band: tuple[float, float], axis: int) -> Any:
    sos = signal.butter(_BUTTER_ORDER, band, btype="bandpass", fs=fs, output="sos")
    # sosfiltfilt's default edge padding; it refuses signals not longer than this.
    padlen = 3 * (2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum())))
    if x.shape[axis] <= padlen:
        raise SignalError(
            f"x has {x.shape[axis]} samples along axis {axis}; band-pass filtering needs "
            f"more than {padlen}"
        )
    return signal.sosfiltfilt(sos, x, axis=axis)


def envelope(
    x: npt.ArrayLike,
    fs: float,
    band: tuple[float, float] | None = None,
    axis: int = -1,
) -> FloatArray:
    """Compute the amplitude envelope of a signal, optionally after a band-pass filter.

    Parameters
    ----------
    x : array_like
        Real signal, e.g. acceleration in g; any shape, finite, non-empty.
    fs : float
        Sampling frequency in Hz.
    band : tuple of float, optional
        ``(low, high)`` pass band in Hz, ``0 < low < high < fs/2``. When given, `x` is first
        filtered with a zero-phase order-4 Butterworth band-pass (``sosfiltfilt``).
    axis : int, optional
        Time axis of `x`, the last one by default.

    Returns
    -------
    numpy.ndarray
        ``|hilbert(x)|`` with the shape of `x`, in the units of `x` (g in, g out).

    Raises
    ------
    SignalError
        On a non-positive `fs`, a band outside ``(0, fs/2)``, an empty, non-finite or complex
        `x`, an invalid `axis`, or a signal too short for the band-pass filter.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(1_000) / 1_000.0
    >>> env = envelope(2.0 * np.sin(2 * np.pi * 50 * t), fs=1_000.0)
    >>> bool(np.allclose(env, 2.0))
    True
    """
    fs = _positive_finite("fs", fs)
    arr, out_dtype, axis = _check_signal(x, axis)
    filtered = arr if band is None else _bandpass(arr, fs, _check_band(band, fs), axis)
    analytic = signal.hilbert(filtered, axis=axis)
    return np.asarray(np.abs(analytic), dtype=out_dtype)


def envelope_spectrum(
    x: npt.ArrayLike,
    fs: float,
    band: tuple[float, float] | None = None,
    axis: int = -1,
) -> tuple[npt.NDArray[np.float64], FloatArray]:
    """Compute the one-sided amplitude spectrum of the signal envelope.

    The envelope (see `envelope`) has its mean removed and is weighted with a periodic Hann
    window; amplitudes are corrected for the window's coherent gain, so a sinusoidal envelope
    component of amplitude ``A`` shows as a line of height ``A`` when it falls on a bin.

    Parameters
    ----------
    x : array_like
        Real signal, e.g. acceleration in g; any shape, finite, non-empty.
    fs : float
        Sampling frequency in Hz.
    band : tuple of float, optional
        ``(low, high)`` band-pass in Hz applied before demodulation, see `envelope`.
    axis : int, optional
        Time axis of `x`, the last one by default.

    Returns
    -------
    freqs : numpy.ndarray
        Frequencies in Hz, ``numpy.fft.rfftfreq(n, 1/fs)`` for ``n`` samples along `axis`.
    amplitude : numpy.ndarray
        Envelope amplitude spectrum in the units of `x` (g for g), with ``n // 2 + 1`` points
        along `axis`.

    Raises
    ------
    SignalError
        As for `envelope`.
    """
    env = envelope(x, fs, band, axis)
    axis = axis % env.ndim
    n = env.shape[axis]
    centred = env.astype(np.float64) - env.mean(axis=axis, dtype=np.float64, keepdims=True)
    window = signal.windows.hann(n, sym=False) if n > 1 else np.ones(1)
    shape = [1] * env.ndim
    shape[axis] = n
    spectrum = np.abs(np.fft.rfft(centred * window.reshape(shape), axis=axis))
    scale = np.full(n // 2 + 1, 2.0 / float(window.sum()))
    scale[0] /= 2.0
    if n % 2 == 0:
        scale[-1] /= 2.0
    shape[axis] = n // 2 + 1
    amplitude = np.asarray(spectrum * scale.reshape(shape), dtype=env.dtype)
    return np.asarray(np.fft.rfftfreq(n, d=1.0 / fs), dtype=np.float64), amplitude


def peak_to_floor_db(
    freqs: npt.ArrayLike,
    spectrum: npt.ArrayLike,
    f0: float,
    tol_hz: float,
    floor_bw_hz: float,
) -> float:
    """Measure how far a spectral line at `f0` stands above the local noise floor.

    Parameters
    ----------
    freqs : array_like
        1-D frequencies in Hz, increasing.
    spectrum : array_like
        1-D amplitude spectrum (non-negative, e.g. from `envelope_spectrum`), same length.
    f0 : float
        Frequency of the expected line in Hz.
    tol_hz : float
        Half-width in Hz of the search zone ``|f - f0| <= tol_hz`` (covers slip and bin width).
    floor_bw_hz : float
        Half-width in Hz of the floor band, ``tol_hz < |f - f0| <= floor_bw_hz``.

    Returns
    -------
    float
        ``20 log10(peak / floor)`` in dB: the largest amplitude in the search zone over the
        median amplitude in the floor band. ``inf`` for a line over a zero floor, 0 when both
        are zero.

    Raises
    ------
    SignalError
        On mismatched or non-finite inputs, negative amplitudes, ``floor_bw_hz <= tol_hz`` or
        zones without any bin.

    Examples
    --------
    >>> import numpy as np
    >>> f = np.arange(200.0)
    >>> s = np.ones(200)
    >>> s[100] = 10.0
    >>> peak_to_floor_db(f, s, f0=100.0, tol_hz=1.0, floor_bw_hz=20.0)
    20.0
    """
    f = np.asarray(freqs, dtype=np.float64)
    s = np.asarray(spectrum, dtype=np.float64)
    if f.ndim != 1 or f.shape != s.shape or f.size == 0:
        raise SignalError("freqs and spectrum must be non-empty 1-D arrays of equal length")
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(s))):
        raise SignalError("freqs and spectrum must be finite")
    if np.any(s < 0):
        raise SignalError("spectrum must be non-negative (an amplitude spectrum)")
    f0 = _positive_finite("f0", f0)
    tol_hz = _positive_finite("tol_hz", tol_hz)
    floor_bw_hz = _positive_finite("floor_bw_hz", floor_bw_hz)
    if floor_bw_hz <= tol_hz:
        raise SignalError(f"floor_bw_hz ({floor_bw_hz}) must exceed tol_hz ({tol_hz})")
    distance = np.abs(f - f0)
    peak_zone = s[distance <= tol_hz]
    floor_zone = s[(distance > tol_hz) & (distance <= floor_bw_hz)]
    if peak_zone.size == 0 or floor_zone.size == 0:
        raise SignalError(f"no spectral bins near f0={f0} Hz with tol {tol_hz} / {floor_bw_hz} Hz")
    peak, floor = float(peak_zone.max()), float(np.median(floor_zone))
    if floor == 0.0:
        return math.inf if peak > 0.0 else 0.0
    return 20.0 * math.log10(peak / floor) if peak > 0.0 else -math.inf
