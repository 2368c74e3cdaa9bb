"""Int8 (and int4-weight) static quantisation of a FedPM ONNX model, for edge nodes.

Two precisions. ``"int8"``: int8 weights (symmetric, one scale per output channel) and 8-bit
activations with ranges calibrated on real windows (onnxruntime's ``quantize_static``, MinMax
calibration). ``"w4a8"``: the same, except that the weights of the convolutions after the first
with a fan-in of at least 64 are int4 (symmetric, per output channel, standard ONNX
``DequantizeLinear`` at opset 21). In a WDCNN those are the last three convolutions, which hold
about 90 % of its weights, so the file is under 1/4 of the float32 one. No 8-bit file can be:
its int8 weights alone are 24 % of the float file, before scales, biases and graph. The first
convolution (a wide kernel on the raw, standardised signal) and the head (the logits) stay
8-bit, the usual practice for low-bit networks. :class:`~models.runtime.OnnxClassifier` stores
the 4-bit weights as 8-bit when it loads such a model (the same values), so onnxruntime runs it
with its int8 kernels, as fast as the int8 model.

What stays float32 in both, and why (measured with ``bench/bench_int8.py``,
docs/edge-footprint.md):

- the in-graph per-window standardisation (ReduceMean, Sub, Mul, Clip, Sqrt, Div): with
  onnxruntime's default operator list, which includes Mul and Clip, test accuracy on CWRU fell
  from 93.9 % to 72.3 % (squaring and dividing 8-bit values loses the signal's dynamics);
- the softmax, so ``probabilities`` still sum to one at float precision.

The result keeps the model contract (``windows`` in, ``probabilities`` and ``embedding`` out,
float32) and the FedPM metadata, with ``quantization`` (``"int8"`` or ``"w4a8"``) and
``quantization_details`` (format, calibration, sha256 of the float32 parent) added, so
:class:`~models.runtime.OnnxClassifier` loads it unchanged.

Formats (int8): ``"qoperator"`` (QLinearConv, QGemm; uint8 activations x int8 weights, onnxruntime's
fast path on x86 CPUs) gives the smaller file; ``"qdq"`` (QuantizeLinear/DequantizeLinear pairs
around float operators, int8 activations) runs as fast on onnxruntime's CPU provider, which
fuses the pairs, and is the form other runtimes (TensorRT on a Jetson) read. ``"w4a8"`` is
always QDQ: QOperator has no 4-bit operators.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from models.errors import ModelFormatError, QuantizationError
from models.metadata import METADATA_KEY, ModelMetadata
from models.runtime import OnnxClassifier

logger = logging.getLogger(__name__)

QuantFormatName = Literal["qoperator", "qdq"]
Precision = Literal["int8", "w4a8"]
#: ONNX opset with 4-bit DequantizeLinear; a w4a8 model is converted to it before quantising
INT4_OPSET = 21
#: Smallest fan-in of a 4-bit convolution. Each output sums fan-in rounded products, so the
#: relative rounding noise shrinks as the fan-in grows; on CWRU, 4-bit weights in WDCNN's second
#: convolution too (fan-in 16 x 3 = 48) cost 0.2 and 0.9 points of accuracy in two trainings,
#: the three larger ones none (docs/edge-footprint.md).
INT4_MIN_FAN_IN = 64

#: Operator types quantised; everything else (the standardisation, the softmax) stays float32.
QUANTISED_OPS = ("Conv", "Relu", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm")
#: Fewest calibration windows accepted: MinMax ranges from a handful of windows clip the rest.
MIN_CALIBRATION_WINDOWS = 16

_FORMATS: dict[str, tuple[QuantFormat, QuantType, str]] = {
    # QOperator with int8 activations ran 3-8x slower than uint8 on an AVX2 CPU (no VNNI)
    "qoperator": (QuantFormat.QOperator, QuantType.QUInt8, "uint8"),
    "qdq": (QuantFormat.QDQ, QuantType.QInt8, "int8"),
}
# quantize_static logs a warning unless this marker is present. Its pre-processing (symbolic
# shape inference and graph optimisation) changes nothing that matters here: the exporter
# already folds BatchNorm into the convolutions and the shapes are static; it only folded the
# standardisation's eps Constant and took 2.2 s (docs/edge-footprint.md).
_PRE_PROCESS_MARKER = ("onnx.quant.pre_process", "onnxruntime.quant")


class WindowReader(CalibrationDataReader):  # type: ignore[misc]  # untyped base class
    """Feed calibration windows to onnxruntime's calibrator in batches."""

    def __init__(self, input_name: str, windows: npt.NDArray[np.float32], batch: int) -> None:
        self._batches: Iterator[npt.NDArray[np.float32]] = iter(
            [windows[i : i + batch] for i in range(0, len(windows), batch)]
        )
        self._input_name = input_name

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        """Return the next batch as an input feed, or None when all were given."""
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}


def _calibration_windows(
    windows: npt.ArrayLike, metadata: ModelMetadata
) -> npt.NDArray[np.float32]:
    x = np.asarray(windows, dtype=np.float32)
    expected = (metadata.channels, metadata.window_samples)
    if x.ndim != 3 or x.shape[1:] != expected:
        raise QuantizationError(
            f"calibration windows must be shaped (n, {expected[0]}, {expected[1]}),"
            f" got {tuple(x.shape)}"
        )
    if len(x) < MIN_CALIBRATION_WINDOWS:
        raise QuantizationError(
            f"need at least {MIN_CALIBRATION_WINDOWS} calibration windows, got {len(x)}"
        )
    if not np.isfinite(x).all():
        raise QuantizationError("calibration windows contain NaN or Inf samples")
    return np.ascontiguousarray(x)


def _compact(model: onnx.ModelProto) -> None:
    """Shorten internal tensor names and drop what inference does not read (about 8 kB here).

    Graph inputs and outputs keep their names (the model contract); intermediate tensors and
    initialisers get short hexadecimal names, nodes lose their names and doc strings, and the
    shape annotations (``value_info``) the quantiser added are removed.
    """
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, format(len(names), "x"))

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
        tensor.doc_string = ""
    for node in graph.node:
        node.name = ""
        node.doc_string = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del graph.value_info[:]
    graph.doc_string = ""
    graph.name = "fedpm"


def int4_weight_names(model: onnx.ModelProto) -> list[str]:
    """Weights that a ``"w4a8"`` model stores in 4 bits.

    Every Conv weight except the first convolution's (it reads the standardised signal) whose
    fan-in (input channels x kernel taps) is at least ``INT4_MIN_FAN_IN``. The Gemm head stays
    8-bit.
    """
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    weights = [
        node.input[1]
        for node in model.graph.node
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in shapes
    ]
    return [w for w in weights[1:] if int(np.prod(shapes[w][1:])) >= INT4_MIN_FAN_IN]


def quantize_model(
    model_bytes: bytes,
    calibration_windows: npt.ArrayLike,
    *,
    quant_format: QuantFormatName | None = None,
    precision: Precision = "int8",
    batch_size: int = 32,
) -> bytes:
    """Quantise a float32 FedPM model to int8 (or int4/int8 weights), calibrated on real windows.

    Parameters
    ----------
    model_bytes
        A float32 FedPM ONNX model (:func:`models.onnx_export.export_onnx`).
    calibration_windows
        Windows shaped (n, channels, samples) in the model's units and sample rate, from the
        training data (not the test data), at least ``MIN_CALIBRATION_WINDOWS``; a few hundred
        covering every class and operating condition is plenty. Each activation's range is the
        minimum and maximum seen over them.
    quant_format
        ``"qoperator"`` (smallest int8 file, the default for ``"int8"``) or ``"qdq"`` (for
        runtimes that read QDQ; the only format of ``"w4a8"``).
    precision
        ``"int8"``, or ``"w4a8"``: int4 weights in the large inner convolutions, under 1/4 of
        the float32 file (see the module docstring).
    batch_size
        Windows per calibration batch (memory only; the ranges do not depend on it).

    Returns
    -------
    bytes
        The quantised model; its metadata is the float model's with ``quantization`` set to
        ``precision``, the same provenance, and the onnxruntime version added to
        ``provenance.framework``.

    Raises
    ------
    QuantizationError
        The model is already quantised, the windows are unusable, the format does not fit the
        precision, or onnxruntime's quantiser fails.
    ModelFormatError
        ``model_bytes`` is not a valid FedPM model.
    """
    if precision not in get_args(Precision):
        raise QuantizationError(f"precision must be one of {list(get_args(Precision))}")
    if quant_format is None:
        quant_format = "qdq" if precision == "w4a8" else "qoperator"
    if quant_format not in _FORMATS:
        raise QuantizationError(f"quant_format must be one of {sorted(_FORMATS)}")
    if precision == "w4a8" and quant_format != "qdq":
        raise QuantizationError(
            "precision 'w4a8' needs quant_format 'qdq': QOperator has no 4-bit operators"
        )
    if batch_size < 1:
        raise QuantizationError(f"batch_size must be >= 1, got {batch_size}")
    metadata = OnnxClassifier(model_bytes).metadata  # validates the contract
    if metadata.quantization != "float32":
        raise QuantizationError(f"the model is already {metadata.quantization}")
    windows = _calibration_windows(calibration_windows, metadata)
    fmt, activation_type, activation_name = _FORMATS[quant_format]
    model = onnx.load_from_string(model_bytes)
    overrides: dict[str, list[dict[str, object]]] = {}
    int4_names: list[str] = []
    if precision == "w4a8":
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        if opset < INT4_OPSET:
            model = version_converter.convert_version(model, INT4_OPSET)
        int4_names = int4_weight_names(model)
        overrides = {name: [{"quant_type": QuantType.QInt4, "axis": 0}] for name in int4_names}
    model.metadata_props.add(key=_PRE_PROCESS_MARKER[0], value=_PRE_PROCESS_MARKER[1])
    with tempfile.TemporaryDirectory(prefix="fedpm-quantize-") as tmp:
        out = Path(tmp) / "model.int8.onnx"
        try:
            quantize_static(
                model,
                out,
                WindowReader(metadata.input_name, windows, batch_size),
                quant_format=fmt,
                op_types_to_quantize=list(QUANTISED_OPS),
                per_channel=True,
                activation_type=activation_type,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"TensorQuantOverrides": overrides} if overrides else None,
            )
            quantised = onnx.load(str(out))
        except Exception as exc:  # onnxruntime's quantiser raises untyped errors
            raise QuantizationError(f"onnxruntime could not quantise the model: {exc}") from exc
    _compact(quantised)
    weights = "int8, symmetric, per output channel"
    if int4_names:
        count = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.name in int4_names)
        weights = (
            f"int4 (symmetric, per output channel) in {len(int4_names)} convolutions"
            f" ({count} weights, fan-in >= {INT4_MIN_FAN_IN}); int8 elsewhere"
        )
    details = {
        "format": quant_format,
        "weights": weights,
        "activations": f"{activation_name}, per tensor",
        "calibration": f"MinMax over {len(windows)} windows",
        "float32_sha256": hashlib.sha256(model_bytes).hexdigest(),
    }
    framework = {**metadata.provenance.framework, "onnxruntime": ort.__version__}
    new_metadata = metadata.with_provenance(framework=framework).model_copy(
        update={"quantization": precision, "quantization_details": details}
    )
    del quantised.metadata_props[:]
    quantised.metadata_props.add(key=METADATA_KEY, value=new_metadata.to_json())
    quantised.producer_name = "fedpm"
    quantised.doc_string = (
        f"FedPM {metadata.architecture} {precision}: {metadata.channels}x{metadata.window_samples}"
        f" windows at {metadata.sample_rate_hz:g} Hz -> {', '.join(metadata.class_names)}"
    )
    try:
        onnx.checker.check_model(quantised)
        data: bytes = quantised.SerializeToString()
        OnnxClassifier(data)  # the runtime must accept what it will be given
    except (onnx.checker.ValidationError, ModelFormatError) as exc:
        raise QuantizationError(f"the quantised model is not valid: {exc}") from exc
    logger.info(
        "quantised model: %d -> %d bytes (%s %s, %d calibration windows)",
        len(model_bytes),
        len(data),
        precision,
        quant_format,
        len(windows),
    )
    return data
