"""``fedpm eval``: classify every record of a manifest with a model; confusion matrix and PNG.

The model is an ONNX file or a registry folder (its newest version that verifies, or
``--version``). Each record is resampled to the model's rate and cut into windows; reported are
window accuracy, record accuracy by majority vote, per-class accuracy and the confusion matrix
(text, ``--json``, ``--png``). Records of a class the model does not know appear as extra rows
and count in neither accuracy.

To score only the part of each record that ``fedpm train --split time`` held out, pass
``--start-fraction`` equal to its ``--train-fraction`` (0.7); the default scores whole records,
which overlaps the training data of a time-split model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpm.commands.options import add_filter, add_json, add_manifest, add_model

if TYPE_CHECKING:
    from models.metadata import ModelMetadata
    from models.scoring import ClassificationReport

NAME = "eval"
HELP = "score a model on every record of a manifest (accuracy, confusion matrix, PNG)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``eval`` options to ``parser``."""
    add_model(parser, "model.onnx")
    add_manifest(parser, "dataset manifest")
    add_filter(parser)
    parser.add_argument(
        "--start-fraction",
        type=float,
        default=0.0,
        help="score only windows after this fraction of each record (default 0: all)",
    )
    parser.add_argument(
        "--hop", type=int, default=None, help="hop between windows (default: window)"
    )
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads (default 1)")
    add_json(parser)
    parser.add_argument("--png", type=Path, default=None, help="draw the confusion matrix here")


def load_model(path: Path, version: int | None = None) -> tuple[bytes, str]:
    """(model bytes, a label for reports) from a model file or a registry folder.

    A registry gives its newest version that verifies, or ``version``.

    Raises
    ------
    ValueError
        Nothing at ``path``.
    models.errors.FedPMModelsError
        The registry has no usable version.
    """
    from models.registry import FileRegistry

    if not path.exists():
        raise ValueError(f"no model at {path}: give a model.onnx file or a registry folder")
    if not path.is_dir():
        return path.read_bytes(), str(path)
    registry = FileRegistry(path)
    card, data = registry.latest_valid() if version is None else registry.load_verified(version)
    return data, f"{path} {card.label}"


def model_channels(meta: ModelMetadata, channels: str | None) -> tuple[str, ...]:
    """Record channels fed to a model: ``channels`` ("de,fe"), else those it was trained on.

    Raises
    ------
    ValueError
        The count does not match the model's input channels.
    """
    trained_on = (meta.provenance.model_extra or {}).get("dataset", {})
    names = tuple(
        c.strip()
        for c in (channels or ",".join(trained_on.get("channels", ["de"]))).split(",")
        if c.strip()
    )
    if len(names) != meta.channels:
        raise ValueError(f"the model takes {meta.channels} channel(s), --channels gives {names}")
    return names


def format_report(report: ClassificationReport) -> str:
    """Accuracies and the confusion matrix as text (rows true, columns predicted)."""
    names = report.class_names
    width = max(len(n) for n in report.true_classes) + 4
    cell = max(5, len(str(int(report.matrix.max(initial=0)))) + 2)
    voted = [r for r in report.records if r.windows and r.true_class in names]
    lines = [
        f"window accuracy {report.window_accuracy:.2%} ({report.scored_windows} windows); "
        f"record accuracy {report.record_accuracy:.2%} "
        f"({sum(r.voted_class == r.true_class for r in voted)}/{len(voted)} by majority vote)",
        "confusion (rows: true class, columns: predicted class)",
        " " * width + "".join(f"{j:>{cell}}" for j in range(len(names))) + "   accuracy",
    ]
    per_class = report.per_class_accuracy()
    for i, true_name in enumerate(report.true_classes):
        label = f"{i:>2} {true_name}" if i < len(names) else f" ? {true_name}"
        acc = per_class.get(true_name)
        tail = (
            f"   {acc:.2%}"
            if acc is not None
            else ("   (not a model class)" if i >= len(names) else "")
        )
        row = "".join(f"{int(v):>{cell}}" for v in report.matrix[i])
        lines.append(f"{label:<{width}}{row}{tail}")
    wrong = [r for r in voted if r.voted_class != r.true_class]
    for r in wrong:
        lines.append(f"misclassified record {r.name}: {r.true_class} voted {r.voted_class}")
    return "\n".join(lines)


def plot_confusion(report: ClassificationReport, path: Path, title: str = "") -> None:
    """Draw the confusion matrix (colour: share of the row; text: counts) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = report.matrix.astype(float)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    size = 2.5 + 0.55 * max(len(report.class_names), len(report.true_classes))
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    try:
        image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(len(report.class_names)), report.class_names, rotation=45, ha="right")
        ax.set_yticks(range(len(report.true_classes)), report.true_classes)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        for (i, j), value in np.ndenumerate(report.matrix):
            if value:
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, str(value), ha="center", va="center", color=colour, fontsize=8)
        ax.set_title(
            title
            or f"window accuracy {report.window_accuracy:.2%}, "
            f"record accuracy {report.record_accuracy:.2%}",
            fontsize=10,
        )
        fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Score the model; return 0, or 2 on invalid input."""
    from models.errors import FedPMModelsError

    try:
        result, report, title = _run(args)
    except (FedPMModelsError, ValueError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if args.json is not None:
        from fedpm.commands.output import write_json

        write_json(args.json, result)
    if args.png is not None:
        plot_confusion(report, args.png, title)
    return 0


def _run(args: argparse.Namespace) -> tuple[dict[str, Any], ClassificationReport, str]:
    import numpy as np

    from models import dataset_windows as dw
    from models.datasets import load_manifest, read_record
    from models.runtime import OnnxClassifier
    from models.scoring import score

    if not 0.0 <= args.start_fraction < 1.0:
        raise ValueError("--start-fraction must be in [0, 1)")
    data, source = load_model(args.model, args.version)
    classifier = OnnxClassifier(data, intra_op_threads=args.threads)
    meta = classifier.metadata
    channels = model_channels(meta, args.channels)
    scheme: dw.LabelScheme = (
        "fault_size" if any("@" in name for name in meta.class_names) else "fault"
    )
    infos = dw.select(load_manifest(args.manifest), [dw.RecordFilter.parse(f) for f in args.filter])
    if not infos:
        raise ValueError(f"no record of {args.manifest} passes the filters")
    probs, ids = [np.zeros((0, len(meta.class_names)), np.float32)], [np.zeros(0, np.int64)]
    for index, info in enumerate(infos):
        record = read_record(info, channels=channels)  # cut at the file's rate, as train does
        start = int(record.n_samples * args.start_fraction)
        x, _ = dw.record_windows(
            record, channels, meta.window_samples, args.hop, start, None, meta.sample_rate_hz
        )
        if len(x):
            probs.append(classifier.predict(x).probabilities)
            ids.append(np.full(len(x), index, np.int64))
    report = score(
        np.concatenate(probs),
        np.concatenate(ids),
        [(i.name, dw.class_label(i, scheme)) for i in infos],
        meta.class_names,
    )
    empty = [r.name for r in report.records if not r.windows]
    header = (
        f"model {source} ({len(meta.class_names)} classes, {meta.window_samples} samples at "
        f"{meta.sample_rate_hz:g} Hz) on {len(infos)} records of {args.manifest}"
        + (
            f", windows after {args.start_fraction:.0%} of each record"
            if args.start_fraction
            else ""
        )
    )
    text = [header, format_report(report)]
    if empty:
        text.append(f"records too short for one window: {', '.join(empty)}")
    sys.stdout.write("\n".join(text) + "\n")
    result = {
        "model": source,
        "manifest": str(args.manifest),
        "start_fraction": args.start_fraction,
        "channels": list(channels),
        "class_names": list(meta.class_names),
        **report.to_dict(),
    }
    title = (
        f"{Path(source).name}: window accuracy {report.window_accuracy:.2%}, "
        f"record accuracy {report.record_accuracy:.2%}"
    )
    return result, report, title
