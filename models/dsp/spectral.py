"""Spectra of vibration signals: amplitude spectrum, Welch PSD, band power, order spectrum.

Frequencies are in Hz, orders in multiples of the shaft speed. For `x` in g, amplitude spectra
are in g and power spectral densities in g**2/Hz (as `scipy.signal.welch`: "Pxx has units of
V**2/Hz if x is in V"). Output arrays keep ``float32`` for ``float32`` input and are ``float64``
otherwise; frequency and order axes are always ``float64``. Spectral kurtosis and the
kurtogram are in `models.dsp.kurtogram`.

Examples
--------
A 1 s record of a 0.5 g, 50 Hz sine has a 0.5 g line at 50 Hz and a mean square of 0.125 g**2:

>>> import numpy as np
>>> t = np.arange(1_000) / 1_000.0
>>> f, a = amplitude_spectrum(0.5 * np.sin(2 * np.pi * 50.0 * t), 1_000.0)
>>> float(f[np.argmax(a)]), round(float(a.max()), 6)
(50.0, 0.5)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import interpolate, signal

from models.dsp._validate import (
    Band,
    FloatArray,
    check_band,
    check_signal,
    positive_finite,
    positive_int,
)
from models.errors import SignalError

__all__ = [
    "amplitude_spectrum",
    "band_power",
    "order_spectrum",
    "welch_psd",
]

Float64Array = npt.NDArray[np.float64]


def _hann_amplitude(arr: Float64Array, axis: int) -> Float64Array:
    """One-sided Hann amplitude spectrum of mean-removed `arr` along `axis` (no checks)."""
    n = arr.shape[axis]
    centred = arr - arr.mean(axis=axis, keepdims=True)
    window = signal.windows.hann(n, sym=False) if n > 1 else np.ones(1)
    shape = [1] * arr.ndim
    shape[axis] = n
    spectrum = np.abs(np.fft.rfft(centred * window.reshape(shape), axis=axis))
    scale = np.full(n // 2 + 1, 2.0 / float(window.sum()))
    scale[0] /= 2.0
    if n % 2 == 0:
        scale[-1] /= 2.0
    shape[axis] = n // 2 + 1
    return np.asarray(spectrum * scale.reshape(shape), dtype=np.float64)


def amplitude_spectrum(
    x: npt.ArrayLike, fs: float, axis: int = -1
) -> tuple[Float64Array, FloatArray]:
    """One-sided amplitude spectrum with a Hann window, corrected for its coherent gain.

    The mean is removed first. A sine of amplitude ``A`` whose frequency falls on a bin shows as
    a line of height ``A`` (off-bin, at most 1.4 dB lower: the Hann scalloping loss).

    Parameters
    ----------
    x : array_like
        Real signal, e.g. acceleration in g; finite, non-empty.
    fs : float
        Sampling frequency in Hz.
    axis : int, optional
        Time axis, the last by default.

    Returns
    -------
    freqs : numpy.ndarray
        ``numpy.fft.rfftfreq(n, 1/fs)`` in Hz for ``n`` samples along `axis`.
    amplitude : numpy.ndarray
        Peak amplitude per line in the units of `x` (g for g), ``n // 2 + 1`` points along
        `axis`.

    Raises
    ------
    SignalError
        On a non-positive `fs`, an empty, non-finite or non-real `x` or an invalid `axis`.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(1_000) / 1_000.0
    >>> f, a = amplitude_spectrum(0.5 * np.cos(2 * np.pi * 50.0 * t), 1_000.0)
    >>> float(f[np.argmax(a)]), round(float(a.max()), 6)
    (50.0, 0.5)
    """
    fs = positive_finite("fs", fs)
    arr, dtype, ax = check_signal(x, axis)
    amp = _hann_amplitude(arr, ax)
    freqs = np.fft.rfftfreq(arr.shape[ax], d=1.0 / fs)
    return np.asarray(freqs, dtype=np.float64), np.asarray(amp, dtype=dtype)


def _nperseg(value: object, n: int, default: int) -> int:
    if value is None:
        return min(n, default)
    seg = positive_int("nperseg", value, minimum=2)
    if seg > n:
        raise SignalError(f"nperseg ({seg}) exceeds the {n} samples along the time axis")
    return seg


def welch_psd(
    x: npt.ArrayLike, fs: float, nperseg: int | None = None, axis: int = -1
) -> tuple[Float64Array, FloatArray]:
    """Power spectral density by Welch's method (`scipy.signal.welch`, Hann, 50 % overlap).

    Parameters
    ----------
    x : array_like
        Real signal, e.g. acceleration in g; finite, at least 2 samples along `axis`.
    fs : float
        Sampling frequency in Hz.
    nperseg : int, optional
        Segment length in samples, ``2 <= nperseg <= n``; ``min(n, 1024)`` by default. The
        frequency resolution is ``fs / nperseg``.
    axis : int, optional
        Time axis, the last by default.

    Returns
    -------
    freqs : numpy.ndarray
        Frequencies in Hz, ``nperseg // 2 + 1`` points.
    psd : numpy.ndarray
        One-sided density in units of `x`**2/Hz (g**2/Hz for g); integrating it over
        frequency gives the variance of `x`. Mean removed per segment (``detrend="constant"``).

    Raises
    ------
    SignalError
        On bad `fs`, `nperseg`, `x` or `axis`.

    Examples
    --------
    The density of unit-variance white noise sampled at 100 Hz is ``1 / 50`` g**2/Hz:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal(200_000)
    >>> f, p = welch_psd(x, fs=100.0, nperseg=256)
    >>> round(float(np.median(p)) * 50, 1)
    1.0
    """
    fs = positive_finite("fs", fs)
    arr, dtype, ax = check_signal(x, axis, min_samples=2)
    seg = _nperseg(nperseg, arr.shape[ax], 1024)
    freqs, psd = signal.welch(arr, fs=fs, window="hann", nperseg=seg, axis=ax)
    return np.asarray(freqs, dtype=np.float64), np.asarray(psd, dtype=dtype)


def band_power(
    x: npt.ArrayLike,
    fs: float,
    bands: list[Band] | tuple[Band, ...],
    nperseg: int | None = None,
    axis: int = -1,
) -> FloatArray:
    """Mean-square power of `x` in each frequency band, from the Welch PSD.

    Parameters
    ----------
    x : array_like
        Real signal, e.g. acceleration in g; finite, at least 2 samples along `axis`.
    fs : float
        Sampling frequency in Hz.
    bands : sequence of (float, float)
        Half-open bands ``[low, high)`` in Hz with ``0 <= low < high <= fs/2`` (the last PSD
        line, at ``fs/2``, counts in a band ending at ``fs/2``).
    nperseg : int, optional
        Welch segment length, see `welch_psd`. Bands narrower than ``fs / nperseg`` are
        measured coarsely.
    axis : int, optional
        Time axis, the last by default.

    Returns
    -------
    numpy.ndarray
        Power in units of `x`**2 (g**2), shape ``x.shape`` without `axis` plus
        ``(len(bands),)``. Bands tiling ``[0, fs/2]`` sum to the variance of `x`.

    Raises
    ------
    SignalError
        On an empty or invalid band list, or as for `welch_psd`.

    Examples
    --------
    A sine of amplitude 2 carries ``2**2 / 2 = 2`` g**2, all in the band around it:

    >>> import numpy as np
    >>> t = np.arange(8_192) / 1_024.0
    >>> p = band_power(2.0 * np.sin(2 * np.pi * 100.0 * t), 1_024.0, [(0, 50), (50, 200)])
    >>> [round(float(v), 3) for v in p]
    [0.0, 2.0]
    """
    fs = positive_finite("fs", fs)
    if isinstance(bands, str) or not isinstance(bands, list | tuple) or not bands:
        raise SignalError(f"bands must be a non-empty list of (low, high) pairs, got {bands!r}")
    checked = [check_band(band, fs, closed=True) for band in bands]
    freqs, psd = welch_psd(x, fs, nperseg, axis)
    ax = axis % psd.ndim
    psd64 = np.moveaxis(psd.astype(np.float64), ax, -1)
    df = float(freqs[1] - freqs[0])
    nyquist = fs / 2.0
    powers = []
    for low, high in checked:
        inside = (freqs >= low) & ((freqs < high) | ((high == nyquist) & (freqs == high)))
        powers.append(psd64[..., inside].sum(axis=-1) * df)
    return np.asarray(np.stack(powers, axis=-1), dtype=psd.dtype)


def order_spectrum(
    x: npt.ArrayLike,
    fs: float,
    rpm: float | npt.ArrayLike,
    axis: int = -1,
) -> tuple[Float64Array, FloatArray]:
    """Amplitude spectrum against shaft order (multiples of the rotation speed).

    With a constant `rpm` the frequency axis of `amplitude_spectrum` is divided by the shaft
    rate ``rpm / 60``. With a speed profile (one rpm value per sample) the signal is first
    resampled to the angle domain (computed order tracking: shaft angle by trapezoidal
    integration of the speed, cubic-spline interpolation onto equal angle steps, as many samples
    as in the time domain), so lines that follow the speed stay sharp.

    Parameters
    ----------
    x : array_like
        Real signal, e.g. acceleration in g; finite, at least 4 samples along `axis`.
    fs : float
        Sampling frequency in Hz.
    rpm : float or array_like
        Shaft speed in rev/min: a positive number, or a 1-D positive profile with one value
        per sample along `axis`.
    axis : int, optional
        Time axis, the last by default.

    Returns
    -------
    orders : numpy.ndarray
        Orders (dimensionless, cycles per revolution), spaced ``1 / revolutions``.
    amplitude : numpy.ndarray
        Amplitude per order line in the units of `x` (Hann, coherent gain corrected).

    Raises
    ------
    SignalError
        On a non-positive or mis-sized `rpm`, or as for `amplitude_spectrum`.

    Examples
    --------
    A line at 90 Hz on a 1800 rpm (30 Hz) shaft is order 3:

    >>> import numpy as np
    >>> t = np.arange(6_000) / 6_000.0
    >>> o, a = order_spectrum(np.sin(2 * np.pi * 90.0 * t), 6_000.0, rpm=1_800.0)
    >>> float(o[np.argmax(a)])
    3.0
    """
    fs = positive_finite("fs", fs)
    arr, dtype, ax = check_signal(x, axis, min_samples=4)
    n = arr.shape[ax]
    speed = np.asarray(rpm)
    if speed.ndim == 0:
        shaft_hz = positive_finite("rpm", rpm) / 60.0
        freqs, amp = amplitude_spectrum(arr, fs, ax)
        return freqs / shaft_hz, np.asarray(amp, dtype=dtype)
    if speed.ndim != 1 or speed.shape[0] != n or speed.dtype.kind not in "fiu":
        raise SignalError(f"an rpm profile must be 1-D with {n} values (one per sample)")
    speed = speed.astype(np.float64)
    if not (np.all(np.isfinite(speed)) and np.all(speed > 0)):
        raise SignalError("an rpm profile must be positive and finite")
    revs = np.concatenate(([0.0], np.cumsum((speed[1:] + speed[:-1]) / 2.0) / 60.0 / fs))
    grid = np.linspace(0.0, revs[-1], n, endpoint=False)
    spline = interpolate.CubicSpline(revs, arr, axis=ax)
    resampled = np.asarray(spline(grid), dtype=np.float64)
    amp = _hann_amplitude(resampled, ax)
    orders = np.fft.rfftfreq(n, d=float(revs[-1]) / n)
    return np.asarray(orders, dtype=np.float64), np.asarray(amp, dtype=dtype)
