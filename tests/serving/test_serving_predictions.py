"""Successful predictions: single, batch, channel forms, units and resampling."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from models.registry import FileRegistry, sha256_hex
from models.runtime import OnnxClassifier
from models.windows import fit_length, resample

CLASSES = ["normal", "inner_race", "outer_race", "ball"]


@pytest.fixture(scope="module")
def reference(served_registry: Path) -> OnnxClassifier:
    """The served model, opened directly with the shared runtime."""
    _card, data = FileRegistry(served_registry).load_verified(1)
    return OnnxClassifier(data)


def test_single_window(client, window, served_registry: Path):
    # Prepare
    card = FileRegistry(served_registry).card(1)
    assert client.put("/v1/assets/pump-17", json={"site": "plant-a"}).status_code in (200, 201)

    # Execute
    response = client.post(
        "/v1/predictions",
        json={"sample_rate_hz": 12000, "windows": [window()], "asset_id": "pump-17"},
    )

    # Assert
    assert response.status_code == 200
    body = response.json()
    assert body["model_version"] == card.label == "v1"
    assert body["model_sha256"] == card.sha256
    assert body["asset_id"] == "pump-17"
    [pred] = body["predictions"]
    assert list(pred["probabilities"]) == CLASSES
    assert math.isclose(sum(pred["probabilities"].values()), 1.0, abs_tol=1e-5)
    assert pred["predicted_class"] == max(pred["probabilities"], key=pred["probabilities"].get)
    assert math.isclose(
        pred["failure_probability"], 1 - pred["probabilities"]["normal"], abs_tol=1e-6
    )


def test_reported_sha256_is_the_served_file(client, window, served_registry: Path):
    # Prepare
    model_file = served_registry / "versions" / "000001" / "model.onnx"

    # Execute
    body = client.post(
        "/v1/predictions", json={"sample_rate_hz": 12000, "windows": [window()]}
    ).json()

    # Assert
    assert body["model_sha256"] == sha256_hex(model_file.read_bytes())


def test_batch_agrees_with_onnx_classifier(client, window, reference: OnnxClassifier):
    # Prepare
    windows = [window(seed=s, freq=100.0 + 40 * s, amp=0.1 * (s + 1)) for s in range(5)]
    expected = reference.predict(np.asarray(windows, dtype=np.float32)[:, np.newaxis, :])

    # Execute
    response = client.post("/v1/predictions", json={"sample_rate_hz": 12000, "windows": windows})

    # Assert
    assert response.status_code == 200
    preds = response.json()["predictions"]
    assert len(preds) == 5
    got = np.array([[p["probabilities"][c] for c in CLASSES] for p in preds])
    np.testing.assert_allclose(got, expected.probabilities, rtol=1e-6, atol=1e-7)
    assert [p["predicted_class"] for p in preds] == expected.predicted
    for p in preds:
        assert math.isclose(sum(p["probabilities"].values()), 1.0, abs_tol=1e-5)


def test_channel_list_form_equals_flat_form(client, window):
    # Prepare
    samples = window(seed=3)

    # Execute
    flat = client.post("/v1/predictions", json={"sample_rate_hz": 12000, "windows": [samples]})
    nested = client.post("/v1/predictions", json={"sample_rate_hz": 12000, "windows": [[samples]]})

    # Assert
    assert flat.status_code == nested.status_code == 200
    assert flat.json()["predictions"] == nested.json()["predictions"]


def test_integer_samples_are_numbers(client):
    # Prepare: JSON integers are valid samples
    samples = [(i % 7) - 3 for i in range(2048)]

    # Execute
    response = client.post("/v1/predictions", json={"sample_rate_hz": 12000, "windows": [samples]})

    # Assert
    assert response.status_code == 200


def test_metres_per_second_squared_are_converted_to_g(client, window):
    # Prepare: 500,000 g is within the accepted range, 5,000,000 g is not; 4.9e6 m/s^2 is
    # only 499,661 g, so it passes only if it is converted before the range check.
    big = (np.asarray(window()) * 4.9e6 / 0.7).tolist()

    # Execute
    as_si = client.post(
        "/v1/predictions", json={"sample_rate_hz": 12000, "units": "m/s^2", "windows": [big]}
    )
    as_g = client.post("/v1/predictions", json={"sample_rate_hz": 12000, "windows": [big]})

    # Assert
    assert as_si.status_code == 200, as_si.text
    assert as_g.status_code == 422
    assert "check the units" in as_g.json()["detail"]


def test_24khz_window_is_resampled_for_12khz_model(client, window, reference: OnnxClassifier):
    # Prepare: 4096 samples at 24 kHz cover the model's 2048 samples at 12 kHz
    samples = window(n=4096, fs=24_000.0, freq=211.0)
    x = np.asarray(samples, dtype=np.float32)[np.newaxis, np.newaxis, :]
    expected = reference.predict(fit_length(resample(x, 24_000.0, 12_000.0), 2048))

    # Execute
    response = client.post("/v1/predictions", json={"sample_rate_hz": 24000, "windows": [samples]})

    # Assert
    assert response.status_code == 200, response.text
    [pred] = response.json()["predictions"]
    got = [pred["probabilities"][c] for c in CLASSES]
    np.testing.assert_allclose(got, expected.probabilities[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", [4095, 4097])
def test_resampling_tolerates_one_sample(client, window, n: int):
    # Execute
    response = client.post(
        "/v1/predictions", json={"sample_rate_hz": 24000, "windows": [window(n=n, fs=24_000.0)]}
    )

    # Assert
    assert response.status_code == 200, response.text
