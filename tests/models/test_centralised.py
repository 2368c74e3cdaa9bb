"""Tests for centralised training: the cosine schedule, BatchNorm re-estimation, the recipe."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest
import torch

from models.centralised import CentralisedConfig, predict_probabilities, train_centralised
from models.dataset_windows import WindowSet
from models.errors import DatasetError, SignalError
from models.network import WDCNN, NetworkConfig, build_model
from models.simulator import FaultMode, MachineProfile, simulate
from models.training import recalibrate_norm_statistics, train
from models.windows import windows_from_record

WINDOW = 512
MODES: tuple[FaultMode, ...] = ("normal", "outer_race")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: faster than two on a shared 2-core runner; restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def windows(per_class: int, seed: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, mode in enumerate(MODES):
        record = simulate(MachineProfile(), mode, 1.0, per_class * WINDOW, rng)
        xs.append(windows_from_record(record, WINDOW)[:, np.newaxis, :])
        ys.append(np.full(per_class, label, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def window_set(per_class: int, seed: int) -> WindowSet:
    x, y = windows(per_class, seed)
    return WindowSet(
        x=x,
        y=y,
        record=y.copy(),
        start=np.zeros(len(y), np.int64),
        records=(),
        class_names=MODES,
    )


def net(seed: int = 0) -> WDCNN:
    return build_model(NetworkConfig(n_classes=2, window_samples=WINDOW), seed=seed)


def flat(model: WDCNN) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_cosine_schedule_starts_at_the_given_rate() -> None:
    # Prepare: one batch holding every window means one step, taken at the full rate
    x, y = windows(4, seed=0)
    constant, cosine = net(), net()

    # Execute
    train(constant, x, y, epochs=1, batch_size=len(y), seed=1)
    train(cosine, x, y, epochs=1, batch_size=len(y), seed=1, lr_schedule="cosine")

    # Assert
    torch.testing.assert_close(flat(constant), flat(cosine))


def test_cosine_schedule_takes_smaller_later_steps_than_constant() -> None:
    # Prepare
    x, y = windows(4, seed=0)
    start, constant, cosine = net(), net(), net()

    # Execute: four steps; the decayed ones move the weights less
    train(constant, x, y, epochs=4, batch_size=len(y), seed=1)
    train(cosine, x, y, epochs=4, batch_size=len(y), seed=1, lr_schedule="cosine")

    # Assert
    moved_constant = float((flat(constant) - flat(start)).norm())
    moved_cosine = float((flat(cosine) - flat(start)).norm())
    assert 0 < moved_cosine < moved_constant


def test_unknown_schedule_is_refused() -> None:
    # Prepare
    x, y = windows(2, seed=0)

    # Execute / Assert
    with pytest.raises(SignalError, match="unknown lr_schedule"):
        train(net(), x, y, lr_schedule="step")  # type: ignore[arg-type]


def test_recalibration_sets_the_first_norm_to_the_batch_statistics() -> None:
    # Prepare: a trained net whose statistics are then spoilt
    x, y = windows(6, seed=2)
    model = net()
    train(model, x, y, epochs=1, batch_size=4, seed=0)
    weights = flat(model).clone()
    first_block = model.features[0]
    assert isinstance(first_block, torch.nn.Sequential)
    conv, norm = first_block[0], first_block[1]
    assert isinstance(norm, torch.nn.BatchNorm1d)
    assert norm.running_mean is not None
    norm.running_mean.fill_(5.0)

    # Execute: all windows in one batch
    recalibrate_norm_statistics(model, x, batch_size=len(x))

    # Assert: the running mean is the mean of the first convolution's output over the batch
    with torch.no_grad():
        z = conv(model.standardise(torch.from_numpy(x)))
    torch.testing.assert_close(norm.running_mean, z.mean(dim=(0, 2)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(flat(model), weights)
    assert not model.training


def test_recalibration_refuses_bad_windows() -> None:
    # Prepare
    x, _ = windows(2, seed=0)

    # Execute / Assert
    with pytest.raises(SignalError, match="do not fit"):
        recalibrate_norm_statistics(net(), x[:, :, :256])
    with pytest.raises(SignalError, match="at least two windows"):
        recalibrate_norm_statistics(net(), x[:1])


def test_train_centralised_learns_simulated_faults() -> None:
    # Prepare
    train_set, test_set = window_set(24, seed=3), window_set(8, seed=4)
    config = CentralisedConfig(epochs=3, batch_size=16, seed=0)

    # Execute
    model, fit = train_centralised(train_set, config)
    probs = predict_probabilities(model, test_set.x)

    # Assert
    assert fit.num_examples == 48
    assert probs.shape == (16, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert (probs.argmax(axis=1) == test_set.y).mean() >= 0.9


def test_adapted_norm_uses_the_test_windows() -> None:
    # Prepare
    train_set, test_set = window_set(8, seed=3), window_set(4, seed=4)
    config = CentralisedConfig(epochs=1, batch_size=8, seed=0, adapt_norm=True)

    # Execute
    model, _ = train_centralised(train_set, config, test_set)
    reference, _ = train_centralised(train_set, CentralisedConfig(epochs=1, batch_size=8, seed=0))
    recalibrate_norm_statistics(reference, test_set.x)

    # Assert: same weights, statistics from the test windows
    torch.testing.assert_close(model.state_dict(), reference.state_dict())
    with pytest.raises(DatasetError, match="adapt_norm needs"):
        train_centralised(train_set, config)


def test_train_centralised_needs_two_classes() -> None:
    # Prepare
    one = window_set(4, seed=0)
    only_normal = WindowSet(one.x[:4], one.y[:4], one.record[:4], one.start[:4], (), ("normal",))

    # Execute / Assert
    with pytest.raises(DatasetError, match="two classes"):
        train_centralised(only_normal, CentralisedConfig(epochs=1))
