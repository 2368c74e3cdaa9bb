"""Diagnosis of a bearing by envelope analysis: band, envelope spectrum, evidence, verdict.

The signal is band-passed around the band where it is most impulsive (the kurtogram,
`models.dsp.kurtogram`), demodulated (`models.dsp.envelope`), and every defect of the bearing
is scored in the envelope spectrum (`models.dsp.defects`). The verdict is the defect with the
largest score if it reaches the threshold, else ``none``. Randall & Antoni, "Rolling element
bearing diagnostics - A tutorial", MSSP 25(2), 2011, section 3.

Examples
--------
Decaying 3.3 kHz bursts at the outer-race ball-pass frequency of a 6205 bearing at 1797 rpm
(107.4 Hz), in noise, are called an outer-race defect:

>>> import numpy as np
>>> from models.bearing import get_bearing
>>> from models.dsp.defects import defect_frequencies_hz
>>> fs, rpm = 12_000.0, 1_797.0
>>> bearing = get_bearing("6205")
>>> bpfo = defect_frequencies_hz(bearing, rpm)["outer_race"]
>>> t = np.arange(24_000) / fs
>>> strikes = np.zeros(t.size)
>>> strikes[np.round(np.arange(0, 2.0, 1 / bpfo) * fs).astype(int)] = 1.0
>>> ring = np.exp(-600 * t[:200]) * np.sin(2 * np.pi * 3_300 * t[:200])
>>> x = np.convolve(strikes, ring)[: t.size] + 0.1 * np.random.default_rng(0).normal(size=t.size)
>>> result = diagnose(x, fs, rpm, bearing)
>>> result.verdict, result.evidence_for("outer_race").score_db > 20
('outer_race', True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from models.bearing import BearingGeometry, defect_frequencies
from models.dsp._validate import check_band, check_signal, positive_finite
from models.dsp.defects import Defect, DefectEvidence, defect_evidence, defect_frequencies_hz
from models.dsp.envelope import BandChoice, envelope_spectrum
from models.dsp.kurtogram import select_band
from models.errors import SignalError

__all__ = ["DEFAULT_THRESHOLD_DB", "Diagnosis", "Verdict", "diagnose", "verdict"]

Verdict = Literal["inner_race", "outer_race", "ball", "cage", "none"]

DEFAULT_THRESHOLD_DB = 12.0
"""Score a defect needs to be called, in dB: above the 8-11 dB that white noise scores."""


@dataclass(frozen=True)
class Diagnosis:
    """A verdict with the evidence table behind it.

    Attributes
    ----------
    verdict : str
        The defect with the largest score if it reaches `threshold_db`, else ``none``.
    evidence : tuple of DefectEvidence
        One row per defect, in `DEFECTS` order.
    band : tuple of float or None
        Band demodulated, in Hz; None for the whole signal.
    threshold_db : float
        Score a defect needs to be called, in dB.
    """

    verdict: Verdict
    evidence: tuple[DefectEvidence, ...]
    band: tuple[float, float] | None
    threshold_db: float

    def evidence_for(self, defect: Defect) -> DefectEvidence:
        """Return the evidence row of `defect`."""
        for row in self.evidence:
            if row.defect == defect:
                return row
        raise KeyError(defect)

    def as_dict(self) -> dict[str, Any]:
        """Return the diagnosis as plain Python values (JSON-ready)."""
        return {
            "verdict": self.verdict,
            "band_hz": list(self.band) if self.band is not None else None,
            "threshold_db": self.threshold_db,
            "evidence": [row.as_dict() for row in self.evidence],
        }


def verdict(
    evidence: tuple[DefectEvidence, ...], threshold_db: float = DEFAULT_THRESHOLD_DB
) -> Verdict:
    """Return the defect with the largest score if it reaches `threshold_db`, else ``none``.

    Examples
    --------
    >>> row = DefectEvidence("ball", 141.0, 141.2, (15.0, 9.0, 3.0), (None,) * 3, 12.0, (), 9.0)
    >>> verdict((row,)), verdict((row,), threshold_db=6.0)
    ('none', 'ball')
    """
    if not evidence:
        return "none"
    best = max(evidence, key=lambda row: row.score_db)
    return best.defect if best.score_db >= threshold_db else "none"


def diagnose(
    x: npt.ArrayLike,
    fs: float,
    rpm: float,
    bearing: BearingGeometry,
    *,
    band: BandChoice = "kurtogram",
    axis: int = -1,
    harmonics: int = 3,
    slip: float = 0.02,
    threshold_db: float = DEFAULT_THRESHOLD_DB,
    max_level: int = 4,
) -> Diagnosis:
    """Diagnose a bearing from its vibration by envelope analysis.

    Parameters
    ----------
    x : array_like
        Acceleration (any unit, usually g), finite. With more than one dimension, the slices
        along `axis` are taken as repeated measurements of one condition (e.g. consecutive
        segments): their envelope spectra are averaged, which lowers the noise floor.
    fs : float
        Sampling frequency in Hz.
    rpm : float
        Shaft speed in rev/min.
    bearing : BearingGeometry
        Bearing geometry (`models.bearing.get_bearing`).
    band : tuple of float or "kurtogram" or None, optional
        Band demodulated: by default the most impulsive band by spectral kurtosis, chosen on
        the whole of `x`, among bands at least wide enough to hold the highest defect harmonic
        and its sidebands; ``None`` demodulates the whole signal (the textbook baseline).
    axis : int, optional
        Time axis, the last by default.
    harmonics, slip : optional
        See `defect_evidence`.
    threshold_db : float, optional
        Score needed to call a defect, in dB (12 by default).
    max_level : int, optional
        Deepest kurtogram level searched (bands down to ``fs / 2**(max_level + 1)`` wide).

    Returns
    -------
    Diagnosis
        Verdict, evidence table and band.

    Raises
    ------
    SignalError
        On invalid arguments, or a signal too short to resolve the shaft harmonics.
    """
    fs = positive_finite("fs", fs)
    rpm = positive_finite("rpm", rpm)
    threshold = float(threshold_db) if isinstance(threshold_db, int | float) else math.nan
    if isinstance(threshold_db, bool) or not math.isfinite(threshold):
        raise SignalError(f"threshold_db must be a finite number, got {threshold_db!r}")
    arr, _, ax = check_signal(x, axis)
    chosen: tuple[float, float] | None
    if isinstance(band, str) and band == "kurtogram":
        expected = defect_frequencies_hz(bearing, rpm)
        shaft = defect_frequencies(bearing, rpm).shaft_hz
        highest = harmonics * max(expected.values()) + shaft
        pooled = np.moveaxis(arr, ax, -1).reshape(-1)  # all segments: one band for all
        low, high = (float(v) for v in select_band(pooled, fs, max_level, 2.0 * highest))
        chosen = (low, high)
    elif band is None:
        chosen = None
    else:
        chosen = check_band(band, fs)
    freqs, amp = envelope_spectrum(arr, fs, _as_filter_band(chosen, fs), ax)
    mean_amp = np.moveaxis(amp.astype(np.float64), ax, -1).reshape(-1, freqs.size).mean(axis=0)
    evidence = defect_evidence(freqs, mean_amp, bearing, rpm, harmonics=harmonics, slip=slip)
    return Diagnosis(verdict(evidence, threshold), evidence, chosen, threshold)


def _as_filter_band(band: tuple[float, float] | None, fs: float) -> BandChoice:
    """A kurtogram band touching 0 or fs/2 pulled just inside, as `envelope` requires."""
    if band is None:
        return None
    nyquist = fs / 2.0
    low, high = band
    if low <= 0.0 and high >= nyquist:
        return None
    return (max(low, 1e-3 * nyquist), min(high, (1.0 - 1e-3) * nyquist))
