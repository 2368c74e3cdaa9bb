"""Server-side evaluation of each round's global model, on CUDA when the server has it.

With ``server-eval-npz`` in the run config (a ``.npz`` holding ``x``, windows shaped
``(n, channels, window-samples)`` in the model's units and sample rate, and ``y``, class indexes
into ``class-names``), the ServerApp scores every round's global model on those held-out
windows; the figures (``server-eval-loss``, ``server-eval-accuracy``, ``server-eval-examples``)
go into the round's log, the checkpoint and the model card. ``server-device`` chooses where:
``auto`` takes CUDA when PyTorch sees a GPU, else the CPU.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import ArrayRecord

from models.errors import SignalError
from models.fl_config import RunConfig
from models.network import build_model
from models.training import evaluate

logger = logging.getLogger(__name__)

CPU_BATCH = 256
"""Windows per forward pass on the CPU (``models.training.evaluate``'s default)."""
CUDA_BATCH = 4096
"""Windows per forward pass on a GPU: 4,096 x 2,048 float32 samples are 32 MiB of input, and
fewer, larger batches keep the GPU busy between host-to-device copies."""


def pick_device(preference: str = "auto") -> torch.device:
    """``cuda`` when asked for or (``auto``) when available, else ``cpu``.

    Raises
    ------
    SignalError
        When ``cuda`` is asked for and PyTorch sees no CUDA device, or the preference is unknown.
    """
    if preference not in ("auto", "cpu", "cuda"):
        raise SignalError(f"device preference must be auto, cpu or cuda, got {preference!r}")
    if preference == "cuda" and not torch.cuda.is_available():
        raise SignalError("server-device is cuda but PyTorch sees no CUDA device")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def load_windows(path: str | Path) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Read ``x`` and ``y`` from a ``.npz`` (no pickle); raises ``SignalError`` when unusable."""
    try:
        with Path(path).open("rb") as file, np.load(file, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise SignalError(f"server-eval-npz {path}: {exc}") from exc
    if not np.issubdtype(x.dtype, np.floating) or not np.issubdtype(y.dtype, np.integer):
        raise SignalError(f"server-eval-npz {path}: x must hold floats and y integers")
    return x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)


class ServerEvaluator:
    """Scores a global model on held-out windows, on ``device``.

    Parameters
    ----------
    cfg : RunConfig
        The run (network shape, class names).
    x, y : numpy.ndarray
        Windows ``(n, channels, samples)`` and their class indexes.
    device : torch.device
        Where the forward passes run.
    """

    def __init__(
        self,
        cfg: RunConfig,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.int64],
        device: torch.device,
    ) -> None:
        self.cfg = cfg
        self.x = x
        self.y = y
        self.device = device
        # shape and label checks now, so a bad file fails the run before round 1
        evaluate(build_model(cfg.network), x[:0], y[:0], cfg.class_names)
        if len(y) and (y.min() < 0 or y.max() >= len(cfg.class_names)):
            raise SignalError("server-eval-npz: label index out of range of class-names")

    @classmethod
    def from_config(cls, cfg: RunConfig) -> ServerEvaluator | None:
        """The evaluator the run config asks for, or ``None`` without ``server-eval-npz``."""
        if not cfg.server_eval_npz:
            return None
        x, y = load_windows(cfg.server_eval_npz)
        device = pick_device(cfg.server_device)
        logger.info("server-side evaluation on %d windows, on %s", len(y), device)
        return cls(cfg, x, y, device)

    def __call__(self, arrays: ArrayRecord) -> dict[str, float]:
        """Loss, accuracy and example count of the model ``arrays`` on the held-out windows."""
        net = build_model(self.cfg.network)
        net.load_state_dict(arrays.to_torch_state_dict())
        batch = CUDA_BATCH if self.device.type == "cuda" else CPU_BATCH
        result = evaluate(
            net, self.x, self.y, self.cfg.class_names, batch_size=batch, device=self.device
        )
        return {
            "server-eval-loss": result.loss,
            "server-eval-accuracy": result.accuracy,
            "server-eval-examples": float(result.num_examples),
        }
