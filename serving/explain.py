"""Why a prediction for an asset says what it says: the evidence beside the model's classes.

For a request naming a registered asset, each window also gets:

- its condition indicators (RMS in g, kurtosis, crest factor) and velocity RMS (mm/s,
  10 Hz-1 kHz) with the ISO 10816-3 / 20816-3 zone for the asset's machine group and mounting
  (`models.dsp.condition`, the same code as the edge agent);
- its anomaly score against the asset's own healthy baseline (Mahalanobis distance of the
  model's embedding, ``models.anomaly``) and the threshold calibrated at the baseline's
  false-alarm rate, when a baseline was fitted with the model now served.

And the request gets the bearing evidence of an envelope analysis (``models.dsp.diagnosis``),
when the asset has a bearing and a nominal speed: which defect frequency stands out and by how
many dB over the local floor. Windows sent as ``contiguous`` (consecutive, without gaps) are
analysed as one signal; otherwise each window is a separate measurement of the same condition
and their envelope spectra are averaged, which needs each window to span 10 shaft turns (a
2,048-sample window at 12 kHz spans 5 at 1,800 rpm). Too little signal gets a note saying how
much is needed instead. Indicators use the first channel, at the rate the windows were sent
at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models.anomaly import AnomalyBaseline
from models.bearing import defect_frequencies, get_bearing
from models.dsp.condition import DEFECT_SYMBOLS, window_features, zone_of
from models.dsp.diagnosis import diagnose
from models.errors import SignalError
from serving.state import Asset, StoredBaseline

MIN_TURNS = 10.0
"""Shaft turns an envelope analysis needs to resolve the shaft-rate sidebands."""


@dataclass(frozen=True)
class WindowEvidence:
    """Indicators and anomaly score of one window (None where not available)."""

    rms_g: float | None
    kurtosis: float | None
    crest_factor: float | None
    velocity_rms_mm_s: float | None
    iso_zone: str | None
    anomaly_score: float | None
    anomalous: bool | None


@dataclass(frozen=True)
class Explanation:
    """Evidence for one request's windows of one asset."""

    windows: list[WindowEvidence]
    anomaly_threshold: float | None
    baseline_note: str | None
    bearing: dict[str, Any] | None
    bearing_note: str | None


def load_baseline(
    stored: StoredBaseline | None, model_sha256: str, model_version: str
) -> tuple[AnomalyBaseline | None, str | None]:
    """The asset's baseline if it was fitted with the served model, else None and why."""
    if stored is None:
        return None, "no healthy baseline fitted for this asset: PUT /v1/baselines/{asset_id}"
    if stored.model_sha256 != model_sha256:
        return None, (
            f"the baseline was fitted with model {stored.model_version}; the model now served is"
            f" {model_version}: fit it again with healthy windows"
        )
    return AnomalyBaseline.from_json(stored.document), None


def explain(
    asset: Asset,
    windows_g: npt.NDArray[np.float64],
    fs: float,
    embeddings: npt.NDArray[np.float32],
    baseline: AnomalyBaseline | None,
    baseline_note: str | None,
    *,
    contiguous: bool = False,
) -> Explanation:
    """Evidence for ``windows_g`` (batch, channels, samples, in g at ``fs`` Hz) of ``asset``.

    ``contiguous``: the windows follow each other without gaps (one signal for the envelope).
    """
    first = windows_g[:, 0, :]
    scores: list[float | None] = [None] * len(first)
    if baseline is not None:
        scores = [float(s) for s in baseline.score(embeddings.astype(np.float64))]
    rows = []
    for i, x in enumerate(first):
        try:
            features = window_features(x, fs)
        except SignalError:  # a constant window has no kurtosis; report what exists
            features = {}
        velocity = features.get("velocity_rms_mm_s")
        score = scores[i]
        rows.append(
            WindowEvidence(
                rms_g=features.get("rms_g"),
                kurtosis=features.get("kurtosis"),
                crest_factor=features.get("crest_factor"),
                velocity_rms_mm_s=velocity,
                iso_zone=(
                    None
                    if velocity is None
                    else zone_of(velocity, asset.machine_group, asset.mounting)
                ),
                anomaly_score=score if score is None or math.isfinite(score) else None,
                anomalous=None if score is None or baseline is None else score > baseline.threshold,
            )
        )
    bearing, note = _bearing_evidence(asset, first.reshape(-1) if contiguous else first, fs)
    return Explanation(
        windows=rows,
        anomaly_threshold=None if baseline is None else float(baseline.threshold),
        baseline_note=baseline_note,
        bearing=bearing,
        bearing_note=note,
    )


def _bearing_evidence(
    asset: Asset, segments: npt.NDArray[np.float64], fs: float
) -> tuple[dict[str, Any] | None, str | None]:
    if asset.bearing is None or asset.nominal_rpm is None:
        return None, "register the asset's bearing and nominal_rpm for defect-frequency evidence"
    geometry = get_bearing(asset.bearing)
    shaft_hz = defect_frequencies(geometry, asset.nominal_rpm).shaft_hz
    seconds = segments.shape[-1] / fs  # one window, or the whole contiguous signal
    if seconds * shaft_hz < MIN_TURNS:
        need = math.ceil(MIN_TURNS / shaft_hz * fs)
        return None, (
            f"{seconds:.2f} s of signal per analysis is {seconds * shaft_hz:.1f} shaft turns;"
            f" the envelope analysis needs {MIN_TURNS:g} ({need} samples): send consecutive"
            " windows with 'contiguous': true, or longer windows"
        )
    try:
        diagnosis = diagnose(segments, fs, asset.nominal_rpm, geometry)
    except SignalError as exc:
        return None, f"no envelope analysis: {exc}"
    best = max(diagnosis.evidence, key=lambda row: row.score_db)
    called = diagnosis.verdict != "none"
    return {
        "verdict": diagnosis.verdict,
        "defect_frequency": DEFECT_SYMBOLS[best.defect] if called else None,
        "defect_hz": float(best.found_hz) if called else None,
        "score_db": float(best.score_db) if called else None,
        "threshold_db": float(diagnosis.threshold_db),
        "scores_db": {row.defect: float(row.score_db) for row in diagnosis.evidence},
        "expected_hz": {row.defect: float(row.expected_hz) for row in diagnosis.evidence},
        "band_hz": None if diagnosis.band is None else [float(v) for v in diagnosis.band],
        "signal_s": segments.size / fs,
    }, None
