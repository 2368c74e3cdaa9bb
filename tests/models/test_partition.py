"""Partitioners of virtual sites: every item once, seeded, the skew asked for, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from models.errors import DatasetError
from models.partition import (
    PartitionError,
    PartitionSpec,
    follow_partition,
    parse_partition,
    partition_indices,
)

LABELS = np.repeat(np.arange(4), 250)  # 4 classes x 250 items
GROUPS = [str(i % 4) for i in range(1000)]  # e.g. motor_load_hp 0..3, each class in each group


def _every_item_once(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n
    assert np.array_equal(np.sort(joined), np.arange(n))
    for p in parts:
        assert p.dtype == np.int64
        assert np.array_equal(p, np.sort(p))


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.3", "dirichlet:100", "by:load"])
@pytest.mark.parametrize("num_partitions", [1, 3, 4, 10])
def test_every_item_lands_in_exactly_one_partition(spec: str, num_partitions: int) -> None:
    # Execute
    parts = partition_indices(LABELS, GROUPS, parse_partition(spec), num_partitions, seed=7)

    # Assert
    assert len(parts) == num_partitions
    _every_item_once(parts, len(LABELS))


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.3", "by:load"])
def test_same_seed_same_partitions_other_seed_other(spec: str) -> None:
    parsed = parse_partition(spec)
    a = partition_indices(LABELS, GROUPS, parsed, 8, seed=1)
    b = partition_indices(LABELS, GROUPS, parsed, 8, seed=1)
    c = partition_indices(LABELS, GROUPS, parsed, 8, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_iid_sizes_differ_by_at_most_one_and_mix_classes() -> None:
    parts = partition_indices(LABELS, None, parse_partition("iid"), 7, seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    for p in parts:
        assert len(np.unique(LABELS[p])) == 4


def test_dirichlet_small_alpha_skews_labels_large_alpha_does_not() -> None:
    def mean_top_class_share(alpha: float) -> float:
        parts = partition_indices(LABELS, None, parse_partition(f"dirichlet:{alpha}"), 10, 3)
        return float(np.mean([np.bincount(LABELS[p], minlength=4).max() / len(p) for p in parts]))

    # with alpha 0.1 a site is mostly one class; with 1000 each class is about a quarter
    assert mean_top_class_share(0.1) > 0.7
    assert mean_top_class_share(1000.0) < 0.4


@pytest.mark.parametrize("alpha", [0.05, 0.3, 1.0])
def test_dirichlet_sizes_are_near_equal_even_with_few_classes_and_many_sites(alpha: float) -> None:
    # CWRU-like: 4 classes of unequal size over 50 sites (a per-class Dirichlet redrawn until
    # every site has 10 items fails here)
    labels = np.concatenate([np.full(c, k) for k, c in enumerate([470, 560, 1550, 560])])
    parts = partition_indices(labels, None, parse_partition(f"dirichlet:{alpha}"), 50, seed=5)
    _every_item_once(parts, len(labels))
    sizes = [len(p) for p in parts]
    assert min(sizes) >= len(labels) // 50 - 4
    assert max(sizes) <= len(labels) // 50 + 5


def test_by_column_with_fewer_partitions_than_groups_keeps_groups_whole() -> None:
    groups = [f"g{i % 6}" for i in range(len(LABELS))]
    parts = partition_indices(LABELS, groups, parse_partition("by:x"), 3, seed=0)
    owners = {}
    for p, idx in enumerate(parts):
        for g in {groups[i] for i in idx}:
            assert g not in owners, f"group {g} split between partitions"
            owners[g] = p
    assert sorted(len(p) for p in parts) == [333, 333, 334]  # 2 groups of 166-167 each


def test_by_column_with_more_partitions_than_groups_gives_each_site_one_group() -> None:
    parts = partition_indices(LABELS, GROUPS, parse_partition("by:load"), 8, seed=0)
    for p, idx in enumerate(parts):
        assert {GROUPS[i] for i in idx} == {str(p % 4)}


def test_follow_partition_keeps_the_reference_shares_per_key() -> None:
    parts = partition_indices(LABELS, None, parse_partition("dirichlet:0.3"), 5, seed=0)
    ref_keys = [str(y) for y in LABELS]
    held_labels = np.repeat(np.arange(4), 50)  # a fifth as many held-out items per class
    held = follow_partition(parts, ref_keys, [str(y) for y in held_labels], seed=0)
    _every_item_once(held, len(held_labels))
    for p, h in zip(parts, held, strict=True):
        train_counts = np.bincount(LABELS[p], minlength=4)
        held_counts = np.bincount(held_labels[h], minlength=4)
        assert np.all(np.abs(held_counts - train_counts / 5) <= 1)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "unknown partition"),
        ("random", "unknown partition"),
        ("dirichlet", "unknown partition"),
        ("dirichlet:abc", "not a number"),
        ("dirichlet:0", "positive finite alpha"),
        ("dirichlet:-1", "positive finite alpha"),
        ("dirichlet:nan", "positive finite alpha"),
        ("by:", "unknown partition"),
        ("iid:3", "unknown partition"),
    ],
)
def test_bad_specs_are_refused_with_a_clear_message(spec: str, message: str) -> None:
    with pytest.raises(PartitionError, match=message):
        parse_partition(spec)


def test_parse_round_trips_and_errors_are_dataset_errors() -> None:
    for text in ("iid", "dirichlet:0.3", "by:motor_load_hp"):
        assert str(parse_partition(text)) == text
    assert issubclass(PartitionError, DatasetError)
    with pytest.raises(PartitionError, match="alpha"):
        PartitionSpec("iid", alpha=1.0)


def test_impossible_splits_are_refused() -> None:
    with pytest.raises(PartitionError, match="cannot fill"):
        partition_indices(LABELS[:3], None, parse_partition("iid"), 4, seed=0)
    with pytest.raises(PartitionError, match="groups"):
        partition_indices(LABELS, None, parse_partition("by:load"), 4, seed=0)
    with pytest.raises(PartitionError, match="num_partitions"):
        partition_indices(LABELS, None, parse_partition("iid"), 0, seed=0)
    with pytest.raises(PartitionError, match="has 2 items"):
        partition_indices(
            np.zeros(6, np.int64), ["a", "a", "b", "b", "b", "b"], parse_partition("by:c"), 6, 0
        )
