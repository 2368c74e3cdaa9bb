"""Tests for models.dsp.kurtogram: spectral kurtosis and band selection, known answers."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from models.dsp.kurtogram import kurtogram, select_band, spectral_kurtosis
from models.errors import SignalError

FS = 12_000.0


def bursts(
    resonance_hz: float = 3_300.0, rate_hz: float = 50.0, n: int = 24_000, noise: float = 0.2
) -> npt.NDArray[np.float64]:
    """Decaying bursts at `resonance_hz`, one every 1/`rate_hz` s, in white noise."""
    period = int(FS / rate_hz)
    t = np.arange(period) / FS
    burst = np.exp(-800.0 * t) * np.sin(2 * np.pi * resonance_hz * t)
    return np.tile(burst, n // period) + noise * np.random.default_rng(1).standard_normal(n)


def test_spectral_kurtosis_of_noise_sine_and_impulses() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    t = np.arange(48_000) / FS
    noise = rng.standard_normal(t.size)
    with_sine = noise * 0.01 + np.sin(2 * np.pi * 1_500.0 * t)

    # Execute
    f, sk_noise = spectral_kurtosis(noise, FS, nperseg=128)
    _, sk_sine = spectral_kurtosis(with_sine, FS, nperseg=128)
    _, sk_bursts = spectral_kurtosis(bursts(), FS, nperseg=128)

    # Assert: ~0 for Gaussian noise, -1 at a stationary sine, large at the resonance.
    inner = slice(1, -1)  # DC and Nyquist lines of a real signal are not circular
    assert float(np.abs(sk_noise[inner]).mean()) < 0.1
    assert float(sk_sine[f == 1_500.0][0]) == pytest.approx(-1.0, abs=0.02)
    peak = int(np.nanargmax(sk_bursts[inner])) + 1
    assert 3_000.0 <= f[peak] <= 3_600.0
    assert float(sk_bursts[peak]) > 0.5
    assert float(sk_bursts[peak]) > 5 * float(np.median(np.abs(sk_bursts[inner])))


def test_kurtogram_picks_the_resonance_band() -> None:
    # Execute
    result = kurtogram(bursts(), FS, max_level=4)
    (low, high), k = result.best()

    # Assert
    assert result.bands.shape == (result.levels.size, 2)
    assert result.kurtosis.shape == (result.levels.size,)
    assert set(result.levels) >= {0.0, 1.0, 1.6, 2.0, 2.6, 3.0, 3.6, 4.0}
    assert low < 3_300.0 < high
    assert float(k) > 1.0


def test_kurtogram_does_not_split_a_resonance_on_a_band_edge() -> None:
    # Prepare: 3 kHz is an edge of every dyadic level; the half-shifted bands cover it.
    x = bursts(resonance_hz=3_000.0)

    # Execute
    low, high = select_band(x, FS, max_level=4)

    # Assert
    assert low + 0.2 * (high - low) < 3_000.0 < high - 0.2 * (high - low)


def test_select_band_respects_the_minimum_width() -> None:
    # Execute
    low, high = select_band(bursts(), FS, max_level=6, min_bandwidth_hz=1_000.0)

    # Assert
    assert high - low >= 1_000.0
    assert low < 3_300.0 < high


def test_axis_gives_one_band_per_slice() -> None:
    # Prepare: two channels with resonances at 1.7 and 4.4 kHz, channels on axis 0.
    x = np.stack([bursts(1_700.0), bursts(4_400.0)], axis=1)

    # Execute
    bands = select_band(x, FS, max_level=4, axis=0)
    per_slice = [select_band(x[:, i], FS, max_level=4) for i in range(2)]

    # Assert
    assert bands.shape == (2, 2)
    np.testing.assert_array_equal(bands, np.stack(per_slice))
    assert bands[0, 0] < 1_700.0 < bands[0, 1]
    assert bands[1, 0] < 4_400.0 < bands[1, 1]


def test_float32_input_gives_the_same_band() -> None:
    # Execute / Assert
    np.testing.assert_array_equal(
        select_band(bursts().astype(np.float32), FS), select_band(bursts(), FS)
    )


def test_constant_signal_has_no_band() -> None:
    with pytest.raises(SignalError, match="energy"):
        select_band(np.full(4_096, 2.0), FS)


@pytest.mark.parametrize("max_level", [-1, 13, 2.0, True])
def test_rejects_bad_level(max_level: object) -> None:
    with pytest.raises(SignalError, match="max_level"):
        kurtogram(bursts(), FS, max_level=max_level)  # type: ignore[arg-type]


def test_rejects_too_wide_minimum_and_short_signals() -> None:
    with pytest.raises(SignalError, match="wide"):
        select_band(bursts(), FS, min_bandwidth_hz=7_000.0)
    with pytest.raises(SignalError, match="samples"):
        kurtogram(np.ones(20), FS)
    with pytest.raises(SignalError, match="samples"):
        spectral_kurtosis(np.ones(100), FS, nperseg=256)


@pytest.mark.parametrize("x", [np.array([]), np.array([np.inf] * 64), np.ones((2, 0))])
def test_rejects_bad_signals(x: npt.NDArray[np.float64]) -> None:
    with pytest.raises(SignalError):
        kurtogram(x, FS)
    with pytest.raises(SignalError):
        spectral_kurtosis(x, FS)
