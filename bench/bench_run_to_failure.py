"""Alarm lead time, false alarms and RUL error over simulated run-to-failure histories.

Histories (`fedpm.commands.simulate_history.simulate_history`): snapshot records of 1 s at
12 kHz, healthy up to an onset, then an exponentially growing defect that reaches severity 1
at the last record (the failure). Two plant scenarios: ``steady`` (sensor-noise drift and
occasional external knocks) and ``load`` (the same plus load changes between three levels,
which move the shaft harmonics, roughness and speed). Several seeds, fault modes and onsets.

Alarms (first ``--baseline`` records are the healthy baseline, the same false-alarm rate and
persistence for every method):

* FedPM: `models.health_indicator` (four features, shrunk Mahalanobis distance, gamma-fitted
  leave-one-out threshold);
* RMS threshold and kurtosis threshold: one-sided limit on one feature
  (`models.health_indicator.upper_limit`, Gaussian prediction bound from the same records).

False alarms: alarm events (the persistence rule re-arms below the threshold) before the onset,
per healthy monitored record. Lead time: failure record minus the first alarm at or after the
onset, in records and as a share of the degraded life.

RUL (FedPM indicator, `models.rul`, Wiener-process exponential model) at every record of the
last half of each degraded life, from the alarm's run on. Failure threshold either "fleet"
(leave-one-history-out: the median over the other histories of the indicator at failure over
their alarm threshold, times this history's alarm threshold) or "given" (this history's own
indicator at failure). Baseline RUL model: the same exponential fitted by ordinary least
squares with independent errors and a Bayesian interval from the regression's parameter
posterior. Mean absolute error in records and coverage of the 10-90 % interval (nominal 80 %).

    .venv/bin/python -m bench.bench_run_to_failure [--seeds 4] [--records 80] [--baseline 20]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field

import numpy as np

from fedpm.commands.simulate_history import VARIABILITY, PlantVariability, simulate_history
from models.health_indicator import alarm_indices, feature_matrix, fit_baseline, upper_limit
from models.rul import estimate_rul
from models.simulator import FaultMode

MODES: tuple[FaultMode, ...] = ("inner_race", "outer_race", "ball")
SCENARIOS: dict[str, PlantVariability] = {
    "steady": PlantVariability(noise_drift=0.05, shock_probability=0.03, shock_amplitude_g=0.5),
    "load": VARIABILITY["plant"],
}
FS = 12_000.0
RATE, PERSISTENCE = 0.01, 3
INTERVAL = (0.1, 0.9)


@dataclass
class History:
    scenario: str
    mode: FaultMode
    onset: int
    features: np.ndarray
    indicator: dict[str, np.ndarray] = field(default_factory=dict)
    threshold: dict[str, float] = field(default_factory=dict)
    healthy_level: float = 0.0


def build(seeds: int, n_records: int, baseline: int) -> list[History]:
    onsets = [round(n_records * f) for f in (0.45, 0.55, 0.7)]
    out = []
    for s_idx, (scenario, variability) in enumerate(SCENARIOS.items()):
        for seed in range(seeds):
            for m_idx, mode in enumerate(MODES):
                for o_idx, onset in enumerate(onsets):
                    key = 10_000 * s_idx + 100 * seed + 10 * m_idx + o_idx
                    h = simulate_history(n_records, onset, mode, key, variability=variability)
                    hist = History(scenario, mode, onset, feature_matrix(h.records, FS))
                    score(hist, baseline)
                    out.append(hist)
    return out


def score(h: History, n: int) -> None:
    f = h.features
    base = fit_baseline(f[:n], RATE)
    h.indicator["FedPM"], h.threshold["FedPM"] = base.indicator(f), base.threshold
    h.healthy_level = base.typical
    for name, column in (("RMS", 0), ("kurtosis", 1)):
        h.indicator[name] = f[:, column]
        h.threshold[name] = upper_limit(f[:n, column], RATE)


def alarm_table(
    histories: list[History], n: int, methods: list[str]
) -> dict[tuple[str, str], dict[str, float]]:
    rows = {}
    for scenario in SCENARIOS:
        subset = [h for h in histories if h.scenario == scenario]
        for method in methods:
            false_events = healthy = with_false = missed = 0
            lead, share = [], []
            for h in subset:
                alarms = alarm_indices(h.indicator[method], h.threshold[method], PERSISTENCE, n)
                before = [i for i in alarms if i < h.onset]
                false_events += len(before)
                with_false += bool(before)
                healthy += h.onset - n
                after = [i for i in alarms if i >= h.onset]
                last = len(h.features) - 1
                if after:
                    lead.append(last - after[0])
                    share.append((last - after[0]) / (last - h.onset))
                else:
                    missed += 1
            rows[scenario, method] = {
                "histories": len(subset),
                "false_per_100": 100 * false_events / healthy,
                "with_false": with_false,
                "lead_median": float(np.median(lead)) if lead else math.nan,
                "lead_mean": float(np.mean(lead)) if lead else math.nan,
                "share_median": float(np.median(share)) if share else math.nan,
                "missed": missed,
            }
    return rows


def ols_rul(
    t: np.ndarray,
    hi: np.ndarray,
    start: int,
    now: int,
    failure: float,
    phi: float,
    rng: np.random.Generator,
) -> tuple[float, float, float] | None:
    """Exponential fitted by OLS on log(HI - phi) with independent errors; posterior draws."""
    tt, y = t[start : now + 1], hi[start : now + 1]
    keep = y > phi
    if keep.sum() < 5:
        return None
    tt, y = tt[keep] - t[now], np.log(y[keep] - phi)
    x = np.column_stack([np.ones(tt.size), tt])
    xtx_inv = np.linalg.inv(x.T @ x)
    coef = xtx_inv @ x.T @ y
    dof = tt.size - 2
    s2 = float(np.sum((y - x @ coef) ** 2)) / dof
    sigma2 = s2 * dof / rng.chisquare(dof, 4000)
    ab = (
        coef
        + (rng.standard_normal((4000, 2)) @ np.linalg.cholesky(xtx_inv).T)
        * np.sqrt(sigma2)[:, None]
    )
    eps = np.sqrt(sigma2) * rng.standard_normal(4000)
    b = ab[:, 1]
    draws = np.where(
        b > 0, (math.log(failure - phi) - ab[:, 0] - eps) / np.where(b > 0, b, 1.0), 1e300
    )
    lo, mid, up = np.quantile(np.clip(draws, 0.0, 1e300), [INTERVAL[0], 0.5, INTERVAL[1]])
    return (float(mid), float(lo), float(up)) if mid < 1e299 else None


def rul_table(histories: list[History], n: int) -> dict[tuple[str, str, str], dict[str, float]]:
    rows = {}
    for scenario in SCENARIOS:
        subset = [h for h in histories if h.scenario == scenario]
        ratios = [h.indicator["FedPM"][-1] / h.threshold["FedPM"] for h in subset]
        for source in ("fleet", "given"):
            for model in ("Wiener (FedPM)", "OLS, independent errors"):
                errors, covered, widths, bias, truths = [], [], [], [], []
                points = estimated = 0
                for j, h in enumerate(subset):
                    hi, th = h.indicator["FedPM"], h.threshold["FedPM"]
                    last = len(hi) - 1
                    alarms = [i for i in alarm_indices(hi, th, PERSISTENCE, n) if i >= h.onset]
                    if source == "fleet":
                        failure = float(np.median(ratios[:j] + ratios[j + 1 :])) * th
                    else:
                        failure = float(hi[-1])
                    t = np.arange(len(hi), dtype=np.float64)
                    rng = np.random.default_rng(j)
                    for now in range(h.onset + math.ceil((last - h.onset) / 2), last):
                        points += 1
                        if not alarms or now < alarms[0]:
                            continue
                        start = alarms[0] - PERSISTENCE + 1
                        if model.startswith("Wiener"):
                            est = estimate_rul(
                                t,
                                hi,
                                start,
                                failure,
                                h.healthy_level,
                                now=now,
                                interval=INTERVAL,
                                seed=j,
                            )
                            if est.rul is None or est.lower is None or est.upper is None:
                                continue
                            mid, lo, up = est.rul, est.lower, est.upper
                        else:
                            got = ols_rul(t, hi, start, now, failure, h.healthy_level, rng)
                            if got is None:
                                continue
                            mid, lo, up = got
                        estimated += 1
                        true = last - now
                        truths.append(true)
                        errors.append(abs(mid - true))
                        bias.append(mid - true)
                        covered.append(lo <= true <= up)
                        widths.append(min(up, 1e6) - lo)
                rows[scenario, source, model] = {
                    "points": points,
                    "estimated": estimated,
                    "true": float(np.mean(truths)),
                    "mae": float(np.mean(errors)),
                    "bias": float(np.mean(bias)),
                    "coverage": float(np.mean(covered)),
                    "width": float(np.median(widths)),
                    "fleet_factor": float(np.median(ratios)),
                }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--records", type=int, default=80)
    parser.add_argument("--baseline", type=int, default=20)
    args = parser.parse_args()
    t0 = time.perf_counter()
    histories = build(args.seeds, args.records, args.baseline)
    t1 = time.perf_counter()
    print(
        f"{len(histories)} histories x {args.records} records of 1 s at 12 kHz "
        f"({len(MODES)} modes, 3 onsets, {args.seeds} seeds, 2 scenarios); baseline "
        f"{args.baseline} records, false-alarm rate {RATE}, persistence {PERSISTENCE}; "
        f"simulation + features {t1 - t0:.0f} s"
    )
    methods = ["FedPM", "RMS", "kurtosis"]
    alarms = alarm_table(histories, args.baseline, methods)
    print("\nAlarms (lead times in records before the failure record)")
    print(
        f"{'scenario':9} {'method':9} {'false/100 healthy':>17} {'hist w/ false':>13} "
        f"{'lead median':>11} {'lead mean':>9} {'of degraded life':>16} {'missed':>6}"
    )
    for (scenario, method), r in alarms.items():
        print(
            f"{scenario:9} {method:9} {r['false_per_100']:>17.2f} "
            f"{r['with_false']:>7}/{r['histories']:<5} {r['lead_median']:>11.1f} "
            f"{r['lead_mean']:>9.1f} {100 * r['share_median']:>15.0f}% {r['missed']:>6}"
        )
    print("\nRatios FedPM / baseline (mean lead time; false alarms per healthy record)")
    for scenario in SCENARIOS:
        ours = alarms[scenario, "FedPM"]
        for other in methods[1:]:
            theirs = alarms[scenario, other]
            lead = ours["lead_mean"] / theirs["lead_mean"]
            if theirs["false_per_100"] == 0:
                fa = f"{ours['false_per_100']:.2f} vs 0 per 100"
            else:
                fa = f"{ours['false_per_100'] / theirs['false_per_100']:.2f}x"
            print(f"  {scenario:7} vs {other:9} lead {lead:.2f}x, false alarms {fa}")
    ruls = rul_table(histories, args.baseline)
    print("\nRUL over the last half of each degraded life, in records")
    print("(interval 10-90 %, nominal coverage 80 %)")
    print(
        f"{'scenario':9} {'failure':8} {'model':24} {'estimated':>11} {'true':>5} {'MAE':>6} "
        f"{'bias':>6} {'coverage':>8} {'width':>6}"
    )
    for (scenario, source, model), r in ruls.items():
        print(
            f"{scenario:9} {source:8} {model:24} {r['estimated']:>5}/{r['points']:<5} "
            f"{r['true']:>5.1f} {r['mae']:>6.2f} {r['bias']:>6.2f} {100 * r['coverage']:>7.0f}% "
            f"{r['width']:>6.1f}"
        )
    print("true: mean true RUL of the estimated points; width: median interval width")
    for scenario in SCENARIOS:
        factor = ruls[scenario, "fleet", "Wiener (FedPM)"]["fleet_factor"]
        print(f"{scenario}: median indicator at failure = {factor:.0f} x the alarm threshold")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
