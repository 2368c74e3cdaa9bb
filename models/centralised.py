"""Centralised training of a WDCNN on labelled windows (the recipe behind ``fedpm train``).

Adam with a cosine learning-rate decay, then the BatchNorm statistics re-estimated on the
training windows with the final weights (:func:`models.training.recalibrate_norm_statistics`;
without it, and at a constant rate, held-out accuracy on CWRU at 0 HP swung between 81 % and
100 % from one epoch to the next).
Optionally the statistics are instead estimated on unlabelled test-domain windows (AdaBN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from models.dataset_windows import WindowSet
from models.errors import DatasetError
from models.network import WDCNN, NetworkConfig, build_model
from models.training import FitResult, LrSchedule, recalibrate_norm_statistics, train


@dataclass(frozen=True)
class CentralisedConfig:
    """Hyper-parameters of a centralised run.

    Parameters
    ----------
    epochs, batch_size, learning_rate, lr_schedule, seed
        As in :func:`models.training.train`.
    embedding_dim
        Width of the network's embedding.
    adapt_norm
        Estimate BatchNorm statistics on the (unlabelled) test windows instead of the training
        windows: AdaBN, a transductive adaptation to the test domain (another load).
    """

    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 1e-3
    lr_schedule: LrSchedule = "cosine"
    seed: int = 0
    embedding_dim: int = 64
    adapt_norm: bool = False


def train_centralised(
    train_set: WindowSet, config: CentralisedConfig, test_set: WindowSet | None = None
) -> tuple[WDCNN, FitResult]:
    """Build and train a WDCNN on ``train_set``; returns the net (eval mode) and its fit.

    Raises
    ------
    DatasetError
        Fewer than two training windows or classes, or ``adapt_norm`` without test windows.
    """
    if len(train_set) < 2 or len(train_set.class_names) < 2:
        raise DatasetError(
            f"need at least two training windows and two classes, got {len(train_set)} windows "
            f"of {len(train_set.class_names)} class(es)"
        )
    if config.adapt_norm and (test_set is None or len(test_set) < 2):
        raise DatasetError("adapt_norm needs at least two test windows")
    _, channels, samples = train_set.x.shape
    net = build_model(
        NetworkConfig(
            in_channels=channels,
            n_classes=len(train_set.class_names),
            window_samples=samples,
            embedding_dim=config.embedding_dim,
        ),
        seed=config.seed,
    )
    fit = train(
        net,
        train_set.x,
        train_set.y,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        seed=config.seed,
        lr_schedule=config.lr_schedule,
    )
    norm_windows = test_set.x if config.adapt_norm and test_set is not None else train_set.x
    recalibrate_norm_statistics(net, norm_windows)
    return net, fit


@torch.no_grad()
def predict_probabilities(
    net: WDCNN, x: npt.NDArray[np.float32], batch_size: int = 256
) -> npt.NDArray[np.float32]:
    """Softmax probabilities (n, classes) of ``net`` in eval mode for windows ``x``."""
    net.eval()
    out = [np.zeros((0, net.config.n_classes), np.float32)]
    for start in range(0, len(x), batch_size):
        logits, _ = net(torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])))
        out.append(torch.softmax(logits, dim=-1).numpy())
    return np.concatenate(out).astype(np.float32)
