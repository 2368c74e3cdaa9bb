"""Run a FedPM ONNX model with onnxruntime (edge agent and serving share this)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from pydantic import ValidationError

from models.errors import ModelFormatError
from models.metadata import METADATA_KEY, ModelMetadata


@dataclass(frozen=True)
class Prediction:
    """Model output for a batch of windows."""

    probabilities: npt.NDArray[np.float32]  # (batch, classes)
    embedding: npt.NDArray[np.float32]  # (batch, embedding_dim)
    class_names: tuple[str, ...]

    @property
    def predicted(self) -> list[str]:
        """Most probable class name per window."""
        return [self.class_names[i] for i in np.argmax(self.probabilities, axis=1)]

    def failure_probability(self, normal_class: str = "normal") -> npt.NDArray[np.float32]:
        """Probability of any class other than ``normal_class`` per window."""
        if normal_class not in self.class_names:
            return np.ones(self.probabilities.shape[0], dtype=np.float32)
        idx = self.class_names.index(normal_class)
        return (1.0 - self.probabilities[:, idx]).astype(np.float32)


def _session(model_bytes: bytes, opts: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            model_bytes, sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelFormatError(f"onnxruntime cannot load the model: {exc}") from exc


def widen_int4_weights(model_bytes: bytes) -> bytes:
    """Store a model's 4-bit initialisers (weights, zero points) as 8-bit, values unchanged.

    A 4-bit integer is an 8-bit integer of the same value, so ``DequantizeLinear`` gives the
    same float weights bit for bit; only the storage type changes. The model file keeps its
    4-bit weights (half the bytes); this runs once when a model is loaded.

    Raises
    ------
    ModelFormatError
        The bytes are not an ONNX model.
    """
    import onnx  # only 4-bit models need the protobuf; import is about 0.3-1 s
    from onnx import TensorProto, numpy_helper

    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as exc:  # protobuf's DecodeError and onnx's own
        raise ModelFormatError(f"not an ONNX model: {exc}") from exc
    wider = {TensorProto.INT4: np.int8, TensorProto.UINT4: np.uint8}
    changed = False
    for tensor in model.graph.initializer:
        if tensor.data_type in wider:
            values = numpy_helper.to_array(tensor).astype(wider[tensor.data_type])
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
            changed = True
    return model.SerializeToString() if changed else model_bytes


class OnnxClassifier:
    """A loaded FedPM model: validated metadata plus an onnxruntime session."""

    def __init__(self, model_bytes: bytes, *, intra_op_threads: int = 1) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, intra_op_threads)
        opts.inter_op_num_threads = 1
        self._session = _session(model_bytes, opts)
        raw = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if raw is None:
            raise ModelFormatError(f"model has no '{METADATA_KEY}' metadata")
        try:
            self.metadata = ModelMetadata.from_json(raw)
        except ValidationError as exc:
            raise ModelFormatError(f"invalid model metadata: {exc}") from exc
        if self.metadata.quantization == "w4a8":
            # same values, 8-bit storage: onnxruntime's CPU provider then fuses the
            # Quantize/Dequantize pairs into its int8 kernels instead of dequantising the
            # 4-bit weights to float on every call (docs/edge-footprint.md)
            self._session = _session(widen_int4_weights(model_bytes), opts)
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = [o.name for o in self._session.get_outputs()]
        if inputs != [self.metadata.input_name] or outputs != list(self.metadata.output_names):
            raise ModelFormatError(f"model inputs {inputs} / outputs {outputs} break the contract")

    @classmethod
    def from_path(cls, path: str | Path, *, intra_op_threads: int = 1) -> OnnxClassifier:
        """Load a model file."""
        return cls(Path(path).read_bytes(), intra_op_threads=intra_op_threads)

    @property
    def input_shape(self) -> tuple[int, int]:
        """(channels, samples) of one window."""
        return self.metadata.channels, self.metadata.window_samples

    def predict(self, windows: npt.ArrayLike) -> Prediction:
        """Classify windows shaped (batch, channels, samples), or (channels, samples) for one.

        Raises
        ------
        ModelFormatError
            Wrong shape or non-finite samples.
        """
        x = np.asarray(windows, dtype=np.float32)
        if x.ndim == 2:
            x = x[np.newaxis]
        if x.ndim != 3 or x.shape[1:] != self.input_shape or x.shape[0] == 0:
            raise ModelFormatError(
                f"expected windows shaped (batch, {self.input_shape[0]}, {self.input_shape[1]}),"
                f" got {tuple(x.shape)}"
            )
        if not np.isfinite(x).all():
            raise ModelFormatError("windows contain NaN or Inf samples")
        probs, emb = self._session.run(None, {self.metadata.input_name: np.ascontiguousarray(x)})
        return Prediction(
            probabilities=np.asarray(probs, dtype=np.float32),
            embedding=np.asarray(emb, dtype=np.float32),
            class_names=self.metadata.class_names,
        )
