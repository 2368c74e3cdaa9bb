"""Cheap per-window condition indicators and the ISO zone, shared by the edge agent and serving.

``window_features`` costs 1-3 ms for 2,048 samples (``O(n log n)``, docs/edge-alarms.md): RMS
(g), kurtosis, crest factor, and velocity RMS in mm/s over 10 Hz to ``min(1000 Hz, fs/2)``
(`models.dsp.severity`; on a 0.17 s window the 10 Hz edge is coarse, a few tenths of a mm/s).
``zone_of`` maps a velocity onto the ISO 10816-3 / 20816-3 zone for a machine group and
mounting; groups 3 and 4 (pumps with a separate or an integrated driver) share the boundaries of
groups 1 and 2 (ISO 10816-3 tables A.1-A.4).
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

from models.dsp.severity import MachineGroup, Zone, iso_zone, velocity_rms
from models.dsp.time_domain import rms_kurtosis_crest

MIN_VELOCITY_FS_HZ: Final = 200.0
"""Below this sample rate the 10 Hz - 1 kHz velocity band does not exist; no velocity."""

DEFECT_SYMBOLS: Final[dict[str, str]] = {
    "inner_race": "BPFI",
    "outer_race": "BPFO",
    "ball": "BSF",
    "cage": "FTF",
}
"""The defect frequency that names each bearing defect."""


def window_features(samples: npt.ArrayLike, fs: float) -> dict[str, float]:
    """Cheap condition indicators of one window (acceleration in g, ``fs`` in Hz).

    Returns ``rms_g`` (g), ``kurtosis``, ``crest_factor`` and, for ``fs >= 200`` Hz,
    ``velocity_rms_mm_s`` (mm/s, 10 Hz to ``min(1000, fs/2)`` Hz); non-finite values are left
    out.

    Raises
    ------
    SignalError
        Empty or non-finite samples, or a bad ``fs``.

    Examples
    --------
    >>> x = np.sin(2 * np.pi * 50.0 * np.arange(2048) / 12_000.0).astype(np.float32)
    >>> round(window_features(x, 12_000.0)["rms_g"], 2)
    0.71
    """
    x = np.asarray(samples, dtype=np.float64)
    level, peakiness, crest = rms_kurtosis_crest(x)  # one validation for the three
    features = {
        "rms_g": float(level),
        "kurtosis": float(peakiness),
        "crest_factor": float(crest),
    }
    if fs >= MIN_VELOCITY_FS_HZ and x.size >= 2:
        band = (10.0, min(1_000.0, fs / 2.0))
        features["velocity_rms_mm_s"] = float(velocity_rms(x, fs, band))
    return {k: v for k, v in features.items() if math.isfinite(v)}


def zone_of(velocity_mm_s: float, machine_group: int, mounting: str) -> Zone:
    """ISO 10816-3 zone; groups 3 and 4 use the boundaries of groups 1 and 2."""
    group: MachineGroup = 1 if machine_group in (1, 3) else 2
    return iso_zone(velocity_mm_s, group, "flexible" if mounting == "flexible" else "rigid")
