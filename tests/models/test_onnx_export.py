"""Tests for the ONNX path: models.network -> models.onnx_export -> models.runtime.

The exported graph must compute what torch computes (on random and on real CWRU windows, at
any batch size), carry its metadata, and be refused by the runtime when it or its input is bad.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from models.errors import ModelFormatError, SignalError
from models.metadata import METADATA_KEY, ModelMetadata, Provenance
from models.network import WDCNN, InferenceWrapper, NetworkConfig, build_model
from models.onnx_export import export_onnx, metadata_for
from models.runtime import OnnxClassifier
from models.simulator import FaultMode, MachineProfile, simulate
from models.training import train
from models.windows import resample, windows_from_record

FS = 12_000.0
WINDOW = 2048
CLASSES: tuple[FaultMode, ...] = ("normal", "inner_race", "outer_race", "ball")
PER_CLASS = 12  # real windows cut from each record
TRAIN_PER_CLASS = 8  # of which the model trains on the first ones
TOL = 1e-4
PROVENANCE = Provenance(
    source="federated",
    run_id="run-2024-06-01",
    server_round=3,
    sites=("plant-a", "plant-b"),
    metrics={"accuracy": 0.875, "loss": 0.41},
    framework={"flwr": "1.42.0"},
)

FloatArray = npt.NDArray[np.float32]


# --- Data and model fixtures -----------------------------------------------------------------


def load_real_windows(root: Path) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """PER_CLASS windows per class from the first no-load record of each class, at 12 kHz."""
    with (root / "MANIFEST.tsv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    xs, ys = [], []
    for label, name in enumerate(CLASSES):
        row = next(r for r in rows if r["fault_type"] == name and r["motor_load_hp"] == "0")
        with np.load(root / row["file"]) as data:
            de = data["de"]
        # normal_0_97 is a 48 kHz record; the manifest says which ones need resampling.
        de = resample(de, float(row["sample_rate_hz"]), FS)
        windows = windows_from_record(de, WINDOW)[:PER_CLASS]
        assert len(windows) == PER_CLASS, row["file"]
        xs.append(windows[:, np.newaxis, :])
        ys.append(np.full(PER_CLASS, label, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def simulated_windows() -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Stand-in training data when the CWRU dataset is absent."""
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for label, mode in enumerate(CLASSES):
        record = simulate(MachineProfile(), mode, 1.0, PER_CLASS * WINDOW, rng)
        xs.append(windows_from_record(record, WINDOW)[:, np.newaxis, :])
        ys.append(np.full(PER_CLASS, label, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture(scope="module")
def real_data(cwru_path: Path | None) -> tuple[FloatArray, npt.NDArray[np.int64]] | None:
    return None if cwru_path is None else load_real_windows(cwru_path)


@pytest.fixture
def real_windows(
    real_data: tuple[FloatArray, npt.NDArray[np.int64]] | None, request: pytest.FixtureRequest
) -> FloatArray:
    if real_data is None:
        request.getfixturevalue("cwru_root")  # skips locally, fails under CI
    assert real_data is not None
    return real_data[0]


@dataclass(frozen=True)
class Exported:
    net: WDCNN
    metadata: ModelMetadata
    data: bytes
    classifier: OnnxClassifier


@pytest.fixture(scope="module")
def exported(real_data: tuple[FloatArray, npt.NDArray[np.int64]] | None) -> Exported:
    """A model after a few training steps (real windows when available), exported to ONNX.

    Training moves the BatchNorm statistics and weights away from their initial values, so
    the comparison covers what a deployed model computes.
    """
    x, y = real_data if real_data is not None else simulated_windows()
    keep = np.concatenate([np.arange(TRAIN_PER_CLASS) + k * PER_CLASS for k in range(len(CLASSES))])
    net = build_model(seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # dropout draws from the global generator
        train(net, x[keep], y[keep], epochs=2, batch_size=16, learning_rate=3e-3, seed=0)
    metadata = metadata_for(net, sample_rate_hz=FS, class_names=CLASSES, provenance=PROVENANCE)
    data = export_onnx(net, metadata)
    return Exported(net, metadata, data, OnnxClassifier(data))


@pytest.fixture
def random_windows() -> np.random.Generator:
    return np.random.default_rng(1234)


def torch_outputs(net: WDCNN, x: FloatArray) -> tuple[FloatArray, FloatArray]:
    with torch.no_grad():
        probs, emb = InferenceWrapper(net).eval()(torch.from_numpy(np.ascontiguousarray(x)))
    return probs.numpy(), emb.numpy()


def max_abs_diff(a: npt.NDArray[np.floating], b: npt.NDArray[np.floating]) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def tiny_onnx(metadata_json: str | None, input_name: str = "windows") -> bytes:
    """A valid ONNX graph (two Identity nodes) with FedPM's names, built by hand."""
    shape: list[str | int] = ["batch", 1, WINDOW]
    graph = helper.make_graph(
        [
            helper.make_node("Identity", [input_name], ["probabilities"]),
            helper.make_node("Identity", [input_name], ["embedding"]),
        ],
        "not-fedpm",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, shape),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata_json is not None:
        helper.set_model_props(model, {METADATA_KEY: metadata_json})
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


# --- The file --------------------------------------------------------------------------------


def test_file_has_exactly_the_windows_input_and_two_outputs(exported: Exported) -> None:
    # Execute
    graph = onnx.load_from_string(exported.data).graph

    # Assert: names, and a symbolic batch dimension everywhere
    def dims(value: onnx.ValueInfoProto) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert [i.name for i in graph.input] == ["windows"]
    assert [o.name for o in graph.output] == ["probabilities", "embedding"]
    batch = dims(graph.input[0])[0]
    assert isinstance(batch, str)
    assert batch
    assert dims(graph.input[0]) == [batch, 1, WINDOW]
    assert dims(graph.output[0]) == [batch, len(CLASSES)]
    assert dims(graph.output[1]) == [batch, exported.net.config.embedding_dim]


def test_metadata_round_trips_through_the_file(exported: Exported) -> None:
    # Execute
    props = {p.key: p.value for p in onnx.load_from_string(exported.data).metadata_props}
    loaded = OnnxClassifier(exported.data).metadata

    # Assert
    assert ModelMetadata.from_json(props[METADATA_KEY]) == exported.metadata == loaded
    assert loaded.sample_rate_hz == FS
    assert loaded.window_samples == WINDOW
    assert loaded.channels == 1
    assert loaded.class_names == CLASSES
    assert loaded.embedding_dim == 64
    assert loaded.window_seconds == pytest.approx(WINDOW / FS)
    prov = loaded.provenance
    assert prov.source == "federated"
    assert prov.run_id == "run-2024-06-01"
    assert prov.server_round == 3
    assert prov.sites == ("plant-a", "plant-b")
    assert prov.metrics == {"accuracy": 0.875, "loss": 0.41}
    assert prov.created_at  # stamped at export
    assert prov.framework["torch"] == torch.__version__
    assert prov.framework["onnx"] == onnx.__version__
    assert prov.framework["flwr"] == "1.42.0"


def test_classifier_reports_the_input_shape(exported: Exported, tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "model.onnx"
    path.write_bytes(exported.data)

    # Execute
    classifier = OnnxClassifier.from_path(path)

    # Assert
    assert classifier.input_shape == (1, WINDOW)
    assert classifier.metadata == exported.metadata


# --- torch and onnxruntime agree -------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2, 7, 33])
def test_onnxruntime_matches_torch_on_random_windows(
    exported: Exported, random_windows: np.random.Generator, batch: int
) -> None:
    # Prepare: noise of a few g with a DC offset, as an unfiltered accelerometer gives
    x = (0.5 + 2.0 * random_windows.standard_normal((batch, 1, WINDOW))).astype(np.float32)
    expected_probs, expected_emb = torch_outputs(exported.net, x)

    # Execute
    got = exported.classifier.predict(x)

    # Assert
    assert got.probabilities.shape == (batch, len(CLASSES))
    assert got.embedding.shape == (batch, 64)
    assert max_abs_diff(got.probabilities, expected_probs) <= TOL
    assert max_abs_diff(got.embedding, expected_emb) <= TOL
    np.testing.assert_allclose(got.probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 33, len(CLASSES) * PER_CLASS])
def test_onnxruntime_matches_torch_on_real_windows(
    exported: Exported, real_windows: FloatArray, batch: int
) -> None:
    # Prepare: windows of every class, including ones the model never trained on
    x = real_windows[np.random.default_rng(batch).permutation(len(real_windows))[:batch]]
    expected_probs, expected_emb = torch_outputs(exported.net, x)

    # Execute
    got = exported.classifier.predict(x)

    # Assert
    assert max_abs_diff(got.probabilities, expected_probs) <= TOL
    assert max_abs_diff(got.embedding, expected_emb) <= TOL
    np.testing.assert_allclose(got.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.all((got.probabilities >= 0) & (got.probabilities <= 1))


def test_one_window_without_a_batch_axis_is_a_batch_of_one(
    exported: Exported, real_windows: FloatArray
) -> None:
    # Prepare
    window = real_windows[PER_CLASS]  # (channels, samples)

    # Execute
    single = exported.classifier.predict(window)
    batched = exported.classifier.predict(window[np.newaxis])

    # Assert
    np.testing.assert_array_equal(single.probabilities, batched.probabilities)
    assert single.probabilities.shape == (1, len(CLASSES))


def test_batch_results_do_not_depend_on_the_other_windows(
    exported: Exported, real_windows: FloatArray
) -> None:
    # Execute: BatchNorm in eval mode must not mix windows of one batch
    whole = exported.classifier.predict(real_windows)
    one_by_one = np.concatenate(
        [exported.classifier.predict(w).probabilities for w in real_windows[::7]]
    )

    # Assert
    assert max_abs_diff(whole.probabilities[::7], one_by_one) <= 1e-6


# --- Gain invariance (the in-graph per-window standardisation) --------------------------------


@pytest.mark.parametrize("gain", [10.0, 100.0])
def test_probabilities_do_not_depend_on_sensor_gain(
    exported: Exported, random_windows: np.random.Generator, gain: float
) -> None:
    # Prepare
    x = random_windows.standard_normal((8, 1, WINDOW)).astype(np.float32)

    # Execute
    base = exported.classifier.predict(x).probabilities
    scaled = exported.classifier.predict(gain * x).probabilities

    # Assert
    assert max_abs_diff(scaled, base) <= TOL


def test_probabilities_do_not_depend_on_sensor_gain_for_real_windows(
    exported: Exported, real_windows: FloatArray
) -> None:
    # Prepare: a 10x more sensitive sensor, and quieter machines (0.1x, 0.01x)
    base = exported.classifier.predict(real_windows).probabilities

    # Execute
    diffs = {
        gain: max_abs_diff(exported.classifier.predict(gain * real_windows).probabilities, base)
        for gain in (10.0, 0.1, 0.01)
    }

    # Assert
    assert max(diffs.values()) <= TOL, diffs


# --- The runtime refuses what it cannot run --------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        (2, 1, WINDOW - 1),
        (2, 1, WINDOW + 1),
        (2, 2, WINDOW),
        (0, 1, WINDOW),
        (WINDOW,),
        (1, 1, 1, WINDOW),
        (1, WINDOW, 1),
    ],
)
def test_classifier_refuses_wrong_shapes(exported: Exported, shape: tuple[int, ...]) -> None:
    with pytest.raises(ModelFormatError):
        exported.classifier.predict(np.zeros(shape, np.float32))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_classifier_refuses_non_finite_samples(exported: Exported, bad: float) -> None:
    # Prepare: one bad sample in the second window
    x = np.ones((3, 1, WINDOW), np.float32)
    x[1, 0, 100] = bad

    # Execute / Assert
    with pytest.raises(ModelFormatError):
        exported.classifier.predict(x)


def test_classifier_refuses_a_model_without_fedpm_metadata() -> None:
    # Prepare
    data = tiny_onnx(metadata_json=None)

    # Execute / Assert
    with pytest.raises(ModelFormatError, match="metadata"):
        OnnxClassifier(data)


def test_classifier_refuses_invalid_metadata_json(exported: Exported) -> None:
    # Prepare: the real model with its metadata cut short
    proto = onnx.load_from_string(exported.data)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = prop.value[: len(prop.value) // 2]

    # Execute / Assert
    with pytest.raises(ModelFormatError, match="metadata"):
        OnnxClassifier(proto.SerializeToString())


@pytest.mark.parametrize(
    "change",
    [
        {"channels": 0},
        {"sample_rate_hz": -12_000.0},
        {"class_names": ["normal"]},
        {"class_names": ["ball", "normal"]},
        {"unexpected": True},
    ],
)
def test_classifier_refuses_metadata_that_breaks_the_schema(
    exported: Exported, change: dict[str, object]
) -> None:
    # Prepare
    meta = json.loads(exported.metadata.to_json())
    meta.update(change)

    # Execute / Assert
    with pytest.raises(ModelFormatError):
        OnnxClassifier(tiny_onnx(json.dumps(meta)))


def test_classifier_refuses_a_graph_that_breaks_the_io_contract(exported: Exported) -> None:
    # Prepare: valid metadata, but the graph's input has another name
    data = tiny_onnx(exported.metadata.to_json(), input_name="x")

    # Execute / Assert
    with pytest.raises(ModelFormatError):
        OnnxClassifier(data)


@pytest.mark.parametrize("data", [b"", b"not an onnx model", b"\x08\x07" * 50])
def test_classifier_refuses_bytes_that_are_not_onnx(data: bytes) -> None:
    with pytest.raises(ModelFormatError):
        OnnxClassifier(data)


# --- Export and prediction helpers ------------------------------------------------------------


def test_export_leaves_the_training_mode_as_it_was() -> None:
    # Prepare
    net = build_model(seed=1)
    net.train()
    meta = metadata_for(net, sample_rate_hz=FS, class_names=CLASSES, provenance=PROVENANCE)

    # Execute
    data = export_onnx(net, meta)

    # Assert
    assert net.training
    assert OnnxClassifier(data).metadata == meta


def test_export_refuses_metadata_for_another_shape() -> None:
    # Prepare
    net = build_model(seed=1)
    meta = metadata_for(net, sample_rate_hz=FS, class_names=CLASSES, provenance=PROVENANCE)
    other = meta.model_copy(update={"window_samples": 1024})

    # Execute / Assert
    with pytest.raises(ValueError, match="shape"):
        export_onnx(net, other)


def test_metadata_for_refuses_the_wrong_number_of_classes() -> None:
    with pytest.raises(ValueError, match="class"):
        metadata_for(
            build_model(seed=1),
            sample_rate_hz=FS,
            class_names=("normal", "faulty"),
            provenance=PROVENANCE,
        )


def test_prediction_names_classes_and_failure_probability(exported: Exported) -> None:
    # Prepare
    x = np.random.default_rng(5).standard_normal((4, 1, WINDOW)).astype(np.float32)

    # Execute
    pred = exported.classifier.predict(x)

    # Assert
    assert pred.predicted == [CLASSES[i] for i in pred.probabilities.argmax(axis=1)]
    np.testing.assert_allclose(
        pred.failure_probability(), 1.0 - pred.probabilities[:, 0], atol=1e-6
    )
    np.testing.assert_array_equal(pred.failure_probability("healthy"), np.ones(4, np.float32))


def test_too_short_windows_are_refused_up_front() -> None:
    # Execute / Assert
    with pytest.raises(SignalError, match="512"):
        NetworkConfig(window_samples=496)


@pytest.mark.parametrize("window", [512, 1024, 4096])
def test_every_accepted_window_length_runs(window: int) -> None:
    # Prepare
    net = build_model(NetworkConfig(window_samples=window), seed=2).eval()

    # Execute
    with torch.no_grad():
        logits, embedding = net(torch.zeros(2, 1, window))

    # Assert
    assert logits.shape == (2, 4)
    assert embedding.shape == (2, 64)
