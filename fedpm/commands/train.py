r"""``fedpm train``: centralised training on a dataset manifest, published to a model registry.

Records come from a manifest (:mod:`models.datasets`), are resampled to the model rate and cut
into windows (:mod:`models.dataset_windows`) with a split that does not leak:

- ``--split time`` (default): each record trains on its first ``--train-fraction`` and is tested
  on the rest; no window crosses the cut.
- ``--split record``: whole records. ``--test-filter`` names the test records (e.g.
  ``motor_load_hp=3`` for cross-load); without it, the last record of each class is held out.
  A class with a single training record is split in time so that it is still tested (CWRU's
  only normal record); the summary lists such records.

The exported ONNX model (the file that is published) is scored on the test windows: window
accuracy, record accuracy by majority vote, and the confusion matrix. The registry card carries
``provenance.source = "centralised"``, the metrics, and the dataset, split and filters used.

    fedpm train --manifest ../shared/datasets/cwru-12k-drive-end/MANIFEST.tsv \
        --labels fault_size --filter motor_load_hp=0 \
        --filter 'or_position!=@3:00,@12:00' --filter 'fault_diameter_in!=0.028'
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedpm.commands.options import add_filter, add_json, add_manifest

NAME = "train"
HELP = "train a model centrally on a dataset manifest, score it, publish it to a registry"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` options to ``parser``."""
    data = parser.add_argument_group("data")
    add_manifest(data, "dataset manifest")
    add_filter(data)
    data.add_argument(
        "--test-filter",
        action="append",
        default=[],
        metavar="COLUMN=V[,V]",
        help="test on these whole records and train on the other filtered ones (record split)",
    )
    data.add_argument(
        "--split",
        choices=("time", "record"),
        default=None,
        help="time: first part of each record trains (default); record: whole records",
    )
    data.add_argument(
        "--labels",
        choices=("fault", "fault_size"),
        default="fault",
        help="fault: normal/inner_race/...; fault_size: inner_race@0.007 ... (default fault)",
    )
    data.add_argument("--channels", default="de", help="record channels to use (default de)")
    data.add_argument("--sample-rate-hz", type=float, default=12_000.0, help="model rate")
    data.add_argument("--window-samples", type=int, default=2048, help="window length")
    data.add_argument(
        "--train-fraction", type=float, default=0.7, help="time split: share that trains"
    )
    data.add_argument(
        "--train-hop", type=int, default=512, help="hop between training windows (default 512)"
    )
    data.add_argument(
        "--test-hop", type=int, default=None, help="hop between test windows (default: window)"
    )
    data.add_argument(
        "--speed-augment",
        default="",
        metavar="F[,F]",
        help="also train on each training part played F times slower (e.g. 0.97,1.03): "
        "defect frequencies shift as when the load changes the speed (default: none)",
    )
    fit = parser.add_argument_group("training")
    fit.add_argument("--epochs", type=int, default=8, help="epochs (default 8)")
    fit.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    fit.add_argument("--learning-rate", type=float, default=1e-3, help="initial learning rate")
    fit.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine")
    fit.add_argument(
        "--adapt-norm",
        action="store_true",
        help="estimate BatchNorm statistics on the unlabelled test windows (AdaBN; transductive)",
    )
    fit.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fit.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default 0: torch's choice)"
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--registry", type=Path, default=Path("var/registry"), help="registry to publish to"
    )
    out.add_argument("--no-publish", action="store_true", help="score only, publish nothing")
    add_json(out)


def _split_kind(args: argparse.Namespace) -> str:
    if args.test_filter and args.split == "time":
        raise ValueError("--test-filter holds out whole records: use it with --split record")
    return "record" if args.test_filter else (args.split or "time")


def _speed_factors(text: str) -> tuple[float, ...]:
    try:
        extra = [float(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise ValueError(f"--speed-augment takes numbers like 0.97,1.03, got {text!r}") from None
    return tuple(dict.fromkeys([1.0, *extra]))


def run(args: argparse.Namespace) -> int:
    """Train, score, publish; return 0, or 2 on invalid input."""
    from models.errors import FedPMModelsError

    try:
        result = _run(args)
    except (FedPMModelsError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if args.json is not None:
        from fedpm.commands.output import write_json

        write_json(args.json, result)
    return 0


def _run(args: argparse.Namespace) -> dict[str, Any]:
    import time
    import uuid

    import torch

    from fedpm.commands.evaluate import format_report
    from models import dataset_windows as dw
    from models.centralised import CentralisedConfig, train_centralised
    from models.datasets import load_manifest
    from models.metadata import Provenance
    from models.onnx_export import export_onnx, metadata_for
    from models.registry import FileRegistry
    from models.runtime import OnnxClassifier
    from models.scoring import score
    from models.training import evaluate

    split = _split_kind(args)
    infos = load_manifest(args.manifest)
    filters = [dw.RecordFilter.parse(f) for f in args.filter]
    test_filters = [dw.RecordFilter.parse(f) for f in args.test_filter]
    chosen = dw.select(infos, filters)
    if not chosen:
        raise ValueError(f"no record of {args.manifest} passes the filters")
    if split == "time":
        plan = dw.plan_time_split(chosen)
    else:
        test = dw.select(chosen, test_filters) if test_filters else None
        plan = dw.plan_record_split(chosen, test, scheme=args.labels)
    options = dw.WindowOptions(
        sample_rate_hz=args.sample_rate_hz,
        window_samples=args.window_samples,
        channels=tuple(c.strip() for c in args.channels.split(",") if c.strip()),
        train_fraction=args.train_fraction,
        train_hop=args.train_hop,
        test_hop=args.test_hop,
        speed_factors=_speed_factors(args.speed_augment),
    )
    train_set, test_set = dw.build_windows(plan, options, scheme=args.labels)
    if not len(test_set):
        raise ValueError("the split leaves no test windows (records too short for the window?)")
    config = CentralisedConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_schedule=args.lr_schedule,
        seed=args.seed,
        adapt_norm=args.adapt_norm,
    )
    started = time.monotonic()
    previous_threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        net, fit = train_centralised(train_set, config, test_set)
    finally:
        torch.set_num_threads(previous_threads)
    train_s = time.monotonic() - started
    loss = evaluate(net, test_set.x, test_set.y, train_set.class_names).loss

    # Score the exported file itself: what is published is what was measured.
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    run_id = f"centralised-{stamp}-{uuid.uuid4().hex[:6]}"
    dataset = {
        "manifest": str(Path(args.manifest).resolve()),
        "split": split,
        "labels": args.labels,
        "filters": [str(f) for f in filters],
        "test_filters": [str(f) for f in test_filters],
        "channels": list(options.channels),
        "train_fraction": options.train_fraction,
        "speed_factors": list(options.speed_factors),
        "adapt_norm": config.adapt_norm,
        "time_split_records": [i.name for i in plan.records("split")] if split == "record" else [],
    }
    provisional = metadata_for(
        net,
        sample_rate_hz=options.sample_rate_hz,
        class_names=train_set.class_names,
        provenance=Provenance.model_validate(
            {"source": "centralised", "run_id": run_id, "dataset": dataset}
        ),
    )
    classifier = OnnxClassifier(
        export_onnx(net, provisional), intra_op_threads=max(args.threads, 1)
    )
    probs = classifier.predict(test_set.x).probabilities
    report = score(
        probs,
        test_set.record,
        [(i.name, dw.class_label(i, args.labels)) for i in test_set.records],
        train_set.class_names,
    )
    metrics = {
        "test-accuracy": report.window_accuracy,
        "test-record-accuracy": report.record_accuracy,
        "test-loss": loss,
        "train-loss": fit.loss,
        "train-accuracy": fit.accuracy,
        "train-windows": float(len(train_set)),
        "test-windows": float(len(test_set)),
    }
    metadata = provisional.with_provenance(metrics=metrics)
    model_bytes = export_onnx(net, metadata)
    card = None
    if not args.no_publish:
        card = FileRegistry(args.registry).publish(
            model_bytes, metadata, run_id=run_id, metrics=metrics
        )

    tested = [r for r in report.records if r.windows]
    lines = [
        f"records: {len(plan.records('train')) + len(plan.records('split'))} train "
        f"({len(train_set)} windows), {len(tested)} test ({len(test_set)} windows); "
        f"split {split}, labels {args.labels}, {len(train_set.class_names)} classes",
    ]
    if split == "record" and plan.records("split"):
        names = ", ".join(i.name for i in plan.records("split"))
        lines.append(f"split in time (only record of its class): {names}")
    untested = set(train_set.class_names) - {r.true_class for r in tested}
    if untested:
        lines.append(f"classes without test windows: {', '.join(sorted(untested))}")
    lines.append(
        f"trained {config.epochs} epochs in {train_s:.0f} s: train loss {fit.loss:.4f}, "
        f"test loss {loss:.4f}"
        + (" (BatchNorm adapted to the test windows)" if config.adapt_norm else "")
    )
    lines.append(format_report(report))
    if card is not None:
        lines.append(f"published {card.label} to {args.registry} ({card.sha256[:12]}…)")
    sys.stdout.write("\n".join(lines) + "\n")
    return {
        "run_id": run_id,
        "version": None if card is None else card.version,
        "registry": None if card is None else str(args.registry),
        "dataset": dataset,
        "class_names": list(train_set.class_names),
        "metrics": metrics,
        "train_seconds": train_s,
        "report": report.to_dict(),
    }
