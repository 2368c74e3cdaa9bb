"""Tests for models.bearing: kinematic defect frequencies and the bearing catalogue."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from models.bearing import (
    BEARINGS,
    BearingGeometry,
    DefectFrequencies,
    defect_frequencies,
    get_bearing,
)
from models.errors import SignalError


@pytest.mark.parametrize(
    ("field", "multiple"),
    [
        # Multiples of shaft speed published with the CWRU data (datasets README).
        ("bpfi_hz", 5.4152),
        ("bpfo_hz", 3.5848),
        ("ball_hz", 4.7135),
        ("ftf_hz", 0.39828),
    ],
)
def test_6205_defect_frequencies_match_cwru_multiples(field: str, multiple: float) -> None:
    # Prepare
    rpm = 1797.0

    # Execute
    freqs = defect_frequencies(BEARINGS["6205"], rpm)

    # Assert
    assert getattr(freqs, field) / (rpm / 60.0) == pytest.approx(multiple, rel=1e-3)


@pytest.mark.parametrize(
    ("field", "multiple"),
    # CWRU fan-end bearing 6203-2RS JEM, as published by the CWRU Bearing Data Center.
    [("bpfi_hz", 4.9469), ("bpfo_hz", 3.0530), ("ball_hz", 3.9874), ("ftf_hz", 0.3817)],
)
def test_6203_defect_frequencies_match_cwru_multiples(field: str, multiple: float) -> None:
    # Execute
    freqs = defect_frequencies(BEARINGS["6203"], rpm=60.0)

    # Assert
    assert getattr(freqs, field) == pytest.approx(multiple, rel=1e-3)


@pytest.mark.parametrize(
    ("name", "rpm", "bpfo_hz", "bpfi_hz"),
    [
        ("UER204", 2400.0, 123.32, 196.68),  # XJTU-SY, condition 3 (40 Hz)
        ("ZA-2115", 2000.0, 236.4, 296.9),  # IMS, the widely quoted figures
    ],
)
def test_run_to_failure_rig_bearings_match_published_frequencies(
    name: str, rpm: float, bpfo_hz: float, bpfi_hz: float
) -> None:
    # Execute
    freqs = defect_frequencies(get_bearing(name), rpm)

    # Assert
    assert freqs.bpfo_hz == pytest.approx(bpfo_hz, rel=1e-3)
    assert freqs.bpfi_hz == pytest.approx(bpfi_hz, rel=1e-3)


@pytest.mark.parametrize("name", sorted(BEARINGS))
def test_kinematic_identities_hold_for_every_catalogue_bearing(name: str) -> None:
    # Prepare
    geometry = BEARINGS[name]

    # Execute
    f = defect_frequencies(geometry, rpm=1500.0)

    # Assert
    n = geometry.n_balls
    assert f.shaft_hz == pytest.approx(25.0)
    assert f.bpfo_hz + f.bpfi_hz == pytest.approx(n * f.shaft_hz)
    assert f.bpfo_hz == pytest.approx(n * f.ftf_hz)
    assert f.ball_hz == pytest.approx(2.0 * f.bsf_hz)
    assert geometry.name == name


def test_defect_frequencies_scale_linearly_with_speed() -> None:
    # Execute
    slow = defect_frequencies(BEARINGS["6205"], 900.0).as_dict()
    fast = defect_frequencies(BEARINGS["6205"], 1800.0).as_dict()

    # Assert
    for key, value in slow.items():
        assert fast[key] == pytest.approx(2.0 * value)


def test_contact_angle_lowers_the_ratio() -> None:
    # Prepare
    flat = BearingGeometry(9, 0.3126, 1.537)
    angled = BearingGeometry(9, 0.3126, 1.537, contact_angle_deg=60.0)

    # Execute
    f_flat, f_angled = defect_frequencies(flat, 600.0), defect_frequencies(angled, 600.0)

    # Assert: cos(60 deg) halves d/D, which moves BPFO up and BPFI down.
    assert angled.ratio == pytest.approx(flat.ratio / 2.0)
    assert f_angled.bpfo_hz > f_flat.bpfo_hz
    assert f_angled.bpfi_hz < f_flat.bpfi_hz


def test_as_dict_lists_every_frequency() -> None:
    # Execute
    result = defect_frequencies(BEARINGS["6205"], 1797.0).as_dict()

    # Assert
    assert list(result) == [f.name for f in dataclasses.fields(DefectFrequencies)]
    assert all(isinstance(v, float) for v in result.values())


@pytest.mark.parametrize("rpm", [0.0, -100.0, math.nan, math.inf, "1797"])
def test_defect_frequencies_rejects_bad_rpm(rpm: object) -> None:
    with pytest.raises(SignalError, match="rpm"):
        defect_frequencies(BEARINGS["6205"], rpm)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_balls": 2, "ball_diameter": 0.3, "pitch_diameter": 1.5},
        {"n_balls": 9.0, "ball_diameter": 0.3, "pitch_diameter": 1.5},
        {"n_balls": True, "ball_diameter": 0.3, "pitch_diameter": 1.5},
        {"n_balls": 9, "ball_diameter": 0.0, "pitch_diameter": 1.5},
        {"n_balls": 9, "ball_diameter": 0.3, "pitch_diameter": -1.5},
        {"n_balls": 9, "ball_diameter": math.nan, "pitch_diameter": 1.5},
        {"n_balls": 9, "ball_diameter": 1.5, "pitch_diameter": 1.5},
        {"n_balls": 9, "ball_diameter": 0.3, "pitch_diameter": 1.5, "contact_angle_deg": 90.0},
        {"n_balls": 9, "ball_diameter": 0.3, "pitch_diameter": 1.5, "contact_angle_deg": -1.0},
    ],
)
def test_geometry_rejects_invalid_fields(kwargs: dict[str, object]) -> None:
    with pytest.raises(SignalError):
        BearingGeometry(**kwargs)  # type: ignore[arg-type]


def test_geometry_normalises_numpy_scalars_and_is_frozen() -> None:
    # Execute
    geometry = BearingGeometry(np.int64(9), np.float32(0.3126), 1.537)  # type: ignore[arg-type]

    # Assert
    assert type(geometry.n_balls) is int
    assert type(geometry.ball_diameter) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        geometry.n_balls = 10  # type: ignore[misc]


def test_catalogue_is_read_only() -> None:
    with pytest.raises(TypeError):
        BEARINGS["6299"] = BEARINGS["6205"]  # type: ignore[index]


@pytest.mark.parametrize("spec", ["6205", " 6205 ", "za-2115", "uer204"])
def test_get_bearing_resolves_catalogue_names(spec: str) -> None:
    # Execute
    geometry = get_bearing(spec)

    # Assert
    assert geometry is BEARINGS[geometry.name]
    assert geometry.name.upper() == spec.strip().upper()


def test_get_bearing_parses_custom_geometry() -> None:
    # Execute
    custom = get_bearing("n=9, d=0.3126, D=1.537, angle=0")
    no_angle = get_bearing("n=16,d=0.331,D=2.815")

    # Assert
    assert custom == BearingGeometry(9, 0.3126, 1.537, 0.0, "custom")
    assert defect_frequencies(custom, 1797.0) == defect_frequencies(BEARINGS["6205"], 1797.0)
    assert no_angle.contact_angle_deg == 0.0
    assert no_angle.n_balls == 16


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "   ",
        "6299",
        "n=9,d=0.3126",
        "n=9,d=0.3126,D=1.537,angle=0,extra=1",
        "n=9,d=0.3126,D=1.537,d=0.3",
        "n=9,d=abc,D=1.537",
        "n=9.5,d=0.3126,D=1.537",
        "n=9,d=,D=1.537",
        "n=9,d=2.0,D=1.537",
        "n=9;d=0.3126;D=1.537",
        "N=9,d=0.3126,D=1.537",
    ],
)
def test_get_bearing_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(SignalError):
        get_bearing(spec)


def test_get_bearing_rejects_non_strings() -> None:
    with pytest.raises(SignalError):
        get_bearing(6205)  # type: ignore[arg-type]
