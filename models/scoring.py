"""Score a classifier on labelled records: window accuracy, record vote, confusion matrix."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from models.errors import SignalError


@dataclass(frozen=True)
class RecordScore:
    """One record's windows: the true class, the majority vote, and how many were right."""

    name: str
    true_class: str
    voted_class: str
    windows: int
    correct: int

    @property
    def accuracy(self) -> float:
        """Fraction of this record's windows classified correctly."""
        return self.correct / self.windows if self.windows else float("nan")


@dataclass(frozen=True)
class ClassificationReport:
    """Window- and record-level results.

    ``matrix[i, j]`` counts windows of true class ``true_classes[i]`` predicted as
    ``class_names[j]``. ``true_classes`` starts with the model's ``class_names``; classes the
    model does not know follow and are left out of both accuracies.
    """

    class_names: tuple[str, ...]
    true_classes: tuple[str, ...]
    matrix: npt.NDArray[np.int64]
    records: tuple[RecordScore, ...]

    @property
    def scored_windows(self) -> int:
        """Windows whose true class the model knows."""
        return int(self.matrix[: len(self.class_names)].sum())

    @property
    def window_accuracy(self) -> float:
        """Correct windows over windows of known classes (NaN when there are none)."""
        n = self.scored_windows
        return float(np.trace(self.matrix[: len(self.class_names)])) / n if n else float("nan")

    @property
    def record_accuracy(self) -> float:
        """Records whose majority vote is right, over records of known classes."""
        known = [r for r in self.records if r.true_class in self.class_names and r.windows]
        return sum(r.voted_class == r.true_class for r in known) / len(known) if known else math.nan

    def per_class_accuracy(self) -> dict[str, float]:
        """Window accuracy (recall) of each known class that has windows."""
        out = {}
        for i, name in enumerate(self.class_names):
            total = int(self.matrix[i].sum())
            if total:
                out[name] = float(self.matrix[i, i]) / total
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "window_accuracy": self.window_accuracy,
            "record_accuracy": self.record_accuracy,
            "windows": int(self.matrix.sum()),
            "scored_windows": self.scored_windows,
            "per_class_accuracy": self.per_class_accuracy(),
            "confusion": {
                "true_classes": list(self.true_classes),
                "predicted_classes": list(self.class_names),
                "matrix": self.matrix.tolist(),
            },
            "records": [
                {
                    "name": r.name,
                    "true_class": r.true_class,
                    "voted_class": r.voted_class,
                    "windows": r.windows,
                    "correct": r.correct,
                    "accuracy": r.accuracy,
                }
                for r in self.records
            ],
        }


def score(
    probabilities: npt.ArrayLike,
    record_ids: npt.ArrayLike,
    records: Sequence[tuple[str, str]],
    class_names: Sequence[str],
) -> ClassificationReport:
    """Score window probabilities per window and per record.

    Parameters
    ----------
    probabilities
        (n_windows, n_classes) class probabilities (or any scores; argmax is taken).
    record_ids
        Index into ``records`` of each window's record.
    records
        ``(name, true class)`` of every record; one without windows is reported with none.
    class_names
        The model's classes, in the columns' order.

    Returns
    -------
    ClassificationReport
        A record's vote is its most frequent predicted class, ties going to the class with the
        larger summed probability.

    Examples
    --------
    >>> r = score([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], [0, 0, 1], [("r0", "a"), ("r1", "b")],
    ...           ["a", "b"])
    >>> round(r.window_accuracy, 3), r.record_accuracy, r.matrix.tolist()
    (0.333, 0.5, [[1, 1], [1, 0]])
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    ids = np.asarray(record_ids, dtype=np.int64).reshape(-1)
    names = tuple(class_names)
    if probs.ndim != 2 or probs.shape != (len(ids), len(names)):
        raise SignalError(f"probabilities {probs.shape} do not match {len(ids)} record ids")
    if len(ids) and (ids.min() < 0 or ids.max() >= len(records)):
        raise SignalError("record id out of range")
    rows = names + tuple(sorted({c for _, c in records if c not in names}))
    record_row = np.array([rows.index(c) for _, c in records], dtype=np.int64)
    pred = probs.argmax(axis=1)
    matrix = np.zeros((len(rows), len(names)), dtype=np.int64)
    np.add.at(matrix, (record_row[ids], pred), 1)
    scores = []
    for rid, (rname, true_class) in enumerate(records):
        members = np.flatnonzero(ids == rid)
        votes = np.bincount(pred[members], minlength=len(names))
        mass = probs[members].sum(axis=0)
        voted = max(range(len(names)), key=lambda k: (votes[k], mass[k])) if len(members) else -1
        correct = int((pred[members] == record_row[rid]).sum())
        scores.append(
            RecordScore(
                rname, true_class, names[voted] if voted >= 0 else "", len(members), correct
            )
        )
    return ClassificationReport(names, rows, matrix, tuple(scores))
