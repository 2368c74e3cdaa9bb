"""Tests for models.dsp.features: presets, stable names, values on known signals."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from models.bearing import defect_frequencies, get_bearing
from models.dsp.features import PRESETS, extract, extract_array, feature_names
from models.errors import SignalError

FS = 12_000.0
RPM = 1_797.0
BEARING = get_bearing("6205")


def sine(amplitude: float = 1.0, f_hz: float = 100.0, n: int = 24_000) -> npt.NDArray:
    return amplitude * np.sin(2 * np.pi * f_hz * np.arange(n) / FS)


def outer_race_signal(n: int = 24_000) -> npt.NDArray[np.float64]:
    """3.3 kHz rings struck at BPFO, in noise."""
    bpfo = defect_frequencies(BEARING, RPM).bpfo_hz
    strikes = np.zeros(n)
    strikes[np.round(np.arange(0.0, n / FS, 1.0 / bpfo) * FS).astype(int)] = 1.0
    t = np.arange(200) / FS
    ring = np.exp(-600.0 * t) * np.sin(2 * np.pi * 3_300.0 * t)
    return np.convolve(strikes, ring)[:n] + 0.1 * np.random.default_rng(0).standard_normal(n)


def test_presets_nest_and_names_are_stable() -> None:
    # Execute
    minimal, efficient, full = (feature_names(p) for p in ("minimal", "efficient", "full"))

    # Assert
    assert minimal == ("rms", "peak", "crest_factor", "kurtosis")
    assert efficient[: len(minimal)] == minimal
    assert full[: len(efficient)] == efficient
    assert len(efficient) == 17
    assert len(full) == 24
    assert full[-4:] == (
        "envelope_inner_race_db",
        "envelope_outer_race_db",
        "envelope_ball_db",
        "envelope_cage_db",
    )
    assert set(PRESETS) == {"minimal", "efficient", "full"}


@pytest.mark.parametrize("preset", ["minimal", "efficient", "full"])
def test_dict_keys_are_the_preset_names(preset: str) -> None:
    # Execute
    features = extract(sine(), FS, preset)  # type: ignore[arg-type]

    # Assert
    assert tuple(features) == feature_names(preset)  # type: ignore[arg-type]
    assert all(isinstance(v, float) for v in features.values())


def test_sine_values() -> None:
    # Prepare: 2 g at 100 Hz, which lies in the first of eight 750 Hz bands.
    x = sine(2.0)

    # Execute
    features = extract(x, FS, "efficient")

    # Assert
    assert features["rms"] == pytest.approx(math.sqrt(2), rel=1e-6)
    assert features["crest_factor"] == pytest.approx(math.sqrt(2), rel=1e-3)
    assert features["kurtosis"] == pytest.approx(1.5, rel=1e-3)
    assert features["band_power_0"] == pytest.approx(2.0, rel=1e-2)
    assert sum(features[f"band_power_{i}"] for i in range(1, 8)) < 1e-3
    # 2 g at 100 Hz: v = a / (2 pi f) = 31.2 mm/s peak, 22.1 mm/s RMS
    expected_velocity = 2.0 * 9.80665 / (2 * np.pi * 100.0) * 1e3 / math.sqrt(2)
    assert features["velocity_rms_mm_s"] == pytest.approx(expected_velocity, rel=1e-3)


def test_full_preset_scores_defects_only_with_speed_and_bearing() -> None:
    # Prepare
    x = outer_race_signal()

    # Execute
    without = extract(x, FS, "full")
    with_speed = extract(x, FS, "full", rpm=RPM, bearing=BEARING)

    # Assert
    assert all(math.isnan(without[f"envelope_{d}_db"]) for d in ("inner_race", "cage"))
    assert with_speed["sk_band_low_hz"] < 3_300.0 < with_speed["sk_band_high_hz"]
    assert with_speed["sk_max"] > 1.0
    scores = {k: v for k, v in with_speed.items() if k.startswith("envelope_")}
    assert max(scores, key=scores.__getitem__) == "envelope_outer_race_db"


@pytest.mark.parametrize("preset", ["minimal", "efficient", "full"])
def test_array_form_matches_per_slice_along_any_axis(preset: str) -> None:
    # Prepare: three channels, time on axis 0, float32 (noise keeps the kurtogram free of ties).
    rng = np.random.default_rng(2)
    noise = rng.standard_normal((3, 24_000))
    x = np.stack([sine(1.0) + 0.1 * noise[0], outer_race_signal(), noise[2]], axis=1)
    x = x.astype(np.float32)

    # Execute
    table = extract_array(x, FS, preset, axis=0)  # type: ignore[arg-type]
    singles = [list(extract(x[:, i], FS, preset).values()) for i in range(3)]  # type: ignore[arg-type]

    # Assert
    assert table.shape == (3, len(feature_names(preset)))  # type: ignore[arg-type]
    assert table.dtype == np.float64
    np.testing.assert_allclose(table, np.array(singles), rtol=1e-6, atol=1e-9, equal_nan=True)


def test_rejects_unknown_preset_and_bad_input() -> None:
    with pytest.raises(SignalError, match="preset"):
        extract(sine(), FS, "everything")  # type: ignore[arg-type]
    with pytest.raises(SignalError, match="1-D"):
        extract(np.ones((2, 100)), FS)
    with pytest.raises(SignalError):
        extract(np.array([]), FS, "minimal")
    with pytest.raises(SignalError, match="rpm"):
        extract(sine(), FS, "full", rpm=-5.0, bearing=BEARING)
    with pytest.raises(SignalError, match="fs"):
        extract(np.ones(100), 10.0, "efficient")


def test_full_preset_needs_a_window_that_resolves_the_shaft() -> None:
    with pytest.raises(SignalError, match="resolution"):
        extract(outer_race_signal(2_048), FS, "full", rpm=RPM, bearing=BEARING)
