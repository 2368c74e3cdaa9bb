"""Int8 static quantisation of a FedPM ONNX model, for edge nodes.

Weights become int8 (symmetric, one scale per output channel) and activations 8-bit with ranges
calibrated on real windows (onnxruntime's ``quantize_static``, MinMax calibration). What stays
float32, and why (measured with ``bench/bench_int8.py``, docs/edge-footprint.md):

- the in-graph per-window standardisation (ReduceMean, Sub, Mul, Clip, Sqrt, Div): with
  onnxruntime's default operator list, which includes Mul and Clip, test accuracy on CWRU fell
  from 93.9 % to 72.3 % (squaring and dividing 8-bit values loses the signal's dynamics);
- the softmax, so ``probabilities`` still sum to one at float precision.

The result keeps the model contract (``windows`` in, ``probabilities`` and ``embedding`` out,
float32) and the FedPM metadata, with ``quantization="int8"`` and ``quantization_details``
(format, calibration, sha256 of the float32 parent) added, so
:class:`~models.runtime.OnnxClassifier` loads it unchanged.

Formats: ``"qoperator"`` (QLinearConv, QGemm; uint8 activations x int8 weights, onnxruntime's
fast path on x86 CPUs) gives the smaller file; ``"qdq"`` (QuantizeLinear/DequantizeLinear pairs
around float operators, int8 activations) runs as fast on onnxruntime's CPU provider, which
fuses the pairs, and is the form other runtimes (TensorRT on a Jetson) read.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
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


def quantize_model(
    model_bytes: bytes,
    calibration_windows: npt.ArrayLike,
    *,
    quant_format: QuantFormatName = "qoperator",
    batch_size: int = 32,
) -> bytes:
    """Quantise a float32 FedPM model to int8, calibrated on real windows.

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
        ``"qoperator"`` (smallest file, default) or ``"qdq"`` (for runtimes that read QDQ).
    batch_size
        Windows per calibration batch (memory only; the ranges do not depend on it).

    Returns
    -------
    bytes
        The int8 model; its metadata is the float model's with ``quantization="int8"``, the
        same provenance, and the onnxruntime version added to ``provenance.framework``.

    Raises
    ------
    QuantizationError
        The model is already int8, the windows are unusable, or onnxruntime's quantiser fails.
    ModelFormatError
        ``model_bytes`` is not a valid FedPM model.
    """
    if quant_format not in _FORMATS:
        raise QuantizationError(f"quant_format must be one of {sorted(_FORMATS)}")
    if batch_size < 1:
        raise QuantizationError(f"batch_size must be >= 1, got {batch_size}")
    metadata = OnnxClassifier(model_bytes).metadata  # validates the contract
    if metadata.quantization != "float32":
        raise QuantizationError(f"the model is already {metadata.quantization}")
    windows = _calibration_windows(calibration_windows, metadata)
    fmt, activation_type, activation_name = _FORMATS[quant_format]
    model = onnx.load_from_string(model_bytes)
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
            )
            quantised = onnx.load(str(out))
        except Exception as exc:  # onnxruntime's quantiser raises untyped errors
            raise QuantizationError(f"onnxruntime could not quantise the model: {exc}") from exc
    _compact(quantised)
    details = {
        "format": quant_format,
        "weights": "int8, symmetric, per output channel",
        "activations": f"{activation_name}, per tensor",
        "calibration": f"MinMax over {len(windows)} windows",
        "float32_sha256": hashlib.sha256(model_bytes).hexdigest(),
    }
    framework = {**metadata.provenance.framework, "onnxruntime": ort.__version__}
    new_metadata = metadata.with_provenance(framework=framework).model_copy(
        update={"quantization": "int8", "quantization_details": details}
    )
    del quantised.metadata_props[:]
    quantised.metadata_props.add(key=METADATA_KEY, value=new_metadata.to_json())
    quantised.producer_name = "fedpm"
    quantised.doc_string = (
        f"FedPM {metadata.architecture} int8: {metadata.channels}x{metadata.window_samples}"
        f" windows at {metadata.sample_rate_hz:g} Hz -> {', '.join(metadata.class_names)}"
    )
    try:
        onnx.checker.check_model(quantised)
        data: bytes = quantised.SerializeToString()
        OnnxClassifier(data)  # the runtime must accept what it will be given
    except (onnx.checker.ValidationError, ModelFormatError) as exc:
        raise QuantizationError(f"the quantised model is not valid: {exc}") from exc
    logger.info(
        "quantised model: %d -> %d bytes (%s, %d calibration windows)",
        len(model_bytes),
        len(data),
        quant_format,
        len(windows),
    )
    return data
