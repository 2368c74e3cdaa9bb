"""Tests for models.scoring: window accuracy, record majority vote and the confusion matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.errors import SignalError
from models.scoring import score

CLASSES = ("normal", "ball")


def test_window_and_record_accuracy_with_majority_vote() -> None:
    # Prepare: record 0 (normal) 2 of 3 right; record 1 (ball) 1 of 3 right
    probs = [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.7, 0.3], [0.1, 0.9]]
    ids = [0, 0, 0, 1, 1, 1]

    # Execute
    report = score(probs, ids, [("r0", "normal"), ("r1", "ball")], CLASSES)

    # Assert
    assert report.window_accuracy == pytest.approx(3 / 6)
    assert report.record_accuracy == pytest.approx(1 / 2)
    assert report.matrix.tolist() == [[2, 1], [2, 1]]
    assert report.per_class_accuracy() == pytest.approx({"normal": 2 / 3, "ball": 1 / 3})
    assert [(r.voted_class, r.correct, r.windows) for r in report.records] == [
        ("normal", 2, 3),
        ("normal", 1, 3),
    ]
    assert report.records[0].accuracy == pytest.approx(2 / 3)


def test_tied_vote_goes_to_the_more_probable_class() -> None:
    # Prepare: one window each way, ball more confident
    probs = [[0.55, 0.45], [0.05, 0.95]]

    # Execute
    report = score(probs, [0, 0], [("r", "normal")], CLASSES)

    # Assert
    assert report.records[0].voted_class == "ball"
    assert report.record_accuracy == 0.0


def test_unknown_classes_get_rows_but_no_accuracy_and_empty_records_are_listed() -> None:
    # Prepare
    probs = [[0.9, 0.1], [0.2, 0.8]]
    records = [("n", "normal"), ("deep", "ball@0.028"), ("short", "ball")]

    # Execute
    report = score(probs, [0, 1], records, CLASSES)

    # Assert
    assert report.true_classes == ("normal", "ball", "ball@0.028")
    assert report.matrix.tolist() == [[1, 0], [0, 0], [0, 1]]
    assert report.window_accuracy == 1.0
    assert report.scored_windows == 1
    assert report.record_accuracy == 1.0  # only "n" counts
    assert report.records[2].windows == 0
    assert math.isnan(report.records[2].accuracy)
    summary = report.to_dict()
    assert summary["windows"] == 2
    assert summary["confusion"]["true_classes"] == ["normal", "ball", "ball@0.028"]


def test_no_windows_give_nan_accuracies() -> None:
    # Execute
    report = score(np.zeros((0, 2)), [], [("r", "normal")], CLASSES)

    # Assert
    assert math.isnan(report.window_accuracy)
    assert math.isnan(report.record_accuracy)


@pytest.mark.parametrize(
    ("probs", "ids", "match"),
    [
        ([[0.5, 0.5]], [0, 0], "do not match"),
        ([[0.5, 0.5, 0.0]], [0], "do not match"),
        ([[0.5, 0.5]], [3], "record id out of range"),
    ],
)
def test_shapes_must_line_up(probs: list[list[float]], ids: list[int], match: str) -> None:
    # Execute / Assert
    with pytest.raises(SignalError, match=match):
        score(probs, ids, [("r", "normal")], CLASSES)
