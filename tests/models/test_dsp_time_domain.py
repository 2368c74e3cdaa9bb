"""Tests for models.dsp.time_domain on analytic signals with known answers."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from models.dsp import time_domain as td
from models.errors import SignalError

INDICATORS: list[Callable[..., npt.NDArray[np.floating]]] = [
    td.rms,
    td.peak,
    td.peak_to_peak,
    td.crest_factor,
    td.kurtosis,
    td.skewness,
    td.shape_factor,
    td.impulse_factor,
]


def sine(amplitude: float = 2.0, periods: int = 20, per_period: int = 400) -> npt.NDArray:
    # per_period is a multiple of 4, so the samples include the crests.
    n = periods * per_period
    return amplitude * np.sin(2 * np.pi * np.arange(n) / per_period)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sine_has_its_textbook_indicators(dtype: type[np.floating]) -> None:
    # Prepare
    a = 2.0
    x = sine(a).astype(dtype)
    rtol = 1e-5 if dtype == np.float32 else 1e-9

    # Execute
    values = {f.__name__: f(x) for f in INDICATORS}

    # Assert
    assert all(v.dtype == dtype and v.shape == () for v in values.values())
    assert float(values["rms"]) == pytest.approx(a / math.sqrt(2), rel=rtol)
    assert float(values["peak"]) == pytest.approx(a, rel=rtol)
    assert float(values["peak_to_peak"]) == pytest.approx(2 * a, rel=rtol)
    assert float(values["crest_factor"]) == pytest.approx(math.sqrt(2), rel=rtol)
    assert float(values["kurtosis"]) == pytest.approx(1.5, rel=1e-4)
    assert float(values["skewness"]) == pytest.approx(0.0, abs=1e-5)
    assert float(values["shape_factor"]) == pytest.approx(math.pi / (2 * math.sqrt(2)), rel=1e-4)
    assert float(values["impulse_factor"]) == pytest.approx(math.pi / 2, rel=1e-4)


def test_kurtosis_pearson_and_excess() -> None:
    # Prepare
    noise = np.random.default_rng(0).standard_normal(400_000)

    # Execute
    pearson = float(td.kurtosis(noise))
    excess = float(td.kurtosis(noise, fisher=True))

    # Assert: 3 for Gaussian noise (Pearson), 0 in excess; the two differ by exactly 3.
    assert pearson == pytest.approx(3.0, abs=0.05)
    assert excess == pytest.approx(pearson - 3.0, abs=1e-12)
    assert float(td.kurtosis(sine(), fisher=True)) == pytest.approx(-1.5, rel=1e-4)


def test_square_wave_and_impulse_train() -> None:
    # Prepare
    square = np.tile([1.0, 1.0, -1.0, -1.0], 100)
    impulses = np.zeros(1_000)
    impulses[::100] = 1.0

    # Execute / Assert: a square wave is all crest; sparse impulses are very peaky.
    assert float(td.crest_factor(square)) == pytest.approx(1.0)
    assert float(td.kurtosis(square)) == pytest.approx(1.0)
    assert float(td.shape_factor(square)) == pytest.approx(1.0)
    assert float(td.crest_factor(impulses)) == pytest.approx(math.sqrt(100))
    assert float(td.kurtosis(impulses)) > 50.0
    assert float(td.skewness(impulses)) > 5.0


@pytest.mark.parametrize("indicator", INDICATORS)
def test_axis_argument_matches_row_by_row(indicator: Callable[..., npt.NDArray]) -> None:
    # Prepare: three channels of different level and shape.
    rng = np.random.default_rng(1)
    rows = np.stack([sine(1.0), sine(3.0) + 0.1, rng.standard_normal(8_000) ** 3])

    # Execute
    by_row = indicator(rows, axis=-1)
    by_column = indicator(rows.T, axis=0)
    in_3d = indicator(rows[:, None, :], axis=2)
    singles = np.array([indicator(row) for row in rows])

    # Assert
    assert by_row.shape == (3,)
    np.testing.assert_allclose(by_row, singles, rtol=1e-12)
    np.testing.assert_allclose(by_column, singles, rtol=1e-12)
    np.testing.assert_allclose(in_3d[:, 0], singles, rtol=1e-12)


def test_integer_input_gives_float64() -> None:
    # Execute
    result = td.rms(np.array([3, -3, 3, -3], dtype=np.int16))

    # Assert
    assert result.dtype == np.float64
    assert float(result) == 3.0


def test_undefined_ratios_and_moments_are_nan() -> None:
    # Prepare: a dead channel (zeros) and a stuck one (constant offset) next to a live one.
    x = np.stack([np.zeros(100), np.full(100, 0.5), sine(1.0, periods=1, per_period=100)])

    # Execute
    crest = td.crest_factor(x)
    kurt = td.kurtosis(x)
    skew = td.skewness(x)

    # Assert
    assert float(td.rms(x)[0]) == 0.0
    assert np.isnan(crest[0])
    assert np.isnan(td.shape_factor(x)[0])
    assert np.isnan(td.impulse_factor(x)[0])
    assert crest[1] == pytest.approx(1.0)
    assert np.isnan(kurt[:2]).all()
    assert np.isnan(skew[:2]).all()
    assert kurt[2] == pytest.approx(1.5, rel=1e-3)


@pytest.mark.parametrize("indicator", INDICATORS)
@pytest.mark.parametrize(
    "x",
    [
        np.array([]),
        np.empty((2, 0)),
        np.array(1.0),
        np.array([1.0, np.nan]),
        np.array([1.0, -np.inf]),
        np.array([1j, 2.0]),
        np.array([True, False]),
        np.array(["a", "b"]),
    ],
)
def test_rejects_bad_signals(
    indicator: Callable[..., npt.NDArray], x: npt.NDArray[np.generic]
) -> None:
    with pytest.raises(SignalError):
        indicator(x)


@pytest.mark.parametrize("axis", [1, -2, 1.0, True])
def test_rejects_bad_axis(axis: object) -> None:
    with pytest.raises(SignalError, match="axis"):
        td.rms(np.ones(10), axis=axis)  # type: ignore[arg-type]
