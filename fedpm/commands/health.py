"""``fedpm health``: health indicator, first alarm and remaining useful life of one asset.

Reads a time-ordered manifest (`models.datasets.load_manifest`), computes each record's
condition features, learns the healthy baseline from the first ``--baseline`` records
(`models.health_indicator`), and prints per record its time, indicator and state, the first
alarm and, from then on, the remaining useful life with its interval (`models.rul`). Times are
hours since the first record when every row has a ``timestamp``, else record numbers.

Without ``--failure-threshold`` the failure threshold is derived as ``--failure-factor`` (1000)
times the alarm threshold: a level relative to the asset's own healthy spread, not a physical
failure. On simulated run-to-failure histories the indicator at failure is a median ~1,500
times the alarm threshold (``bench/bench_run_to_failure.py``), so 1000 errs early; set the
threshold from past failures of the same kind of asset where you have them.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpm.commands.options import add_json, add_manifest

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from models.datasets import RecordInfo
    from models.health_indicator import HealthAssessment
    from models.rul import RulEstimate

NAME = "health"
HELP = "health indicator, first alarm and remaining useful life of an asset's record history"

DEFAULT_FAILURE_FACTOR = 1000.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``health`` options to `parser`."""
    add_manifest(parser, "time-ordered manifest of one asset's records")
    parser.add_argument(
        "--baseline", type=int, required=True, help="first N records are healthy (N >= 8)"
    )
    parser.add_argument("--channel", default="de", help="channel to assess (default de)")
    parser.add_argument(
        "--false-alarm-rate",
        type=float,
        default=0.01,
        help="per-record rate a healthy record exceeds the threshold (default 0.01)",
    )
    parser.add_argument(
        "--persistence",
        type=int,
        default=3,
        help="consecutive records above the threshold before an alarm (default 3)",
    )
    parser.add_argument(
        "--failure-threshold",
        type=float,
        default=None,
        help="indicator value deemed failure (default: --failure-factor x alarm threshold)",
    )
    parser.add_argument(
        "--failure-factor",
        type=float,
        default=DEFAULT_FAILURE_FACTOR,
        help=f"derived failure threshold / alarm threshold (default {DEFAULT_FAILURE_FACTOR:g})",
    )
    add_json(parser)
    parser.add_argument("--png", type=Path, default=None, help="plot the trend to this PNG")


def _usage_error(args: argparse.Namespace) -> str | None:
    if args.baseline < 8:
        return "--baseline must be at least 8 records"
    if not 0.0 < args.false_alarm_rate <= 0.5:
        return "--false-alarm-rate must be in (0, 0.5]"
    if args.persistence < 1:
        return "--persistence must be at least 1"
    threshold = args.failure_threshold
    if threshold is not None and not (math.isfinite(threshold) and threshold > 0):
        return "--failure-threshold must be positive"
    if not (math.isfinite(args.failure_factor) and args.failure_factor > 1.0):
        return "--failure-factor must be above 1"
    return None


def _times(infos: list[RecordInfo]) -> tuple[npt.NDArray[np.float64], str]:
    """Hours since the first record from the timestamps, or record numbers without them."""
    import numpy as np

    stamps = [info.timestamp for info in infos]
    if any(stamp is None for stamp in stamps):
        return np.arange(len(infos), dtype=np.float64), "records"
    seconds = np.array([_seconds(str(stamp)) for stamp in stamps])
    return (seconds - seconds[0]) / 3600.0, "h"


def _seconds(stamp: str) -> float:
    """UNIX seconds of a numeric or ISO 8601 timestamp (naive means UTC), as the manifest."""
    from datetime import UTC, datetime

    try:
        return float(stamp)
    except ValueError:
        moment = datetime.fromisoformat(stamp)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def run(args: argparse.Namespace) -> int:
    """Assess the manifest's history; 0 on success, 2 on invalid arguments, 1 on bad data."""
    import numpy as np

    from models.datasets import load_manifest, read_record
    from models.errors import FedPMModelsError
    from models.health_indicator import assess, condition_features
    from models.rul import estimate_rul

    problem = _usage_error(args)
    if problem is not None:
        sys.stderr.write(f"error: {problem}\n")
        return 2
    try:
        infos = load_manifest(args.manifest)
        if len(infos) <= args.baseline:
            sys.stderr.write(f"error: {len(infos)} records leave none after --baseline\n")
            return 2
        times, unit = _times(infos)
        if np.any(np.diff(times) <= 0):
            sys.stderr.write("error: timestamps must be distinct and increasing\n")
            return 1
        rows = []
        for info in infos:
            record = read_record(info, channels=[args.channel])
            rows.append(condition_features(record.signals[args.channel], record.sample_rate_hz))
        result = assess(np.stack(rows), args.baseline, args.false_alarm_rate, args.persistence)
    except FedPMModelsError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    baseline = result.baseline
    given = args.failure_threshold is not None
    failure = args.failure_threshold if given else args.failure_factor * baseline.threshold
    if failure <= baseline.typical:
        sys.stderr.write(
            f"error: --failure-threshold must exceed the healthy level {baseline.typical:.3g}\n"
        )
        return 2
    estimates: dict[int, RulEstimate] = {}
    if result.first_alarm is not None:
        start = result.first_alarm - result.persistence + 1  # the run that raised the alarm
        for now in range(result.first_alarm, len(infos)):
            estimates[now] = estimate_rul(
                times, result.indicator, start, failure, baseline.typical, now=now
            )
    source = "given" if given else f"derived: {args.failure_factor:g} x alarm threshold"
    _print_report(infos, times, unit, result, estimates, failure, source)
    if args.json is not None:
        from fedpm.commands.output import write_json

        write_json(args.json, _report(args, infos, times, unit, result, estimates, failure, source))
    if args.png is not None:
        _plot(args.png, times, unit, result, estimates, failure)
    return 0


def _rul_text(est: RulEstimate, unit: str) -> str:
    if est.rul is None:
        return f"RUL n/a ({est.reason})"
    low, high = (round(q * 100) for q in est.interval)
    return f"RUL {est.rul:.1f} {unit} [{low}-{high} %: {est.lower:.1f} .. {est.upper:.1f}]"


def _print_report(
    infos: list[RecordInfo],
    times: npt.NDArray[np.float64],
    unit: str,
    result: HealthAssessment,
    estimates: dict[int, RulEstimate],
    failure: float,
    source: str,
) -> None:
    out = sys.stdout.write
    base = result.baseline
    out(
        f"baseline: {base.loo_indicator.size} records (excluded as transients: "
        f"{list(base.excluded) or 'none'}), healthy level {base.typical:.2f}, alarm threshold "
        f"{base.threshold:.2f} at {base.false_alarm_rate:g} false alarms per record, "
        f"persistence {result.persistence}; failure threshold {failure:.4g} ({source})\n"
    )
    out(f"{'#':>4} {'time [' + unit + ']':>12} {'indicator':>11}  state     RUL\n")
    for i in range(len(infos)):
        rul = _rul_text(estimates[i], unit) if i in estimates else ""
        line = f"{i:>4} {times[i]:>12.2f} {result.indicator[i]:>11.2f}  {result.states[i]:<9} {rul}"
        out(line.rstrip() + "\n")
    if result.first_alarm is None:
        out("first alarm: none\n")
    else:
        i = result.first_alarm
        when = f" at {times[i]:.2f} {unit} ({infos[i].timestamp})" if unit == "h" else ""
        out(f"first alarm: record {i}{when}\n")
        out(f"latest: {_rul_text(estimates[len(infos) - 1], unit)}\n")


def _rul_json(est: RulEstimate) -> dict[str, Any]:
    return {
        "time": est.time,
        "rul": est.rul,
        "lower": est.lower,
        "upper": est.upper,
        "interval": list(est.interval),
        "failure_time": est.failure_time,
        "points": est.n_points,
        "reason": est.reason,
        "growth_rate": None if est.fit is None else est.fit.beta,
        "diffusion": None if est.fit is None else est.fit.sigma,
    }


def _report(
    args: argparse.Namespace,
    infos: list[RecordInfo],
    times: npt.NDArray[np.float64],
    unit: str,
    result: HealthAssessment,
    estimates: dict[int, RulEstimate],
    failure: float,
    source: str,
) -> dict[str, Any]:
    from models.health_indicator import FEATURE_NAMES

    base = result.baseline
    alarm = result.first_alarm
    records = [
        {
            "index": i,
            "file": info.path.name,
            "timestamp": info.timestamp,
            "time": float(times[i]),
            "features": [float(v) for v in result.features[i]],
            "indicator": float(result.indicator[i]),
            "state": result.states[i],
            "rul": _rul_json(estimates[i]) if i in estimates else None,
        }
        for i, info in enumerate(infos)
    ]
    last = estimates.get(len(infos) - 1)
    return {
        "manifest": str(args.manifest),
        "channel": args.channel,
        "time_unit": unit,
        "feature_names": list(FEATURE_NAMES),
        "baseline": {
            "records": args.baseline,
            "excluded_transients": list(base.excluded),
            "healthy_level": base.typical,
            "shrinkage": base.shrinkage,
            "center": [float(v) for v in base.center],
            "scale": [float(v) for v in base.scale],
        },
        "false_alarm_rate": base.false_alarm_rate,
        "persistence": result.persistence,
        "alarm_threshold": base.threshold,
        "failure_threshold": failure,
        "failure_threshold_source": source,
        "first_alarm": None
        if alarm is None
        else {"index": alarm, "time": float(times[alarm]), "timestamp": infos[alarm].timestamp},
        "rul": None if last is None else _rul_json(last),
        "records": records,
    }


def _plot(
    path: Path,
    times: npt.NDArray[np.float64],
    unit: str,
    result: HealthAssessment,
    estimates: dict[int, RulEstimate],
    failure: float,
) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    base = result.baseline
    fig = Figure(figsize=(9, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    n_base = len(result.states) - sum(s != "baseline" for s in result.states)
    top.axvspan(times[0], times[n_base - 1], color="0.9", label="baseline")
    top.semilogy(times, np.maximum(result.indicator, 1e-3), ".-", color="C0", label="indicator")
    top.axhline(base.threshold, color="C1", ls="--", label=f"alarm {base.threshold:.2f}")
    top.axhline(failure, color="C3", ls="--", label=f"failure {failure:.3g}")
    fitted = [e for e in estimates.values() if e.fit is not None and e.rul is not None]
    latest = fitted[-1] if fitted else None  # the last trend fitted before failure
    if result.first_alarm is not None:
        top.axvline(times[result.first_alarm], color="C1", lw=1, label="first alarm")
    if latest is not None and latest.fit is not None and latest.rul is not None:
        end = latest.time + latest.rul
        path_t = np.linspace(times[result.first_alarm or 0], end, 50)
        top.semilogy(path_t, latest.fit.predict(path_t), color="C3", lw=1, label="fitted trend")
        upper = latest.upper if latest.upper is not None and math.isfinite(latest.upper) else None
        if latest.lower is not None and upper is not None:
            top.axvspan(latest.time + latest.lower, latest.time + upper, color="C3", alpha=0.15)
        top.axvline(
            end, color="C3", lw=1, label=f"predicted failure (as of {latest.time:.4g} {unit})"
        )
    top.set_ylabel("health indicator")
    top.legend(loc="upper left", fontsize="small")
    top.set_title("Health indicator and remaining useful life")
    shown = [e for e in estimates.values() if e.rul is not None]
    if shown:
        t = np.array([e.time for e in shown])
        mid = np.array([e.rul for e in shown], dtype=np.float64)
        lo = np.array([e.lower for e in shown], dtype=np.float64)
        hi = np.array([e.upper for e in shown], dtype=np.float64)
        hi = np.where(np.isfinite(hi), hi, np.nan)
        bottom.fill_between(t, lo, hi, color="C0", alpha=0.2, label="interval")
        bottom.plot(t, mid, "o-", color="C0", ms=3, label="RUL")
        bottom.legend(loc="upper right", fontsize="small")
    else:
        bottom.text(
            0.5, 0.5, "no RUL estimate", ha="center", va="center", transform=bottom.transAxes
        )
    bottom.set_ylabel(f"RUL [{unit}]")
    bottom.set_xlabel(f"time [{unit}]")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
