"""Turn labelled records into model windows, with splits that do not leak.

Windows cut from one recording with overlap share samples, and even adjacent windows share the
recording's operating point, so a random split of windows scores memory, not diagnosis. Two
honest splits are offered:

``time``
    every record trains on its first ``train_fraction`` and tests on the rest; each part is
    resampled and windowed on its own, so neither a window nor the resampling filter crosses the
    cut (overlap, if any, stays inside a part).
``record``
    whole records train or test (e.g. train on 0-2 HP, test on 3 HP). A class with a single
    record cannot be both trained and held out by record; that record is split in time and
    :class:`SplitPlan` says so.

Labels come from :func:`class_label`: ``fault`` (``normal``, ``inner_race``...) or
``fault_size`` (``inner_race@0.007``; CWRU's classic 10-class task). Everything here is pure
except :func:`build_windows`, which reads the record files through :mod:`models.datasets`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from models.datasets import Record, RecordInfo, read_record
from models.errors import DatasetError, SignalError
from models.metadata import NORMAL_CLASS
from models.windows import resample, windows_from_record

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

LabelScheme = Literal["fault", "fault_size"]
LABEL_SCHEMES: tuple[LabelScheme, ...] = get_args(LabelScheme)
SplitKind = Literal["time", "record"]
Part = Literal["train", "test", "split"]
FAULT_ORDER = (NORMAL_CLASS, "inner_race", "outer_race", "ball")
DIAMETER_COLUMN = "fault_diameter_in"


# --- Labels ---------------------------------------------------------------------------------


def class_label(info: RecordInfo, scheme: LabelScheme = "fault") -> str:
    """The class of a record: its fault type, or ``fault@diameter`` (``normal`` stays ``normal``).

    Examples
    --------
    >>> from pathlib import Path
    >>> info = RecordInfo(Path("IR007_0_105.npz"), "inner_race", 12e3, 1797.0, ("de",),
    ...                   {"fault_diameter_in": "0.0070"})
    >>> class_label(info), class_label(info, "fault_size")
    ('inner_race', 'inner_race@0.007')
    """
    if scheme not in LABEL_SCHEMES:
        raise DatasetError(f"unknown label scheme {scheme!r} (use {', '.join(LABEL_SCHEMES)})")
    if scheme == "fault" or info.fault_type == NORMAL_CLASS:
        return info.fault_type
    text = info.metadata.get(DIAMETER_COLUMN, "")
    try:
        diameter = float(text)
    except ValueError:
        diameter = math.nan
    if not math.isfinite(diameter) or diameter <= 0:
        raise DatasetError(f"{info.path.name}: {DIAMETER_COLUMN} {text!r} is not a positive size")
    return f"{info.fault_type}@{diameter:g}"


def order_classes(labels: Iterable[str]) -> tuple[str, ...]:
    """Distinct labels, ``normal`` first, then inner race, outer race, ball, others; by size."""

    def key(label: str) -> tuple[int, str, float, str]:
        fault, _, size = label.partition("@")
        rank = FAULT_ORDER.index(fault) if fault in FAULT_ORDER else len(FAULT_ORDER)
        try:
            diameter = float(size) if size else 0.0
        except ValueError:
            diameter = math.inf
        return rank, fault, diameter, label

    return tuple(sorted(set(labels), key=key))


# --- Selecting records ----------------------------------------------------------------------


def _field(info: RecordInfo, key: str) -> str:
    typed = {
        "file": info.path.name,
        "fault_type": info.fault_type,
        "sample_rate_hz": f"{info.sample_rate_hz:g}",
        "channels": ",".join(info.channels),
        "timestamp": info.timestamp or "",
    }
    if key in typed:
        return typed[key]
    if key in info.metadata:
        return info.metadata[key]
    raise DatasetError(
        f"no column {key!r} to filter on (has: {', '.join([*typed, *info.metadata])})"
    )


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False


@dataclass(frozen=True)
class RecordFilter:
    """``column=v1,v2`` keeps records whose column is one of the values; ``column!=...`` drops them.

    Numbers compare by value (``0`` matches ``0.000``), an empty value matches an empty cell.
    """

    key: str
    values: tuple[str, ...]
    negate: bool = False

    @classmethod
    def parse(cls, text: str) -> RecordFilter:
        """Parse ``column=v1,v2`` or ``column!=v1,v2``."""
        key, sep, values = text.partition("=")
        negate = key.endswith("!")
        key = key.removesuffix("!").strip()
        if not sep or not key:
            raise DatasetError(f"filter {text!r} is not COLUMN=VALUE[,VALUE...] or COLUMN!=...")
        return cls(key, tuple(v.strip() for v in values.split(",")), negate)

    def matches(self, info: RecordInfo) -> bool:
        """Whether ``info`` passes this filter."""
        value = _field(info, self.key)
        return any(_same(value, v) for v in self.values) != self.negate

    def __str__(self) -> str:
        return f"{self.key}{'!=' if self.negate else '='}{','.join(self.values)}"


def select(infos: Iterable[RecordInfo], filters: Sequence[RecordFilter]) -> list[RecordInfo]:
    """Records passing every filter, in their order."""
    return [info for info in infos if all(f.matches(info) for f in filters)]


# --- Splitting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitPlan:
    """Which records train, which test, and which are split in time between the two."""

    parts: tuple[tuple[RecordInfo, Part], ...]

    def records(self, part: Part) -> list[RecordInfo]:
        """Records assigned ``part``."""
        return [info for info, p in self.parts if p == part]

    def classes(self, side: Literal["train", "test"], scheme: LabelScheme) -> tuple[str, ...]:
        """Classes that have windows on ``side``."""
        return order_classes(class_label(i, scheme) for i, p in self.parts if p in (side, "split"))


def plan_time_split(infos: Sequence[RecordInfo]) -> SplitPlan:
    """Every record is split in time."""
    return SplitPlan(tuple((info, "split") for info in infos))


def plan_record_split(
    train: Sequence[RecordInfo],
    test: Sequence[RecordInfo] | None = None,
    *,
    scheme: LabelScheme = "fault",
) -> SplitPlan:
    """Whole records for training and testing.

    Parameters
    ----------
    train
        Candidate training records.
    test
        Test records (those also in ``train`` are dropped from it). ``None`` holds out the last
        record of each class in ``train`` (the latest when the manifest has timestamps).
    scheme
        Label scheme defining the classes.

    Notes
    -----
    A class with a single training record and no test record has that record split in time, so
    that it is still tested (CWRU's only normal record, for instance).

    Raises
    ------
    DatasetError
        No training record, or test records of a class that nothing trains.
    """
    if test is None:
        by_class: dict[str, list[RecordInfo]] = {}
        for info in train:
            by_class.setdefault(class_label(info, scheme), []).append(info)
        test = [members[-1] for members in by_class.values() if len(members) > 1]
    test_paths = {info.path for info in test}
    kept = [info for info in train if info.path not in test_paths]
    tested = {class_label(info, scheme) for info in test}
    count = Counter(class_label(info, scheme) for info in kept)
    parts: list[tuple[RecordInfo, Part]] = []
    for info in kept:
        label = class_label(info, scheme)
        parts.append((info, "split" if count[label] == 1 and label not in tested else "train"))
    parts.extend((info, "test") for info in test)
    plan = SplitPlan(tuple(parts))
    if not any(p != "test" for _, p in parts):
        raise DatasetError("no training records left after holding out the test records")
    untrained = set(plan.classes("test", scheme)) - set(plan.classes("train", scheme))
    if untrained:
        raise DatasetError(
            f"test records of classes nothing trains: {', '.join(sorted(untrained))}"
        )
    return plan


# --- Windows --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowOptions:
    """How records become windows.

    Parameters
    ----------
    sample_rate_hz
        Model rate; records at other rates are resampled.
    window_samples
        Samples per window at the model rate.
    channels
        Record channels stacked as the model's input channels, in order.
    train_fraction
        Leading fraction of a time-split record that trains.
    train_hop, test_hop
        Hop between window starts in samples (``None``: one window length, no overlap).
    speed_factors
        Speed augmentation: training windows are cut from each training part resampled to
        ``sample_rate_hz * f`` for every ``f``, i.e. played ``f`` times slower, so shaft and
        defect frequencies drop by ``f`` as when a heavier load slows the motor (CWRU: 1797 rpm
        at 0 HP, 1730 at 3 HP, 3.7 % apart). Structural resonances move too, which real speed
        changes do not do. ``(1.0,)`` (default) means no augmentation.
    """

    sample_rate_hz: float = 12_000.0
    window_samples: int = 2048
    channels: tuple[str, ...] = ("de",)
    train_fraction: float = 0.7
    train_hop: int | None = None
    test_hop: int | None = None
    speed_factors: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if not 0.0 < self.train_fraction < 1.0:
            raise DatasetError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.window_samples < 1 or not self.channels:
            raise DatasetError("need window_samples >= 1 and at least one channel")
        for hop in (self.train_hop, self.test_hop):
            if hop is not None and hop < 1:
                raise DatasetError(f"hops must be >= 1 sample, got {hop}")
        if not self.speed_factors or not all(0.5 <= f <= 2.0 for f in self.speed_factors):
            raise DatasetError(f"speed factors must lie in [0.5, 2], got {self.speed_factors}")


@dataclass(frozen=True)
class WindowSet:
    """Labelled windows and where each came from.

    ``x`` is (n, channels, samples) float32 in g; ``y`` indexes ``class_names``; ``record``
    indexes ``records``; ``start`` is each window's first sample in its record (model rate).
    """

    x: FloatArray
    y: IntArray
    record: IntArray
    start: IntArray
    records: tuple[RecordInfo, ...]
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.y)


def record_windows(
    record: Record,
    channels: Sequence[str],
    window_samples: int,
    hop: int | None = None,
    start: int = 0,
    stop: int | None = None,
    sample_rate_hz: float | None = None,
) -> tuple[FloatArray, IntArray]:
    """Windows (n, channels, samples) lying wholly in samples ``[start, stop)`` of ``record``.

    With ``sample_rate_hz``, the segment alone is resampled to that rate first (so no filter
    reaches across ``start`` or ``stop``) and windows, hop and the returned starts count
    samples at that rate; starts are offsets from the record's beginning.
    """
    stop = record.n_samples if stop is None else stop
    hop = window_samples if hop is None else hop
    fs = record.sample_rate_hz if sample_rate_hz is None else sample_rate_hz
    segments = [record.signals[c][start:stop] for c in channels]
    if fs != record.sample_rate_hz:
        try:
            segments = [resample(x, record.sample_rate_hz, fs) for x in segments]
        except SignalError as exc:
            raise DatasetError(f"{record.info.path.name}: {exc}") from exc
    per_channel = [windows_from_record(x, window_samples, hop) for x in segments]
    x = np.stack(per_channel, axis=1) if per_channel else np.zeros((0, 0, window_samples))
    offset = round(start * fs / record.sample_rate_hz)
    starts = offset + np.arange(len(x), dtype=np.int64) * hop
    return x.astype(np.float32, copy=False), starts


def _collect(
    chunks: list[tuple[int, int, FloatArray, IntArray]],
    records: tuple[RecordInfo, ...],
    class_names: tuple[str, ...],
    options: WindowOptions,
) -> WindowSet:
    empty = np.zeros(0, np.int64)
    shape = (0, len(options.channels), options.window_samples)
    x = [c[2] for c in chunks] or [np.zeros(shape, np.float32)]
    return WindowSet(
        x=np.concatenate(x).astype(np.float32, copy=False),
        y=np.concatenate([empty, *(np.full(len(c[2]), c[1], np.int64) for c in chunks)]),
        record=np.concatenate([empty, *(np.full(len(c[2]), c[0], np.int64) for c in chunks)]),
        start=np.concatenate([empty, *(c[3] for c in chunks)]),
        records=records,
        class_names=class_names,
    )


def build_windows(
    plan: SplitPlan,
    options: WindowOptions | None = None,
    *,
    scheme: LabelScheme = "fault",
    class_names: tuple[str, ...] | None = None,
) -> tuple[WindowSet, WindowSet]:
    """Read the plan's records and cut training and test windows.

    Parameters
    ----------
    plan
        Which records train, test, or are split in time.
    options
        Rate, window, channels, train fraction and hops.
    scheme
        Label scheme.
    class_names
        Class order (default: :func:`order_classes` over the training side).

    Returns
    -------
    (train, test) : tuple of WindowSet
        Both index the same ``records`` (the plan's order) and ``class_names``.

    Raises
    ------
    DatasetError
        Unreadable records, or a label not in ``class_names``.
    """
    opts = options or WindowOptions()
    names = class_names or plan.classes("train", scheme)
    records = tuple(info for info, _ in plan.parts)
    train: list[tuple[int, int, FloatArray, IntArray]] = []
    test: list[tuple[int, int, FloatArray, IntArray]] = []
    for index, (info, part) in enumerate(plan.parts):
        label = class_label(info, scheme)
        if label not in names:
            raise DatasetError(f"{info.path.name}: class {label!r} is not one of {names}")
        rec = read_record(info, channels=opts.channels)  # cut at the file's rate, then resample
        cut = math.floor(rec.n_samples * opts.train_fraction) if part == "split" else None
        w, fs = opts.window_samples, opts.sample_rate_hz
        if part in ("train", "split"):
            for factor in opts.speed_factors:
                x, starts = record_windows(
                    rec, opts.channels, w, opts.train_hop, 0, cut, fs * factor
                )
                train.append((index, names.index(label), x, starts))
        if part in ("test", "split"):
            x, starts = record_windows(rec, opts.channels, w, opts.test_hop, cut or 0, None, fs)
            test.append((index, names.index(label), x, starts))
    return _collect(train, records, names, opts), _collect(test, records, names, opts)
