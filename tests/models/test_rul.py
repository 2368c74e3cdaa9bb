"""Tests for models.rul: the exponential (Wiener-process) degradation model and its RUL."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.errors import SignalError
from models.rul import estimate_rul, fit_exponential

PHI, THETA, BETA, SIGMA = 2.0, 0.5, 0.15, 0.05


def exponential_path(
    times: np.ndarray, rng: np.random.Generator, sigma: float = SIGMA
) -> np.ndarray:
    """``PHI + THETA exp(BETA t + sigma W(t))`` observed at `times`."""
    steps = sigma * np.sqrt(np.diff(times, prepend=0.0)) * rng.standard_normal(times.size)
    return PHI + THETA * np.exp(BETA * times + np.cumsum(steps))


def first_passage(
    y0: float, level: float, rng: np.random.Generator, sigma: float = SIGMA, dt: float = 0.01
) -> float:
    """Time for ``y0 + BETA t + sigma W(t)`` to reach `level`, simulated in steps of `dt`."""
    elapsed, y = 0.0, y0
    while True:
        path = y + np.cumsum(BETA * dt + sigma * math.sqrt(dt) * rng.standard_normal(4096))
        crossed = np.flatnonzero(path >= level)
        if crossed.size:
            return elapsed + float(crossed[0] + 1) * dt
        elapsed, y = elapsed + 4096 * dt, float(path[-1])


def test_rul_recovers_the_failure_time_of_a_known_exponential() -> None:
    # Prepare: a path with little wander whose noiseless form reaches the threshold at t = 45;
    # observed up to t = 30, then run on to its actual failure
    rng = np.random.default_rng(0)  # seeds 0-9: 9 of 10 inside the 90 % interval
    t = np.arange(0.0, 31.0)
    hi = exponential_path(t, rng, sigma=0.01)
    level = math.log(THETA) + BETA * 45.0
    failure_time = 30.0 + first_passage(math.log(hi[-1] - PHI), level, rng, sigma=0.01)

    # Execute: from the alarm at t = 10 to now
    est = estimate_rul(t, hi, 10, PHI + math.exp(level), PHI, interval=(0.05, 0.95))

    # Assert
    assert failure_time == pytest.approx(45.0, abs=1.0)
    assert est.rul is not None
    assert est.lower is not None
    assert est.upper is not None
    assert est.lower <= failure_time - 30.0 <= est.upper
    assert est.failure_time == pytest.approx(30.0 + est.rul)
    assert est.fit is not None
    assert est.fit.beta == pytest.approx(BETA, abs=0.01)


def test_interval_covers_the_true_first_passage_as_often_as_it_says() -> None:
    # Prepare: 150 paths observed 20 times, each then run on to its actual failure
    rng = np.random.default_rng(7)
    t = np.arange(20.0)
    level = math.log(THETA) + BETA * 40.0  # log(HI - PHI) at failure
    covered = []
    for seed in range(150):
        hi = exponential_path(t, rng)
        remaining = first_passage(math.log(hi[-1] - PHI), level, rng)

        # Execute
        est = estimate_rul(t, hi, 0, PHI + math.exp(level), PHI, seed=seed)

        # Assert (below): the true remaining life against the 10-90 % interval
        assert est.lower is not None
        assert est.upper is not None
        covered.append(est.lower <= remaining <= est.upper)
    assert 0.7 <= float(np.mean(covered)) <= 0.9


def test_too_few_post_alarm_points_are_refused_with_a_reason() -> None:
    # Prepare
    t = np.arange(30.0)
    hi = exponential_path(t, np.random.default_rng(1))

    # Execute: alarm at record 26, now at 29: 4 points
    est = estimate_rul(t, hi, start=26, failure_threshold=1e6, phi=PHI)

    # Assert
    assert est.rul is None
    assert est.lower is None
    assert est.upper is None
    assert est.reason is not None
    assert "4 post-alarm points" in est.reason


def test_a_falling_indicator_gives_no_rul() -> None:
    # Prepare
    t = np.arange(10.0)
    hi = PHI + np.exp(3.0 - 0.2 * t)

    # Execute
    est = estimate_rul(t, hi, start=0, failure_threshold=100.0, phi=PHI)

    # Assert
    assert est.rul is None
    assert est.reason is not None
    assert "not rising" in est.reason


def test_an_indicator_past_the_failure_threshold_has_no_life_left() -> None:
    # Prepare
    t = np.arange(10.0)
    hi = PHI + np.exp(0.5 * t)

    # Execute
    est = estimate_rul(t, hi, start=0, failure_threshold=50.0, phi=PHI)

    # Assert
    assert (est.rul, est.lower, est.upper) == (0.0, 0.0, 0.0)


def test_fit_recovers_drift_and_diffusion_of_a_long_path() -> None:
    # Prepare
    t = np.arange(0.0, 400.0, 0.5)
    hi = exponential_path(t, np.random.default_rng(3))

    # Execute
    fit = fit_exponential(t, hi, PHI)

    # Assert: drift within 3 standard errors, diffusion within 10 %
    assert fit.beta == pytest.approx(BETA, abs=3 * SIGMA / math.sqrt(t[-1]))
    assert fit.sigma == pytest.approx(SIGMA, rel=0.1)
    assert fit.predict([t[-1]])[0] == pytest.approx(hi[-1])


def test_rul_is_in_the_series_time_units() -> None:
    # Prepare: the same path in records and in hours (one record every 2 h)
    records = np.arange(20.0)
    hi = exponential_path(records, np.random.default_rng(4))

    # Execute
    per_record = estimate_rul(records, hi, 5, 1e4, PHI)
    per_hour = estimate_rul(2.0 * records, hi, 5, 1e4, PHI)

    # Assert
    assert per_record.rul is not None
    assert per_hour.rul is not None
    assert per_hour.rul == pytest.approx(2.0 * per_record.rul, rel=0.02)


@pytest.mark.parametrize(
    ("times", "kwargs"),
    [
        ([0.0, 1.0, 1.0, 2.0, 3.0, 4.0], {}),
        ([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], {"failure_threshold": 1.0}),
        ([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], {"interval": (0.6, 0.9)}),
        ([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], {"start": 9}),
    ],
    ids=["repeated-time", "threshold-below-phi", "bad-interval", "start-after-now"],
)
def test_invalid_arguments_raise(times: list[float], kwargs: dict[str, object]) -> None:
    # Prepare
    args: dict[str, object] = {"start": 0, "failure_threshold": 100.0, "phi": PHI, **kwargs}

    # Execute / Assert
    with pytest.raises(SignalError):
        estimate_rul(times, PHI + np.exp(np.arange(6.0)), **args)  # type: ignore[arg-type]
