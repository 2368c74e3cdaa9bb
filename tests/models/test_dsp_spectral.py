"""Tests for models.dsp.spectral on analytic signals with known answers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import numpy.typing as npt
import pytest

from models.dsp.spectral import amplitude_spectrum, band_power, order_spectrum, welch_psd
from models.errors import SignalError

FS = 1_024.0


def tone(f: float, amplitude: float, n: int = 8_192, fs: float = FS) -> npt.NDArray[np.float64]:
    return amplitude * np.sin(2 * np.pi * f * np.arange(n) / fs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_amplitude_spectrum_shows_a_sine_at_its_amplitude(dtype: type[np.floating]) -> None:
    # Prepare: 100 Hz falls on a bin (0.125 Hz resolution).
    x = (tone(100.0, 0.7) + 3.0).astype(dtype)  # the offset is removed

    # Execute
    freqs, amp = amplitude_spectrum(x, FS)

    # Assert
    assert amp.dtype == dtype
    assert freqs.dtype == np.float64
    assert freqs[np.argmax(amp)] == pytest.approx(100.0)
    assert float(amp.max()) == pytest.approx(0.7, rel=1e-4)
    assert float(amp[0]) == pytest.approx(0.0, abs=1e-4)


def test_welch_psd_integrates_to_the_variance() -> None:
    # Prepare: a 0.5 g sine (0.125 g**2) plus unit-variance white noise.
    rng = np.random.default_rng(0)
    x = tone(100.0, 0.5, n=200_000) + rng.standard_normal(200_000)

    # Execute
    freqs, psd = welch_psd(x, FS, nperseg=512)

    # Assert: g**2/Hz integrates to g**2; white noise has density 1 / (fs/2).
    df = freqs[1] - freqs[0]
    assert float(psd.sum() * df) == pytest.approx(float(x.var()), rel=0.02)
    assert float(np.median(psd)) == pytest.approx(2.0 / FS, rel=0.05)
    assert freqs[np.argmax(psd)] == pytest.approx(100.0)


def test_band_power_of_a_sine_and_tiling() -> None:
    # Prepare
    x = tone(100.0, 2.0) + tone(300.0, 1.0)
    edges = np.linspace(0.0, FS / 2, 5)

    # Execute
    powers = band_power(x, FS, [(50.0, 200.0), (200.0, 400.0), (400.0, 512.0)])
    tiled = band_power(x, FS, list(itertools.pairwise(edges)))

    # Assert: A**2 / 2 per sine, in its band; a tiling of [0, fs/2] sums to the variance.
    np.testing.assert_allclose(powers, [2.0, 0.5, 0.0], atol=1e-3)
    assert float(tiled.sum()) == pytest.approx(float(x.var()), rel=1e-3)


def test_band_power_axis_and_shape() -> None:
    # Prepare: channels along axis 0.
    x = np.stack([tone(100.0, a) for a in (1.0, 2.0, 4.0)], axis=0)

    # Execute
    powers = band_power(x.T, FS, [(50.0, 150.0), (150.0, 250.0)], axis=0)

    # Assert
    assert powers.shape == (3, 2)
    np.testing.assert_allclose(powers[:, 0], [0.5, 2.0, 8.0], rtol=1e-3)


def test_order_spectrum_at_constant_speed() -> None:
    # Prepare: 90 Hz on a 1800 rpm (30 Hz) shaft.
    x = tone(90.0, 0.3, n=6_000, fs=6_000.0)

    # Execute
    orders, amp = order_spectrum(x, 6_000.0, rpm=1_800.0)

    # Assert
    assert orders[np.argmax(amp)] == pytest.approx(3.0)
    assert float(amp.max()) == pytest.approx(0.3, rel=1e-3)


def test_order_spectrum_tracks_a_run_up() -> None:
    # Prepare: the shaft runs up from 600 to 1800 rpm; the signal is the 3rd shaft order.
    fs, n = 4_096.0, 16_384
    rpm = np.linspace(600.0, 1_800.0, n)
    revs = np.concatenate(([0.0], np.cumsum((rpm[1:] + rpm[:-1]) / 2.0) / 60.0 / fs))
    x = 0.5 * np.sin(2 * np.pi * 3.0 * revs)

    # Execute
    orders, amp = order_spectrum(x, fs, rpm=rpm)
    _freqs, smeared = amplitude_spectrum(x, fs)

    # Assert: sharp at order 3 after angle-domain resampling; smeared over 30-90 Hz before.
    assert orders[np.argmax(amp)] == pytest.approx(3.0, abs=orders[1])
    assert float(amp.max()) == pytest.approx(0.5, rel=0.15)
    assert float(smeared.max()) < 0.2


@pytest.mark.parametrize(
    "rpm",
    [0.0, -60.0, math.nan, np.ones(10), np.full(100, -1.0), np.ones((2, 100)), "fast"],
)
def test_order_spectrum_rejects_bad_speed(rpm: object) -> None:
    with pytest.raises(SignalError, match="rpm"):
        order_spectrum(np.ones(100), FS, rpm=rpm)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bands",
    [[], [(100.0,)], [(200.0, 100.0)], [(-1.0, 100.0)], [(0.0, 600.0)], "ab", [(0, math.nan)]],
)
def test_band_power_rejects_bad_bands(bands: object) -> None:
    with pytest.raises(SignalError, match="band"):
        band_power(np.ones(100), FS, bands)  # type: ignore[arg-type]


@pytest.mark.parametrize("nperseg", [1, 101, 2.5, True])
def test_welch_rejects_bad_segment_length(nperseg: object) -> None:
    with pytest.raises(SignalError, match="nperseg"):
        welch_psd(np.ones(100), FS, nperseg=nperseg)  # type: ignore[arg-type]


@pytest.mark.parametrize("x", [np.array([]), np.array([np.nan, 1.0]), np.array([1j, 1.0])])
def test_spectra_reject_bad_signals(x: npt.NDArray[np.generic]) -> None:
    with pytest.raises(SignalError):
        amplitude_spectrum(x, FS)
    with pytest.raises(SignalError):
        welch_psd(x, FS)


@pytest.mark.parametrize("fs", [0.0, -1.0, math.inf, "1000", None])
def test_spectra_reject_bad_sampling_rate(fs: object) -> None:
    with pytest.raises(SignalError, match="fs"):
        amplitude_spectrum(np.ones(10), fs)  # type: ignore[arg-type]
