"""Spectral kurtosis and the kurtogram: where in frequency a signal is most impulsive.

A bearing defect's impacts excite a structural resonance; the band around it is where the
vibration is most impulsive, and demodulating that band gives the clearest envelope spectrum.
Spectral kurtosis (SK) measures that impulsiveness per frequency: Antoni, "The spectral
kurtosis: a useful tool for characterising non-stationary signals", MSSP 20(2), 2006; the
kurtogram maps it over centre frequency and bandwidth: Antoni, "Fast computation of the
kurtogram for the detection of transient faults", MSSP 21(1), 2007.

Frequencies and band edges are in Hz; SK and kurtosis values are dimensionless.

Examples
--------
Gaussian noise has a spectral kurtosis near 0 at every frequency, a stationary sine -1 at its
own frequency:

>>> import numpy as np
>>> fs = 1_000.0
>>> t = np.arange(20_000) / fs
>>> x = np.sin(2 * np.pi * 125.0 * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size)
>>> f, sk = spectral_kurtosis(x, fs, nperseg=64)
>>> float(f[np.argmin(sk)]), round(float(sk[f == 125.0][0]), 2)
(125.0, -1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import signal

from models.dsp._validate import Band, FloatArray, check_signal, positive_finite, positive_int
from models.errors import SignalError

__all__ = ["Kurtogram", "kurtogram", "select_band", "spectral_kurtosis"]

Float64Array = npt.NDArray[np.float64]

_MIN_BAND_BINS = 16  # fewest spectral lines (= complex-envelope samples) for a band's kurtosis
_ENERGY_FLOOR = 1e-10  # bands with a smaller share of the energy (-100 dB) count as empty


def spectral_kurtosis(
    x: npt.ArrayLike,
    fs: float,
    nperseg: int = 256,
    axis: int = -1,
) -> tuple[Float64Array, FloatArray]:
    """Spectral kurtosis from the short-time Fourier transform (Antoni 2006, eq. 13).

    ``SK(f) = <|X(t, f)|**4> / <|X(t, f)|**2>**2 - 2``, the average over STFT frames (Hann,
    75 % overlap). It is about 0 for stationary Gaussian noise, -1 for a stationary sine and
    large where the signal is impulsive; its estimation noise has a standard deviation of
    about ``2 / sqrt(frames)``.

    Parameters
    ----------
    x : array_like
        Real signal, finite, at least `nperseg` samples along `axis`.
    fs : float
        Sampling frequency in Hz.
    nperseg : int, optional
        STFT window length in samples (frequency resolution ``fs / nperseg``), at least 4.
    axis : int, optional
        Time axis, the last by default.

    Returns
    -------
    freqs : numpy.ndarray
        ``nperseg // 2 + 1`` frequencies in Hz.
    sk : numpy.ndarray
        Dimensionless SK, `axis` replaced by frequency; NaN at frequencies without energy.

    Raises
    ------
    SignalError
        On bad `fs`, `nperseg`, `x` or `axis`.
    """
    fs = positive_finite("fs", fs)
    seg = positive_int("nperseg", nperseg, minimum=4)
    arr, dtype, ax = check_signal(x, axis, min_samples=seg)
    frames = np.lib.stride_tricks.sliding_window_view(np.moveaxis(arr, ax, -1), seg, axis=-1)
    frames = frames[..., :: max(seg // 4, 1), :]
    window = signal.windows.hann(seg, sym=False)
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # (..., frames, freqs)
    m2 = power.mean(axis=-2)
    m4 = (power**2).mean(axis=-2)
    energetic = m2 > 1e-12 * max(float(m2.max()), np.finfo(np.float64).tiny)
    safe = np.where(energetic, m2, 1.0)
    sk = np.where(energetic, m4 / safe**2 - 2.0, np.nan)
    freqs = np.fft.rfftfreq(seg, d=1.0 / fs)
    return np.asarray(freqs, dtype=np.float64), np.asarray(np.moveaxis(sk, -1, ax), dtype=dtype)


@dataclass(frozen=True, eq=False)
class Kurtogram:
    """Kurtosis of the complex envelope in each band of a 1/3-binary tree of bands.

    Attributes
    ----------
    levels : numpy.ndarray
        ``(m,)`` level of each candidate band: ``k`` for bands of width ``fs / 2**(k+1)``,
        ``k + 0.6`` for bands of width ``fs / (3 * 2**k)`` (Antoni's labels;
        ``log2(3) = 1.58``); each level tiles ``[0, fs/2]`` and adds the half-shifted tiling.
    bands : numpy.ndarray
        ``(m, 2)`` band edges ``(low, high)`` in Hz.
    kurtosis : numpy.ndarray
        ``(..., m)`` kurtosis ``<|c|**4> / <|c|**2>**2 - 2`` of each band's complex envelope
        ``c``: 0 for Gaussian noise, large for repetitive transients; NaN for a band without
        energy (under 1e-10 of the signal's). Leading axes are those of the input other than
        its time axis.
    """

    levels: Float64Array
    bands: Float64Array
    kurtosis: Float64Array

    def best(self) -> tuple[Float64Array, Float64Array]:
        """Return the band with the largest kurtosis and that kurtosis, per input slice.

        Returns
        -------
        band : numpy.ndarray
            ``(..., 2)`` band edges in Hz; ``(2,)`` for a 1-D input.
        kurtosis : numpy.ndarray
            ``(...)`` the kurtosis of that band.
        """
        filled = np.where(np.isnan(self.kurtosis), -np.inf, self.kurtosis)
        index = np.argmax(filled, axis=-1)
        return self.bands[index], np.take_along_axis(filled, index[..., None], axis=-1)[..., 0]


def _tree_bands(fs: float, max_level: int) -> tuple[list[float], list[Band]]:
    levels: list[float] = [0.0]
    bands: list[Band] = [(0.0, fs / 2.0)]
    for k in range(1, max_level + 1):
        for count, label in ((3 * 2 ** (k - 1), k - 0.4), (2**k, float(k))):
            if label < 1.0:  # the 1/3 level below level 1 is level 0.6 with 1.5 bands: none
                continue
            width = fs / 2.0 / count
            starts = np.arange(2 * count - 1) * width / 2.0  # the partition and its half-shift
            levels += [round(label, 1)] * starts.size
            bands += [(float(low), float(low) + width) for low in starts]
    return levels, bands


def kurtogram(
    x: npt.ArrayLike,
    fs: float,
    max_level: int = 6,
    axis: int = -1,
) -> Kurtogram:
    """Kurtogram-lite: the SK of every band of Antoni's 1/3-binary tree, computed by FFT.

    The bands are those of the fast kurtogram (Antoni 2007): level ``k`` splits ``[0, fs/2]``
    into ``2**k`` equal bands, level ``k + 0.6`` into ``3 * 2**(k-1)``; each level also has
    the same bands shifted by half a width, so a resonance on a band edge is not split. Each
    band's complex
    envelope is obtained by selecting its lines of one FFT of the whole signal and inverse
    transforming them (an ideal band-pass with decimation) instead of the quasi-analytic filter
    bank; its kurtosis is ``<|c|**4> / <|c|**2>**2 - 2``. Bands with fewer than 16 spectral lines
    are skipped (NaN). Cost: one FFT of the signal plus ``4 * max_level`` inverse FFTs of its
    total length.

    Parameters
    ----------
    x : array_like
        Real signal, finite, at least 32 samples along `axis`.
    fs : float
        Sampling frequency in Hz.
    max_level : int, optional
        Deepest level, ``0 <= max_level <= 12``; the narrowest bands are
        ``fs / 2**(max_level + 1)`` wide.
    axis : int, optional
        Time axis, the last by default.

    Returns
    -------
    Kurtogram
        Candidate bands and their kurtosis; ``Kurtogram.best()`` picks the band.

    Raises
    ------
    SignalError
        On bad `fs`, `max_level`, `x` or `axis`.

    Examples
    --------
    Decaying 3.3 kHz bursts at 50 Hz in white noise are most impulsive in a band around them:

    >>> import numpy as np
    >>> fs, n = 12_000.0, 24_000
    >>> t = np.arange(240) / fs
    >>> burst = np.exp(-800.0 * t) * np.sin(2 * np.pi * 3_300.0 * t)
    >>> x = np.tile(burst, n // 240) + 0.2 * np.random.default_rng(1).standard_normal(n)
    >>> (low, high), k = kurtogram(x, fs, max_level=4).best()
    >>> bool(low < 3_300.0 < high), bool(k > 1.0)
    (True, True)
    """
    fs = positive_finite("fs", fs)
    if isinstance(max_level, bool) or not isinstance(max_level, int) or not 0 <= max_level <= 12:
        raise SignalError(f"max_level must be an int in [0, 12], got {max_level!r}")
    arr, _, ax = check_signal(x, axis, min_samples=2 * _MIN_BAND_BINS)
    moved = np.moveaxis(arr, ax, -1)
    n = moved.shape[-1]
    spectrum = np.fft.rfft(moved - moved.mean(axis=-1, keepdims=True), axis=-1)
    levels, bands = _tree_bands(fs, max_level)
    line_power = np.abs(spectrum) ** 2
    # A band holding less than this share of the signal's energy holds only rounding noise.
    floor = _ENERGY_FLOOR * line_power.sum(axis=-1)
    values = np.full((*moved.shape[:-1], len(bands)), np.nan)
    for i, (low, high) in enumerate(bands):
        lo, hi = math.ceil(low * n / fs), min(math.ceil(high * n / fs), spectrum.shape[-1])
        if hi - lo < _MIN_BAND_BINS:
            continue
        power = np.abs(np.fft.ifft(spectrum[..., lo:hi], axis=-1)) ** 2
        m2 = power.mean(axis=-1)
        energetic = line_power[..., lo:hi].sum(axis=-1) > floor
        safe = np.where(energetic, m2, 1.0)
        values[..., i] = np.where(energetic, (power**2).mean(axis=-1) / safe**2 - 2.0, np.nan)
    return Kurtogram(
        levels=np.asarray(levels, dtype=np.float64),
        bands=np.asarray(bands, dtype=np.float64),
        kurtosis=values,
    )


def select_band(
    x: npt.ArrayLike,
    fs: float,
    max_level: int = 6,
    min_bandwidth_hz: float | None = None,
    axis: int = -1,
) -> Float64Array:
    """Pick the frequency band where `x` is most impulsive (largest kurtogram value).

    Parameters
    ----------
    x : array_like
        Real signal, finite, at least 32 samples along `axis`.
    fs : float
        Sampling frequency in Hz.
    max_level : int, optional
        Deepest kurtogram level, see `kurtogram`.
    min_bandwidth_hz : float, optional
        Only bands at least this wide compete. An envelope spectrum shows frequencies up to
        the band's width, so for bearing diagnosis this should exceed the highest defect
        harmonic of interest. All bands by default.
    axis : int, optional
        Time axis, the last by default.

    Returns
    -------
    numpy.ndarray
        ``(..., 2)`` band ``(low, high)`` in Hz per slice, ``(2,)`` for 1-D `x`. Edges may
        be 0 or ``fs/2``.

    Raises
    ------
    SignalError
        If no band is wide enough or has energy, or as for `kurtogram`.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal(4_096)
    >>> band = select_band(x, 1_000.0, max_level=3, min_bandwidth_hz=200.0)
    >>> bool(band[1] - band[0] >= 200.0)
    True
    """
    fs = positive_finite("fs", fs)
    result = kurtogram(x, fs, max_level, axis)
    widths = result.bands[:, 1] - result.bands[:, 0]
    if min_bandwidth_hz is not None:
        minimum = positive_finite("min_bandwidth_hz", min_bandwidth_hz)
        keep = widths >= minimum * (1.0 - 1e-9)
        if not keep.any():
            raise SignalError(f"no kurtogram band is {minimum} Hz wide with fs = {fs} Hz")
        result = Kurtogram(result.levels[keep], result.bands[keep], result.kurtosis[..., keep])
    if np.all(np.isnan(result.kurtosis), axis=-1).any():
        raise SignalError("no band has energy: x is constant or too short for the kurtogram")
    return result.best()[0]
