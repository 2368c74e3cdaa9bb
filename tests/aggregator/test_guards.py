"""The reply guards: structure, finite values, sample-count cap, update-norm outliers, quorum."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.guards import (
    Candidate,
    GuardConfig,
    clip_examples,
    enough_replies,
    norm_outliers,
    screen_replies,
    spec_of,
    structure_problem,
    update_norm,
)

KEYS = frozenset({"num-examples", "train-loss"})


def _global() -> dict[str, np.ndarray]:
    return {
        "w": np.zeros((4, 3), np.float32),
        "b": np.zeros(3, np.float32),
        "n": np.array(5, np.int64),  # like BatchNorm's num_batches_tracked
    }


def _update(scale: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {k: v.copy() for k, v in _global().items()}
    out["w"] = (scale * rng.standard_normal((4, 3))).astype(np.float32)
    out["b"] = (scale * rng.standard_normal(3)).astype(np.float32)
    out["n"] = np.array(9, np.int64)
    return out


def _cand(site: str, arrays: dict[str, np.ndarray] | None, n: float | None = 100.0) -> Candidate:
    return Candidate(site, arrays, n, KEYS)


def test_structure_problems_name_the_array_and_the_fault() -> None:
    # Prepare
    spec = spec_of(_global())
    missing = {k: v for k, v in _update(1, 0).items() if k != "b"}
    reshaped = {**_update(1, 0), "w": np.zeros((3, 4), np.float32)}
    retyped = {**_update(1, 0), "w": np.zeros((4, 3), np.float64)}
    inf = {**_update(1, 0), "b": np.array([0, np.inf, 0], np.float32)}

    # Execute / Assert
    assert structure_problem(spec, _update(1, 0)) is None
    assert "missing ['b']" in (structure_problem(spec, missing) or "")
    assert "'w' shaped (3, 4)" in (structure_problem(spec, reshaped) or "")
    assert "'w' has dtype float64" in (structure_problem(spec, retyped) or "")
    assert structure_problem(spec, inf) == "array 'b' holds NaN or Inf"


def test_screen_rejects_malformed_replies_and_keeps_the_rest() -> None:
    # Prepare
    g = _global()
    nan = _update(1, 1)
    nan["w"][0, 0] = np.nan
    cands = [
        _cand("good-1", _update(1, 0)),
        _cand("nan", nan),
        _cand("no-arrays", None),
        _cand("zero-count", _update(1, 2), 0),
        _cand("no-count", _update(1, 3), None),
        _cand("good-2", _update(1, 4)),
    ]

    # Execute
    result = screen_replies(spec_of(g), g, cands, GuardConfig())

    # Assert
    assert [cands[i].site for i in result.accepted] == ["good-1", "good-2"]
    assert result.weights == [100, 100]
    reasons = {cands[i].site: r for i, r in result.rejected.items()}
    assert set(reasons) == {"nan", "no-arrays", "zero-count", "no-count"}
    assert "NaN or Inf" in reasons["nan"]
    assert "num-examples" in reasons["zero-count"]


def test_sample_counts_are_clipped_to_the_cap() -> None:
    # Prepare
    g = _global()
    cands = [_cand("honest", _update(1, 0), 120), _cand("boastful", _update(1, 1), 1e9)]

    # Execute
    result = screen_replies(spec_of(g), g, cands, GuardConfig(max_examples=500))

    # Assert: the boastful site weighs at most the cap, and it is reported as clipped
    assert result.weights == [120, 500]
    assert result.clipped == [1]
    assert clip_examples(7.9, 500) == 7
    with pytest.raises(ValueError, match="finite count"):
        clip_examples(float("inf"), 500)


def test_norm_outlier_is_rejected_among_many_replies() -> None:
    # Prepare: six honest updates of similar size and one scaled 100x (a boosting attack)
    g = _global()
    cands = [_cand(f"site-{i}", _update(1.0, i)) for i in range(6)]
    cands.append(_cand("attacker", _update(100.0, 99)))

    # Execute
    result = screen_replies(spec_of(g), g, cands, GuardConfig(norm_outlier_mads=5))

    # Assert
    assert list(result.rejected) == [6]
    assert "update norm" in result.rejected[6]
    assert len(result.accepted) == 6
    assert result.norms[6] > 50 * result.norms[0]


def test_norm_test_leaves_few_replies_and_honest_spread_alone() -> None:
    # Prepare / Execute / Assert
    # two replies: the median is their mean, so nothing says which one is the outlier
    assert norm_outliers([1.0, 1000.0], k=5) == [False, False]
    # three replies, two nearly equal (MAD ~ 0): the floor keeps a 2x honest update in
    assert norm_outliers([1.0, 1.0001, 2.0], k=5) == [False, False, False]
    # ... but a 20x one is still caught
    assert norm_outliers([1.0, 1.0001, 20.0], k=5) == [False, False, True]
    # k = 0 turns the test off
    assert norm_outliers([1.0, 1.0, 1.0, 1e9], k=0) == [False] * 4


def test_update_norm_ignores_integer_counters() -> None:
    # Prepare
    g = _global()
    moved = {k: v.copy() for k, v in g.items()}
    moved["w"][0, 0] = 3.0
    moved["b"][1] = 4.0
    moved["n"] = np.array(10**9, np.int64)

    # Execute / Assert: sqrt(3^2 + 4^2), the batch counter does not count
    assert update_norm(g, moved) == pytest.approx(5.0)


def test_replies_with_other_metric_names_are_refused() -> None:
    # Prepare: Flower's aggregation needs the same metrics in every reply
    g = _global()
    cands = [_cand("a", _update(1, 0)), _cand("b", _update(1, 1))]
    cands.append(Candidate("odd", _update(1, 2), 100.0, frozenset({"num-examples"})))

    # Execute
    result = screen_replies(spec_of(g), g, cands, GuardConfig())

    # Assert
    assert list(result.rejected) == [2]
    assert "metric names" in result.rejected[2]


def test_evaluation_replies_are_checked_for_counts_only() -> None:
    # Prepare
    cands = [_cand("a", None, 10), _cand("b", None, 1e12), _cand("c", None, -1)]

    # Execute
    result = screen_replies(None, None, cands, GuardConfig(max_examples=50))

    # Assert
    assert result.accepted == [0, 1]
    assert result.weights == [10, 50]
    assert list(result.rejected) == [2]


def test_quorum() -> None:
    # Prepare / Execute / Assert
    assert enough_replies(2, 4, 0.5)
    assert not enough_replies(1, 4, 0.5)
    assert enough_replies(3, 3, 1.0)
    assert not enough_replies(2, 3, 1.0)
    assert not enough_replies(0, 0, 0.1)  # a round with no valid reply never counts


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_examples": 0},
        {"norm_outlier_mads": -1.0},
        {"norm_outlier_mads": float("nan")},
        {"min_reply_fraction": 0.0},
        {"min_reply_fraction": 1.5},
    ],
)
def test_guard_config_refuses_bad_thresholds(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        GuardConfig(**kwargs)  # type: ignore[arg-type]
