"""Split a labelled data set among virtual sites: IID, Dirichlet label skew, or by a column.

Pure and seeded: the same items, spec, number of partitions and seed give the same partitions
on every machine, so each virtual site of a Flower simulation can compute its own share
without talking to the others. Every item lands in exactly one partition.

``iid``
    items shuffled and dealt into near-equal parts (sizes differ by at most one).
``dirichlet:ALPHA``
    label skew after Hsu, Qi and Brown, "Measuring the effects of non-identical data
    distribution for federated visual classification" (arXiv:1909.06335, 2019): partition
    ``i`` draws its class mix ``q_i ~ Dir(ALPHA * p)``, ``p`` the classes' overall shares.
    Small ALPHA (0.1) gives sites mostly one class; large (100) is close to IID. Partitions
    have near-equal sizes (``n / N`` within about one item per class: each class's count
    is rounded on its own), and the class totals are met exactly: the draws are fitted to
    both by iterative proportional fitting, which keeps their odds ratios, i.e. the skew
    (Deming and Stephan, 1940). The per-class variant of NIID-Bench (Li et al., ICDE 2022),
    Dirichlet shares of each class over the sites redrawn until every site holds a minimum,
    cannot be met with few classes and many sites (4 CWRU classes over 50 sites at ALPHA 0.3
    failed 1,000 redraws), which is the case FedPM simulates.
``by:COLUMN``
    items grouped by a column (``groups``, e.g. each record's ``motor_load_hp``): with fewer
    partitions than groups each partition gets whole groups (dealt largest first to the
    smallest partition); with more, partition ``p`` draws from group ``p mod G`` and each
    group's items are dealt IID among its partitions.

Errors are :class:`PartitionError`, a :class:`models.errors.DatasetError`.

Examples
--------
>>> import numpy as np
>>> spec = parse_partition("dirichlet:0.5")
>>> spec.kind, spec.alpha, str(spec)
('dirichlet', 0.5, 'dirichlet:0.5')
>>> parts = partition_indices(np.repeat([0, 1, 2], 20), None, parse_partition("iid"), 4, seed=0)
>>> sorted(len(p) for p in parts), sorted(np.concatenate(parts).tolist()) == list(range(60))
([15, 15, 15, 15], True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from models.errors import DatasetError

IndexArray = npt.NDArray[np.int64]
PartitionKind = Literal["iid", "dirichlet", "by"]
KINDS: tuple[PartitionKind, ...] = ("iid", "dirichlet", "by")
_IPF_ROUNDS = 10_000  # iterative proportional fitting sweeps (converges in tens here)


class PartitionError(DatasetError):
    """A partition spec that does not parse, or items that cannot be split as asked."""


@dataclass(frozen=True)
class PartitionSpec:
    """How to split items among partitions (see the module docstring).

    Parameters
    ----------
    kind
        ``iid``, ``dirichlet`` or ``by``.
    alpha
        Dirichlet concentration (> 0), for ``dirichlet`` only.
    column
        Manifest column whose value groups the items, for ``by`` only.
    """

    kind: PartitionKind
    alpha: float | None = None
    column: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PartitionError(f"partition kind must be one of {', '.join(KINDS)}: {self.kind!r}")
        if self.kind == "dirichlet":
            if self.alpha is None or not math.isfinite(self.alpha) or self.alpha <= 0:
                raise PartitionError(f"dirichlet needs a positive finite alpha, got {self.alpha}")
        elif self.alpha is not None:
            raise PartitionError(f"only dirichlet takes an alpha, not {self.kind}")
        if self.kind == "by":
            if not self.column:
                raise PartitionError("by:COLUMN needs a column name, e.g. by:motor_load_hp")
        elif self.column is not None:
            raise PartitionError(f"only by takes a column, not {self.kind}")

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "by":
            return f"by:{self.column}"
        return "iid"


def parse_partition(spec: str) -> PartitionSpec:
    """Parse ``iid``, ``dirichlet:ALPHA`` or ``by:COLUMN``.

    Raises
    ------
    PartitionError
        Anything else, with the accepted forms in the message.

    Examples
    --------
    >>> parse_partition("by:motor_load_hp")
    PartitionSpec(kind='by', alpha=None, column='motor_load_hp')
    """
    text = spec.strip()
    kind, sep, arg = text.partition(":")
    kind = kind.strip().lower()
    forms = "use iid, dirichlet:ALPHA (e.g. dirichlet:0.3) or by:COLUMN (e.g. by:motor_load_hp)"
    if kind == "iid" and not sep:
        return PartitionSpec("iid")
    if kind == "dirichlet" and sep:
        try:
            alpha = float(arg)
        except ValueError:
            raise PartitionError(f"partition {spec!r}: alpha {arg!r} is not a number") from None
        return PartitionSpec("dirichlet", alpha=alpha)
    if kind == "by" and sep and arg.strip():
        return PartitionSpec("by", column=arg.strip())
    raise PartitionError(f"unknown partition {spec!r}: {forms}")


def _check(labels: npt.ArrayLike, groups: Sequence[str] | None, num_partitions: int) -> int:
    n = len(np.asarray(labels))
    if num_partitions < 1:
        raise PartitionError(f"num_partitions must be >= 1, got {num_partitions}")
    if n < num_partitions:
        raise PartitionError(f"{n} items cannot fill {num_partitions} partitions")
    if groups is not None and len(groups) != n:
        raise PartitionError(f"{len(groups)} groups for {n} labels")
    return n


def _deal(items: IndexArray, num_partitions: int, rng: np.random.Generator) -> list[IndexArray]:
    """Shuffle ``items`` and cut them into ``num_partitions`` near-equal parts."""
    shuffled = rng.permutation(items)
    return [np.asarray(p, np.int64) for p in np.array_split(shuffled, num_partitions)]


def _dirichlet(
    labels: npt.NDArray[np.int64], num_partitions: int, alpha: float, rng: np.random.Generator
) -> list[IndexArray]:
    """Hsu et al.'s label skew with exact class totals and near-equal partition sizes."""
    n = len(labels)
    counts = np.bincount(labels).astype(np.float64)
    prior = counts / n
    present = counts > 0
    # each partition's class mix q_i ~ Dir(alpha * p); floored so no class is impossible
    q = np.zeros((num_partitions, len(counts)))
    q[:, present] = rng.dirichlet(alpha * prior[present], size=num_partitions)
    q[:, present] = np.maximum(q[:, present], 1e-12)
    sizes = np.array([len(c) for c in np.array_split(np.arange(n), num_partitions)], np.float64)
    # iterative proportional fitting: the matrix closest to the draws (same odds ratios)
    # whose rows hold the partitions' sizes and whose columns hold the class totals
    m = q * sizes[:, None]
    for _ in range(_IPF_ROUNDS):
        m[:, present] *= counts[present] / m[:, present].sum(axis=0)
        m *= (sizes / m.sum(axis=1))[:, None]
        if np.allclose(m.sum(axis=0), counts, rtol=1e-9, atol=1e-6):
            break
    parts: list[list[IndexArray]] = [[] for _ in range(num_partitions)]
    for k in np.flatnonzero(present):
        take = np.floor(m[:, k]).astype(np.int64)  # whole items, largest remainders first
        rest = int(counts[k]) - int(take.sum())
        take[np.argsort(-(m[:, k] - take), kind="stable")[:rest]] += 1
        members = rng.permutation(np.flatnonzero(labels == k))
        for p, chunk in enumerate(np.split(members, np.cumsum(take)[:-1])):
            parts[p].append(chunk)
    out = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
    if min(len(p) for p in out) == 0:
        raise PartitionError(
            f"dirichlet:{alpha:g} left a partition empty: {n} items are too few for "
            f"{num_partitions} partitions"
        )
    return out


def _by_group(
    groups: Sequence[str], num_partitions: int, rng: np.random.Generator
) -> list[IndexArray]:
    keys = np.asarray([str(g) for g in groups])
    names = sorted(set(keys.tolist()))
    members = {g: np.flatnonzero(keys == g).astype(np.int64) for g in names}
    if num_partitions <= len(names):
        # whole groups; largest first to the currently smallest partition (ties: lowest index)
        parts: list[list[IndexArray]] = [[] for _ in range(num_partitions)]
        sizes = [0] * num_partitions
        for g in sorted(names, key=lambda g: (-len(members[g]), g)):
            p = sizes.index(min(sizes))
            parts[p].append(members[g])
            sizes[p] += len(members[g])
        return [np.sort(np.concatenate(p)) for p in parts]
    out: list[IndexArray] = [np.zeros(0, np.int64)] * num_partitions
    for gi, g in enumerate(names):
        owners = list(range(gi, num_partitions, len(names)))
        if len(members[g]) < len(owners):
            raise PartitionError(
                f"group {g!r} has {len(members[g])} items for {len(owners)} partitions: "
                "use fewer partitions"
            )
        for p, chunk in zip(owners, _deal(members[g], len(owners), rng), strict=True):
            out[p] = np.sort(chunk)
    return out


def partition_indices(
    labels: npt.ArrayLike,
    groups: Sequence[str] | None,
    spec: PartitionSpec,
    num_partitions: int,
    seed: int,
) -> list[IndexArray]:
    """Indices of the items each partition gets; every item appears in exactly one.

    Parameters
    ----------
    labels
        Class index (or any hashable integer label) of every item, shape ``(n,)``.
    groups
        Group of every item (the ``by`` column's value), or ``None``; ``by`` needs it.
    spec
        How to split (:func:`parse_partition`).
    num_partitions
        Number of partitions (virtual sites), ``1 <= num_partitions <= n``.
    seed
        Seeds the shuffles and Dirichlet draws.

    Returns
    -------
    list of numpy.ndarray
        ``num_partitions`` sorted int64 index arrays.

    Raises
    ------
    PartitionError
        Too few items, ``by`` without groups, or a group too small for its partitions.
    """
    n = _check(labels, groups, num_partitions)
    rng = np.random.default_rng(seed)
    if spec.kind == "iid":
        return [np.sort(p) for p in _deal(np.arange(n, dtype=np.int64), num_partitions, rng)]
    if spec.kind == "dirichlet":
        assert spec.alpha is not None  # checked by PartitionSpec
        codes = np.unique(np.asarray(labels), return_inverse=True)[1].astype(np.int64)
        return _dirichlet(codes, num_partitions, spec.alpha, rng)
    if groups is None:
        raise PartitionError(f"{spec} needs each item's {spec.column!r} value (groups)")
    return _by_group(groups, num_partitions, rng)


def follow_partition(
    reference: Sequence[IndexArray],
    ref_keys: Sequence[str],
    keys: Sequence[str],
    seed: int,
) -> list[IndexArray]:
    """Split other items in the proportions ``reference`` split items of the same key.

    Used for evaluation windows: each site's held-out windows come, per key (class and
    record group), in the share its training windows did, so a site evaluates on its own
    distribution. Within a key the split is a seeded shuffle cut by largest remainders.

    Parameters
    ----------
    reference
        The reference partitions (indices into ``ref_keys``).
    ref_keys, keys
        A key per reference item and per item to split (e.g. ``"label|group"``).
    seed
        Seeds the shuffles.

    Returns
    -------
    list of numpy.ndarray
        One sorted int64 index array (into ``keys``) per reference partition; items whose key
        no reference item has go to no partition.

    Examples
    --------
    >>> ref = [np.array([0, 1, 2]), np.array([3])]
    >>> [len(p) for p in follow_partition(ref, ["a"] * 4, ["a"] * 8, seed=0)]
    [6, 2]
    """
    rng = np.random.default_rng(seed)
    ref = np.asarray(list(ref_keys))
    mine = np.asarray(list(keys))
    out: list[list[IndexArray]] = [[] for _ in reference]
    for key in sorted(set(mine.tolist())):
        counts = np.array([int(np.sum(ref[p] == key)) if len(p) else 0 for p in reference])
        total = counts.sum()
        if total == 0:
            continue
        items = rng.permutation(np.flatnonzero(mine == key).astype(np.int64))
        exact = counts / total * len(items)
        take = np.floor(exact).astype(np.int64)
        rest = len(items) - int(take.sum())
        take[np.argsort(-(exact - take), kind="stable")[:rest]] += 1
        for p, chunk in enumerate(np.split(items, np.cumsum(take)[:-1])):
            out[p].append(chunk)
    return [np.sort(np.concatenate(c)) if c else np.zeros(0, np.int64) for c in out]
