"""What one serving history point should be: one per request, one per window, or a whole record.

The serving API (`serving.health`) stores one condition-feature point per prediction request
for an asset. A request carries a few model windows (2,048 samples at 12 kHz, 0.17 s); an
offline record (`fedpm health`) is 1 s. Four ways to turn the same simulated run-to-failure
histories into a point series, each assessed as `serving.health` does (baseline of the first
20 records, 1 % false-alarm rate, persistence 3, failure threshold 1000 x the alarm threshold,
`models.rul.estimate_rul` from the alarm's run):

* ``record``: features of the whole 12,000-sample record (what ``fedpm health`` does);
* ``request``: median over 4 windows of 2,048 samples of each window's features, one point per
  record (what serving does);
* ``window``: one window of 2,048 samples per record;
* ``per-window``: every window a point of its own (4 per record, 0.17 s apart, 80 baseline
  points).

Histories: 60 hourly records, onset at 30, failure at 59; inner race, outer race and ball; 3
seeds; plant variability ``none`` and ``plant`` (load changes, noise drift, knocks). RUL error
over the last half of each degraded life, in hours (true RUL 0-14 h).

    .venv/bin/python -m bench.bench_serving_history_points      # ~30 s
"""

from __future__ import annotations

import time

import numpy as np

from fedpm.commands.simulate_history import VARIABILITY, simulate_history
from models.health_indicator import assess, condition_features
from models.rul import estimate_rul

W, FS, N, ONSET, PER_REQUEST = 2048, 12_000.0, 60, 30, 4
METHODS = ("record", "request", "window", "per-window")


def _score(
    t: np.ndarray, features: np.ndarray, n_base: int
) -> tuple[bool, float | None, list[float]]:
    res = assess(features, n_base, 0.01, 3)
    base, alarm = res.baseline, res.first_alarm
    false = alarm is not None and t[alarm] < ONSET
    errors: list[float] = []
    if alarm is not None and not false:
        for now in range(alarm, len(t)):
            if t[now] < (ONSET + N - 1) / 2:
                continue
            est = estimate_rul(
                t, res.indicator, alarm - 2, 1000 * base.threshold, base.typical, now=now
            )
            if est.rul is not None:
                errors.append(est.rul - (N - 1 - t[now]))
    lead = None if alarm is None or false else float(N - 1 - t[alarm])
    return false, lead, errors


def main() -> None:
    """Print false alarms, lead time and RUL error of each kind of point."""
    started = time.perf_counter()
    rows: dict[tuple[str, str], list[tuple[bool, float | None, list[float]]]] = {}
    for variability in ("none", "plant"):
        for mode in ("inner_race", "outer_race", "ball"):
            for seed in range(3):
                history = simulate_history(
                    N, ONSET, mode, seed, 12_000, variability=VARIABILITY[variability]
                )
                hours = np.arange(N, dtype=float)
                windows = [
                    [condition_features(x[j * W : (j + 1) * W], FS) for j in range(PER_REQUEST)]
                    for x in history.records
                ]
                series = {
                    "record": (
                        hours,
                        np.stack([condition_features(x, FS) for x in history.records]),
                        20,
                    ),
                    "request": (hours, np.stack([np.median(w, axis=0) for w in windows]), 20),
                    "window": (hours, np.stack([w[0] for w in windows]), 20),
                    "per-window": (
                        np.array(
                            [i + j * W / FS / 3600 for i in range(N) for j in range(PER_REQUEST)]
                        ),
                        np.stack([f for w in windows for f in w]),
                        20 * PER_REQUEST,
                    ),
                }
                for method, (t, features, n_base) in series.items():
                    rows.setdefault((method, variability), []).append(_score(t, features, n_base))
    print(
        "| point | plant | histories with a false alarm | mean lead (h) | RUL estimates"
        " | MAE (h) | bias (h) |"
    )
    print("|---|---|---|---|---|---|---|")
    for method in METHODS:
        for variability in ("none", "plant"):
            got = rows[(method, variability)]
            leads = [lead for _, lead, _ in got if lead is not None]
            errors = np.array([e for _, _, errs in got for e in errs])
            print(
                f"| {method} | {variability} | {sum(f for f, _, _ in got)}/{len(got)} |"
                f" {np.mean(leads):.1f} | {errors.size} | {np.abs(errors).mean():.2f} |"
                f" {errors.mean():+.2f} |"
            )
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
