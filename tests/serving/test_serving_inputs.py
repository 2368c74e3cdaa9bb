"""Unit tests of request-window preparation (pure functions, analytic signals)."""

from __future__ import annotations

import numpy as np
import pytest

from models.metadata import ModelMetadata, Provenance
from serving.errors import InvalidInputError, ResampleError, ShapeError
from serving.inputs import STANDARD_GRAVITY, conform_rate, prepare_batch, stack_windows, to_units


def _metadata(fs: float = 12_000.0, n: int = 2048, channels: int = 1) -> ModelMetadata:
    return ModelMetadata(
        sample_rate_hz=fs,
        window_samples=n,
        channels=channels,
        class_names=("normal", "fault"),
        embedding_dim=8,
        provenance=Provenance(source="untrained"),
    )


def test_stack_windows_flat_and_nested_forms():
    # Execute
    flat = stack_windows([[1.0, 2.0], [3.0, 4.0]])
    nested = stack_windows([[[1.0, 2.0], [5.0, 6.0]]])

    # Assert
    assert flat.shape == (2, 1, 2)
    assert nested.shape == (1, 2, 2)
    np.testing.assert_array_equal(nested[0, 1], [5.0, 6.0])


def test_stack_windows_refuses_empty_batch():
    with pytest.raises(ShapeError, match="'windows' is empty"):
        stack_windows([])


def test_to_units_standard_gravity_is_one_g():
    # Execute
    g = to_units(np.array([STANDARD_GRAVITY, -2 * STANDARD_GRAVITY]), "m/s^2", "g")

    # Assert
    np.testing.assert_allclose(g, [1.0, -2.0])


def test_to_units_refuses_unknown_units():
    with pytest.raises(InvalidInputError, match="unsupported units 'in/s'"):
        to_units(np.zeros(3), "in/s", "g")


def test_prepare_batch_converts_si_to_g_exactly():
    # Prepare
    x = np.full(2048, STANDARD_GRAVITY * 0.25)

    # Execute
    batch = prepare_batch([x.tolist()], 12_000.0, "m/s^2", _metadata())

    # Assert
    assert batch.dtype == np.float32
    assert batch.shape == (1, 1, 2048)
    np.testing.assert_allclose(batch, 0.25, rtol=1e-6)


def test_conform_rate_halves_a_sine_and_keeps_its_amplitude():
    # Prepare: a 1 kHz sine of amplitude 2 g at 24 kHz, well below both Nyquist limits
    t = np.arange(4096) / 24_000.0
    x = (2.0 * np.sin(2 * np.pi * 1000.0 * t))[np.newaxis, np.newaxis]

    # Execute
    y = conform_rate(x, 24_000.0, _metadata())

    # Assert
    assert y.shape == (1, 1, 2048)
    middle = y[0, 0, 256:-256]  # away from the filter's edge transients
    expected = 2.0 * np.sin(2 * np.pi * 1000.0 * np.arange(2048) / 12_000.0)[256:-256]
    np.testing.assert_allclose(middle, expected, atol=0.02)


def test_conform_rate_upsamples_8khz():
    # Prepare: 2048 samples at 12 kHz last as long as 1365.33 samples at 8 kHz
    x = np.zeros((1, 1, 1365))

    # Execute
    y = conform_rate(x, 8_000.0, _metadata())

    # Assert
    assert y.shape == (1, 1, 2048)


def test_conform_rate_states_the_needed_length():
    with pytest.raises(ResampleError, match="at 48000 Hz send windows of 8192 samples"):
        conform_rate(np.zeros((1, 1, 2048)), 48_000.0, _metadata())


def test_conform_rate_refuses_rate_too_low_for_the_window():
    with pytest.raises(ResampleError, match=r"0\.001 Hz is too low a sample rate"):
        conform_rate(np.zeros((1, 1, 4)), 0.001, _metadata())


def test_conform_rate_refuses_ratio_without_small_fraction():
    # Prepare: 1 Hz model, 100 kHz input: the ratio 1e-5 has no fraction with q <= 1000
    x = np.zeros((1, 1, 1_600_000))

    # Execute / Assert
    with pytest.raises(ResampleError, match="cannot resample 100000 Hz"):
        conform_rate(x, 100_000.0, _metadata(fs=1.0, n=16))


@pytest.mark.parametrize("fs", [0.0, -1.0, float("nan"), float("inf")])
def test_prepare_batch_refuses_bad_rates(fs: float):
    with pytest.raises(InvalidInputError, match="sample_rate_hz must be positive"):
        prepare_batch([[0.0] * 2048], fs, "g", _metadata())


def test_prepare_batch_refuses_nan_even_without_the_schema():
    # Prepare
    windows = [[0.0] * 2048, [0.0] * 2047 + [float("nan")]]

    # Execute / Assert
    with pytest.raises(InvalidInputError, match="window 1 contains NaN or infinite samples"):
        prepare_batch(windows, 12_000.0, "g", _metadata())
