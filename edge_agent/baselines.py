"""Per-asset anomaly baselines for the running model, fitted from the asset's healthy windows.

An asset's baseline (`models.anomaly.AnomalyBaseline`: Ledoit-Wolf Mahalanobis distance with a
split-conformal threshold) is fitted on the model's *embedding* of the asset's *healthy
candidate windows*: its stored windows that overlap no label of a fault class (unlabelled
windows, and windows labelled ``normal``), the earliest first, at most
:data:`MAX_FIT_WINDOWS`. The earliest are taken because they are the closest the store holds to
commissioning or the last repair, before any slow degradation an operator has not labelled
yet; the latest 30 % of them calibrate the threshold for ``anomaly_false_alarm_rate``.

It needs ``max(baseline_min_windows, models.anomaly.min_windows(rate))`` candidates (329 at
the default 1 %); until then the anomaly score is absent. An embedding only means something
for the model that produced it, so each (asset, model version) has its own baseline: a new
model version is refitted from the stored windows (about one model run per window) and the
baselines of older versions of that asset are dropped. Baselines are kept in the store's
``baselines`` table, so a restarted worker does not refit.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from edge_agent.records import LE_F32, conform
from models.anomaly import AnomalyBaseline, min_windows
from models.errors import AnomalyError, ModelFormatError, SignalError
from models.metadata import NORMAL_CLASS

if TYPE_CHECKING:  # the ClientApp imports this module: no onnxruntime at import time
    from edge_agent.model_slot import LoadedModel
    from edge_agent.store import LocalStore

logger = logging.getLogger(__name__)

HOLDOUT_FRACTION: Final = 0.3
MAX_FIT_WINDOWS: Final = 2000
EMBED_BATCH: Final = 256

# a healthy candidate: a window of the asset that overlaps no label of a fault class
_CANDIDATES_SQL: Final = """
    SELECT w.id, w.sample_rate_hz, w.samples FROM windows AS w WHERE w.asset_id = :asset
    AND NOT EXISTS (
        SELECT 1 FROM labels AS l WHERE l.asset_id = w.asset_id AND l.label != :normal
        AND (l.sensor_id IS NULL OR l.sensor_id = w.sensor_id)
        AND l.start_ns < w.end_ns AND l.end_ns > w.start_ns)
    ORDER BY w.start_ns, w.id LIMIT :limit
"""
# a fault window: a window of the asset lying inside a label of a fault class
_FAULTS_SQL: Final = """
    SELECT w.id, w.sample_rate_hz, w.samples FROM windows AS w WHERE w.asset_id = :asset
    AND EXISTS (
        SELECT 1 FROM labels AS l WHERE l.asset_id = w.asset_id AND l.label != :normal
        AND (l.sensor_id IS NULL OR l.sensor_id = w.sensor_id)
        AND l.start_ns <= w.start_ns AND l.end_ns >= w.end_ns)
    ORDER BY w.start_ns, w.id LIMIT :limit
"""
_COUNT_SQL: Final = """
    SELECT count(*) FROM (SELECT 1 FROM windows AS w WHERE w.asset_id = :asset
    AND NOT EXISTS (
        SELECT 1 FROM labels AS l WHERE l.asset_id = w.asset_id AND l.label != :normal
        AND (l.sensor_id IS NULL OR l.sensor_id = w.sensor_id)
        AND l.start_ns < w.end_ns AND l.end_ns > w.start_ns)
    LIMIT :limit)
"""


def required_windows(false_alarm_rate: float, baseline_min_windows: int) -> int:
    """Healthy windows a baseline needs for this rate (at least ``baseline_min_windows``).

    Examples
    --------
    >>> required_windows(0.01, 64), required_windows(0.05, 64), required_windows(0.05, 100)
    (329, 64, 100)
    """
    return max(baseline_min_windows, min_windows(false_alarm_rate, HOLDOUT_FRACTION))


def count_healthy_candidates(conn: sqlite3.Connection, asset_id: str, limit: int) -> int:
    """How many healthy candidate windows ``asset_id`` has, counting up to ``limit``."""
    row = conn.execute(_COUNT_SQL, {"asset": asset_id, "normal": NORMAL_CLASS, "limit": limit})
    return int(row.fetchone()[0])


def healthy_candidates(
    conn: sqlite3.Connection, asset_id: str, limit: int
) -> Iterator[tuple[int, float, npt.NDArray[np.float32]]]:
    """The asset's earliest healthy candidate windows as (id, rate in Hz, samples in g)."""
    params = {"asset": asset_id, "normal": NORMAL_CLASS, "limit": limit}
    for window_id, fs, blob in conn.execute(_CANDIDATES_SQL, params):
        yield int(window_id), float(fs), np.frombuffer(blob, dtype=LE_F32).astype(np.float32)


def fault_windows(
    conn: sqlite3.Connection, asset_id: str, limit: int
) -> Iterator[tuple[int, float, npt.NDArray[np.float32]]]:
    """The asset's earliest windows inside fault labels as (id, rate in Hz, samples in g)."""
    params = {"asset": asset_id, "normal": NORMAL_CLASS, "limit": limit}
    for window_id, fs, blob in conn.execute(_FAULTS_SQL, params):
        yield int(window_id), float(fs), np.frombuffer(blob, dtype=LE_F32).astype(np.float32)


def embed(model: LoadedModel, windows: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float64]:
    """The model's embedding of conformed windows, (n, embedding_dim).

    Raises
    ------
    ModelFormatError
        The model cannot run on them.
    """
    rows = []
    for start in range(0, len(windows), EMBED_BATCH):
        x = np.stack(windows[start : start + EMBED_BATCH])[:, np.newaxis, :]
        rows.append(np.asarray(model.classifier.predict(x).embedding, dtype=np.float64))
    if not rows:
        return np.zeros((0, 1), dtype=np.float64)
    return np.concatenate(rows)


class BaselineBook:
    """The anomaly baselines of every asset for the running model version.

    Parameters
    ----------
    store
        The local store (windows and labels are read, baselines written).
    false_alarm_rate
        Share of healthy windows the threshold flags (``anomaly_false_alarm_rate``).
    baseline_min_windows
        Fewest healthy windows a baseline is fitted on (raised to what the rate needs).
    """

    def __init__(
        self, store: LocalStore, *, false_alarm_rate: float, baseline_min_windows: int
    ) -> None:
        self._store = store
        self.false_alarm_rate = false_alarm_rate
        self.required = required_windows(false_alarm_rate, baseline_min_windows)
        self._cache: dict[tuple[str, int], AnomalyBaseline | None] = {}
        self._countdown: dict[tuple[str, int], int] = {}

    def get(
        self, asset_id: str, model: LoadedModel, new_windows: int = 0
    ) -> AnomalyBaseline | None:
        """The asset's baseline for ``model``, fitting it when enough windows may be there.

        ``new_windows`` is how many windows of the asset arrived since the last call; the
        store is looked at again only once enough have arrived to make a fit possible.
        """
        key = (asset_id, model.version)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if key not in self._cache:
            self._cache[key] = cached = self._load(asset_id, model.version)
            if cached is not None:
                return cached
        left = self._countdown.get(key, 0) - new_windows
        if left > 0:
            self._countdown[key] = left
            return None
        baseline = self.fit(asset_id, model)
        self._cache[key] = baseline
        return baseline

    def _load(self, asset_id: str, version: int) -> AnomalyBaseline | None:
        with self._store.reader() as conn:
            row = conn.execute(
                "SELECT payload FROM baselines WHERE asset_id = ? AND model_version = ?",
                (asset_id, version),
            ).fetchone()
        if row is None:
            return None
        try:
            return AnomalyBaseline.from_json(row[0])
        except AnomalyError as exc:
            logger.warning("stored baseline of %s (v%d) is unusable: %s", asset_id, version, exc)
            return None

    def fit(self, asset_id: str, model: LoadedModel) -> AnomalyBaseline | None:
        """Fit and store the asset's baseline now; ``None`` if it cannot be fitted yet."""
        key = (asset_id, model.version)
        with self._store.reader() as conn:
            available = count_healthy_candidates(conn, asset_id, self.required)
            if available < self.required:
                self._countdown[key] = self.required - available
                return None
            meta = model.card.metadata
            windows = []
            for _, fs, samples in healthy_candidates(conn, asset_id, MAX_FIT_WINDOWS):
                try:
                    x = conform(samples, fs, meta.sample_rate_hz, meta.window_samples)
                except SignalError:
                    continue
                if np.isfinite(x).all():
                    windows.append(x)
        try:
            embeddings = embed(model, windows)
            baseline = AnomalyBaseline.fit(
                embeddings,
                self.false_alarm_rate,
                HOLDOUT_FRACTION,
                source=model.card.sha256,
            )
        except (AnomalyError, ModelFormatError) as exc:
            logger.warning(
                "cannot fit the baseline of %s for v%d: %s", asset_id, model.version, exc
            )
            self._countdown[key] = self.required
            return None
        with self._store.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO baselines (asset_id, model_version, fitted_ns, n_windows,"
                " payload) VALUES (?, ?, ?, ?, ?)",
                (
                    asset_id,
                    model.version,
                    time.time_ns(),
                    len(windows),
                    baseline.to_json().encode(),
                ),
            )
            conn.execute(
                "DELETE FROM baselines WHERE asset_id = ? AND model_version < ?",
                (asset_id, model.version),
            )
        logger.info(
            "baseline of %s fitted for v%d on %d windows (threshold %.2f)",
            asset_id,
            model.version,
            len(windows),
            baseline.threshold,
        )
        return baseline


@dataclass(frozen=True)
class AnomalyCounts:
    """Anomaly-detection outcome on a site's own windows (see :func:`evaluate_anomaly`).

    Counts, not rates, so that sums (or equally weighted means) over sites pool them:
    false-alarm rate ``healthy_flagged / healthy_windows``, detection rate
    ``fault_detected / fault_windows``.
    """

    assets: int = 0
    healthy_windows: int = 0
    healthy_flagged: int = 0
    fault_windows: int = 0
    fault_detected: int = 0


Embedder = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float64]]


def _conformed(
    rows: Iterator[tuple[int, float, npt.NDArray[np.float32]]], fs: float, n: int
) -> npt.NDArray[np.float32]:
    out = []
    for _, rate, samples in rows:
        try:
            x = conform(samples, rate, fs, n)
        except SignalError:
            continue
        if np.isfinite(x).all():
            out.append(x)
    return np.stack(out)[:, np.newaxis, :] if out else np.zeros((0, 1, n), np.float32)


def evaluate_anomaly(
    conn: sqlite3.Connection,
    embed_windows: Embedder,
    *,
    sample_rate_hz: float,
    window_samples: int,
    false_alarm_rate: float = 0.05,
    max_healthy: int = 1000,
    max_faults: int = 500,
) -> AnomalyCounts:
    """Fit each asset's baseline on its earlier healthy windows and test it on the rest.

    Per asset, its healthy candidate windows (earliest ``max_healthy``, in time order) are
    split: the first 70 % fit the baseline (which holds out its own 30 % for the threshold),
    the latest 30 % are held out and counted as false alarms when flagged; the asset's windows
    inside fault labels (earliest ``max_faults``) count as detected when flagged. Assets with
    too few healthy windows for ``false_alarm_rate`` are left out.

    Parameters
    ----------
    conn
        A connection to the store (read only is enough).
    embed_windows
        Windows (n, 1, window_samples) float32 in g -> embeddings (n, d).
    sample_rate_hz, window_samples
        What the embedder takes; windows are resampled and cropped or padded to it.
    false_alarm_rate
        Rate the thresholds are calibrated for.
    """
    needed = math.ceil(min_windows(false_alarm_rate, HOLDOUT_FRACTION) / (1 - HOLDOUT_FRACTION))
    totals = dict.fromkeys(("assets", "hw", "hf", "fw", "fd"), 0)
    assets = [str(a) for (a,) in conn.execute("SELECT DISTINCT asset_id FROM windows")]
    for asset in sorted(assets):
        healthy = _conformed(
            healthy_candidates(conn, asset, max_healthy), sample_rate_hz, window_samples
        )
        if len(healthy) < needed:
            continue
        split = round(len(healthy) * (1 - HOLDOUT_FRACTION))
        try:
            baseline = AnomalyBaseline.fit(
                embed_windows(healthy[:split]), false_alarm_rate, HOLDOUT_FRACTION
            )
            held_out = baseline.is_anomalous(embed_windows(healthy[split:]))
            faults = _conformed(
                fault_windows(conn, asset, max_faults), sample_rate_hz, window_samples
            )
            detected = baseline.is_anomalous(embed_windows(faults)) if len(faults) else held_out[:0]
        except AnomalyError as exc:
            logger.warning("no anomaly evaluation for %s: %s", asset, exc)
            continue
        totals["assets"] += 1
        totals["hw"] += len(held_out)
        totals["hf"] += int(held_out.sum())
        totals["fw"] += len(detected)
        totals["fd"] += int(detected.sum())
    return AnomalyCounts(totals["assets"], totals["hw"], totals["hf"], totals["fw"], totals["fd"])
