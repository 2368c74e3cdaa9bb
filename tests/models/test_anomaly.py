"""Tests for models.anomaly: per-asset healthy baselines, Mahalanobis scores, calibrated threshold.

The false-alarm rate is checked where enough healthy windows exist: simulated healthy vibration
of one machine, through the embedding of a briefly trained WDCNN, and many synthetic rows. The
real CWRU normal record is only 5 s at 0 HP, too short for a rate, but it shows that real
faults score far above a baseline fitted on it.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from models.anomaly import MIN_FIT_WINDOWS, AnomalyBaseline, ledoit_wolf, min_windows
from models.errors import AnomalyError
from models.metadata import Provenance
from models.network import build_model
from models.onnx_export import export_onnx, metadata_for
from models.runtime import OnnxClassifier
from models.simulator import BearingSignalStream, FaultMode, MachineProfile
from models.training import train
from models.windows import resample, windows_from_record

FS = 12_000.0
WINDOW = 2048
CLASSES: tuple[FaultMode, ...] = ("normal", "inner_race", "outer_race", "ball")
HEALTHY_FIT = 1000  # simulated healthy windows given to fit (half of them held out)
HEALTHY_FRESH = 1000  # later healthy windows of the same machine, never seen by fit

FloatArray = npt.NDArray[np.float32]


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Train on one thread: two threads on a shared two-core machine were 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def trained_classifier(x: FloatArray, y: npt.NDArray[np.int64]) -> OnnxClassifier:
    net = build_model(seed=0)
    with one_torch_thread(), torch.random.fork_rng():
        torch.manual_seed(0)
        train(net, x, y, epochs=3, batch_size=16, learning_rate=3e-3, seed=0)
        meta = metadata_for(
            net, sample_rate_hz=FS, class_names=CLASSES, provenance=Provenance(source="test")
        )
        return OnnxClassifier(export_onnx(net, meta))


def simulated(stream: BearingSignalStream, n: int, mode: FaultMode, severity: float) -> FloatArray:
    return windows_from_record(stream.next(n * WINDOW, mode, severity), WINDOW)[:, np.newaxis]


@pytest.fixture(scope="module")
def sim_classifier() -> OnnxClassifier:
    """A WDCNN trained briefly on simulated windows of the four classes."""
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [simulated(BearingSignalStream(MachineProfile(), rng), 16, m, 0.5) for m in CLASSES]
    )
    return trained_classifier(x, np.repeat(np.arange(len(CLASSES)), 16).astype(np.int64))


@pytest.fixture(scope="module")
def sim_machine(sim_classifier: OnnxClassifier) -> dict[str, npt.NDArray[np.float32]]:
    """Embeddings of another simulated machine: healthy (fit, then fresh) and two faults."""
    stream = BearingSignalStream(MachineProfile(rpm=1750.0), np.random.default_rng(7))
    healthy = simulated(stream, HEALTHY_FIT + HEALTHY_FRESH, "normal", 0.0)
    outer = simulated(stream, 50, "outer_race", 0.3)
    inner = simulated(stream, 50, "inner_race", 0.3)
    embed = sim_classifier.predict
    return {
        "fit": embed(healthy[:HEALTHY_FIT]).embedding,
        "fresh": embed(healthy[HEALTHY_FIT:]).embedding,
        "outer_race": embed(outer).embedding,
        "inner_race": embed(inner).embedding,
    }


def tolerance(rate: float, n_holdout: int, n_fresh: int) -> float:
    """Three standard deviations of a measured false-alarm rate around the chosen one.

    Two sources: the threshold's own rate varies with the held-out windows (about
    ``rate (1 - rate) / (n_holdout + 2)``), and counting alarms on ``n_fresh`` windows adds a
    binomial ``rate (1 - rate) / n_fresh``.
    """
    variance = rate * (1 - rate) * (1 / (n_holdout + 2) + 1 / n_fresh)
    return 3 * math.sqrt(variance)


# --- Calibrated false-alarm rate -------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.2])
def test_false_alarm_rate_on_fresh_simulated_healthy_windows_is_the_chosen_one(
    sim_machine: dict[str, npt.NDArray[np.float32]], rate: float
) -> None:
    # Prepare
    baseline = AnomalyBaseline.fit(sim_machine["fit"], false_alarm_rate=rate, holdout_fraction=0.5)

    # Execute
    measured = float(baseline.is_anomalous(sim_machine["fresh"]).mean())

    # Assert
    tol = tolerance(rate, baseline.n_holdout, HEALTHY_FRESH)
    assert rate - tol <= measured <= rate + tol, (measured, tol)


@pytest.mark.parametrize("distribution", ["gaussian", "student-t3"])
@pytest.mark.parametrize("rate", [0.01, 0.05])
def test_false_alarm_rate_holds_for_any_feature_distribution(
    distribution: str, rate: float
) -> None:
    # Prepare: 8 correlated features, heavy-tailed in one case (the quantile assumes no shape)
    rng = np.random.default_rng(11)
    mixing = rng.normal(size=(8, 8))
    n_fit, n_holdout, n_fresh = 2000, 5000, 20_000
    if distribution == "gaussian":
        z = rng.standard_normal((n_fit + n_holdout + n_fresh, 8))
    else:
        z = rng.standard_t(3, size=(n_fit + n_holdout + n_fresh, 8))
    rows = z @ mixing + 5.0
    baseline = AnomalyBaseline.fit(
        rows[: n_fit + n_holdout], false_alarm_rate=rate, holdout_fraction=n_holdout / 7000
    )

    # Execute
    measured = float(baseline.is_anomalous(rows[n_fit + n_holdout :]).mean())

    # Assert
    assert baseline.n_holdout == n_holdout
    tol = tolerance(rate, n_holdout, n_fresh)
    assert rate - tol <= measured <= rate + tol, (measured, tol)


# --- Faults score far higher -----------------------------------------------------------------


@pytest.mark.parametrize("fault", ["outer_race", "inner_race"])
def test_simulated_faults_score_far_above_the_threshold(
    sim_machine: dict[str, npt.NDArray[np.float32]], fault: str
) -> None:
    # Prepare
    baseline = AnomalyBaseline.fit(sim_machine["fit"], false_alarm_rate=0.01)

    # Execute
    scores = baseline.score(sim_machine[fault])

    # Assert
    assert baseline.is_anomalous(sim_machine[fault]).all()
    assert float(np.median(scores)) >= 3 * baseline.threshold
    assert float(np.median(baseline.score(sim_machine["fresh"]))) < baseline.threshold


def cwru_record(root: Path, fault: str, diameter: str, load_hp: str = "0") -> FloatArray:
    with (root / "MANIFEST.tsv").open(newline="", encoding="utf-8") as handle:
        row = next(
            r
            for r in csv.DictReader(handle, delimiter="\t")
            if (r["fault_type"], r["fault_diameter_in"], r["motor_load_hp"])
            == (fault, diameter, load_hp)
            and r["or_position"] in ("", "@6:00")
        )
    with np.load(root / row["file"]) as data:
        return resample(data["de"], float(row["sample_rate_hz"]), FS)  # normal is 48 kHz


def test_real_faults_score_far_above_a_real_healthy_baseline(cwru_root: Path) -> None:
    # Prepare: the model learns from the first part of the normal record and from 1 HP faults
    # of 0.014 in; the baseline is fitted on the first 70 % of the normal record (0 HP)
    normal = cwru_record(cwru_root, "normal", "0.000")
    cut = int(0.7 * len(normal))
    healthy = windows_from_record(normal[:cut], WINDOW, 256)[:, np.newaxis]
    fresh = windows_from_record(normal[cut:], WINDOW, 256)[:, np.newaxis]
    faults = [
        windows_from_record(cwru_record(cwru_root, f, "0.014", "1"), WINDOW)[:24, np.newaxis]
        for f in CLASSES[1:]
    ]
    x = np.concatenate([healthy[::6][:24], *faults])
    classifier = trained_classifier(x, np.repeat(np.arange(4), 24).astype(np.int64))
    baseline = AnomalyBaseline.fit(classifier.predict(healthy).embedding, false_alarm_rate=0.05)

    # Execute: fault records at 0 HP, of sizes the model never saw
    scores = {
        (fault, diameter): baseline.score(
            classifier.predict(
                windows_from_record(cwru_record(cwru_root, fault, diameter), WINDOW)[:, None]
            ).embedding
        )
        for fault in CLASSES[1:]
        for diameter in ("0.007", "0.021")
    }
    fresh_flagged = float(baseline.is_anomalous(classifier.predict(fresh).embedding).mean())

    # Assert: 64 overlapping fresh windows from 1.5 s are no rate estimate: only "rarely"
    for key, s in scores.items():
        assert float(np.mean(s > baseline.threshold)) >= 0.95, key
        assert float(np.median(s)) >= 3 * baseline.threshold, key
    assert fresh_flagged <= 0.2


# --- Ledoit-Wolf -----------------------------------------------------------------------------


def ledoit_wolf_reference(x: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], float]:
    """Ledoit & Wolf (2004), section 3, written out observation by observation."""
    n, d = int(x.shape[0]), int(x.shape[1])
    centred = x - x.mean(axis=0)
    sample = centred.T @ centred / n
    mu = float(np.trace(sample)) / d

    def norm2(a: npt.NDArray[np.float64]) -> float:  # the paper's normalised ||A||^2
        return float(np.trace(a @ a.T)) / d

    delta2 = norm2(sample - mu * np.eye(d))
    beta_bar2 = sum(norm2(np.outer(row, row) - sample) for row in centred) / n**2
    beta2 = min(beta_bar2, delta2)
    s = beta2 / delta2
    return (1 - s) * sample + s * mu * np.eye(d), s


@pytest.mark.parametrize(("n", "d"), [(30, 5), (10, 40), (200, 3)])
def test_ledoit_wolf_matches_the_paper_written_out(n: int, d: int) -> None:
    # Prepare: correlated columns of different spread
    rng = np.random.default_rng(n * d)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)

    # Execute
    covariance, shrinkage = ledoit_wolf(x)

    # Assert
    expected, expected_shrinkage = ledoit_wolf_reference(x)
    np.testing.assert_allclose(covariance, expected, rtol=1e-10, atol=1e-12)
    assert shrinkage == pytest.approx(expected_shrinkage, rel=1e-10)
    assert 0.0 < shrinkage <= 1.0


def test_ledoit_wolf_is_positive_definite_with_fewer_windows_than_features() -> None:
    # Prepare: 10 windows of 64 features, 12 of them never active (dead ReLU channels)
    rng = np.random.default_rng(3)
    x = np.abs(rng.normal(size=(10, 64)))
    x[:, :12] = 0.0

    # Execute
    covariance, shrinkage = ledoit_wolf(x)

    # Assert
    assert np.linalg.eigvalsh(covariance).min() > 0
    assert 0.0 < shrinkage <= 1.0


def test_ledoit_wolf_shrinks_less_with_more_windows() -> None:
    # Prepare
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5000, 6)) * [1.0, 2.0, 3.0, 0.5, 1.5, 1.0]

    # Execute
    few, many = ledoit_wolf(x[:20])[1], ledoit_wolf(x)[1]

    # Assert
    assert many < few
    assert many < 0.01


# --- Scores ----------------------------------------------------------------------------------


def test_score_is_the_mahalanobis_distance() -> None:
    # Prepare
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(400, 3)) @ [[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.5, 0.3]]
    baseline = AnomalyBaseline.fit(rows, false_alarm_rate=0.05)
    probe = rng.normal(size=(7, 3))

    # Execute
    scores = baseline.score(probe)

    # Assert
    diff = probe - baseline.mean
    expected = np.sqrt(np.einsum("ij,jk,ik->i", diff, np.linalg.inv(baseline.covariance), diff))
    np.testing.assert_allclose(scores, expected, rtol=1e-10)
    assert baseline.score(probe[0]).shape == (1,)
    assert baseline.score(baseline.mean[np.newaxis]).tolist() == [0.0]


def test_scores_do_not_depend_on_the_features_unit() -> None:
    # Prepare: the same features in g and in m/s^2
    rows = np.random.default_rng(6).normal(size=(300, 4))
    probe = np.random.default_rng(7).normal(size=(20, 4)) * 3
    in_g = AnomalyBaseline.fit(rows, false_alarm_rate=0.05)
    in_si = AnomalyBaseline.fit(rows * 9.80665, false_alarm_rate=0.05)

    # Execute / Assert
    np.testing.assert_allclose(in_si.score(probe * 9.80665), in_g.score(probe), rtol=1e-9)
    assert in_si.threshold == pytest.approx(in_g.threshold, rel=1e-9)


def test_threshold_is_the_conformal_rank_of_the_held_out_scores() -> None:
    # Prepare: 100 fit rows and 99 held out; at 1 % the rank is ceil(100 * 0.99) = 99
    rows = np.random.default_rng(8).normal(size=(199, 2))

    # Execute
    baseline = AnomalyBaseline.fit(rows, false_alarm_rate=0.01, holdout_fraction=99 / 199)

    # Assert: the largest held-out score, so no held-out window is flagged
    held_out = baseline.score(rows[100:])
    assert (baseline.n_fit, baseline.n_holdout) == (100, 99)
    assert baseline.threshold == float(held_out.max())
    assert not baseline.is_anomalous(rows[100:]).any()


# --- JSON ------------------------------------------------------------------------------------


def test_json_round_trip_keeps_every_score(
    sim_machine: dict[str, npt.NDArray[np.float32]],
) -> None:
    # Prepare
    baseline = AnomalyBaseline.fit(sim_machine["fit"], source="sha256:abc")
    probe = np.concatenate([sim_machine["fresh"][:50], sim_machine["outer_race"][:10]])

    # Execute
    text = baseline.to_json()
    loaded = AnomalyBaseline.from_json(text)

    # Assert: bit-identical scores and every field
    np.testing.assert_array_equal(loaded.score(probe), baseline.score(probe))
    np.testing.assert_array_equal(loaded.is_anomalous(probe), baseline.is_anomalous(probe))
    np.testing.assert_array_equal(loaded.covariance, baseline.covariance)
    for name in ("threshold", "false_alarm_rate", "shrinkage", "n_fit", "n_holdout", "source"):
        assert getattr(loaded, name) == getattr(baseline, name), name
    doc = json.loads(text)
    assert doc["kind"] == "fedpm-anomaly-baseline"
    assert doc["schema_version"] == 1
    assert loaded.n_features == 64


def good_document() -> dict[str, object]:
    rows = np.random.default_rng(9).normal(size=(100, 2))
    doc: dict[str, object] = json.loads(AnomalyBaseline.fit(rows, 0.05).to_json())
    return doc


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"kind": "something-else"}, "not an anomaly baseline"),
        ({"schema_version": 2}, "not an anomaly baseline"),
        ({"unexpected": 1}, "not an anomaly baseline"),
        ({"mean": [0.0, 0.0, 0.0]}, "same features"),
        ({"mean": []}, "same features"),
        ({"covariance": [[1.0, 0.0], [0.0]]}, "square"),
        ({"covariance": [[1.0, 0.5], [0.0, 1.0]]}, "symmetric"),
        ({"covariance": [[1.0, 2.0], [2.0, 1.0]]}, "positive definite"),
        ({"threshold": -1.0}, "threshold"),
    ],
)
def test_from_json_refuses_a_broken_document(change: dict[str, object], match: str) -> None:
    # Prepare
    doc = good_document() | change

    # Execute / Assert
    with pytest.raises(AnomalyError, match=match):
        AnomalyBaseline.from_json(json.dumps(doc))


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"threshold": NaN}'])
def test_from_json_refuses_what_is_not_a_document(text: str) -> None:
    with pytest.raises(AnomalyError, match="not an anomaly baseline"):
        AnomalyBaseline.from_json(text)


def test_from_json_refuses_non_finite_numbers() -> None:
    # Prepare: Python's json writes NaN, which is not JSON
    doc = good_document()
    doc["mean"] = [float("nan"), 0.0]

    # Execute / Assert
    with pytest.raises(AnomalyError, match="not an anomaly baseline"):
        AnomalyBaseline.from_json(json.dumps(doc))


# --- Refusals when fitting and scoring -------------------------------------------------------


@pytest.mark.parametrize(("rate", "holdout"), [(0.01, 0.3), (0.05, 0.3), (0.01, 0.5)])
def test_fit_refuses_too_few_windows_and_says_how_many(rate: float, holdout: float) -> None:
    # Prepare
    needed = min_windows(rate, holdout)
    rows = np.random.default_rng(10).normal(size=(needed, 3))

    # Execute / Assert: one fewer is refused with the number, exactly enough is accepted
    with pytest.raises(AnomalyError, match=f"need at least {needed}"):
        AnomalyBaseline.fit(rows[:-1], rate, holdout)
    baseline = AnomalyBaseline.fit(rows, rate, holdout)
    assert baseline.n_holdout >= math.ceil(1 / rate) - 1
    assert baseline.n_fit >= MIN_FIT_WINDOWS


def test_min_windows_for_common_rates() -> None:
    # Execute / Assert: 99 held out for 1 %, 19 for 5 %
    assert min_windows(0.01, 0.3) == 329
    assert min_windows(0.05, 0.3) == 62
    assert min_windows(0.5, 0.5) == 2 * MIN_FIT_WINDOWS


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_fit_and_score_refuse_non_finite_rows(bad: float) -> None:
    # Prepare
    rows = np.random.default_rng(12).normal(size=(400, 3))
    baseline = AnomalyBaseline.fit(rows, 0.05)
    broken = rows.copy()
    broken[17, 1] = bad

    # Execute / Assert
    with pytest.raises(AnomalyError, match="NaN or Inf"):
        AnomalyBaseline.fit(broken, 0.05)
    with pytest.raises(AnomalyError, match="NaN or Inf"):
        baseline.score(broken[10:20])
    with pytest.raises(AnomalyError, match="NaN or Inf"):
        baseline.is_anomalous(broken[17])


@pytest.mark.parametrize(
    "rows", [np.zeros((0, 3)), np.zeros((400, 0)), np.zeros((2, 200, 3)), [["a", "b"]]]
)
def test_fit_refuses_rows_that_are_not_a_feature_matrix(rows: npt.ArrayLike) -> None:
    with pytest.raises(AnomalyError):
        AnomalyBaseline.fit(rows, 0.05)


def test_fit_refuses_windows_without_spread() -> None:
    with pytest.raises(AnomalyError, match="identical"):
        AnomalyBaseline.fit(np.ones((400, 5)), 0.05)


def test_score_refuses_rows_of_another_width() -> None:
    # Prepare
    baseline = AnomalyBaseline.fit(np.random.default_rng(13).normal(size=(400, 3)), 0.05)

    # Execute / Assert
    with pytest.raises(AnomalyError, match="3 features"):
        baseline.score(np.zeros((5, 4)))


@pytest.mark.parametrize(
    ("rate", "holdout"),
    [(0.0, 0.3), (-0.1, 0.3), (0.6, 0.3), (float("nan"), 0.3), (0.01, 0.0), (0.01, 1.0)],
)
def test_fit_refuses_rates_out_of_range(rate: float, holdout: float) -> None:
    with pytest.raises(AnomalyError, match="must be in"):
        AnomalyBaseline.fit(np.random.default_rng(14).normal(size=(400, 3)), rate, holdout)
