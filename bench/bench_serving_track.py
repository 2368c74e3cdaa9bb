"""What one asset prediction's history and RUL part costs (``serving.health.track``).

A simulated run to failure (outer race, onset at request 900 of 1,100; 4 windows of 2,048
samples at 12 kHz per request) is sent through ``track()`` with a real SQLite state store, as
the serving API does for every prediction naming an asset. Printed: the median time of
``track()`` at a few history sizes (normal, then in alarm with a RUL), and, in the same run,
the request's condition features computed the way they were before (each window alone, the
band-pass designed for every window: the filter cache cleared) against now (one batched pass,
cached design), with the ratio.

    .venv/bin/python -m bench.bench_serving_track      # ~1 min
"""

from __future__ import annotations

import importlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from fedpm.commands.simulate_history import simulate_history
from models.health_indicator import condition_feature_rows, condition_features
from serving.health import track
from serving.state import SqliteStateStore

FS = 12_000.0
WINDOWS, SAMPLES = 4, 2048
REQUESTS, ONSET = 1100, 900
MARKS = (50, 500, 950, 1050, 1099)
REPEATS = 15
_ENVELOPE = importlib.import_module("models.dsp.envelope")  # the module, not the function


def _per_window_uncached(windows: np.ndarray) -> np.ndarray:
    rows = []
    for x in windows:
        _ENVELOPE._butter_sos.cache_clear()  # the design made for every window, as before
        rows.append(condition_features(x, FS))
    return np.median(np.stack(rows), axis=0)


def _batched(windows: np.ndarray) -> np.ndarray:
    features, usable = condition_feature_rows(windows, FS)
    return np.median(features[usable], axis=0)


def _median_ms(fn: object, arg: np.ndarray) -> float:
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn(arg)  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    """Print track()'s cost by history size and the feature speed-up."""
    history = simulate_history(REQUESTS, ONSET, "outer_race", 0, record_samples=WINDOWS * SAMPLES)
    t0 = 1_700_000_000.0
    with tempfile.TemporaryDirectory(prefix="fedpm-bench-track-") as tmp:
        store = SqliteStateStore(Path(tmp) / "state.sqlite")
        print(f"track() per request ({WINDOWS} x {SAMPLES} samples), median of {REPEATS} repeats")
        print("| points | state | RUL h | track() ms |")
        print("|---|---|---|---|")
        for i, record in enumerate(history.records):
            windows = record.reshape(WINDOWS, 1, SAMPLES)
            answer = track(store, "t", "a", windows, FS, t0 + i * 3600.0, t0 + i * 3600.0)
            if i in MARKS:
                times = []
                for k in range(REPEATS):  # re-send the same measurement: same history size
                    t = time.perf_counter()
                    track(store, "t", "a", windows, FS, t0 + i * 3600.0, t0 + i * 3600.0 + k)
                    times.append(time.perf_counter() - t)
                rul = "-" if answer.rul_hours is None else f"{answer.rul_hours:.1f}"
                ms = statistics.median(times) * 1e3
                print(f"| {i + 1} | {answer.state} | {rul} | {ms:.2f} |")
        store.close()
    windows = history.records[-1].reshape(WINDOWS, SAMPLES).astype(np.float64)
    np.testing.assert_allclose(_batched(windows), _per_window_uncached(windows), rtol=1e-9)
    old, new = _median_ms(_per_window_uncached, windows), _median_ms(_batched, windows)
    print(
        f"request features: per window, designed each time {old:.2f} ms;"
        f" batched, cached design {new:.2f} ms; {old / new:.1f}x faster"
    )


if __name__ == "__main__":
    main()
