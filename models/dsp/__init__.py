"""Signal processing for vibration-based bearing diagnostics: pure, typed, stateless.

Every function takes the sampling rate ``fs`` in Hz and, for arrays, the time ``axis``
explicitly; units are in each docstring (acceleration in g unless said otherwise). Nothing
here does I/O or logging. Invalid arguments raise `models.errors.SignalError`.

Modules, one concept each:

``time_domain``
    RMS, peak, peak-to-peak, crest factor, kurtosis, skewness, shape and impulse factors.
``spectral``
    Amplitude spectrum, Welch PSD, band power, order spectrum (constant speed or angle-domain
    resampling).
``kurtogram``
    Spectral kurtosis (STFT), the kurtogram and the most impulsive band it selects.
``envelope``
    Hilbert envelope and envelope spectrum, on a given band or the kurtogram's.
``defects``
    Envelope-spectrum evidence (dB above the local floor) for each bearing defect.
``diagnosis``
    Band selection, envelope spectrum, evidence and the verdict, in one call.
``severity``
    Velocity RMS from acceleration and the ISO 10816-3 / 20816-3 zones.
``condition``
    Cheap per-window indicators (RMS, kurtosis, crest, velocity) and the ISO zone of an asset.
``features``
    Named feature presets (``minimal``, ``efficient``, ``full``) for models and dashboards.

Examples
--------
>>> import numpy as np
>>> from models.dsp import crest_factor, rms
>>> x = np.cos(2 * np.pi * np.arange(100) / 10)
>>> round(float(rms(x)) ** 2, 6), round(float(crest_factor(x)) ** 2, 6)
(0.5, 2.0)
"""

from __future__ import annotations

from models.dsp.defects import DEFECTS, DefectEvidence, defect_evidence
from models.dsp.diagnosis import Diagnosis, diagnose
from models.dsp.envelope import envelope, envelope_spectrum, peak_to_floor_db
from models.dsp.features import PRESETS, extract, extract_array, feature_names
from models.dsp.kurtogram import Kurtogram, kurtogram, select_band, spectral_kurtosis
from models.dsp.severity import iso_zone, velocity_rms, zone_boundaries
from models.dsp.spectral import amplitude_spectrum, band_power, order_spectrum, welch_psd
from models.dsp.time_domain import (
    crest_factor,
    impulse_factor,
    kurtosis,
    peak,
    peak_to_peak,
    rms,
    shape_factor,
    skewness,
)

__all__ = [
    "DEFECTS",
    "PRESETS",
    "DefectEvidence",
    "Diagnosis",
    "Kurtogram",
    "amplitude_spectrum",
    "band_power",
    "crest_factor",
    "defect_evidence",
    "diagnose",
    "envelope",
    "envelope_spectrum",
    "extract",
    "extract_array",
    "feature_names",
    "impulse_factor",
    "iso_zone",
    "kurtogram",
    "kurtosis",
    "order_spectrum",
    "peak",
    "peak_to_floor_db",
    "peak_to_peak",
    "rms",
    "select_band",
    "shape_factor",
    "skewness",
    "spectral_kurtosis",
    "velocity_rms",
    "welch_psd",
    "zone_boundaries",
]
