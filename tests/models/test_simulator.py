"""Tests for models.simulator, checked with envelope analysis and against real CWRU data."""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from models.bearing import BEARINGS, defect_frequencies, get_bearing
from models.dsp.envelope import envelope_spectrum, peak_to_floor_db
from models.errors import SignalError
from models.simulator import (
    FAULT_MODES,
    BearingSignalStream,
    FaultMode,
    MachineProfile,
    degradation_severity,
    fault_frequency_hz,
    run_to_failure,
    simulate,
)

PROFILE = MachineProfile()
FS = PROFILE.sample_rate_hz
BAND = (2_000.0, 4_000.0)  # around the 3 kHz resonance
FAULTS: tuple[FaultMode, ...] = ("inner_race", "outer_race", "ball", "cage")
# Defect lines that must stay absent. A ball defect is modulated at the cage rate, so FTF
# shows with it; a cage defect's harmonics include BPFO (= n * FTF) and 12 * FTF ~ 2 * BSF.
ABSENT: dict[str, tuple[FaultMode, ...]] = {
    "normal": FAULTS,
    "inner_race": ("outer_race", "ball", "cage"),
    "outer_race": ("inner_race", "ball", "cage"),
    "ball": ("inner_race", "outer_race"),
    "cage": ("inner_race",),
}


def rms(x: npt.NDArray[np.floating]) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def kurtosis(x: npt.NDArray[np.floating]) -> float:
    centred = x.astype(np.float64) - x.mean(dtype=np.float64)
    return float(np.mean(centred**4) / np.mean(centred**2) ** 2)


def line_db(x: npt.NDArray[np.floating], f0: float) -> float:
    """Peak-to-floor of a line in the envelope spectrum averaged over 1 s segments."""
    segments = x[: x.size // int(FS) * int(FS)].reshape(-1, int(FS))
    freqs, amp = envelope_spectrum(segments, FS, band=BAND, axis=-1)
    return peak_to_floor_db(freqs, amp.mean(axis=0), f0, tol_hz=1.0, floor_bw_hz=10.0)


def test_healthy_signal_has_cwru_like_magnitude() -> None:
    # Execute
    x = simulate(PROFILE, "normal", 0.0, 24_000, np.random.default_rng(0))

    # Assert
    assert x.dtype == np.float32
    assert x.shape == (24_000,)
    assert 0.05 <= rms(x) <= 0.1
    assert kurtosis(x) < 3.5


@pytest.mark.parametrize("severity", [0.5, 1.0])
@pytest.mark.parametrize("mode", FAULTS)
def test_faults_are_impulsive(mode: FaultMode, severity: float) -> None:
    # Execute
    x = simulate(PROFILE, mode, severity, 24_000, np.random.default_rng(1))

    # Assert
    assert kurtosis(x) > 4.0


@pytest.mark.parametrize("mode", FAULT_MODES)
def test_envelope_spectrum_shows_only_the_fault_line(mode: FaultMode) -> None:
    # Prepare
    x = simulate(PROFILE, mode, 0.6, 8 * 12_000, np.random.default_rng(2))

    # Execute
    present = line_db(x, fault_frequency_hz(PROFILE, mode)) if mode != "normal" else None
    absent = {other: line_db(x, fault_frequency_hz(PROFILE, other)) for other in ABSENT[mode]}

    # Assert
    if present is not None:
        assert present > 6.0
    assert all(db < 6.0 for db in absent.values()), absent


def test_ball_defect_is_modulated_at_the_cage_rate() -> None:
    # Execute
    x = simulate(PROFILE, "ball", 0.6, 8 * 12_000, np.random.default_rng(3))

    # Assert
    assert line_db(x, PROFILE.frequencies.ftf_hz) > 6.0


def test_fault_line_follows_speed_and_bearing() -> None:
    # Prepare: a slower machine with the fan-end bearing.
    profile = MachineProfile(rpm=1_200.0, bearing=get_bearing("6203"))
    bpfo = defect_frequencies(BEARINGS["6203"], 1_200.0).bpfo_hz

    # Execute
    x = simulate(profile, "outer_race", 0.6, 4 * 12_000, np.random.default_rng(4))

    # Assert
    assert line_db(x, bpfo) > 6.0
    assert line_db(x, PROFILE.frequencies.bpfo_hz) < 6.0


@pytest.mark.parametrize("mode", FAULTS)
def test_rms_and_kurtosis_grow_with_severity(mode: FaultMode) -> None:
    # Execute
    records = [
        simulate(PROFILE, mode, s, 24_000, np.random.default_rng(5)) for s in (0.0, 0.25, 0.5, 1.0)
    ]

    # Assert
    assert np.all(np.diff([rms(r) for r in records]) > 0)
    assert np.all(np.diff([kurtosis(r) for r in records]) > 0)


def test_load_scale_scales_the_strikes() -> None:
    # Prepare
    light = dataclasses.replace(PROFILE, load_scale=0.5)

    # Execute
    x_light = simulate(light, "outer_race", 1.0, 12_000, np.random.default_rng(6))
    x_full = simulate(PROFILE, "outer_race", 1.0, 12_000, np.random.default_rng(6))

    # Assert
    assert rms(x_light) < rms(x_full)


def test_run_to_failure_degrades_over_time() -> None:
    # Execute
    records = run_to_failure(PROFILE, "outer_race", 10, 12_000, 4, np.random.default_rng(7))

    # Assert
    levels, peaks = [rms(r) for r in records], [kurtosis(r) for r in records]
    assert len(records) == 10
    assert all(r.dtype == np.float32 and r.shape == (12_000,) for r in records)
    assert max(levels[:5]) < 1.1 * min(levels[:5])  # healthy up to the onset
    assert np.all(np.diff(levels[5:]) > 0)
    assert levels[-1] > 3 * levels[0]
    assert peaks[-1] > peaks[0] + 5


def test_degradation_severity_shapes() -> None:
    # Execute
    linear = [degradation_severity(t, 2.0, 12.0, "linear") for t in (0.0, 2.0, 7.0, 12.0, 20.0)]
    exponential = [degradation_severity(t, 2.0, 12.0) for t in np.linspace(0.0, 14.0, 29)]

    # Assert
    assert linear == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    assert exponential[0] == 0.0
    assert exponential[-1] == 1.0
    assert np.all(np.diff(exponential) >= 0)
    assert degradation_severity(7.0, 2.0, 12.0) < 0.5  # slow start, fast end


@pytest.mark.parametrize(
    ("t", "onset", "failure", "shape"),
    [
        (1.0, 5.0, 5.0, "linear"),
        (1.0, 6.0, 5.0, "linear"),
        (math.nan, 0.0, 5.0, "linear"),
        (1.0, 0.0, math.inf, "linear"),
        (1.0, 0.0, 5.0, "cubic"),
    ],
)
def test_degradation_severity_rejects_bad_arguments(
    t: float, onset: float, failure: float, shape: str
) -> None:
    with pytest.raises(SignalError):
        degradation_severity(t, onset, failure, shape)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", FAULT_MODES)
def test_reproducible_by_seed(mode: FaultMode) -> None:
    # Execute
    a = simulate(PROFILE, mode, 0.7, 6_000, np.random.default_rng(11))
    b = simulate(PROFILE, mode, 0.7, 6_000, np.random.default_rng(11))
    c = simulate(PROFILE, mode, 0.7, 6_000, np.random.default_rng(12))

    # Assert
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("mode", FAULT_MODES)
def test_stream_chunks_concatenate_into_the_one_shot_signal(mode: FaultMode) -> None:
    # Prepare
    sizes = (1, 999, 2_048, 7, 8_945, 12_000)
    stream = BearingSignalStream(PROFILE, np.random.default_rng(13))

    # Execute
    chunked = np.concatenate([stream.next(n, mode, 0.8) for n in sizes])
    one_shot = simulate(PROFILE, mode, 0.8, sum(sizes), np.random.default_rng(13))

    # Assert: identical, so no jump at any boundary and strikes ring on across chunks.
    np.testing.assert_array_equal(chunked, one_shot)
    assert stream.time_s == pytest.approx(sum(sizes) / FS)


def test_stream_has_no_jump_when_the_condition_changes() -> None:
    # Prepare: noise off so the signal is smooth and boundary jumps would stand out.
    quiet = dataclasses.replace(PROFILE, noise_rms_g=0.0, broadband_rms_g=0.0)
    stream = BearingSignalStream(quiet, np.random.default_rng(14))
    plan: list[tuple[FaultMode, float]] = [("normal", 0.0), ("outer_race", 0.5), ("ball", 1.0)]

    # Execute
    x = np.concatenate([stream.next(1_200, mode, severity) for mode, severity in plan])

    # Assert
    steps = np.abs(np.diff(x.astype(np.float64)))
    boundaries = steps[[1_199, 2_399]]
    assert np.all(boundaries <= np.max(steps))
    assert np.all(np.abs(x[:1_200]) < 0.11)  # healthy part: harmonics only


def test_t0_continues_the_shaft_phase_across_records() -> None:
    # Prepare
    clean = dataclasses.replace(PROFILE, noise_rms_g=0.0, broadband_rms_g=0.0)

    # Execute
    whole = simulate(clean, "normal", 0.0, 2_000, np.random.default_rng(15))
    second = simulate(clean, "normal", 0.0, 1_000, np.random.default_rng(15), t0_s=1_000 / FS)

    # Assert
    np.testing.assert_allclose(second, whole[1_000:], atol=1e-6)


def test_generating_one_second_is_fast() -> None:
    # Prepare
    rng = np.random.default_rng(16)
    simulate(PROFILE, "inner_race", 0.5, 12_000, rng)  # warm up

    # Execute
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        simulate(PROFILE, "inner_race", 0.5, 12_000, rng)
        timings.append(time.perf_counter() - start)

    # Assert
    assert min(timings) < 0.01


def test_fault_frequency_hz_maps_modes_to_kinematics() -> None:
    # Prepare
    f = PROFILE.frequencies

    # Execute / Assert
    assert fault_frequency_hz(PROFILE, "inner_race") == f.bpfi_hz
    assert fault_frequency_hz(PROFILE, "outer_race") == f.bpfo_hz
    assert fault_frequency_hz(PROFILE, "ball") == f.ball_hz
    assert fault_frequency_hz(PROFILE, "cage") == f.ftf_hz
    with pytest.raises(SignalError):
        fault_frequency_hz(PROFILE, "normal")


@pytest.mark.parametrize(
    "changes",
    [
        {"rpm": 0.0},
        {"rpm": math.nan},
        {"sample_rate_hz": -1.0},
        {"resonance_hz": 6_000.0},
        {"resonance_damping": 0.0},
        {"resonance_damping": 1.0},
        {"shaft_harmonic_amplitudes": (0.1, -0.1)},
        {"shaft_harmonic_amplitudes": 0.1},
        {"noise_rms_g": -0.01},
        {"impulse_amplitude_g": math.inf},
        {"load_scale": -1.0},
        {"rpm_jitter": 0.5},
        {"slip": 0.2},
        {"bearing": "6205"},
    ],
)
def test_profile_rejects_invalid_fields(changes: dict[str, object]) -> None:
    with pytest.raises(SignalError):
        dataclasses.replace(PROFILE, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mode", "severity", "n_samples"),
    [
        ("bogus", 0.5, 100),
        ("inner_race", -0.1, 100),
        ("inner_race", 1.1, 100),
        ("inner_race", math.nan, 100),
        ("inner_race", 0.5, 0),
        ("inner_race", 0.5, 1.5),
        ("inner_race", 0.5, True),
    ],
)
def test_simulate_rejects_bad_arguments(mode: str, severity: float, n_samples: int) -> None:
    with pytest.raises(SignalError):
        simulate(PROFILE, mode, severity, n_samples, np.random.default_rng(0))  # type: ignore[arg-type]


def test_simulate_requires_a_generator() -> None:
    with pytest.raises(SignalError, match="Generator"):
        simulate(PROFILE, "normal", 0.0, 100, np.random.RandomState(0))  # type: ignore[arg-type]


@pytest.mark.parametrize(("n_records", "onset"), [(1, 0), (5, 4), (5, -1), (5, 1.5)])
def test_run_to_failure_rejects_bad_record_counts(n_records: int, onset: int) -> None:
    with pytest.raises(SignalError):
        run_to_failure(PROFILE, "ball", n_records, 100, onset, np.random.default_rng(0))


# --- Real data -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ("12k_Drive_End_OR007@6_0_130.npz", "bpfo_hz"),
        ("12k_Drive_End_IR007_0_105.npz", "bpfi_hz"),
    ],
)
def test_cwru_record_shows_its_defect_frequency(record: str, field: str, cwru_root: Path) -> None:
    # Prepare
    root = cwru_root
    with (root / "MANIFEST.tsv").open(newline="") as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle, delimiter="\t")}
    if record not in rows or not (root / record).is_file():
        pytest.skip(f"{record} not in the dataset")
    with np.load(root / record) as data:
        de = data["de"]
    freqs = defect_frequencies(BEARINGS["6205"], float(rows[record]["rpm_in_file"]))
    others = [name for name in ("bpfo_hz", "bpfi_hz", "ball_hz") if name != field]

    # Execute
    f, amp = envelope_spectrum(de, float(rows[record]["sample_rate_hz"]), band=BAND)
    expected = peak_to_floor_db(f, amp, getattr(freqs, field), tol_hz=1.0, floor_bw_hz=15.0)
    rest = [peak_to_floor_db(f, amp, getattr(freqs, o), 1.0, 15.0) for o in others]

    # Assert
    assert expected > 20.0
    assert expected > max(rest) + 10.0
