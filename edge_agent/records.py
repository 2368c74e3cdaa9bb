"""Plain records the local store hands out and takes in (no SQLite here).

``LabelledWindows`` is what the Flower ClientApp trains on; ``StoredWindow`` and ``Score`` are
what the inference worker reads and writes. Samples are float32 in g.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from models.windows import fit_length, resample

LE_F32 = np.dtype("<f4")

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def conform(samples: FloatArray, fs_in: float, fs_out: float, n: int) -> FloatArray:
    """Resample one window from ``fs_in`` to ``fs_out`` Hz and crop or zero-pad it to ``n``.

    Raises
    ------
    models.errors.SignalError
        The two rates have no usable rational ratio.
    """
    x = samples if fs_in == fs_out else resample(samples, fs_in, fs_out)
    return fit_length(np.asarray(x, dtype=np.float32), n)


@dataclass(frozen=True)
class StoredWindow:
    """One stored window of one channel, samples in g."""

    id: int
    asset_id: str
    sensor_id: str
    channel: int
    start_ns: int
    end_ns: int
    sample_rate_hz: float
    samples: FloatArray = field(repr=False)


@dataclass(frozen=True)
class Score:
    """One model's verdict on one window."""

    window_id: int
    model_version: int
    predicted: str
    failure_probability: float
    probabilities: Mapping[str, float]
    scored_ns: int


@dataclass(frozen=True)
class DeadLetter:
    """A refused message kept for inspection: why, where from, and its first bytes."""

    id: int
    received_ns: int
    topic: str
    reason: str
    detail: str
    payload_bytes: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True)
class AlarmRecord:
    """One row of the alarms table: an asset's health state or an agent condition."""

    id: int
    ts_ns: int
    source: str
    subject: str
    state: str
    detail: Mapping[str, Any]


@dataclass(frozen=True)
class SensorState:
    """Where a sensor's frame sequence stood after the last stored frame."""

    last_seq: int
    last_end_ns: int


@dataclass(frozen=True)
class LabelledWindows:
    """Training data: labelled windows conformed to one rate and length.

    ``x`` is (n, 1, window_samples) float32 in g, ``y`` the class index, ``group`` one id per
    (label event, sensor, channel) for time-ordered splits, ``start_ns`` each window's start.
    """

    x: FloatArray
    y: IntArray
    group: IntArray
    start_ns: IntArray

    def __len__(self) -> int:
        return int(self.y.shape[0])


def to_blob(samples: npt.ArrayLike) -> bytes:
    """Samples as the store keeps them: float32 little-endian bytes."""
    return np.ascontiguousarray(samples, dtype=LE_F32).reshape(-1).tobytes()


def window_from_row(row: tuple[Any, ...]) -> StoredWindow:
    """Build a window from a ``windows`` row (id, asset, sensor, channel, start, end, fs, blob)."""
    samples = np.frombuffer(row[7], dtype=LE_F32).astype(np.float32)
    return StoredWindow(row[0], row[1], row[2], row[3], row[4], row[5], row[6], samples)
