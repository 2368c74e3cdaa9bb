"""Vibration severity: velocity RMS from acceleration, and the ISO 10816-3 / 20816-3 zones.

ISO 10816-3 (2009), kept unchanged in ISO 20816-3 (2022) for the broadband velocity criterion,
rates industrial machines above 15 kW from the RMS vibration velocity measured on the bearing
housings, over 10-1000 Hz for machines running above 600 rpm (2-1000 Hz below). Four zones:

* **A** newly commissioned machines;
* **B** acceptable for unrestricted long-term operation;
* **C** unsatisfactory for long-term continuous operation: plan a repair;
* **D** severe enough to cause damage.

Zone boundaries in mm/s RMS (ISO 10816-3, tables A.1 and A.2):

============================  =====  =====  =====
group, foundation              A/B    B/C    C/D
============================  =====  =====  =====
1 (300 kW - 50 MW), rigid      2.3    4.5    7.1
1 (300 kW - 50 MW), flexible   3.5    7.1    11.0
2 (15 - 300 kW), rigid         1.4    2.8    4.5
2 (15 - 300 kW), flexible      2.3    4.5    7.1
============================  =====  =====  =====

A foundation is *rigid* when the lowest natural frequency of machine plus support, in the
measuring direction, is at least 25 % above the main excitation (usually the running speed).

Examples
--------
A 50 Hz vibration of 4 mm/s peak (2.83 mm/s RMS) on a 15-300 kW machine on a rigid foundation
is in zone C:

>>> import numpy as np
>>> fs = 10_000.0
>>> t = np.arange(10_000) / fs
>>> accel_g = 4.0e-3 * 2 * np.pi * 50.0 * np.cos(2 * np.pi * 50.0 * t) / STANDARD_GRAVITY
>>> v = float(velocity_rms(accel_g, fs))
>>> round(v, 3), iso_zone(v, group=2, mounting="rigid")
(2.828, 'C')
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

import numpy as np
import numpy.typing as npt

from models.dsp._validate import Band, FloatArray, check_band, check_signal, positive_finite
from models.errors import SignalError

__all__ = [
    "ISO_BAND_HZ",
    "STANDARD_GRAVITY",
    "ZONE_BOUNDARIES_MM_S",
    "MachineGroup",
    "Mounting",
    "Zone",
    "iso_zone",
    "velocity_rms",
    "zone_boundaries",
]

STANDARD_GRAVITY = 9.80665
"""Standard gravity in m/s**2: 1 g."""

ISO_BAND_HZ: Band = (10.0, 1_000.0)
"""The ISO 10816-3 measurement band for machines above 600 rpm, in Hz."""

MachineGroup = Literal[1, 2]
Mounting = Literal["rigid", "flexible"]
Zone = Literal["A", "B", "C", "D"]

ZONE_BOUNDARIES_MM_S: Mapping[tuple[int, str], tuple[float, float, float]] = MappingProxyType(
    {
        (1, "rigid"): (2.3, 4.5, 7.1),
        (1, "flexible"): (3.5, 7.1, 11.0),
        (2, "rigid"): (1.4, 2.8, 4.5),
        (2, "flexible"): (2.3, 4.5, 7.1),
    }
)
"""A/B, B/C and C/D boundaries in mm/s RMS, keyed by (machine group, mounting)."""


@functools.lru_cache(maxsize=64)
def _velocity_lines(
    n: int, fs: float, low: float, high: float
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.complex128], npt.NDArray[np.float64]]:
    """The spectral lines `velocity_rms` keeps, their ``j 2 pi f`` and Parseval weights.

    They depend only on the window length, rate and band, which stay the same window after
    window on a channel, so they are computed once (read-only arrays).
    """
    freqs = np.fft.rfftfreq(n, d=1.0 / fs)
    inside = (freqs >= low) & (freqs <= high)
    jw = np.asarray(2j * np.pi * freqs[inside], dtype=np.complex128)
    # One-sided Parseval: every line but DC and Nyquist stands for two.
    weight = np.asarray(
        np.where((freqs[inside] == fs / 2.0) & (n % 2 == 0), 1.0, 2.0), dtype=np.float64
    )
    for array in (inside, jw, weight):
        array.flags.writeable = False
    return inside, jw, weight


def velocity_rms(
    x: npt.ArrayLike,
    fs: float,
    band: Band = ISO_BAND_HZ,
    axis: int = -1,
) -> FloatArray:
    """RMS vibration velocity in mm/s from acceleration in g, integrated in the frequency domain.

    Each spectral line ``A(f)`` of the acceleration is divided by ``j 2 pi f`` to give the
    velocity line; lines outside `band` are dropped (this is the band-pass and removes the
    integration's blow-up at 0 Hz) and the RMS follows from Parseval's theorem. A rectangular
    window keeps Parseval exact; the record should hold many periods of the lowest frequency
    in `band` (at least 1 s for 10 Hz) so leakage across the band edges stays small.

    Parameters
    ----------
    x : array_like
        Acceleration in g (standard gravity, 9.80665 m/s**2), finite.
    fs : float
        Sampling frequency in Hz, at least ``2 * band[1]``.
    band : tuple of float, optional
        ``(low, high)`` in Hz with ``0 < low < high <= fs/2``; ISO 10816-3's 10-1000 Hz by
        default.
    axis : int, optional
        Time axis, the last by default.

    Returns
    -------
    numpy.ndarray
        Velocity RMS in mm/s per slice, `axis` removed.

    Raises
    ------
    SignalError
        On a band outside ``(0, fs/2]``, or bad `x`, `fs` or `axis`.
    """
    fs = positive_finite("fs", fs)
    low, high = check_band(band, fs, closed=True)
    if low <= 0.0:
        raise SignalError(f"band must start above 0 Hz (velocity is undefined at DC), got {band}")
    arr, dtype, ax = check_signal(x, axis, min_samples=2)
    n = arr.shape[ax]
    spectrum = np.fft.rfft(np.moveaxis(arr, ax, -1) * STANDARD_GRAVITY, axis=-1)  # m/s**2
    inside, jw, weight = _velocity_lines(n, fs, low, high)
    velocity = spectrum[..., inside] / jw  # m/s
    mean_square = (weight * np.abs(velocity) ** 2).sum(axis=-1) / n**2
    return np.asarray(np.sqrt(mean_square) * 1_000.0, dtype=dtype)


def zone_boundaries(group: MachineGroup = 2, mounting: Mounting = "rigid") -> tuple[float, ...]:
    """Return the A/B, B/C and C/D zone boundaries in mm/s RMS (ISO 10816-3 / 20816-3).

    Parameters
    ----------
    group : {1, 2}, optional
        Machine group: 1 for large machines (300 kW to 50 MW), 2 for medium ones (15 to
        300 kW).
    mounting : {"rigid", "flexible"}, optional
        Foundation class.

    Raises
    ------
    SignalError
        For another group or mounting.

    Examples
    --------
    >>> zone_boundaries(1, "flexible")
    (3.5, 7.1, 11.0)
    """
    key = (group, mounting)
    if isinstance(group, bool) or key not in ZONE_BOUNDARIES_MM_S:
        raise SignalError(
            f"no ISO 10816-3 zones for group {group!r}, mounting {mounting!r}: "
            "use group 1 or 2 and mounting 'rigid' or 'flexible'"
        )
    return ZONE_BOUNDARIES_MM_S[key]


def iso_zone(
    velocity_rms_mm_s: float, group: MachineGroup = 2, mounting: Mounting = "rigid"
) -> Zone:
    """Return the ISO 10816-3 / 20816-3 zone of a velocity RMS in mm/s.

    A value on a boundary belongs to the upper zone (``1.4`` mm/s on a group 2, rigid
    machine is zone B).

    Raises
    ------
    SignalError
        On a negative or non-finite velocity, or an unknown group or mounting.

    Examples
    --------
    >>> iso_zone(1.4), iso_zone(1.39), iso_zone(12.0, group=1, mounting="flexible")
    ('B', 'A', 'D')
    """
    ok = isinstance(velocity_rms_mm_s, numbers.Real) and not isinstance(velocity_rms_mm_s, bool)
    if not (ok and math.isfinite(velocity_rms_mm_s) and velocity_rms_mm_s >= 0):
        raise SignalError(f"velocity must be a finite number >= 0 mm/s, got {velocity_rms_mm_s!r}")
    ab, bc, cd = zone_boundaries(group, mounting)
    if velocity_rms_mm_s < ab:
        return "A"
    if velocity_rms_mm_s < bc:
        return "B"
    return "C" if velocity_rms_mm_s < cd else "D"
