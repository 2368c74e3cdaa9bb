"""Tests for models.dsp.severity: velocity RMS from acceleration and ISO 10816-3 zones."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from models.dsp.severity import (
    STANDARD_GRAVITY,
    iso_zone,
    velocity_rms,
    zone_boundaries,
)
from models.errors import SignalError

FS = 10_000.0


def acceleration_g(velocity_peak_mm_s: float, f_hz: float, seconds: float = 1.0) -> npt.NDArray:
    """Acceleration in g of a velocity sine of `velocity_peak_mm_s` at `f_hz`."""
    t = np.arange(int(seconds * FS)) / FS
    return (
        velocity_peak_mm_s
        * 1e-3
        * 2
        * np.pi
        * f_hz
        * np.cos(2 * np.pi * f_hz * t)
        / (STANDARD_GRAVITY)
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("f_hz", [25.0, 100.0, 900.0])
def test_velocity_sine_has_its_rms(dtype: type[np.floating], f_hz: float) -> None:
    # Prepare: 5 mm/s peak is 3.536 mm/s RMS, whatever the frequency inside 10-1000 Hz.
    x = acceleration_g(5.0, f_hz).astype(dtype)

    # Execute
    v = velocity_rms(x, FS)

    # Assert
    assert v.dtype == dtype
    assert v.shape == ()
    assert float(v) == pytest.approx(5.0 / math.sqrt(2), rel=1e-4)


def test_content_outside_the_band_is_ignored() -> None:
    # Prepare: 3 Hz drift and 2 kHz vibration, both outside 10-1000 Hz, plus 2 mm/s at 50 Hz.
    x = acceleration_g(50.0, 3.0) + acceleration_g(50.0, 2_000.0) + acceleration_g(2.0, 50.0)

    # Execute / Assert
    assert float(velocity_rms(x, FS)) == pytest.approx(2.0 / math.sqrt(2), rel=1e-3)
    assert float(velocity_rms(x, FS, band=(1.0, 4_000.0))) > 50.0


def test_axis_and_band_up_to_nyquist() -> None:
    # Prepare: channels on axis 0, fs = 2 kHz so 1 kHz is the Nyquist frequency.
    fs = 2_000.0
    t = np.arange(2_000) / fs
    x = np.stack([v * 2 * np.pi * 100 * np.cos(2 * np.pi * 100 * t) for v in (1.0, 3.0)], axis=1)
    x *= 1e-3 / STANDARD_GRAVITY

    # Execute
    v = velocity_rms(x, fs, axis=0)

    # Assert
    np.testing.assert_allclose(v, np.array([1.0, 3.0]) / math.sqrt(2), rtol=1e-6)


@pytest.mark.parametrize(
    ("velocity_peak", "group", "mounting", "zone"),
    [
        (1.0, 2, "rigid", "A"),  # 0.71 mm/s RMS
        (3.0, 2, "rigid", "B"),  # 2.12
        (5.0, 2, "rigid", "C"),  # 3.54
        (7.0, 2, "rigid", "D"),  # 4.95
        (5.0, 2, "flexible", "B"),
        (5.0, 1, "rigid", "B"),
        (9.0, 1, "rigid", "C"),  # 6.36
        (9.0, 1, "flexible", "B"),
        (16.0, 1, "flexible", "D"),  # 11.3
    ],
)
def test_velocity_sine_lands_in_its_zone(
    velocity_peak: float, group: int, mounting: str, zone: str
) -> None:
    # Prepare
    x = acceleration_g(velocity_peak, 100.0)

    # Execute
    result = iso_zone(float(velocity_rms(x, FS)), group=group, mounting=mounting)  # type: ignore[arg-type]

    # Assert
    assert result == zone


def test_zone_boundaries_table_and_edges() -> None:
    # Execute / Assert
    assert zone_boundaries(1, "rigid") == (2.3, 4.5, 7.1)
    assert zone_boundaries(1, "flexible") == (3.5, 7.1, 11.0)
    assert zone_boundaries(2, "rigid") == (1.4, 2.8, 4.5)
    assert zone_boundaries(2, "flexible") == (2.3, 4.5, 7.1)
    assert [iso_zone(v) for v in (0.0, 1.4, 2.8, 4.5)] == ["A", "B", "C", "D"]


@pytest.mark.parametrize(
    ("group", "mounting"), [(3, "rigid"), (0, "rigid"), (1, "soft"), (True, "rigid")]
)
def test_rejects_unknown_class(group: object, mounting: object) -> None:
    with pytest.raises(SignalError, match="group"):
        zone_boundaries(group, mounting)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, "3", True])
def test_rejects_bad_velocity(value: object) -> None:
    with pytest.raises(SignalError, match="velocity"):
        iso_zone(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("band", [(0.0, 1_000.0), (10.0, 6_000.0), (100.0, 10.0), (10.0,)])
def test_rejects_bad_band(band: object) -> None:
    with pytest.raises(SignalError, match="band"):
        velocity_rms(np.ones(1_000), FS, band=band)  # type: ignore[arg-type]


@pytest.mark.parametrize("x", [np.array([]), np.array([1.0]), np.array([np.nan, 1.0])])
def test_rejects_bad_signals(x: npt.NDArray[np.float64]) -> None:
    with pytest.raises(SignalError):
        velocity_rms(x, FS)
