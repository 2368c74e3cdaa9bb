"""Envelope analysis: band-pass, Hilbert envelope and envelope spectrum.

Bearing defects excite structural resonances with short impulses repeated at the defect
frequency. Band-passing around a resonance and demodulating with the Hilbert transform turns
that impulse train into a low-frequency envelope whose spectrum shows lines at the defect
frequency and its harmonics (Randall & Antoni, "Rolling element bearing diagnostics - A
tutorial", MSSP 25(2), 2011, section 3.2).

The band to demodulate is, unless given, the one where the signal is most impulsive according
to the kurtogram (`models.dsp.kurtogram.select_band`; Randall & Antoni 2011, section 3.3).
``band=None`` demodulates the whole signal without filtering.

Output arrays keep ``float32`` for ``float32`` input and are ``float64`` otherwise.

Examples
--------
A 3 kHz carrier amplitude-modulated at 100 Hz with depth 0.5 has an envelope spectrum line of
amplitude 0.5 at 100 Hz:

>>> import numpy as np
>>> fs = 12_000.0
>>> t = np.arange(12_000) / fs
>>> x = (1 + 0.5 * np.cos(2 * np.pi * 100 * t)) * np.cos(2 * np.pi * 3_000 * t)
>>> freqs, amp = envelope_spectrum(x, fs, band=None)
>>> float(freqs[np.argmax(amp)]), round(float(amp.max()), 3)
(100.0, 0.5)
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import signal

from models.dsp._validate import (
    Band,
    FloatArray,
    check_band,
    check_signal,
    positive_finite,
)
from models.dsp.kurtogram import select_band
from models.dsp.spectral import amplitude_spectrum
from models.errors import SignalError

__all__ = ["BandChoice", "envelope", "envelope_spectrum", "peak_to_floor_db"]

BandChoice = Band | Literal["kurtogram"] | None
"""A band ``(low, high)`` in Hz, ``"kurtogram"`` to pick it by spectral kurtosis, or ``None``."""

_BUTTER_ORDER = 4  # band-pass order; sosfiltfilt doubles it (zero phase)


@lru_cache(maxsize=512)
def _butter_sos(low: float, high: float, fs: float) -> npt.NDArray[np.float64]:
    """Second-order sections of the order-4 Butterworth passing ``(low, high)`` at `fs` Hz.

    Cached: designing the filter (``butter`` and ``zpk2sos``) costs about 1 ms, more than
    filtering a 2,048-sample window with it, and a stream repeats the same few bands (a
    kurtogram level's bands are fixed by `fs`). The array returned is read-only; scipy's
    filters need a writable copy.
    """
    nyquist = fs / 2.0
    if low <= 0.0:
        sos = signal.butter(_BUTTER_ORDER, high, btype="lowpass", fs=fs, output="sos")
    elif high >= nyquist:
        sos = signal.butter(_BUTTER_ORDER, low, btype="highpass", fs=fs, output="sos")
    else:
        sos = signal.butter(_BUTTER_ORDER, (low, high), btype="bandpass", fs=fs, output="sos")
    out: npt.NDArray[np.float64] = np.asarray(sos, dtype=np.float64)
    out.setflags(write=False)
    return out


def _filter(x: npt.NDArray[np.float64], fs: float, band: Band, axis: int) -> Any:
    """Zero-phase Butterworth filter passing `band`; an edge at 0 or fs/2 is left open."""
    low, high = band
    nyquist = fs / 2.0
    if low <= 0.0 and high >= nyquist:
        return x
    sos = _butter_sos(float(low), float(high), float(fs))
    # sosfiltfilt's default edge padding; it refuses signals not longer than this.
    padlen = 3 * (2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum())))
    if x.shape[axis] <= padlen:
        raise SignalError(
            f"x has {x.shape[axis]} samples along axis {axis}; band-pass filtering needs "
            f"more than {padlen}"
        )
    return signal.sosfiltfilt(sos.copy(), x, axis=axis)


def _band_limited(
    arr: npt.NDArray[np.float64],
    fs: float,
    band: object,
    axis: int,
    max_level: int,
    min_bandwidth_hz: float | None,
) -> npt.NDArray[np.float64]:
    """`arr` filtered to the requested band (the same band for all slices, or one each)."""
    if band is None:
        return arr
    if not (isinstance(band, str) and band == "kurtogram"):
        return np.asarray(_filter(arr, fs, check_band(band, fs), axis))
    bands = select_band(arr, fs, max_level, min_bandwidth_hz, axis)
    moved = np.moveaxis(arr, axis, -1)
    out = np.empty_like(moved)
    for index in np.ndindex(moved.shape[:-1]):
        low, high = (float(edge) for edge in bands[index])
        out[index] = _filter(moved[index], fs, (low, high), -1)
    return np.moveaxis(out, -1, axis)


def envelope(
    x: npt.ArrayLike,
    fs: float,
    band: BandChoice = "kurtogram",
    axis: int = -1,
    *,
    max_level: int = 6,
    min_bandwidth_hz: float | None = None,
) -> FloatArray:
    """Compute the amplitude envelope of a signal after an optional band-pass filter.

    Parameters
    ----------
    x : array_like
        Real signal, e.g. acceleration in g; any shape, finite, non-empty.
    fs : float
        Sampling frequency in Hz.
    band : tuple of float or "kurtogram" or None, optional
        ``(low, high)`` pass band in Hz, ``0 < low < high < fs/2``: `x` is first filtered with
        a zero-phase order-4 Butterworth band-pass (``sosfiltfilt``). ``"kurtogram"`` (the
        default) picks, for each slice, the band with the largest spectral kurtosis
        (`models.dsp.kurtogram.select_band` with `max_level` and `min_bandwidth_hz`); a chosen
        band that reaches 0 Hz or ``fs/2`` becomes a low- or high-pass. ``None`` skips the
        filter and demodulates the whole signal.
    axis : int, optional
        Time axis of `x`, the last one by default.
    max_level : int, optional
        Deepest kurtogram level when ``band="kurtogram"``.
    min_bandwidth_hz : float, optional
        Narrowest band the kurtogram may choose, in Hz.

    Returns
    -------
    numpy.ndarray
        ``|hilbert(x)|`` with the shape of `x`, in the units of `x` (g in, g out).

    Raises
    ------
    SignalError
        On a non-positive `fs`, a band outside ``(0, fs/2)``, an empty, non-finite or complex
        `x`, an invalid `axis`, or a signal too short for the band-pass filter or kurtogram.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(1_000) / 1_000.0
    >>> env = envelope(2.0 * np.sin(2 * np.pi * 50 * t), fs=1_000.0, band=None)
    >>> bool(np.allclose(env, 2.0))
    True
    """
    fs = positive_finite("fs", fs)
    arr, dtype, ax = check_signal(x, axis)
    filtered = _band_limited(arr, fs, band, ax, max_level, min_bandwidth_hz)
    analytic = signal.hilbert(filtered, axis=ax)
    return np.asarray(np.abs(analytic), dtype=dtype)


def envelope_spectrum(
    x: npt.ArrayLike,
    fs: float,
    band: BandChoice = "kurtogram",
    axis: int = -1,
    *,
    max_level: int = 6,
    min_bandwidth_hz: float | None = None,
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
    band : tuple of float or "kurtogram" or None, optional
        Band demodulated, see `envelope`; chosen by spectral kurtosis by default.
    axis : int, optional
        Time axis of `x`, the last one by default.
    max_level, min_bandwidth_hz : optional
        Kurtogram settings when ``band="kurtogram"``, see `envelope`.

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
    env = envelope(x, fs, band, axis, max_level=max_level, min_bandwidth_hz=min_bandwidth_hz)
    return amplitude_spectrum(env, fs, axis)


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
    f0 = positive_finite("f0", f0)
    tol_hz = positive_finite("tol_hz", tol_hz)
    floor_bw_hz = positive_finite("floor_bw_hz", floor_bw_hz)
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
