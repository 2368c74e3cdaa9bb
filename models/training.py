"""Local training and evaluation loops shared by the Flower ClientApp and centralised training."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.errors import SignalError
from models.network import WDCNN, reset_norm_statistics

LrSchedule = Literal["constant", "cosine"]


@dataclass(frozen=True)
class FitResult:
    """Outcome of a local training pass."""

    loss: float
    accuracy: float
    num_examples: int


@dataclass(frozen=True)
class EvalResult:
    """Outcome of an evaluation pass."""

    loss: float
    accuracy: float
    num_examples: int
    per_class_accuracy: dict[str, float]


def _check(
    x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], net: WDCNN
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Validate shapes and labels; return the arrays as float32 windows and int64 labels."""
    x = np.asarray(x)
    y = np.asarray(y)
    if not np.issubdtype(x.dtype, np.floating) or not np.issubdtype(y.dtype, np.integer):
        raise SignalError(f"windows must be floats and labels integers, got {x.dtype}/{y.dtype}")
    if x.ndim != 3 or x.shape[0] != y.shape[0]:
        raise SignalError(f"windows {x.shape} and labels {y.shape} do not line up")
    if x.shape[1:] != (net.config.in_channels, net.config.window_samples):
        raise SignalError(
            f"windows shaped {x.shape[1:]}, network expects "
            f"{(net.config.in_channels, net.config.window_samples)}"
        )
    if len(y) and (y.min() < 0 or y.max() >= net.config.n_classes):
        raise SignalError("label index out of range")
    return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64, copy=False)


def train(
    net: WDCNN,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    epochs: int = 1,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    proximal_mu: float = 0.0,
    lr_schedule: LrSchedule = "constant",
) -> FitResult:
    """Train ``net`` in place with Adam and cross-entropy; returns the mean training loss.

    ``proximal_mu > 0`` adds FedProx's proximal term against the starting weights.
    ``lr_schedule="cosine"`` decays the learning rate per step from ``learning_rate`` towards 0
    over all epochs (Loshchilov and Hutter, SGDR, ICLR 2017, without restarts).
    """
    x, y = _check(x, y, net)
    if len(y) < 2 or batch_size < 2:
        raise SignalError("training needs at least two windows and batch_size >= 2 (BatchNorm)")
    if lr_schedule not in ("constant", "cosine"):
        raise SignalError(f"unknown lr_schedule {lr_schedule!r}")
    with torch.random.fork_rng():  # dropout draws from the global generator: seed it too
        torch.manual_seed(seed)
        return _train(net, x, y, epochs, batch_size, learning_rate, seed, proximal_mu, lr_schedule)


def _train(
    net: WDCNN,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    proximal_mu: float,
    lr_schedule: LrSchedule = "constant",
) -> FitResult:
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    anchor = [p.detach().clone() for p in net.parameters()] if proximal_mu > 0 else []
    net.train()
    total_loss, correct, seen = 0.0, 0, 0
    steps_per_epoch = math.ceil(len(yt) / batch_size)
    total_steps, step = max(epochs * steps_per_epoch, 1), 0
    for _ in range(epochs):
        order = torch.randperm(len(yt), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            xb, yb = xt[idx], yt[idx]
            if lr_schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = learning_rate * 0.5 * (1 + math.cos(math.pi * step / total_steps))
                step += 1
            opt.zero_grad()
            logits, _ = net(xb)
            loss = loss_fn(logits, yb)
            if anchor:
                prox = sum(
                    ((p - a) ** 2).sum() for p, a in zip(net.parameters(), anchor, strict=True)
                )
                loss = loss + proximal_mu / 2 * prox
            loss.backward()
            opt.step()
            total_loss += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
    net.eval()
    return FitResult(total_loss / max(seen, 1), correct / max(seen, 1), len(yt))


@torch.no_grad()
def recalibrate_norm_statistics(
    net: WDCNN, x: npt.NDArray[np.float32], batch_size: int = 256
) -> None:
    """Re-estimate BatchNorm statistics of ``net`` on windows ``x``, weights unchanged.

    After training, the cumulative running statistics (``momentum=None``) average over every
    weight state of the run; one pass over the training windows with the final weights gives
    the statistics those weights expect. Run on unlabelled windows of another domain (another
    load, another machine) it is AdaBN (Li et al., Pattern Recognition 80, 2018), the
    adaptation WDCNN's authors used across loads.
    """
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[1:] != (net.config.in_channels, net.config.window_samples):
        raise SignalError(f"windows shaped {x.shape[1:]} do not fit the network")
    if len(x) < 2:
        raise SignalError("need at least two windows to estimate BatchNorm statistics")
    reset_norm_statistics(net)
    net.train()
    try:
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            if len(chunk) >= 2:  # a single window has no batch variance
                net(torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32)))
    finally:
        net.eval()


@torch.no_grad()
def evaluate(
    net: WDCNN,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    class_names: tuple[str, ...],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> EvalResult:
    """Cross-entropy loss and accuracy of ``net`` on labelled windows.

    ``device`` is where the forward passes run (``"cuda"`` on a GPU server); ``net`` is moved
    there and stays there.
    """
    x, y = _check(x, y, net)
    net.to(device)
    net.eval()
    if len(y) == 0:
        return EvalResult(float("nan"), float("nan"), 0, {})
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    # sums and predictions stay on the device until the end: one synchronisation per call,
    # not one per batch (on a GPU each float() or .cpu() waits for the queue to drain)
    total = torch.zeros((), dtype=torch.float64, device=device)
    preds = []
    for start in range(0, len(y), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])).to(device)
        yb = torch.from_numpy(y[start : start + batch_size]).to(device)
        logits, _ = net(xb)
        total += loss_fn(logits, yb).double()
        preds.append(logits.argmax(1))
    pred = torch.cat(preds).cpu().numpy()
    per_class = {
        name: float((pred[y == k] == k).mean())
        for k, name in enumerate(class_names)
        if (y == k).any()
    }
    return EvalResult(float(total) / len(y), float((pred == y).mean()), len(y), per_class)


def time_split(
    groups: npt.NDArray[np.int64], order: npt.NDArray[np.int64], eval_fraction: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Split indices so that, within each group, the latest ``eval_fraction`` is held out.

    ``groups`` identifies contiguous recordings (e.g. a sensor and label); ``order`` is the
    time of each window. Splitting by time instead of at random keeps overlapping or adjacent
    windows of one recording from leaking between training and evaluation.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise SignalError("eval_fraction must be in [0, 1)")
    train_idx, eval_idx = [], []
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        members = members[np.argsort(order[members], kind="stable")]
        n_eval = round(len(members) * eval_fraction)
        cut = len(members) - n_eval
        train_idx.append(members[:cut])
        eval_idx.append(members[cut:])
    if not train_idx:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(train_idx).astype(np.int64), np.concatenate(eval_idx).astype(np.int64)
