"""Tests for models.dsp.defects and models.dsp.diagnosis on synthetic bearing signals."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from models.bearing import defect_frequencies, get_bearing
from models.dsp.defects import DEFECTS, defect_evidence, defect_frequencies_hz
from models.dsp.diagnosis import diagnose
from models.errors import SignalError

FS = 12_000.0
RPM = 1_797.0
BEARING = get_bearing("6205")
KIN = defect_frequencies(BEARING, RPM)
EXPECTED = defect_frequencies_hz(BEARING, RPM)


def bearing_signal(
    rate_hz: float,
    modulation_hz: float | None = None,
    seconds: float = 2.0,
    noise: float = 0.1,
    seed: int = 0,
) -> npt.NDArray[np.float64]:
    """Decaying 3.3 kHz rings struck at `rate_hz`, amplitude-modulated at `modulation_hz`."""
    n = int(seconds * FS)
    times = np.arange(0.0, seconds, 1.0 / rate_hz)
    index = np.round(times * FS).astype(int)
    keep = index < n
    amplitude = np.ones(keep.sum())
    if modulation_hz is not None:  # the defect passes through the load zone
        amplitude = 1.0 + 0.8 * np.cos(2 * np.pi * modulation_hz * times[keep])
    strikes = np.zeros(n)
    strikes[index[keep]] = amplitude
    t = np.arange(200) / FS
    ring = np.exp(-600.0 * t) * np.sin(2 * np.pi * 3_300.0 * t)
    rng = np.random.default_rng(seed)
    return np.convolve(strikes, ring)[:n] + noise * rng.standard_normal(n)


SIGNALS = {
    "outer_race": lambda: bearing_signal(KIN.bpfo_hz),
    "inner_race": lambda: bearing_signal(KIN.bpfi_hz, modulation_hz=KIN.shaft_hz),
    "ball": lambda: bearing_signal(KIN.ball_hz, modulation_hz=KIN.ftf_hz),
    "cage": lambda: bearing_signal(KIN.ftf_hz),
    "none": lambda: 0.1 * np.random.default_rng(5).standard_normal(24_000),
}


# --- Evidence in a given spectrum -------------------------------------------------------------


def comb_spectrum(
    lines: dict[float, float], df: float = 0.1, top: float = 1_000.0
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """A flat floor of 1 with lines ``{frequency: height}``, each on its nearest bin."""
    freqs = np.arange(0.0, top, df)
    amp = np.ones_like(freqs)
    for f, height in lines.items():
        amp[round(f / df)] = height
    return freqs, amp


def test_harmonic_comb_scores_its_height_in_db() -> None:
    # Prepare: BPFO and two harmonics 20 dB over the floor, 1 % above the kinematic value.
    f0 = 1.01 * EXPECTED["outer_race"]
    freqs, amp = comb_spectrum({h * f0: 10.0 for h in (1, 2, 3)})

    # Execute
    rows = {row.defect: row for row in defect_evidence(freqs, amp, BEARING, RPM)}

    # Assert
    outer = rows["outer_race"]
    assert outer.harmonics_db == pytest.approx((20.0, 20.0, 20.0))
    assert outer.score_db == pytest.approx(20.0)
    assert outer.found_hz == pytest.approx(f0, abs=0.1)
    assert outer.sideband_hz is None
    assert outer.sidebands_db == ()
    assert tuple(rows) == DEFECTS
    assert all(rows[d].score_db == 0.0 for d in ("inner_race", "ball", "cage"))


def test_inner_race_sidebands_add_half_their_score() -> None:
    # Prepare: BPFI comb at 20 dB with shaft-rate sidebands at 14 dB (height 5).
    f0, fr = EXPECTED["inner_race"], KIN.shaft_hz
    lines = {h * f0: 10.0 for h in (1, 2, 3)}
    freqs, bare = comb_spectrum(lines)
    lines.update({h * f0 + s: 5.0 for h in (1, 2, 3) for s in (-fr, fr)})
    _, with_sidebands = comb_spectrum(lines)

    # Execute
    plain = defect_evidence(freqs, bare, BEARING, RPM)[0]
    modulated = defect_evidence(freqs, with_sidebands, BEARING, RPM)[0]

    # Assert
    assert plain.defect == modulated.defect == "inner_race"
    assert plain.score_db == pytest.approx(20.0)
    assert modulated.sideband_hz == pytest.approx(fr, abs=1e-3)
    assert modulated.sidebands_db == pytest.approx((13.98, 13.98, 13.98), abs=0.01)
    assert modulated.score_db == pytest.approx(20.0 + 0.5 * 13.98, abs=0.01)


def test_a_line_two_combs_share_goes_to_the_stronger_fundamental() -> None:
    # Prepare: an inner-race comb; its 2nd harmonic lies 0.7 % from the 3rd harmonic of BPFO.
    f0 = EXPECTED["inner_race"]
    freqs, amp = comb_spectrum({h * f0: 30.0 for h in (1, 2, 3)})

    # Execute
    rows = {row.defect: row for row in defect_evidence(freqs, amp, BEARING, RPM)}

    # Assert
    outer = rows["outer_race"]
    assert outer.shared_with[2] == "inner_race"
    assert outer.harmonics_db[2] == 0.0
    assert outer.score_db == 0.0
    assert rows["inner_race"].shared_with == (None, None, None)


def test_sidebands_never_outscore_their_carrier() -> None:
    # Prepare: strong shaft-rate sidebands around an absent BPFI.
    f0, fr = EXPECTED["inner_race"], KIN.shaft_hz
    freqs, amp = comb_spectrum({f0 + s: 30.0 for s in (-fr, fr)})

    # Execute
    inner = defect_evidence(freqs, amp, BEARING, RPM)[0]

    # Assert
    assert inner.harmonics_db[0] == 0.0
    assert inner.sidebands_db[0] == 0.0


@pytest.mark.parametrize(
    ("freqs", "amp"),
    [
        (np.arange(0.0, 100.0, 0.1), np.ones(999)),  # lengths differ
        (np.arange(0.0, 100.0, 0.1), -np.ones(1_000)),  # negative amplitude
        (np.arange(1.0, 101.0, 0.1), np.ones(1_000)),  # not from 0 Hz
        (np.sort(np.random.default_rng(0).uniform(0, 100, 1_000)), np.ones(1_000)),
        (np.arange(0.0, 100.0, 0.1), np.full(1_000, np.nan)),
        (np.arange(0.0, 5_000.0, 5.0), np.ones(1_000)),  # 5 Hz bins: shaft at 30 Hz unresolved
        (np.zeros((2, 10)), np.ones((2, 10))),
    ],
)
def test_evidence_rejects_bad_spectra(
    freqs: npt.NDArray[np.float64], amp: npt.NDArray[np.float64]
) -> None:
    with pytest.raises(SignalError):
        defect_evidence(freqs, amp, BEARING, RPM)


@pytest.mark.parametrize(
    ("name", "value"), [("rpm", 0.0), ("harmonics", 0), ("slip", 0.2), ("slip", True)]
)
def test_evidence_rejects_bad_settings(name: str, value: object) -> None:
    # Prepare
    freqs, amp = comb_spectrum({})
    kwargs: dict[str, object] = {"rpm": RPM, "harmonics": 3, "slip": 0.02, name: value}
    rpm = kwargs.pop("rpm")

    # Execute / Assert
    with pytest.raises(SignalError, match=name):
        defect_evidence(freqs, amp, BEARING, rpm, **kwargs)  # type: ignore[arg-type]


# --- Diagnosis from the signal -----------------------------------------------------------------


@pytest.mark.parametrize("band", ["kurtogram", None])
@pytest.mark.parametrize("truth", list(SIGNALS))
def test_each_defect_signal_gets_its_verdict(truth: str, band: str | None) -> None:
    # Prepare
    x = SIGNALS[truth]()

    # Execute
    result = diagnose(x, FS, RPM, BEARING, band=band)  # type: ignore[arg-type]

    # Assert
    assert result.verdict == truth
    best = max(result.evidence, key=lambda row: row.score_db)
    if truth != "none":
        assert best.defect == truth
        assert best.score_db > 20.0
    else:
        assert best.score_db < result.threshold_db


def test_impulse_train_at_bpfo_shows_its_peak() -> None:
    # Execute
    result = diagnose(SIGNALS["outer_race"](), FS, RPM, BEARING)

    # Assert: the band holds the 3.3 kHz ring; the found line is BPFO.
    outer = result.evidence_for("outer_race")
    assert result.band is not None
    assert result.band[0] < 3_300.0 < result.band[1]
    assert outer.found_hz == pytest.approx(KIN.bpfo_hz, abs=0.5)
    assert min(outer.harmonics_db) > 20.0


def test_inner_race_shows_shaft_sidebands() -> None:
    # Execute
    inner = diagnose(SIGNALS["inner_race"](), FS, RPM, BEARING).evidence_for("inner_race")

    # Assert
    assert inner.sideband_hz == pytest.approx(KIN.shaft_hz)
    assert min(inner.sidebands_db) > 10.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_segments_along_any_axis_are_averaged(dtype: type[np.floating]) -> None:
    # Prepare: 4 s of outer-race signal as four 1 s segments.
    x = bearing_signal(KIN.bpfo_hz, seconds=4.0, noise=0.3).astype(dtype).reshape(4, -1)

    # Execute
    by_row = diagnose(x, FS, RPM, BEARING, band=(2_500.0, 4_500.0))
    by_column = diagnose(x.T, FS, RPM, BEARING, band=(2_500.0, 4_500.0), axis=0)

    # Assert
    assert by_row.verdict == by_column.verdict == "outer_race"
    assert by_row.band == (2_500.0, 4_500.0)
    assert by_row.evidence == by_column.evidence


def test_threshold_decides_between_defect_and_none() -> None:
    # Prepare
    x = SIGNALS["outer_race"]()

    # Execute
    strict = diagnose(x, FS, RPM, BEARING, threshold_db=200.0)

    # Assert
    assert strict.verdict == "none"
    assert strict.as_dict()["evidence"][1]["defect"] == "outer_race"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold_db": math.nan}, "threshold"),
        ({"threshold_db": "12"}, "threshold"),
        ({"band": (0.0, 1_000.0)}, "band"),
        ({"band": (1_000.0, 7_000.0)}, "band"),
        ({"axis": 3}, "axis"),
    ],
)
def test_diagnose_rejects_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(SignalError, match=match):
        diagnose(SIGNALS["none"](), FS, RPM, BEARING, **kwargs)  # type: ignore[arg-type]


def test_diagnose_rejects_a_window_too_short_for_the_shaft() -> None:
    with pytest.raises(SignalError, match="resolution"):
        diagnose(np.random.default_rng(0).standard_normal(2_048), FS, RPM, BEARING)


@pytest.mark.parametrize("x", [np.array([]), np.full(24_000, np.nan)])
def test_diagnose_rejects_bad_signals(x: npt.NDArray[np.float64]) -> None:
    with pytest.raises(SignalError):
        diagnose(x, FS, RPM, BEARING)
