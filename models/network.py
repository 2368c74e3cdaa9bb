"""WDCNN-style 1-D convolutional classifier over raw vibration windows.

After Zhang et al., "A new deep learning model for fault diagnosis with good anti-noise and
domain adaptation ability on raw vibration signals", Sensors 17(2):425, 2017: a wide first
kernel (64 taps, stride 16) acts as a learned filter bank, followed by small kernels. Two changes
for FedPM: the input is standardised per window inside the network (so the ONNX graph carries its
own preprocessing and sensors of different sensitivity look alike), and a global average pool
before the head makes the embedding independent of the window length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.errors import SignalError


@dataclass(frozen=True)
class NetworkConfig:
    """Shape of a :class:`WDCNN`.

    Parameters
    ----------
    in_channels
        Number of sensor channels per window.
    n_classes
        Number of output classes.
    window_samples
        Samples per window the model is trained for (at least 512).
    embedding_dim
        Width of the embedding returned next to the logits.
    """

    in_channels: int = 1
    n_classes: int = 4
    window_samples: int = 2048
    embedding_dim: int = 64

    def __post_init__(self) -> None:
        if self.in_channels < 1 or self.n_classes < 2:
            raise SignalError("need in_channels >= 1 and n_classes >= 2")
        if self.window_samples < 512:  # five stride-16/pool-2 stages need >= 496 samples
            raise SignalError(f"window_samples must be >= 512, got {self.window_samples}")
        if self.embedding_dim < 8:
            raise SignalError(f"embedding_dim must be >= 8, got {self.embedding_dim}")


class WindowStandardise(nn.Module):
    """Remove each window's mean and divide by its standard deviation (per channel)."""

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise ``x`` of shape (batch, channels, samples)."""
        mean = x.mean(dim=-1, keepdim=True)
        centred = x - mean
        # clamp, not add: adding eps to the variance broke gain invariance for quiet signals
        var = (centred * centred).mean(dim=-1, keepdim=True).clamp_min(self.eps * self.eps)
        return centred / torch.sqrt(var)


def _block(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm1d(c_out, momentum=None),
        nn.ReLU(inplace=True),
        nn.MaxPool1d(2),
    )


class WDCNN(nn.Module):
    """Wide-first-kernel CNN; ``forward`` returns ``(logits, embedding)``."""

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config or NetworkConfig()
        c = self.config
        self.standardise = WindowStandardise()
        self.features = nn.Sequential(
            _block(c.in_channels, 16, 64, stride=16),
            _block(16, 32, 3),
            _block(32, 64, 3),
            _block(64, 64, 3),
            _block(64, c.embedding_dim, 3),
        )
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(c.embedding_dim, c.n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map windows (batch, channels, samples) to logits and an embedding."""
        z = self.features(self.standardise(x))
        embedding = torch.flatten(self.pool(z), 1)
        return self.head(self.dropout(embedding)), embedding


class InferenceWrapper(nn.Module):
    """What goes into ONNX: probabilities (softmax) and the embedding."""

    def __init__(self, net: WDCNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(probabilities, embedding)`` for windows (batch, channels, samples)."""
        logits, embedding = self.net(x)
        return torch.softmax(logits, dim=-1), embedding


def reset_norm_statistics(net: nn.Module) -> None:
    """Forget BatchNorm running statistics so the next training pass re-estimates them.

    BatchNorm layers use a cumulative average (``momentum=None``): after a reset, the running
    statistics are the exact mean over the batches of one local training pass, for the weights
    of this round. In federated rounds this keeps averaged statistics in step with the averaged
    weights; with the usual exponential average (momentum 0.1) and the few local steps a site
    takes per round, the global model's statistics lagged far behind and round-1 models
    predicted a single class (``bench/bench_federated_norm.py``; docs/architecture.md).
    """
    for module in net.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.reset_running_stats()


def build_model(config: NetworkConfig | None = None, seed: int | None = None) -> WDCNN:
    """Create a freshly initialised :class:`WDCNN` (deterministic when ``seed`` is given)."""
    if seed is not None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return WDCNN(config)
    return WDCNN(config)
