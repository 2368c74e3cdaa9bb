"""``fedpm diagnose``: envelope-analysis verdict for every record of a manifest.

For each record (`models.datasets`), one channel is band-passed around its most impulsive
band (the kurtogram), demodulated, and each defect of the bearing is scored in the envelope
spectrum (`models.dsp.diagnosis`). The report gives per record the verdict, the defect line
behind it (expected and found frequency, score in dB above the local floor) and, where the
manifest has labels, whether the verdict matches (``normal`` counts as ``none``); then the
accuracy over the labelled records, overall and per label.

Records without a shaft speed cannot be diagnosed and are listed as skipped. Exit codes: 0 on
success, 2 on invalid arguments, 1 when the manifest or a record cannot be read or analysed.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Literal

from fedpm.commands.options import add_json, add_manifest

if TYPE_CHECKING:
    from models.bearing import BearingGeometry
    from models.datasets import RecordInfo
    from models.dsp.diagnosis import Diagnosis

NAME = "diagnose"
HELP = "envelope-analysis bearing diagnosis (inner/outer race, ball, cage, none) per record"

_LABELS = {
    "normal": "none",
    "none": "none",
    "inner_race": "inner_race",
    "outer_race": "outer_race",
    "ball": "ball",
    "cage": "cage",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``diagnose`` options to `parser`."""
    add_manifest(parser, "dataset manifest")
    parser.add_argument(
        "--bearing",
        required=True,
        help="bearing: a catalogue name (6205, 6203, ...) or 'n=9,d=0.3126,D=1.537,angle=0'",
    )
    parser.add_argument("--channel", default="de", help="channel to diagnose (default de)")
    parser.add_argument(
        "--band",
        choices=("kurtogram", "full"),
        default="kurtogram",
        help="demodulate the kurtogram's band (default) or the full band (the baseline)",
    )
    parser.add_argument(
        "--threshold-db",
        type=float,
        default=None,
        help="score in dB a defect needs to be called (default 12)",
    )
    add_json(parser)


def expected_verdict(fault_type: str) -> str | None:
    """Return the verdict a label calls for (``normal`` is ``none``), None if it is no label."""
    return _LABELS.get(fault_type.strip().lower())


def run(args: argparse.Namespace) -> int:
    """Diagnose every record; 0 on success, 2 on invalid arguments, 1 on bad data."""
    from models.bearing import get_bearing
    from models.datasets import load_manifest, read_record
    from models.dsp.diagnosis import DEFAULT_THRESHOLD_DB, diagnose
    from models.errors import FedPMModelsError, SignalError

    try:
        bearing = get_bearing(args.bearing)
    except SignalError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    threshold = DEFAULT_THRESHOLD_DB if args.threshold_db is None else args.threshold_db
    band: Literal["kurtogram"] | None = "kurtogram" if args.band == "kurtogram" else None
    try:
        infos = load_manifest(args.manifest)
    except FedPMModelsError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    rows: list[dict[str, Any]] = []
    failed = 0
    for info in infos:
        row = _row(info, args.channel)
        if info.rpm is None:
            row["status"] = "skipped: no rpm"
        else:
            try:
                record = read_record(info, channels=[args.channel])
                result = diagnose(
                    record.signals[args.channel],
                    record.sample_rate_hz,
                    info.rpm,
                    bearing,
                    band=band,
                    threshold_db=threshold,
                )
            except FedPMModelsError as exc:
                failed += 1
                row["status"] = f"error: {exc}"
            else:
                _fill(row, result)
        rows.append(row)
    summary = _summary(rows)
    _print_report(bearing, args, rows, summary)
    if args.json is not None:
        from dataclasses import asdict

        from fedpm.commands.output import write_json

        write_json(
            args.json,
            {
                "manifest": str(args.manifest),
                "bearing": asdict(bearing),
                "channel": args.channel,
                "band": args.band,
                "threshold_db": threshold,
                "records": rows,
                "accuracy": summary,
            },
        )
    return 1 if failed else 0


def _row(info: RecordInfo, channel: str) -> dict[str, Any]:
    return {
        "file": info.path.name,
        "label": info.fault_type,
        "expected": expected_verdict(info.fault_type),
        "rpm": info.rpm,
        "sample_rate_hz": info.sample_rate_hz,
        "channel": channel,
        "status": "ok",
        "verdict": None,
        "correct": None,
    }


def _fill(row: dict[str, Any], result: Diagnosis) -> None:
    best = max(result.evidence, key=lambda item: item.score_db)
    row.update(
        verdict=result.verdict,
        correct=None if row["expected"] is None else result.verdict == row["expected"],
        band_hz=list(result.band) if result.band is not None else None,
        best=best.as_dict(),
        evidence=[item.as_dict() for item in result.evidence],
    )


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    judged = [row for row in rows if row["correct"] is not None]
    per_label: dict[str, dict[str, int]] = {}
    for row in judged:
        counts = per_label.setdefault(row["expected"], {"correct": 0, "records": 0})
        counts["records"] += 1
        counts["correct"] += int(row["correct"])
    correct = sum(int(row["correct"]) for row in judged)
    return {
        "correct": correct,
        "labelled": len(judged),
        "fraction": correct / len(judged) if judged else None,
        "per_label": per_label,
    }


def _print_report(
    bearing: BearingGeometry,
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
) -> None:
    out = sys.stdout.write
    out(
        f"bearing {bearing.name}: {bearing.n_balls} balls, d={bearing.ball_diameter:g}, "
        f"D={bearing.pitch_diameter:g}, angle={bearing.contact_angle_deg:g} deg; "
        f"channel {args.channel}; band {args.band}\n"
    )
    header = f"{'record':<34} {'label':<11} {'verdict':<11} {'ok':<3} {'band [Hz]':<13}"
    out(f"{header} {'line':<11} {'expected':>9} {'found':>8} {'score':>7}\n")
    for row in rows:
        name = row["file"][:34]
        if row["verdict"] is None:
            out(f"{name:<34} {row['label']:<11} {row['status']}\n")
            continue
        ok = {True: "yes", False: "no", None: "-"}[row["correct"]]
        band = row["band_hz"]
        band_text = "full" if band is None else f"{band[0]:.0f}-{band[1]:.0f}"
        best = row["best"]
        out(
            f"{name:<34} {row['label']:<11} {row['verdict']:<11} {ok:<3} {band_text:<13} "
            f"{best['defect']:<11} {best['expected_hz']:>9.2f} {best['found_hz']:>8.2f} "
            f"{best['score_db']:>6.1f} dB\n"
        )
    if summary["labelled"]:
        per = ", ".join(
            f"{label} {c['correct']}/{c['records']}"
            for label, c in sorted(summary["per_label"].items())
        )
        out(
            f"accuracy: {summary['correct']}/{summary['labelled']} labelled records "
            f"({100.0 * summary['fraction']:.1f} %): {per}\n"
        )
    else:
        out("accuracy: no labelled records\n")
