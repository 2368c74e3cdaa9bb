"""Tests for models.dsp.envelope on analytic signals with known answers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from models.dsp.envelope import envelope, envelope_spectrum, peak_to_floor_db
from models.errors import SignalError

FS = 12_000.0
DTYPES = [np.float32, np.float64]


def am_signal(
    n: int = 12_000, f_mod: float = 100.0, depth: float = 0.5, carrier: float = 3_000.0
) -> npt.NDArray[np.float64]:
    t = np.arange(n) / FS
    return (1.0 + depth * np.cos(2 * np.pi * f_mod * t)) * np.cos(2 * np.pi * carrier * t)


@pytest.mark.parametrize("dtype", DTYPES)
def test_envelope_of_a_sine_is_its_amplitude(dtype: type[np.floating]) -> None:
    # Prepare: 50 whole periods, so the Hilbert transform has no edge error.
    t = np.arange(1_000) / 1_000.0
    x = (2.0 * np.sin(2 * np.pi * 50.0 * t)).astype(dtype)

    # Execute
    env = envelope(x, fs=1_000.0, band=None)

    # Assert
    assert env.dtype == dtype
    np.testing.assert_allclose(env, 2.0, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("band", [None, (2_500.0, 3_500.0)])
def test_am_signal_shows_modulation_line(
    dtype: type[np.floating], band: tuple[float, float] | None
) -> None:
    # Prepare: 3 kHz carrier, 100 Hz modulation of depth 0.5.
    x = am_signal().astype(dtype)

    # Execute
    freqs, amp = envelope_spectrum(x, FS, band=band)

    # Assert
    assert amp.dtype == dtype
    assert freqs.shape == amp.shape == (6_001,)
    assert freqs[np.argmax(amp)] == pytest.approx(100.0)
    assert float(amp.max()) == pytest.approx(0.5, rel=1e-2)
    assert peak_to_floor_db(freqs, amp, 100.0, tol_hz=1.0, floor_bw_hz=20.0) > 40.0


def test_am_line_stands_out_of_noise_and_other_frequencies_do_not() -> None:
    # Prepare
    rng = np.random.default_rng(7)
    x = am_signal(24_000, f_mod=137.0) + 0.3 * rng.standard_normal(24_000)

    # Execute
    freqs, amp = envelope_spectrum(x, FS, band=(2_000.0, 4_000.0))

    # Assert
    assert peak_to_floor_db(freqs, amp, 137.0, tol_hz=1.0, floor_bw_hz=20.0) > 20.0
    assert peak_to_floor_db(freqs, amp, 211.0, tol_hz=1.0, floor_bw_hz=20.0) < 10.0


def test_impulse_train_shows_its_rate_and_harmonics() -> None:
    # Prepare: a 100 Hz train of 3 kHz decaying bursts (a bearing-like signal) in noise.
    rng = np.random.default_rng(3)
    n, period = 24_000, 120
    t = np.arange(period) / FS
    burst = np.exp(-1_000.0 * t) * np.sin(2 * np.pi * 3_000.0 * t)
    x = np.tile(burst, n // period) + 0.05 * rng.standard_normal(n)

    # Execute
    freqs, amp = envelope_spectrum(x, FS, band=(2_000.0, 4_000.0))

    # Assert
    for harmonic in (100.0, 200.0, 300.0):
        assert peak_to_floor_db(freqs, amp, harmonic, tol_hz=1.0, floor_bw_hz=20.0) > 20.0
    assert peak_to_floor_db(freqs, amp, 150.0, tol_hz=1.0, floor_bw_hz=20.0) < 10.0


@pytest.mark.parametrize("band", [None, (2_000.0, 4_000.0)])
def test_axis_argument_matches_row_by_row_results(band: tuple[float, float] | None) -> None:
    # Prepare: three channels with different modulation rates.
    rows = np.stack([am_signal(6_000, f_mod=f) for f in (50.0, 100.0, 150.0)])

    # Execute
    _, by_row = envelope_spectrum(rows, FS, band=band, axis=-1)
    _, by_column = envelope_spectrum(rows.T, FS, band=band, axis=0)
    _, in_3d = envelope_spectrum(rows[:, None, :].transpose(0, 2, 1), FS, band=band, axis=1)
    singles = [envelope_spectrum(row, FS, band=band)[1] for row in rows]

    # Assert
    np.testing.assert_allclose(by_row, np.stack(singles), atol=1e-12)
    np.testing.assert_allclose(by_column, by_row.T, atol=1e-12)
    np.testing.assert_allclose(in_3d[:, :, 0], by_row, atol=1e-12)
    assert [float(np.argmax(a)) for a in by_row] == [25.0, 50.0, 75.0]  # 2 Hz bins


def test_envelope_keeps_shape_along_any_axis() -> None:
    # Prepare
    x = np.random.default_rng(0).standard_normal((4, 300, 2))

    # Execute
    env = envelope(x, FS, band=(1_000.0, 2_000.0), axis=1)

    # Assert
    assert env.shape == x.shape
    assert env.dtype == np.float64
    np.testing.assert_allclose(env[2, :, 1], envelope(x[2, :, 1], FS, band=(1_000.0, 2_000.0)))


def test_odd_length_and_integer_input() -> None:
    # Execute
    freqs, amp = envelope_spectrum(np.arange(101) % 7, fs=100.0, band=None)

    # Assert
    assert freqs.shape == amp.shape == (51,)
    assert amp.dtype == np.float64
    assert freqs[-1] == pytest.approx(50.0 * 100 / 101)


@pytest.mark.parametrize(
    "x",
    [
        np.array([]),
        np.empty((3, 0)),
        np.array(1.0),
        np.array([1.0, np.nan, 2.0]),
        np.array([1.0, np.inf]),
        np.array([1.0 + 1.0j, 2.0]),
        np.array([True, False]),
        np.array(["a", "b"]),
    ],
)
def test_rejects_bad_signals(x: npt.NDArray[np.generic]) -> None:
    with pytest.raises(SignalError):
        envelope(x, FS)
    with pytest.raises(SignalError):
        envelope_spectrum(x, FS)


@pytest.mark.parametrize("fs", [0.0, -1.0, math.nan, math.inf, True, "12000"])
def test_rejects_bad_sampling_rate(fs: object) -> None:
    with pytest.raises(SignalError, match="fs"):
        envelope(np.ones(100), fs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "band",
    [(0.0, 1_000.0), (-5.0, 1_000.0), (2_000.0, 1_000.0), (1_000.0, 6_000.0), (1.0,), "ab"],
)
def test_rejects_band_outside_nyquist(band: object) -> None:
    with pytest.raises(SignalError, match="band"):
        envelope(am_signal(), FS, band=band)  # type: ignore[arg-type]


@pytest.mark.parametrize("axis", [1, -2, 5])
def test_rejects_axis_out_of_range(axis: int) -> None:
    with pytest.raises(SignalError, match="axis"):
        envelope(np.ones(100), FS, axis=axis)


def test_rejects_signal_too_short_for_band_pass() -> None:
    with pytest.raises(SignalError, match="samples"):
        envelope(np.ones(20), FS, band=(1_000.0, 2_000.0))


def test_peak_to_floor_known_answer() -> None:
    # Prepare: flat floor of 1, a line of 10 at 100 Hz.
    freqs = np.arange(200.0)
    spectrum = np.ones(200)
    spectrum[100] = 10.0

    # Execute
    on_line = peak_to_floor_db(freqs, spectrum, 100.0, tol_hz=1.0, floor_bw_hz=20.0)
    off_line = peak_to_floor_db(freqs, spectrum, 50.0, tol_hz=1.0, floor_bw_hz=20.0)

    # Assert
    assert on_line == pytest.approx(20.0)
    assert off_line == pytest.approx(0.0)


def test_peak_to_floor_excludes_the_search_zone_from_the_floor() -> None:
    # Prepare: a line three bins wide; only its neighbours outside tol form the floor.
    freqs = np.arange(100.0)
    spectrum = np.full(100, 0.1)
    spectrum[49:52] = 1.0

    # Execute
    result = peak_to_floor_db(freqs, spectrum, 50.0, tol_hz=1.0, floor_bw_hz=5.0)

    # Assert
    assert result == pytest.approx(20.0)


def test_peak_to_floor_zero_floor() -> None:
    # Prepare
    freqs = np.arange(10.0)
    spectrum = np.zeros(10)

    # Execute / Assert
    assert peak_to_floor_db(freqs, spectrum, 5.0, 0.5, 3.0) == 0.0
    spectrum[5] = 1.0
    assert peak_to_floor_db(freqs, spectrum, 5.0, 0.5, 3.0) == math.inf


@pytest.mark.parametrize(
    ("freqs", "spectrum", "f0", "tol", "bw"),
    [
        (np.arange(10.0), np.ones(9), 5.0, 1.0, 3.0),
        (np.arange(10.0), -np.ones(10), 5.0, 1.0, 3.0),
        (np.arange(10.0), np.full(10, np.nan), 5.0, 1.0, 3.0),
        (np.arange(10.0), np.ones(10), 5.0, 3.0, 3.0),
        (np.arange(10.0), np.ones(10), -5.0, 1.0, 3.0),
        (np.arange(10.0), np.ones(10), 500.0, 1.0, 3.0),
        (np.arange(10.0), np.ones(10), 5.0, 0.1, 0.5),
        (np.empty(0), np.empty(0), 5.0, 1.0, 3.0),
        (np.ones((2, 5)), np.ones((2, 5)), 5.0, 1.0, 3.0),
    ],
)
def test_peak_to_floor_rejects_bad_arguments(
    freqs: npt.NDArray[np.float64],
    spectrum: npt.NDArray[np.float64],
    f0: float,
    tol: float,
    bw: float,
) -> None:
    with pytest.raises(SignalError):
        peak_to_floor_db(freqs, spectrum, f0, tol, bw)


# --- Band chosen by spectral kurtosis (the default) -------------------------------------------


def bursts_in_noise(rate_hz: float = 100.0, resonance_hz: float = 4_200.0, seed: int = 3) -> Any:
    """Decaying bursts at `resonance_hz` every 1/`rate_hz` s, buried in noise and a strong hum."""
    rng = np.random.default_rng(seed)
    n, period = 24_000, int(FS / rate_hz)
    t = np.arange(period) / FS
    burst = np.exp(-900.0 * t) * np.sin(2 * np.pi * resonance_hz * t)
    hum = 2.0 * np.sin(2 * np.pi * 50.0 * np.arange(n) / FS)  # masks the bursts in the full band
    return np.tile(burst, n // period) + 0.3 * rng.standard_normal(n) + hum


def test_default_band_is_the_kurtogram_band_and_reveals_the_rate() -> None:
    # Prepare
    x = bursts_in_noise()

    # Execute
    freqs, by_kurtogram = envelope_spectrum(x, FS)
    _, unfiltered = envelope_spectrum(x, FS, band=None)

    # Assert: the kurtogram band shows the 100 Hz rate; the raw envelope is dominated by hum.
    chosen_db = peak_to_floor_db(freqs, by_kurtogram, 100.0, tol_hz=1.0, floor_bw_hz=20.0)
    raw_db = peak_to_floor_db(freqs, unfiltered, 100.0, tol_hz=1.0, floor_bw_hz=20.0)
    assert chosen_db > 30.0
    assert chosen_db > raw_db + 15.0


def test_kurtogram_band_is_chosen_per_slice() -> None:
    # Prepare: two channels with different resonances, time on axis 0.
    x = np.stack([bursts_in_noise(resonance_hz=2_500.0), bursts_in_noise(seed=4)], axis=1)

    # Execute
    env = envelope(x, FS, axis=0)
    singles = [envelope(x[:, i], FS) for i in range(2)]

    # Assert
    assert env.shape == x.shape
    np.testing.assert_allclose(env, np.stack(singles, axis=1), atol=1e-12)


def test_kurtogram_settings_are_passed_on() -> None:
    with pytest.raises(SignalError, match="wide"):
        envelope(bursts_in_noise(), FS, min_bandwidth_hz=10_000.0)
    with pytest.raises(SignalError, match="max_level"):
        envelope(bursts_in_noise(), FS, max_level=20)


def test_unknown_band_word_is_rejected() -> None:
    with pytest.raises(SignalError, match="band"):
        envelope(am_signal(), FS, band="auto")  # type: ignore[arg-type]
