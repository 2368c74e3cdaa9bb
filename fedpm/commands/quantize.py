"""``fedpm quantize``: an edge copy of a model (int8, or int4 weights), checked before writing.

Calibrates onnxruntime's static quantiser (``models.quantize``) on windows from the first
``--train-fraction`` of each record of a manifest (the part ``fedpm train --split time`` trained
on), then scores the float32 and the quantised model on the windows after it and compares them:
file sizes, window accuracy, and how often both pick the same class. A model whose accuracy
falls by more than ``--max-drop`` points is not written (exit 3), so a bad calibration cannot
reach the edge unnoticed.

Precision ``w4a8`` (default) stores the large convolutions' weights in 4 bits and is under 1/4
of the float32 file; ``int8`` is 8-bit throughout (about 0.28). docs/edge-footprint.md has the
measurements.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fedpm.commands.options import add_filter, add_json, add_manifest, add_model

NAME = "quantize"
HELP = "make an int8 / w4a8 edge copy of a model, calibrated and checked on a manifest"

EXIT_TOO_LOSSY = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``quantize`` options to ``parser``."""
    add_model(parser, "float32 model.onnx")
    add_manifest(parser, "manifest of the records to calibrate and check on")
    add_filter(parser)
    parser.add_argument(
        "--precision",
        choices=("w4a8", "int8"),
        default="w4a8",
        help="w4a8: int4 weights in the large convolutions, int8 elsewhere (smallest, default);"
        " int8: 8-bit throughout",
    )
    parser.add_argument(
        "--format",
        choices=("qdq", "qoperator"),
        default=None,
        help="ONNX form (default: qoperator for int8, qdq for w4a8, which has no other)",
    )
    parser.add_argument(
        "--train-fraction",
        type=float,
        default=0.7,
        help="calibrate on windows before this fraction of each record, check after it"
        " (default 0.7, as `fedpm train --split time`)",
    )
    parser.add_argument(
        "--calibration",
        type=int,
        default=256,
        help="calibration windows, drawn evenly at random from the training part (default 256)",
    )
    parser.add_argument(
        "--max-drop",
        type=float,
        default=0.5,
        help="largest accuracy loss in points accepted; worse is not written (default 0.5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration draw")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the model goes (default: beside a --model file, as"
        " <name>.<precision>.onnx; needed for a registry folder)",
    )
    add_json(parser)


def run(args: argparse.Namespace) -> int:
    """Quantise and check; 0 when written, 2 on invalid input, 3 when too lossy."""
    from models.errors import FedPMModelsError

    try:
        result = _run(args)
    except (FedPMModelsError, ValueError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if args.json is not None:
        from fedpm.commands.output import write_json

        write_json(args.json, result)
    return 0 if result["written"] else EXIT_TOO_LOSSY


def _run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from fedpm.commands.evaluate import load_model, model_channels
    from models import dataset_windows as dw
    from models.datasets import load_manifest, read_record
    from models.quantize import quantize_model
    from models.runtime import OnnxClassifier

    if not 0.0 < args.train_fraction < 1.0:
        raise ValueError("--train-fraction must be in (0, 1)")
    if args.calibration < 1:
        raise ValueError("--calibration must be >= 1")
    if args.max_drop < 0:
        raise ValueError("--max-drop must be >= 0")
    if args.out is None and args.model.is_dir():
        raise ValueError("--out is needed when --model is a registry folder")
    data, source = load_model(args.model, args.version)
    float_model = OnnxClassifier(data)
    meta = float_model.metadata
    channels = model_channels(meta, args.channels)
    scheme: dw.LabelScheme = (
        "fault_size" if any("@" in name for name in meta.class_names) else "fault"
    )
    infos = dw.select(load_manifest(args.manifest), [dw.RecordFilter.parse(f) for f in args.filter])
    if not infos:
        raise ValueError(f"no record of {args.manifest} passes the filters")
    pool, held_out, labels = [], [], []
    window = meta.window_samples
    for info in infos:
        record = read_record(info, channels=channels)
        cut = int(record.n_samples * args.train_fraction)
        before, _ = dw.record_windows(
            record, channels, window, window // 2, 0, cut, meta.sample_rate_hz
        )
        after, _ = dw.record_windows(
            record, channels, window, window, cut, None, meta.sample_rate_hz
        )
        pool.append(before)
        held_out.append(after)
        name = dw.class_label(info, scheme)
        index = meta.class_names.index(name) if name in meta.class_names else -1
        labels.append(np.full(len(after), index, np.int64))
    x_pool = np.concatenate(pool)
    x_test, y_test = np.concatenate(held_out), np.concatenate(labels)
    if len(x_test) == 0:
        raise ValueError("no record is long enough for a window after --train-fraction")
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(x_pool), size=min(args.calibration, len(x_pool)), replace=False)
    quantised = quantize_model(
        data, x_pool[np.sort(pick)], precision=args.precision, quant_format=args.format
    )
    float_pred = float_model.predict(x_test).probabilities.argmax(1)
    quant_pred = OnnxClassifier(quantised).predict(x_test).probabilities.argmax(1)
    known = y_test >= 0
    float_acc = quant_acc = drop_points = None
    if known.any():
        float_acc = float((float_pred[known] == y_test[known]).mean())
        quant_acc = float((quant_pred[known] == y_test[known]).mean())
        drop_points = 100.0 * (float_acc - quant_acc)
    agreement = float((float_pred == quant_pred).mean())
    written = drop_points is None or drop_points <= args.max_drop
    out: Path = args.out or args.model.with_name(f"{args.model.stem}.{args.precision}.onnx")
    if written:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(quantised)
        tmp.replace(out)
    ratio = len(quantised) / len(data)
    lines = [
        f"model {source}: {len(data):,} B float32 -> {len(quantised):,} B {args.precision}"
        f" ({ratio:.3f} of the file)",
        f"calibrated on {len(pick)} windows before {args.train_fraction:.0%} of {len(infos)}"
        f" records; checked on the {len(x_test)} windows after it",
        f"argmax agreement with float32 {agreement:.2%}",
    ]
    if float_acc is not None and quant_acc is not None and drop_points is not None:
        lines.append(
            f"window accuracy float32 {float_acc:.2%}, {args.precision} {quant_acc:.2%}"
            f" ({-drop_points:+.2f} points; limit -{args.max_drop:g})"
        )
    else:
        lines.append("no held-out window has a class the model knows: accuracy not compared")
    lines.append(
        f"wrote {out}"
        if written
        else f"NOT written: accuracy fell {drop_points:.2f} points, more than --max-drop"
    )
    sys.stdout.write("\n".join(lines) + "\n")
    return {
        "model": source,
        "manifest": str(args.manifest),
        "precision": args.precision,
        "float32_bytes": len(data),
        "quantised_bytes": len(quantised),
        "size_ratio": ratio,
        "calibration_windows": len(pick),
        "test_windows": len(x_test),
        "float32_accuracy": float_acc,
        "quantised_accuracy": quant_acc,
        "accuracy_drop_points": drop_points,
        "argmax_agreement": agreement,
        "max_drop_points": args.max_drop,
        "written": written,
        "out": str(out) if written else None,
    }
