"""Edge footprint of int8 and w4a8 quantisation: file size, accuracy, single-core speed.

Trains a WDCNN on the classic CWRU 10-class task at 0 HP (normal, and inner race, ball and
outer race @6:00 at 0.007 / 0.014 / 0.021 in), split by time inside each record: the first 70 %
of every record gives the training windows (hop 512), the last 30 % the test windows (hop 256;
overlapping inside the test part only, so nothing seen in training is tested). The 48 kHz
normal record is resampled to 12 kHz. The float32 model is exported, quantised with
``models.quantize.quantize_model`` (calibration windows from the training part) as int8
(QOperator and QDQ) and as w4a8 (int4 weights in the three large convolutions), and all are
scored on the test windows and timed with onnxruntime on one core (intra_op_num_threads=1).
The w4a8 model runs as ``models.runtime.OnnxClassifier`` runs it: its 4-bit weights stored as
8-bit at load (``widen_int4_weights``).

Ablations justify the choices in ``models/quantize.py``: quantising every operator
onnxruntime can (the in-graph standardisation too), QOperator with int8 activations, the w4a8
file run as stored (no widening), and 4-bit weights in the second convolution too.

Timing: models are timed in turns (interleaved trials) and the median trial is reported, so
load from other processes on a shared machine affects all of them alike.

    .venv/bin/python -m bench.bench_int8 [--epochs 10] [--calibration 256] [--trials 15]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

from bench.data import cwru_dir
from models import quantize as quantize_module
from models.metadata import Provenance
from models.network import NetworkConfig, build_model
from models.onnx_export import export_onnx, metadata_for
from models.quantize import QUANTISED_OPS, WindowReader, quantize_model
from models.runtime import OnnxClassifier, widen_int4_weights
from models.training import evaluate, recalibrate_norm_statistics, train
from models.windows import resample, windows_from_record

FS = 12_000.0
WINDOW = 2048
TRAIN_FRACTION = 0.7
# (class name, fault_type, diameter, outer-race position) of the 10-class task at 0 HP
TASK = [("normal", "normal", "0.000", "")] + [
    (f"{short}{d[2:]}", fault, d, "@6:00" if fault == "outer_race" else "")
    for short, fault in (("ir", "inner_race"), ("b", "ball"), ("or", "outer_race"))
    for d in ("0.007", "0.014", "0.021")
]


def load_task(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    with (root / "MANIFEST.tsv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    xtr, ytr, xte, yte = [], [], [], []
    for label, (_, fault, diameter, position) in enumerate(TASK):
        row = next(
            r
            for r in rows
            if (r["fault_type"], r["fault_diameter_in"], r["or_position"], r["motor_load_hp"])
            == (fault, diameter, position, "0")
        )
        with np.load(root / row["file"]) as data:
            de = resample(data["de"], float(row["sample_rate_hz"]), FS)
        cut = int(TRAIN_FRACTION * len(de))
        train_w = windows_from_record(de[:cut], WINDOW, 512)
        test_w = windows_from_record(de[cut:], WINDOW, 256)
        xtr.append(train_w)
        xte.append(test_w)
        ytr.append(np.full(len(train_w), label, np.int64))
        yte.append(np.full(len(test_w), label, np.int64))
    return (
        np.concatenate(xtr)[:, np.newaxis],
        np.concatenate(ytr),
        np.concatenate(xte)[:, np.newaxis],
        np.concatenate(yte),
    )


def session(data: bytes) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def predict(sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [sess.run(None, {"windows": x[i : i + 256]})[0].argmax(1) for i in range(0, len(x), 256)]
    )


def windows_per_s(
    sessions: dict[str, ort.InferenceSession], x: np.ndarray, batch: int, trials: int
) -> dict[str, float]:
    """Median over interleaved trials of about 0.2 s each, in windows per second."""
    feed = {"windows": np.ascontiguousarray(x[:batch])}
    runs = {}
    for name, sess in sessions.items():  # warm up and size each trial to ~0.2 s
        sess.run(None, feed)
        t = time.perf_counter()
        sess.run(None, feed)
        runs[name] = max(1, int(0.2 / max(time.perf_counter() - t, 1e-6)))
    rates: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(trials):
        for name, sess in sessions.items():
            t = time.perf_counter()
            for _ in range(runs[name]):
                sess.run(None, feed)
            rates[name].append(runs[name] * batch / (time.perf_counter() - t))
    return {name: statistics.median(r) for name, r in rates.items()}


def quantise_everything(model: bytes, calibration: np.ndarray) -> bytes:
    """Ablation: onnxruntime's default operator list, standardisation and softmax included."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "all.onnx"
        quantize_static(
            onnx.load_from_string(model),
            out,
            WindowReader("windows", calibration, 32),
            quant_format=QuantFormat.QOperator,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return out.read_bytes()


def qoperator_s8(model: bytes, calibration: np.ndarray) -> bytes:
    """Ablation: QOperator with int8 (not uint8) activations, same operators as FedPM's."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s8.onnx"
        quantize_static(
            onnx.load_from_string(model),
            out,
            WindowReader("windows", calibration, 32),
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=list(QUANTISED_OPS),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
        return out.read_bytes()


def w4_with_second_conv(model: bytes, calibration: np.ndarray) -> bytes:
    """Ablation: w4a8 with the fan-in floor lowered so the second convolution is 4-bit too."""
    floor = quantize_module.INT4_MIN_FAN_IN
    quantize_module.INT4_MIN_FAN_IN = 1
    try:
        return quantize_model(model, calibration, precision="w4a8")
    finally:
        quantize_module.INT4_MIN_FAN_IN = floor


def payload(model: bytes) -> tuple[int, int]:
    """(bytes of tensor data, bytes of the FedPM metadata JSON) in a model file."""
    proto = onnx.load_from_string(model)
    packed = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}  # two values per byte
    tensors = sum(
        (int(np.prod(t.dims)) + 1) // 2
        if t.data_type in packed
        else onnx.numpy_helper.to_array(t).nbytes
        for t in proto.graph.initializer
    )
    meta = sum(len(p.value.encode()) for p in proto.metadata_props)
    return tensors, meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=cwru_dir())
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--calibration", type=int, default=256)
    parser.add_argument("--trials", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(2)

    xtr, ytr, xte, yte = load_task(args.data)
    class_names = tuple(name for name, *_ in TASK)
    print(
        f"CWRU 10-class, 0 HP, time split 70/30 in each record: "
        f"{len(ytr)} train windows, {len(yte)} test windows of {WINDOW} samples at 12 kHz"
    )
    net = build_model(NetworkConfig(n_classes=len(TASK)), seed=0)
    t = time.perf_counter()
    # the recipe of `fedpm train` (models/centralised.py): cosine decay, then BatchNorm
    # statistics re-estimated on the training windows
    fit = train(
        net,
        xtr,
        ytr,
        epochs=args.epochs,
        batch_size=64,
        learning_rate=1e-3,
        seed=0,
        lr_schedule="cosine",
    )
    recalibrate_norm_statistics(net, xtr)
    print(f"trained {args.epochs} epochs in {time.perf_counter() - t:.0f} s (loss {fit.loss:.3f})")
    torch_acc = evaluate(net, xte, yte, class_names).accuracy
    meta = metadata_for(
        net, sample_rate_hz=FS, class_names=class_names, provenance=Provenance(source="centralised")
    )
    models = {"float32": export_onnx(net, meta)}
    rng = np.random.default_rng(0)
    calibration = xtr[rng.choice(len(xtr), size=min(args.calibration, len(xtr)), replace=False)]
    for fmt in ("qoperator", "qdq"):
        t = time.perf_counter()
        models[f"int8 {fmt}"] = quantize_model(models["float32"], calibration, quant_format=fmt)
        print(
            f"quantised ({fmt}, {len(calibration)} calibration windows) in "
            f"{time.perf_counter() - t:.2f} s"
        )
    t = time.perf_counter()
    models["w4a8 qdq"] = quantize_model(models["float32"], calibration, precision="w4a8")
    print(
        f"quantised (w4a8, {len(calibration)} calibration windows) in "
        f"{time.perf_counter() - t:.2f} s"
    )
    OnnxClassifier(models["int8 qoperator"])  # loads unchanged
    OnnxClassifier(models["w4a8 qdq"])
    ablations = {
        "ablation: all ops": quantise_everything(models["float32"], calibration),
        "ablation: qop s8": qoperator_s8(models["float32"], calibration),
        "ablation: w4a8 raw": models["w4a8 qdq"],
        "ablation: w4 conv2": w4_with_second_conv(models["float32"], calibration),
    }
    # what the runtime runs: OnnxClassifier widens 4-bit weights to 8-bit storage at load
    runnable = {
        name: widen_int4_weights(data) if name in ("w4a8 qdq", "ablation: w4 conv2") else data
        for name, data in {**models, **ablations}.items()
    }

    size_f = len(models["float32"])
    print("\nfile sizes (bytes)  [tensor data + FedPM metadata + graph structure]")
    for name, data in {**models, **ablations}.items():
        tensors, meta_bytes = payload(data)
        structure = len(data) - tensors - meta_bytes
        print(
            f"  {name:<18} {len(data):>7}  ratio {len(data) / size_f:.3f}   "
            f"[{tensors} + {meta_bytes} + {structure}]"
        )
    print(f"  target: <= 1/4 of float32 = {size_f // 4} bytes")

    sessions = {name: session(data) for name, data in runnable.items()}
    preds = {name: predict(sess, xte) for name, sess in sessions.items()}
    acc_f = float((preds["float32"] == yte).mean())
    print(f"\ntest accuracy ({len(yte)} windows; torch {100 * torch_acc:.2f} %)")
    for name, pred in preds.items():
        acc = float((pred == yte).mean())
        agree = float((pred == preds["float32"]).mean())
        print(
            f"  {name:<18} {100 * acc:6.2f} %  diff {100 * (acc - acc_f):+5.2f} points  "
            f"argmax agreement with float32 {100 * agree:6.2f} %"
        )

    print(f"\nwindows/s on one core (median of {args.trials} interleaved trials)")
    for batch in (1, 32):
        rates = windows_per_s(sessions, xte, batch, args.trials)
        base = rates["float32"]
        line = "  ".join(f"{n} {r:,.0f} ({r / base:.2f}x)" for n, r in rates.items())
        print(f"  batch {batch:>2}: {line}")


if __name__ == "__main__":
    main()
