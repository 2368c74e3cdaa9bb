"""Tests for models.health_indicator: features, baseline, threshold and the persistence rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedpm.commands.simulate_history import PlantVariability, simulate_history
from models.errors import SignalError
from models.health_indicator import (
    FEATURE_NAMES,
    alarm_indices,
    assess,
    condition_feature_rows,
    condition_features,
    feature_matrix,
    first_alarm_index,
    fit_baseline,
    health_states,
    upper_limit,
)
from models.simulator import MachineProfile, run_to_failure

FS = 12_000.0
SAMPLES = 4_096


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_features_of_a_sine_have_known_values(dtype: type) -> None:
    # Prepare: 3 g sine at 100 Hz, whole periods
    t = np.arange(12_000) / FS
    x: np.ndarray = (3.0 * np.sin(2 * np.pi * 100 * t)).astype(dtype)

    # Execute
    rms, kurt, crest, energy = condition_features(x, FS)

    # Assert
    assert rms == pytest.approx(3 / math.sqrt(2), rel=1e-5)
    assert kurt == pytest.approx(1.5, rel=1e-4)
    assert crest == pytest.approx(math.sqrt(2), rel=1e-4)
    assert energy == pytest.approx(0.0, abs=1e-6)  # nothing in the demodulation band


def test_envelope_energy_counts_only_the_modulation_in_the_band() -> None:
    # Prepare: 3 kHz carrier, AM at 100 Hz (depth 0.5) and at 800 Hz (outside 2-500 Hz)
    t = np.arange(12_000) / FS
    carrier = np.cos(2 * np.pi * 3_000 * t)
    inside = (1 + 0.5 * np.cos(2 * np.pi * 100 * t)) * carrier
    outside = (1 + 0.5 * np.cos(2 * np.pi * 800 * t)) * carrier

    # Execute
    energy_inside = condition_features(inside, FS)[3]
    energy_outside = condition_features(outside, FS)[3]

    # Assert: mean square of 0.5 cos is 0.125
    assert energy_inside == pytest.approx(0.125, rel=1e-3)
    assert energy_outside < 1e-3


@pytest.mark.parametrize(
    "x",
    [np.zeros(1_000), np.ones(10), np.full(1_000, np.nan), np.ones((2, 1_000))],
    ids=["constant", "short", "nan", "2-d"],
)
def test_features_refuse_unusable_records(x: np.ndarray) -> None:
    with pytest.raises(SignalError):
        condition_features(x, FS)


def test_feature_rows_equal_each_record_alone_and_flag_constant_records() -> None:
    # Prepare: a damaged-bearing history's records, one of them a dead (constant) sensor
    history = simulate_history(6, 2, "inner_race", 3, record_samples=2048)
    records = np.stack(history.records).astype(np.float64)
    records[4] = 0.25

    # Execute
    features, usable = condition_feature_rows(records, FS)

    # Assert: the same numbers as one record at a time; the dead one flagged, not raised
    assert usable.tolist() == [True, True, True, True, False, True]
    for i in (0, 1, 2, 3, 5):
        np.testing.assert_allclose(features[i], condition_features(records[i], FS), rtol=1e-9)
    assert np.isnan(features[4]).all()
    with pytest.raises(SignalError, match="NaN or infinite"):
        condition_feature_rows(np.where(records == 0.25, np.nan, records), FS)
    with pytest.raises(SignalError, match="n_records, samples"):
        condition_feature_rows(records[0], FS)


@pytest.mark.parametrize("mode", ["outer_race", "inner_race"])
def test_indicator_rises_with_severity_on_a_simulated_history(mode: str) -> None:
    # Prepare: healthy for 16 records, then exponential damage to failure at record 39
    records = run_to_failure(MachineProfile(), mode, 40, SAMPLES, 16, np.random.default_rng(3))  # type: ignore[arg-type]
    features = feature_matrix(records, FS)

    # Execute
    result = assess(features, n_baseline=12)

    # Assert
    hi = result.indicator
    degraded = hi[16:]
    assert stats.spearmanr(np.arange(degraded.size), degraded).statistic > 0.9
    assert hi[-1] > 100 * result.baseline.threshold
    assert result.first_alarm is not None
    assert 16 < result.first_alarm < 39
    assert result.states[result.first_alarm :] == ["alarm"] * (40 - result.first_alarm)


def test_no_alarm_on_a_healthy_history_despite_a_knock() -> None:
    # Prepare: a healthy history with drifting sensor noise; a knock hits record 40
    drift = PlantVariability(noise_drift=0.05)
    history = simulate_history(60, 58, "normal", 11, SAMPLES, variability=drift)
    records: list[np.ndarray] = list(history.records)
    t = np.arange(SAMPLES) / FS
    records[40] = records[40] + 0.8 * np.exp(-t / 2e-3) * np.sin(2 * np.pi * 2_500 * t)
    features = feature_matrix(records, FS)

    # Execute
    result = assess(features, n_baseline=20, false_alarm_rate=0.01, persistence=3)

    # Assert: the knock exceeds the threshold but the persistence rule holds the alarm back
    assert result.indicator[40] > result.baseline.threshold
    assert result.states[40] == "warning"
    assert result.first_alarm is None
    assert first_alarm_index(result.indicator, result.baseline.threshold, 1, start=20) == 40


def test_threshold_keeps_the_false_alarm_rate_on_gaussian_features() -> None:
    # Prepare: 40 baselines of 30 correlated Gaussian records, 4 features
    rng = np.random.default_rng(0)
    mixing = np.array([[1, 0, 0, 0], [0.6, 0.8, 0, 0], [0, 0.5, 1, 0], [0.3, 0, 0, 0.5]])
    rates = []
    for _ in range(40):
        healthy = rng.standard_normal((30, 4)) @ mixing.T + [1.0, 3.0, 4.0, 0.1]
        fresh = rng.standard_normal((5_000, 4)) @ mixing.T + [1.0, 3.0, 4.0, 0.1]

        # Execute
        baseline = fit_baseline(healthy, false_alarm_rate=0.01)
        rates.append(float(np.mean(baseline.indicator(fresh) > baseline.threshold)))

    # Assert: on average near the design rate (a small baseline varies a lot around it)
    assert 0.003 < float(np.mean(rates)) < 0.025


def test_baseline_leaves_out_an_isolated_transient() -> None:
    # Prepare
    rng = np.random.default_rng(1)
    healthy = rng.normal([1.0, 3.0, 4.0, 0.1], [0.05, 0.1, 0.2, 0.01], size=(20, 4))
    with_knock = healthy.copy()
    with_knock[7] = [1.2, 30.0, 12.0, 0.3]

    # Execute
    clean = fit_baseline(healthy)
    knocked = fit_baseline(with_knock)

    # Assert
    assert knocked.excluded == (7,)
    assert knocked.threshold == pytest.approx(clean.threshold, rel=0.5)


def test_a_quieter_machine_is_not_an_alarm() -> None:
    # Prepare
    rng = np.random.default_rng(2)
    healthy = rng.normal([1.0, 3.0, 4.0, 0.1], [0.05, 0.1, 0.2, 0.01], size=(20, 4))
    baseline = fit_baseline(healthy)

    shift = np.array([10.0, 0.0, 0.0, 0.0]) * baseline.scale

    # Execute: RMS 10 spreads below, then 10 spreads above its healthy mean
    lower = baseline.indicator([baseline.center - shift])
    higher = baseline.indicator([baseline.center + shift])

    # Assert
    assert lower[0] < baseline.threshold < higher[0]


def test_persistence_rule_re_arms_below_the_threshold() -> None:
    # Prepare
    hi = [0, 2, 2, 0, 2, 2, 2, 2, 2, 0, 2, 2, 2]

    # Execute
    alarms = alarm_indices(hi, threshold=1.0, persistence=3)
    states = health_states(hi, threshold=1.0, persistence=3, n_baseline=2)

    # Assert
    assert alarms == [6, 12]
    assert alarm_indices(hi, threshold=1.0, persistence=3, start=7) == [12]
    assert states[:7] == [
        "baseline",
        "baseline",
        "warning",
        "normal",
        "warning",
        "warning",
        "alarm",
    ]
    assert states[9] == "alarm"  # latched


def test_one_sided_limit_is_a_gaussian_prediction_bound() -> None:
    # Prepare
    rng = np.random.default_rng(4)
    values = rng.normal(5.0, 0.5, size=25)

    # Execute
    limit = upper_limit(values, false_alarm_rate=0.01)

    # Assert
    expected = values.mean() + stats.t.ppf(0.99, 24) * values.std(ddof=1) * math.sqrt(1 + 1 / 25)
    assert limit == pytest.approx(expected)


@pytest.mark.parametrize(
    ("features", "kwargs"),
    [
        (np.ones((7, 4)), {}),
        (np.ones((20, 4)), {"false_alarm_rate": 0.0}),
        (np.full((20, 4), np.nan), {}),
    ],
    ids=["too-few-records", "zero-rate", "nan"],
)
def test_fit_baseline_refuses_bad_input(features: np.ndarray, kwargs: dict[str, float]) -> None:
    with pytest.raises(SignalError):
        fit_baseline(features, **kwargs)


def test_assess_needs_records_after_the_baseline() -> None:
    with pytest.raises(SignalError, match="none after"):
        assess(np.random.default_rng(0).normal(size=(10, len(FEATURE_NAMES))), n_baseline=10)
