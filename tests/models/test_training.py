"""Tests for models.training (time split, train, evaluate) and models.fl_config (RunConfig)."""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch

from models.errors import SignalError
from models.fl_config import DEFAULT_CLASSES, RunConfig
from models.network import WDCNN, NetworkConfig, build_model
from models.simulator import FaultMode, MachineProfile, simulate
from models.training import evaluate, time_split, train
from models.windows import windows_from_record

WINDOW = 512  # short windows keep the CPU tests fast; the network is length-agnostic
CLASSES: tuple[FaultMode, ...] = ("normal", "outer_race")
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def simulated_windows(
    per_class: int, seed: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Healthy and outer-race windows, shaped (n, 1, WINDOW), with labels 0 and 1."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, mode in enumerate(CLASSES):
        record = simulate(MachineProfile(), mode, 1.0, per_class * WINDOW, rng)
        xs.append(windows_from_record(record, WINDOW)[:, np.newaxis, :])
        ys.append(np.full(per_class, label, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def small_net(seed: int = 0) -> WDCNN:
    return build_model(NetworkConfig(n_classes=len(CLASSES), window_samples=WINDOW), seed=seed)


@contextmanager
def global_seed(seed: int) -> Iterator[None]:
    """Fix torch's global generator for code outside train()."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def parameters(net: WDCNN) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


# --- time_split ------------------------------------------------------------------------------


def test_time_split_holds_out_the_latest_windows_of_each_group() -> None:
    # Prepare: two recordings, windows listed out of time order
    rng = np.random.default_rng(3)
    groups = np.array([0] * 10 + [1] * 5, dtype=np.int64)
    order = np.concatenate([rng.permutation(10), 100 + rng.permutation(5)]).astype(np.int64)

    # Execute
    train_idx, eval_idx = time_split(groups, order, eval_fraction=0.2)

    # Assert: 2 of 10 and 1 of 5 held out, each the latest of its group
    assert sorted(order[eval_idx].tolist()) == [8, 9, 104]
    assert set(train_idx.tolist()).isdisjoint(eval_idx.tolist())
    assert sorted([*train_idx.tolist(), *eval_idx.tolist()]) == list(range(15))
    for g in (0, 1):
        in_train = order[train_idx[groups[train_idx] == g]]
        in_eval = order[eval_idx[groups[eval_idx] == g]]
        assert in_train.max() < in_eval.min()
    assert train_idx.dtype == eval_idx.dtype == np.int64


@pytest.mark.parametrize(("fraction", "n_eval"), [(0.0, 0), (0.25, 25), (0.5, 50), (0.9, 90)])
def test_time_split_fractions(fraction: float, n_eval: int) -> None:
    # Prepare: one recording of 100 windows in time order
    groups = np.zeros(100, dtype=np.int64)
    order = np.arange(100, dtype=np.int64)

    # Execute
    train_idx, eval_idx = time_split(groups, order, fraction)

    # Assert
    assert len(eval_idx) == n_eval
    np.testing.assert_array_equal(train_idx, np.arange(100 - n_eval))
    np.testing.assert_array_equal(eval_idx, np.arange(100 - n_eval, 100))


def test_time_split_of_nothing_is_empty() -> None:
    # Execute
    train_idx, eval_idx = time_split(np.zeros(0, np.int64), np.zeros(0, np.int64), 0.2)

    # Assert
    assert train_idx.shape == eval_idx.shape == (0,)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_time_split_rejects_bad_fractions(fraction: float) -> None:
    with pytest.raises(SignalError):
        time_split(np.zeros(4, np.int64), np.arange(4, dtype=np.int64), fraction)


# --- train and evaluate ----------------------------------------------------------------------


def test_training_separates_healthy_from_outer_race_windows() -> None:
    # Prepare: training and held-out windows from different simulated records
    x, y = simulated_windows(per_class=32, seed=1)
    x_test, y_test = simulated_windows(per_class=16, seed=2)
    net = small_net()
    before = evaluate(net, x_test, y_test, CLASSES)

    # Execute
    with global_seed(0):
        fits = [
            train(net, x, y, epochs=1, batch_size=16, learning_rate=3e-3, seed=epoch)
            for epoch in range(6)
        ]
    after = evaluate(net, x_test, y_test, CLASSES)

    # Assert
    assert fits[-1].loss < fits[0].loss / 2
    assert all(f.num_examples == 64 for f in fits)
    assert after.loss < before.loss / 2
    assert after.accuracy >= 0.95
    assert after.num_examples == 32
    assert set(after.per_class_accuracy) == set(CLASSES)
    assert min(after.per_class_accuracy.values()) >= 0.9
    assert not net.training  # train() hands the network back in eval mode


def test_training_is_reproducible_with_a_seed() -> None:
    # Prepare
    x, y = simulated_windows(per_class=8, seed=4)
    a, b = small_net(seed=5), small_net(seed=5)

    # Execute
    fit_a = train(a, x, y, batch_size=4, seed=9)
    fit_b = train(b, x, y, batch_size=4, seed=9)

    # Assert
    assert fit_a == fit_b
    assert torch.equal(parameters(a), parameters(b))


def test_proximal_term_keeps_weights_near_the_start() -> None:
    # Prepare: the same start, data and batch order, with and without FedProx's term
    x, y = simulated_windows(per_class=16, seed=6)
    free, held = small_net(seed=7), small_net(seed=7)
    start = parameters(free)

    # Execute
    with global_seed(0):
        train(free, x, y, epochs=2, batch_size=8, learning_rate=1e-2, seed=1)
    with global_seed(0):
        train(held, x, y, epochs=2, batch_size=8, learning_rate=1e-2, seed=1, proximal_mu=100.0)

    # Assert
    drift_free = float((parameters(free) - start).norm())
    drift_held = float((parameters(held) - start).norm())
    assert drift_held < 0.8 * drift_free


def test_evaluate_on_no_windows_reports_nan() -> None:
    # Execute
    result = evaluate(
        small_net(), np.zeros((0, 1, WINDOW), np.float32), np.zeros(0, np.int64), CLASSES
    )

    # Assert
    assert result.num_examples == 0
    assert np.isnan(result.loss)
    assert np.isnan(result.accuracy)
    assert result.per_class_accuracy == {}


@pytest.mark.parametrize(
    ("x_shape", "labels"),
    [
        ((4, WINDOW), [0, 1, 0, 1]),  # no channel axis
        ((4, 1, WINDOW), [0, 1, 0]),  # one label short
        ((4, 1, WINDOW - 1), [0, 1, 0, 1]),  # wrong window length
        ((4, 2, WINDOW), [0, 1, 0, 1]),  # wrong channel count
        ((4, 1, WINDOW), [0, 1, 2, 1]),  # label beyond the classes
        ((4, 1, WINDOW), [0, -1, 0, 1]),  # negative label
    ],
)
def test_train_and_evaluate_reject_mismatched_inputs(
    x_shape: tuple[int, ...], labels: list[int]
) -> None:
    # Prepare
    net = small_net()
    x = np.zeros(x_shape, np.float32)
    y = np.array(labels, dtype=np.int64)

    # Execute / Assert
    with pytest.raises(SignalError):
        train(net, x, y)
    with pytest.raises(SignalError):
        evaluate(net, x, y, CLASSES)


def test_train_refuses_an_empty_training_set() -> None:
    with pytest.raises(SignalError):
        train(small_net(), np.zeros((0, 1, WINDOW), np.float32), np.zeros(0, np.int64))


# --- RunConfig -------------------------------------------------------------------------------


def pyproject_run_config() -> dict[str, object]:
    """What `flwr run .` hands both apps when nothing is overridden."""
    config: dict[str, object] = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"][
        "flwr"
    ]["app"]["config"]
    return config


def test_run_config_knows_every_pyproject_key() -> None:
    # Prepare: from_run_config ignores unknown keys, so a typo there would go unnoticed
    known = {f.name.replace("_", "-") for f in dataclasses.fields(RunConfig)}

    # Execute
    keys = set(pyproject_run_config())

    # Assert
    assert keys <= known


def test_run_config_defaults_match_pyproject() -> None:
    # Prepare
    raw = pyproject_run_config()

    # Execute
    config = RunConfig.from_run_config(raw)

    # Assert
    assert config == RunConfig()


def test_run_config_parses_kebab_case_keys() -> None:
    # Prepare: values as Flower passes them, some as strings from `--run-config`
    raw: dict[str, object] = {
        "num-server-rounds": 5,
        "local-epochs": "2",
        "batch-size": 16,
        "learning-rate": "0.01",
        "min-sites": 3,
        "fraction-train": 0.5,
        "registry-dir": "/srv/registry",
        "sample-rate-hz": 25_600,
        "window-samples": 1024,
        "class-names": " normal, outer_race ,, ball ",
        "eval-fraction": 0.25,
        "seed": 42,
        "round-timeout-s": 30,
        "not-a-field": "ignored",
    }

    # Execute
    config = RunConfig.from_run_config(raw)

    # Assert
    assert config == RunConfig(
        num_server_rounds=5,
        local_epochs=2,
        batch_size=16,
        learning_rate=0.01,
        min_sites=3,
        fraction_train=0.5,
        registry_dir="/srv/registry",
        sample_rate_hz=25_600.0,
        window_samples=1024,
        class_names=("normal", "outer_race", "ball"),
        eval_fraction=0.25,
        seed=42,
        round_timeout_s=30.0,
    )
    assert isinstance(config.sample_rate_hz, float)
    assert config.network == NetworkConfig(n_classes=3, window_samples=1024)


def test_run_config_without_keys_is_the_default() -> None:
    # Execute
    config = RunConfig.from_run_config({})

    # Assert
    assert config.class_names == DEFAULT_CLASSES
    assert config.network == NetworkConfig()


@pytest.mark.parametrize(
    "raw",
    [
        {"learning-rate": "fast"},
        {"num-server-rounds": "3.5"},
        {"num-server-rounds": True},
        {"num-server-rounds": 0},
        {"local-epochs": 0},
        {"batch-size": 1},
        {"learning-rate": 0},
        {"learning-rate": 1.0},
        {"learning-rate": "nan"},
        {"min-sites": 0},
        {"fraction-train": 0.0},
        {"fraction-train": 1.5},
        {"eval-fraction": 0.0},
        {"eval-fraction": 1.0},
    ],
)
def test_run_config_rejects_bad_values(raw: dict[str, object]) -> None:
    with pytest.raises(SignalError):
        RunConfig.from_run_config(raw)


@pytest.mark.parametrize(
    "raw",
    [
        {"window-samples": 100},
        {"class-names": "normal"},
        {"class-names": "normal,ball,ball"},
        {"class-names": "ball,normal"},
        {"sample-rate-hz": 0.0},
        {"sample-rate-hz": "nan"},
        {"round-timeout-s": -1.0},
    ],
)
def test_run_config_rejects_impossible_runs_up_front(raw: dict[str, object]) -> None:
    # Execute / Assert: refused when parsed, not rounds later at export
    with pytest.raises(SignalError):
        RunConfig.from_run_config(raw)


def test_cosine_round_schedule_decays_from_the_step_to_its_floor() -> None:
    # Prepare
    cfg = RunConfig.from_run_config(
        {"num-server-rounds": 30, "round-lr-schedule": "cosine", "lr-floor": "0.05"}
    )

    # Execute
    steps = [cfg.round_learning_rate(r) for r in range(1, 32)]

    # Assert: the configured step first, the floor last, never rising, the floor after the end
    assert steps[0] == pytest.approx(cfg.learning_rate)
    assert steps[29] == pytest.approx(0.05 * cfg.learning_rate)
    assert all(a >= b for a, b in itertools.pairwise(steps))
    assert steps[30] == pytest.approx(steps[29])


def test_constant_round_schedule_keeps_the_step() -> None:
    cfg = RunConfig(num_server_rounds=10)
    assert {cfg.round_learning_rate(r) for r in range(1, 11)} == {cfg.learning_rate}


@pytest.mark.parametrize(
    ("key", "value"), [("round-lr-schedule", "step"), ("lr-floor", "0"), ("lr-floor", "1.5")]
)
def test_run_config_refuses_a_bad_round_schedule(key: str, value: str) -> None:
    with pytest.raises(SignalError, match=key):
        RunConfig.from_run_config({key: value})
