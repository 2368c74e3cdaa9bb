"""Where the ClientApp's labelled windows come from: the site's store, or a share of a manifest.

Two sources, chosen by the node config:

- ``store-path`` (a real SuperNode at a site): the edge agent's SQLite store
  (:class:`edge_agent.store.LocalStore`); the latest ``eval-fraction`` of every labelled
  recording evaluates, the rest trains (:func:`models.training.time_split`).
- ``partition-id`` / ``num-partitions`` (a virtual SuperNode of Flower's Simulation Engine) with
  ``data-manifest`` in the run config: the manifest's records (:mod:`models.datasets`) are cut
  in time, the first ``1 - eval-fraction`` of each record trains and the rest evaluates, each
  part windowed on its own (no window crosses the cut, no overlap). The training windows are
  split among the partitions by ``data-partition`` (:mod:`models.partition`); each partition's
  held-out windows follow, per record, the share its training windows got, so a virtual site
  evaluates on its own distribution.

Memory: the windowed manifest is built once per process and cached (a Ray worker serves many
virtual sites in turn), never once per site; only the ``data-channel`` channel is read.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.errors import StoreError
from edge_agent.records import LabelledWindows
from edge_agent.store import LocalStore
from models.dataset_windows import class_label, record_windows
from models.datasets import RecordInfo, load_manifest, read_record
from models.errors import DatasetError
from models.fl_config import RunConfig
from models.partition import follow_partition, parse_partition, partition_indices
from models.training import time_split

logger = logging.getLogger(__name__)

IndexArray = npt.NDArray[np.int64]
SiteData = tuple[LabelledWindows, IndexArray, IndexArray]  # windows, train and eval indices
_CACHE_SIZE = 2  # windowed manifests kept per process (one run at a time, plus one)


def site_data(node_config: Mapping[str, object], cfg: RunConfig) -> SiteData:
    """Labelled windows of this node and their train / eval indices.

    Parameters
    ----------
    node_config
        The SuperNode's node config: ``store-path``, or Flower simulation's ``partition-id``
        and ``num-partitions``.
    cfg
        The run config (``data-manifest``, ``data-partition``, ``data-channel``, rate, window,
        classes, ``eval-fraction``, ``seed``).

    Raises
    ------
    ValueError
        No usable source: neither ``store-path`` nor a partition with ``data-manifest``, an
        unusable store or manifest, or no labelled windows.
    """
    if node_config.get("store-path"):
        return store_data(str(node_config["store-path"]), cfg)
    if "partition-id" in node_config and "num-partitions" in node_config:
        if not cfg.data_manifest:
            raise ValueError(
                "a simulated node (partition-id in its node config) needs 'data-manifest' in "
                "the run config: flwr run --run-config \"data-manifest='/path/MANIFEST.tsv'\""
            )
        return partition_data(
            cfg,
            int(str(node_config["partition-id"])),
            int(str(node_config["num-partitions"])),
        )
    raise ValueError(
        "node config has no 'store-path': start the SuperNode with "
        "--node-config \"store-path='/path/to/store.db' site-id='...'\""
    )


def store_data(path: str, cfg: RunConfig) -> SiteData:
    """Labelled windows of an edge agent's store, split in time per recording."""
    try:
        store = LocalStore(path, readonly=True)
    except StoreError as exc:
        raise ValueError(f"site store unusable: {exc}") from exc
    with store:
        data = store.labelled_windows(cfg.class_names, cfg.sample_rate_hz, cfg.window_samples)
    if len(data.y) == 0:
        raise ValueError(f"store {path} holds no labelled windows yet")
    train_idx, eval_idx = time_split(data.group, data.start_ns, cfg.eval_fraction)
    return data, train_idx, eval_idx


@dataclass(frozen=True, eq=False)  # hashed by identity: the partition cache's key
class ManifestWindows:
    """A manifest cut in time and windowed: ``x`` (n, 1, samples) float32 in g.

    ``record`` indexes ``records``; ``start`` is each window's first sample at the model rate;
    ``train`` marks the windows of each record's leading part.
    """

    x: npt.NDArray[np.float32]
    y: IndexArray
    record: IndexArray
    start: IndexArray
    train: npt.NDArray[np.bool_]
    records: tuple[RecordInfo, ...]


def column_value(info: RecordInfo, column: str) -> str:
    """A record's manifest column as text (``fault_type``, ``file`` or any other column).

    Raises
    ------
    DatasetError
        The manifest has no such column.
    """
    if column == "fault_type":
        return info.fault_type
    if column == "file":
        return info.path.name
    if column in info.metadata:
        return info.metadata[column]
    raise DatasetError(
        f"no manifest column {column!r} to partition by "
        f"(has: fault_type, file, {', '.join(sorted(info.metadata))})"
    )


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _windowed(
    manifest: str,
    mtime_ns: int,
    channel: str,
    sample_rate_hz: float,
    window_samples: int,
    eval_fraction: float,
    class_names: tuple[str, ...],
) -> ManifestWindows:
    del mtime_ns  # part of the cache key only: an edited manifest is read again
    infos = tuple(load_manifest(manifest))
    xs, ys, recs, starts, trains = [], [], [], [], []
    for index, info in enumerate(infos):
        label = class_label(info)
        if label not in class_names:
            raise DatasetError(
                f"{info.path.name}: class {label!r} is not in the run's class-names {class_names}"
            )
        rec = read_record(info, channels=(channel,))
        cut = math.floor(rec.n_samples * (1.0 - eval_fraction))
        for is_train, (lo, hi) in ((True, (0, cut)), (False, (cut, rec.n_samples))):
            x, start = record_windows(rec, (channel,), window_samples, None, lo, hi, sample_rate_hz)
            xs.append(x)
            starts.append(start)
            ys.append(np.full(len(x), class_names.index(label), np.int64))
            recs.append(np.full(len(x), index, np.int64))
            trains.append(np.full(len(x), is_train))
    if not xs or sum(len(x) for x in xs) == 0:
        raise DatasetError(f"{manifest}: no record is long enough for one window")
    data = ManifestWindows(
        x=np.concatenate(xs).astype(np.float32, copy=False),
        y=np.concatenate(ys),
        record=np.concatenate(recs),
        start=np.concatenate(starts),
        train=np.concatenate(trains),
        records=infos,
    )
    logger.info(
        "%s: %d windows (%d train) of %d records, %.1f MB in memory",
        manifest, len(data.y), int(data.train.sum()), len(infos), data.x.nbytes / 1e6,
    )  # fmt: skip
    return data


def manifest_windows(cfg: RunConfig) -> ManifestWindows:
    """The run's ``data-manifest`` windowed and time-cut (cached per process)."""
    path = Path(cfg.data_manifest).resolve()
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError as exc:
        raise ValueError(f"data-manifest {path} cannot be read: {exc}") from exc
    return _windowed(
        str(path),
        mtime_ns,
        cfg.data_channel,
        cfg.sample_rate_hz,
        cfg.window_samples,
        cfg.eval_fraction,
        cfg.class_names,
    )


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _partitions(
    data: ManifestWindows, spec_text: str, num_partitions: int, seed: int
) -> tuple[tuple[IndexArray, IndexArray], ...]:
    """Per partition: indices into ``data`` of its training and its held-out windows."""
    spec = parse_partition(spec_text)
    train = np.flatnonzero(data.train)
    held = np.flatnonzero(~data.train)
    groups = None
    if spec.kind == "by":
        assert spec.column is not None
        by_record = [column_value(info, spec.column) for info in data.records]
        groups = [by_record[r] for r in data.record[train]]
    parts = partition_indices(data.y[train], groups, spec, num_partitions, seed)
    keys = [f"{y}|{r}" for y, r in zip(data.y, data.record, strict=True)]
    ref_keys = [keys[i] for i in train]
    held_parts = follow_partition(parts, ref_keys, [keys[i] for i in held], seed)
    return tuple((train[p], held[h]) for p, h in zip(parts, held_parts, strict=True))


def partition_data(cfg: RunConfig, partition_id: int, num_partitions: int) -> SiteData:
    """Partition ``partition_id`` of ``num_partitions`` of the run's manifest.

    Raises
    ------
    ValueError
        A partition id out of range, an unreadable manifest, or a split that cannot be made.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} not in [0, {num_partitions})")
    try:
        data = manifest_windows(cfg)
        train, held = _partitions(data, cfg.data_partition, num_partitions, cfg.seed)[partition_id]
    except DatasetError as exc:
        raise ValueError(f"data-manifest {cfg.data_manifest}: {exc}") from exc
    index = np.concatenate([train, held])
    fs = cfg.sample_rate_hz
    windows = LabelledWindows(
        x=data.x[index],
        y=data.y[index],
        group=data.record[index],
        start_ns=np.rint(data.start[index] * (1e9 / fs)).astype(np.int64),
    )
    n_train = len(train)
    if n_train == 0:
        raise ValueError(f"partition {partition_id} of {num_partitions} has no training windows")
    return (
        windows,
        np.arange(n_train, dtype=np.int64),
        np.arange(n_train, len(index), dtype=np.int64),
    )
