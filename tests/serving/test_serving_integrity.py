"""A model whose bytes do not match its card is never loaded; the previous version serves."""

from __future__ import annotations

import logging
import threading

import pytest

import serving.predictor as predictor_module
from models.registry import FileRegistry, sha256_hex
from models.runtime import OnnxClassifier
from serving.errors import ModelNotLoadedError
from serving.predictor import Predictor, load_model


def _model_file(registry: FileRegistry, version: int):
    return registry.root / "versions" / f"{version:06d}" / "model.onnx"


def test_newest_version_is_served(two_versions: FileRegistry, make_client):
    # Prepare
    card = two_versions.card(2)

    # Execute
    client = make_client(two_versions.root)
    current = client.get("/v1/models/current").json()

    # Assert
    assert current["version"] == "v2"
    assert current["sha256"] == card.sha256


def test_tampered_newest_version_is_refused_previous_serves(
    two_versions: FileRegistry, make_client, flip_byte, window, caplog
):
    # Prepare
    flip_byte(_model_file(two_versions, 2))
    v1 = two_versions.card(1)

    # Execute
    with caplog.at_level(logging.ERROR, logger="serving.predictor"):
        client = make_client(two_versions.root)
    ready = client.get("/ready")
    predicted = client.post(
        "/v1/predictions", json={"sample_rate_hz": 12000, "windows": [window()]}
    )

    # Assert
    assert ready.status_code == 200
    assert ready.json()["model_version"] == "v1"
    assert predicted.status_code == 200
    assert predicted.json()["model_version"] == "v1"
    assert (
        predicted.json()["model_sha256"]
        == v1.sha256
        == sha256_hex(_model_file(two_versions, 1).read_bytes())
    )
    refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refusals) == 1
    assert "refusing model version v2" in refusals[0]
    assert "does not match its card" in refusals[0]


def test_only_version_tampered_means_not_ready(tmp_path, exported, make_client, flip_byte, window):
    # Prepare
    registry = FileRegistry(tmp_path / "registry")
    registry.publish(exported.first, exported.metadata)
    flip_byte(_model_file(registry, 1))

    # Execute
    client = make_client(registry.root)

    # Assert
    assert client.get("/health").json()["model_loaded"] is False
    assert client.get("/ready").status_code == 503
    predicted = client.post(
        "/v1/predictions", json={"sample_rate_hz": 12000, "windows": [window()]}
    )
    assert predicted.status_code == 503


def test_refused_bytes_never_reach_onnxruntime(two_versions: FileRegistry, flip_byte, monkeypatch):
    # Prepare
    flip_byte(_model_file(two_versions, 2))
    tampered = _model_file(two_versions, 2).read_bytes()
    opened: list[bytes] = []

    class RecordingClassifier(OnnxClassifier):
        def __init__(self, model_bytes: bytes, **kwargs):
            opened.append(model_bytes)
            super().__init__(model_bytes, **kwargs)

    monkeypatch.setattr(predictor_module, "OnnxClassifier", RecordingClassifier)

    # Execute
    predictor = Predictor.from_registry(two_versions)

    # Assert
    assert predictor.current().card.version == 1
    assert opened == [_model_file(two_versions, 1).read_bytes()]
    assert tampered not in opened


def test_verified_but_unloadable_version_is_refused(two_versions: FileRegistry, exported, caplog):
    # Prepare: a sha256-consistent version that is not an ONNX model
    two_versions.publish(b"not an onnx model", exported.metadata)

    # Execute
    with caplog.at_level(logging.ERROR, logger="serving.predictor"):
        predictor = Predictor.from_registry(two_versions)

    # Assert
    assert predictor.current().card.version == 2
    assert any("refusing model version v3" in r.getMessage() for r in caplog.records)


def test_every_version_refused_raises(two_versions: FileRegistry, flip_byte):
    # Prepare
    flip_byte(_model_file(two_versions, 1))
    flip_byte(_model_file(two_versions, 2))

    # Execute / Assert
    with pytest.raises(ModelNotLoadedError, match="refused v2, v1"):
        Predictor.from_registry(two_versions)


def test_swap_replaces_model_and_returns_previous(two_versions: FileRegistry):
    # Prepare
    card1, data1 = two_versions.load_verified(1)
    predictor = Predictor.from_registry(two_versions)
    older = load_model(card1, data1)

    # Execute
    previous = predictor.swap(older)

    # Assert
    assert previous is not None
    assert previous.card.version == 2
    assert predictor.current() is older


def test_predictions_during_swaps_each_use_one_version(two_versions: FileRegistry, window):
    # Prepare
    models = [load_model(*two_versions.load_verified(v)) for v in (1, 2)]
    predictor = Predictor(models[0])
    reference = {
        m.card.version: m.classifier.predict([[window()]]).probabilities.tolist() for m in models
    }
    mismatches: list[int] = []
    stop = threading.Event()

    def predict_loop() -> None:
        while not stop.is_set():
            result = predictor.predict([window()], 12000.0)
            if result.prediction.probabilities.tolist() != reference[result.model.card.version]:
                mismatches.append(result.model.card.version)

    threads = [threading.Thread(target=predict_loop) for _ in range(2)]

    # Execute
    for t in threads:
        t.start()
    for i in range(50):
        predictor.swap(models[i % 2])
    stop.set()
    for t in threads:
        t.join(timeout=10)

    # Assert
    assert mismatches == []
