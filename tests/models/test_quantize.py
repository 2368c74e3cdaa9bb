"""Tests for models.quantize: an int8 model that keeps the FedPM contract and the float's answers.

A WDCNN is trained briefly on the first windows of real CWRU records (0 HP, one record per
class), exported, and quantised with calibration windows from that training part; it is then
compared with the float32 model on the later windows of the same records.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
import torch

from models.errors import ModelFormatError, QuantizationError
from models.metadata import METADATA_KEY, ModelMetadata, Provenance
from models.network import build_model
from models.onnx_export import export_onnx, metadata_for
from models.quantize import MIN_CALIBRATION_WINDOWS, QuantFormatName, quantize_model
from models.runtime import OnnxClassifier, widen_int4_weights
from models.training import train
from models.windows import resample, windows_from_record

FS = 12_000.0
WINDOW = 2048
CLASSES = ("normal", "inner_race", "outer_race", "ball")
TRAIN_PER_CLASS = 24  # the first windows of each record train the model and calibrate
TEST_PER_CLASS = 24  # the windows after them are the comparison set
PROVENANCE = Provenance(
    source="federated",
    run_id="run-int8",
    server_round=4,
    sites=("plant-a", "plant-b"),
    metrics={"accuracy": 0.9},
    framework={"flwr": "1.42.0"},
)

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Models:
    float32: bytes
    int8: dict[str, bytes]
    w4a8: bytes
    train_x: FloatArray
    test_x: FloatArray
    test_y: npt.NDArray[np.int64]


def load_windows(root: Path) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int64]]:
    """(train windows, test windows, test labels) from the first 0 HP record of each class."""
    with (root / "MANIFEST.tsv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    train_x, test_x, test_y = [], [], []
    for label, name in enumerate(CLASSES):
        row = next(r for r in rows if r["fault_type"] == name and r["motor_load_hp"] == "0")
        with np.load(root / row["file"]) as data:
            de = resample(data["de"], float(row["sample_rate_hz"]), FS)  # normal is 48 kHz
        windows = windows_from_record(de, WINDOW, WINDOW // 2)[:, np.newaxis, :]
        train_x.append(windows[:TRAIN_PER_CLASS])
        # skip one window: half-overlapping windows must not straddle the split
        test_x.append(windows[TRAIN_PER_CLASS + 1 : TRAIN_PER_CLASS + 1 + TEST_PER_CLASS])
        test_y.append(np.full(TEST_PER_CLASS, label, np.int64))
    return np.concatenate(train_x), np.concatenate(test_x), np.concatenate(test_y)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Train on one thread: two threads on a shared two-core machine were 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(cwru_root: Path) -> Models:
    train_x, test_x, test_y = load_windows(cwru_root)
    train_y = np.repeat(np.arange(len(CLASSES)), TRAIN_PER_CLASS).astype(np.int64)
    net = build_model(seed=0)
    with one_torch_thread(), torch.random.fork_rng():
        torch.manual_seed(0)
        train(net, train_x, train_y, epochs=3, batch_size=16, learning_rate=3e-3, seed=0)
        meta = metadata_for(net, sample_rate_hz=FS, class_names=CLASSES, provenance=PROVENANCE)
        data = export_onnx(net, meta)
    int8 = {fmt: quantize_model(data, train_x, quant_format=fmt) for fmt in ("qoperator", "qdq")}
    w4a8 = quantize_model(data, train_x, precision="w4a8")
    return Models(data, int8, w4a8, train_x, test_x, test_y)


FORMATS: list[QuantFormatName] = ["qoperator", "qdq"]


# --- Metadata and contract -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_model_keeps_the_metadata_and_records_the_quantisation(
    models: Models, fmt: QuantFormatName
) -> None:
    # Prepare
    before = OnnxClassifier(models.float32).metadata

    # Execute
    after = OnnxClassifier(models.int8[fmt]).metadata

    # Assert: the contract and provenance are the float model's; only quantisation is new
    assert before.quantization == "float32"
    assert after.quantization == "int8"
    assert after.quantization_details["format"] == fmt
    assert (
        after.quantization_details["float32_sha256"] == hashlib.sha256(models.float32).hexdigest()
    )
    assert f"{len(models.train_x)} windows" in after.quantization_details["calibration"]
    unchanged = {"quantization", "quantization_details", "provenance"}
    assert after.model_dump(exclude=unchanged) == before.model_dump(exclude=unchanged)
    assert after.provenance.model_dump(exclude={"framework"}) == PROVENANCE.model_dump(
        exclude={"framework"}
    ) | {"created_at": before.provenance.created_at}
    assert after.provenance.framework == {
        **before.provenance.framework,
        "onnxruntime": ort.__version__,
    }


def test_int8_model_has_only_the_fedpm_metadata_entry(models: Models) -> None:
    # Execute
    props = {p.key: p.value for p in onnx.load_from_string(models.int8["qoperator"]).metadata_props}

    # Assert: quantiser bookkeeping (onnx.infer, pre_process markers) is not shipped
    assert list(props) == [METADATA_KEY]
    assert ModelMetadata.from_json(props[METADATA_KEY]).quantization == "int8"


@pytest.mark.parametrize("fmt", FORMATS)
def test_classifier_loads_the_int8_model_unchanged(models: Models, fmt: QuantFormatName) -> None:
    # Prepare
    classifier = OnnxClassifier(models.int8[fmt])

    # Execute
    got = classifier.predict(models.test_x)

    # Assert
    assert classifier.input_shape == (1, WINDOW)
    assert got.probabilities.shape == (len(models.test_x), len(CLASSES))
    assert got.embedding.shape == (len(models.test_x), 64)
    assert got.probabilities.dtype == got.embedding.dtype == np.float32
    np.testing.assert_allclose(got.probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_old_metadata_without_quantisation_fields_reads_as_float32() -> None:
    # Prepare: metadata JSON as written before the quantisation fields existed
    meta = json.loads(
        ModelMetadata(
            sample_rate_hz=FS,
            window_samples=WINDOW,
            channels=1,
            class_names=CLASSES,
            embedding_dim=64,
            provenance=PROVENANCE,
        ).to_json()
    )
    del meta["quantization"], meta["quantization_details"]

    # Execute
    parsed = ModelMetadata.from_json(json.dumps(meta))

    # Assert
    assert parsed.quantization == "float32"
    assert parsed.quantization_details == {}


# --- Same answers, smaller file --------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_predictions_agree_with_float_on_real_windows(
    models: Models, fmt: QuantFormatName
) -> None:
    # Prepare
    reference = OnnxClassifier(models.float32).predict(models.test_x)

    # Execute
    got = OnnxClassifier(models.int8[fmt]).predict(models.test_x)

    # Assert: the same class for (nearly) every window, and a close embedding
    agreement = float((got.probabilities.argmax(1) == reference.probabilities.argmax(1)).mean())
    assert agreement >= 0.95
    float_accuracy = float((reference.probabilities.argmax(1) == models.test_y).mean())
    int8_accuracy = float((got.probabilities.argmax(1) == models.test_y).mean())
    assert float_accuracy >= 0.75  # the comparison means something only for a useful model
    assert abs(int8_accuracy - float_accuracy) <= 0.05
    error = np.linalg.norm(got.embedding - reference.embedding, axis=1)
    assert float(np.median(error / np.linalg.norm(reference.embedding, axis=1))) <= 0.1


@pytest.mark.parametrize(("fmt", "max_ratio"), [("qoperator", 0.30), ("qdq", 0.32)])
def test_int8_file_is_less_than_a_third_of_the_float_file(
    models: Models, fmt: QuantFormatName, max_ratio: float
) -> None:
    # Execute
    ratio = len(models.int8[fmt]) / len(models.float32)

    # Assert: about 0.28 / 0.30; int8 weights alone are 0.24 (docs/edge-footprint.md)
    assert ratio <= max_ratio


def test_int8_weights_are_stored_as_int8(models: Models) -> None:
    # Execute
    graph = onnx.load_from_string(models.int8["qoperator"]).graph
    weights = [t for t in graph.initializer if len(t.dims) >= 2]
    floats = [t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT]

    # Assert: the five convolution kernels and the head are int8; what stays float32 are
    # scales (scalars, or one per output channel), not a float copy of a weight
    assert len(weights) == 6
    assert all(t.data_type == onnx.TensorProto.INT8 for t in weights)
    assert all(len(t.dims) <= 1 for t in floats)


def test_standardisation_and_softmax_stay_float(models: Models) -> None:
    # Execute
    ops = [n.op_type for n in onnx.load_from_string(models.int8["qoperator"]).graph.node]

    # Assert: float standardisation, then quantise, int8 convolutions, float softmax last
    first_quantise = ops.index("QuantizeLinear")
    assert {"ReduceMean", "Sub", "Mul", "Sqrt", "Div"} <= set(ops[:first_quantise])
    assert "QLinearConv" in ops[first_quantise:]
    assert "Conv" not in ops
    assert ops[-1] == "Softmax"


@pytest.mark.parametrize("gain", [0.01, 100.0])
def test_int8_model_stays_gain_invariant(models: Models, gain: float) -> None:
    # Prepare: the float standardisation runs before the first quantisation
    classifier = OnnxClassifier(models.int8["qoperator"])
    base = classifier.predict(models.test_x)

    # Execute
    scaled = classifier.predict(gain * models.test_x)

    # Assert
    np.testing.assert_array_equal(scaled.probabilities.argmax(1), base.probabilities.argmax(1))
    assert float(np.max(np.abs(scaled.probabilities - base.probabilities))) <= 0.02


def test_quantisation_is_deterministic(models: Models) -> None:
    # Execute
    again = quantize_model(models.float32, models.train_x)

    # Assert: same bytes, so the same sha256 in a registry card
    assert again == models.int8["qoperator"]


# --- w4a8: int4 weights in the large convolutions ----------------------------------------------


def test_w4a8_file_is_at_most_a_quarter_of_the_float_file(models: Models) -> None:
    # Execute
    ratio = len(models.w4a8) / len(models.float32)

    # Assert: about 0.20 (docs/edge-footprint.md); no int8 file can reach 0.25
    assert ratio <= 0.25


def test_w4a8_stores_the_large_convolutions_in_four_bits(models: Models) -> None:
    # Execute
    model = onnx.load_from_string(models.w4a8)
    weights = {t.name: t for t in model.graph.initializer if len(t.dims) >= 2}
    conv_weights = [n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"]
    kinds = [weights[name].data_type for name in conv_weights if name in weights]

    # Assert: standard ONNX (opset 21), three 4-bit kernels (fan-in 96 and 192), the first two
    # convolutions and the head 8-bit
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 21)}
    assert sorted(kinds) == sorted([onnx.TensorProto.INT8] * 3 + [onnx.TensorProto.INT4] * 3)
    metadata = OnnxClassifier(models.w4a8).metadata
    assert metadata.quantization == "w4a8"
    assert "int4" in metadata.quantization_details["weights"]


def test_widening_the_4_bit_weights_changes_no_output(models: Models) -> None:
    # Prepare: onnxruntime runs the file as stored (4-bit DequantizeLinear, float Conv)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    stored = ort.InferenceSession(models.w4a8, options, providers=["CPUExecutionProvider"])

    # Execute
    widened = widen_int4_weights(models.w4a8)
    got = OnnxClassifier(models.w4a8).predict(models.test_x)

    # Assert: no 4-bit tensor is left, and the classifier (which widens) agrees with the file
    kinds = {t.data_type for t in onnx.load_from_string(widened).graph.initializer}
    assert onnx.TensorProto.INT4 not in kinds
    assert len(widened) > len(models.w4a8)
    probabilities, _ = stored.run(None, {"windows": models.test_x})
    np.testing.assert_array_equal(got.probabilities.argmax(1), probabilities.argmax(1))
    np.testing.assert_allclose(got.probabilities, probabilities, atol=0.02)


def test_w4a8_predictions_agree_with_float_on_real_windows(models: Models) -> None:
    # Prepare
    reference = OnnxClassifier(models.float32).predict(models.test_x)

    # Execute
    got = OnnxClassifier(models.w4a8).predict(models.test_x)

    # Assert
    agreement = float((got.probabilities.argmax(1) == reference.probabilities.argmax(1)).mean())
    assert agreement >= 0.95
    float_accuracy = float((reference.probabilities.argmax(1) == models.test_y).mean())
    w4a8_accuracy = float((got.probabilities.argmax(1) == models.test_y).mean())
    assert abs(w4a8_accuracy - float_accuracy) <= 0.05


def test_widening_a_float_model_returns_it_unchanged(models: Models) -> None:
    assert widen_int4_weights(models.float32) == models.float32


def test_widening_bytes_that_are_not_onnx_is_refused() -> None:
    with pytest.raises(ModelFormatError, match="not an ONNX model"):
        widen_int4_weights(b"not an onnx model")


# --- Refusals --------------------------------------------------------------------------------


def test_an_int8_model_is_not_quantised_again(models: Models) -> None:
    with pytest.raises(QuantizationError, match="already int8"):
        quantize_model(models.int8["qoperator"], models.train_x)


@pytest.mark.parametrize(
    ("windows", "match"),
    [
        (np.zeros((MIN_CALIBRATION_WINDOWS - 1, 1, WINDOW), np.float32), "at least"),
        (np.zeros((32, 1, WINDOW - 1), np.float32), "shaped"),
        (np.zeros((32, WINDOW), np.float32), "shaped"),
        (np.zeros((32, 2, WINDOW), np.float32), "shaped"),
    ],
)
def test_unusable_calibration_windows_are_refused(
    models: Models, windows: FloatArray, match: str
) -> None:
    with pytest.raises(QuantizationError, match=match):
        quantize_model(models.float32, windows)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_calibration_windows_are_refused(models: Models, bad: float) -> None:
    # Prepare
    windows = models.train_x.copy()
    windows[3, 0, 10] = bad

    # Execute / Assert
    with pytest.raises(QuantizationError, match="NaN or Inf"):
        quantize_model(models.float32, windows)


def test_unknown_format_is_refused(models: Models) -> None:
    with pytest.raises(QuantizationError, match="quant_format"):
        quantize_model(models.float32, models.train_x, quant_format="int4")  # type: ignore[arg-type]


def test_a_w4a8_model_is_not_quantised_again(models: Models) -> None:
    with pytest.raises(QuantizationError, match="already w4a8"):
        quantize_model(models.w4a8, models.train_x)


def test_w4a8_as_qoperator_is_refused(models: Models) -> None:
    with pytest.raises(QuantizationError, match="QOperator has no 4-bit"):
        quantize_model(models.float32, models.train_x, precision="w4a8", quant_format="qoperator")


def test_unknown_precision_is_refused(models: Models) -> None:
    with pytest.raises(QuantizationError, match="precision"):
        quantize_model(models.float32, models.train_x, precision="int2")  # type: ignore[arg-type]


@pytest.mark.parametrize("data", [b"", b"not an onnx model"])
def test_bytes_that_are_not_a_fedpm_model_are_refused(data: bytes) -> None:
    with pytest.raises(ModelFormatError):
        quantize_model(data, np.zeros((32, 1, WINDOW), np.float32))
