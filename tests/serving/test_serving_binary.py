"""``POST /v1/predictions/binary``: raw little-endian float32 windows, shape in the query."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

FS = 12_000
OCTETS = {"Content-Type": "application/octet-stream"}
WindowFactory = Callable[..., list[float]]


def _params(**extra: object) -> dict[str, object]:
    return {"sample_rate_hz": FS, "windows": 2, "samples": 2048, **extra}


def test_binary_and_json_bodies_give_the_same_predictions(
    client: Any, window: WindowFactory
) -> None:
    # Prepare
    windows = [window(seed=1), window(seed=2, freq=300.0)]
    raw = np.asarray(windows, dtype="<f4").tobytes()

    # Execute
    binary = client.post("/v1/predictions/binary", params=_params(), content=raw, headers=OCTETS)
    as_json = client.post(
        "/v1/predictions",
        json={"sample_rate_hz": FS, "windows": np.asarray(windows, np.float32).tolist()},
    )

    # Assert: same model, same classes, same probabilities (the JSON floats are the float32s)
    assert binary.status_code == 200, binary.text
    got, want = binary.json(), as_json.json()
    assert got["model_sha256"] == want["model_sha256"]
    for a, b in zip(got["predictions"], want["predictions"], strict=True):
        assert a["predicted_class"] == b["predicted_class"]
        for name, p in a["probabilities"].items():
            assert p == pytest.approx(b["probabilities"][name], abs=1e-6)


def test_a_binary_body_at_another_rate_is_resampled(client: Any, window: WindowFactory) -> None:
    # Prepare: the same duration at 24 kHz
    raw = np.asarray([window(n=4096, fs=24_000.0)], dtype="<f4").tobytes()

    # Execute
    response = client.post(
        "/v1/predictions/binary",
        params={"sample_rate_hz": 24_000, "windows": 1, "samples": 4096},
        content=raw,
        headers=OCTETS,
    )

    # Assert
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 1


@pytest.mark.parametrize(
    ("params", "body", "status", "message"),
    [
        (_params(), b"\x00" * 100, 422, "the body holds 100 bytes"),
        (_params(channels=2), np.zeros(2 * 2 * 2048, "<f4").tobytes(), 422, "channel"),
        (
            _params(),
            np.full(2 * 2048, np.nan, "<f4").tobytes(),
            422,
            "NaN or infinite",
        ),
        ({"windows": 2, "samples": 2048}, np.zeros(4096, "<f4").tobytes(), 422, "sample_rate_hz"),
        (_params(sample_rate_hz=0), np.zeros(4096, "<f4").tobytes(), 422, "sample_rate_hz"),
        (_params(units="furlongs"), np.zeros(4096, "<f4").tobytes(), 422, "units"),
    ],
)
def test_bad_binary_requests_get_a_422_that_says_why(
    client: Any, params: dict[str, object], body: bytes, status: int, message: str
) -> None:
    response = client.post("/v1/predictions/binary", params=params, content=body, headers=OCTETS)
    assert response.status_code == status
    assert message in response.text


def test_a_binary_route_refuses_json(client: Any) -> None:
    response = client.post("/v1/predictions/binary", params=_params(), json={"windows": [[0.0]]})
    assert response.status_code == 415
    assert "application/octet-stream" in response.json()["detail"]


def test_a_binary_route_needs_a_key(client: Any) -> None:
    response = client.post(
        "/v1/predictions/binary",
        params=_params(),
        content=b"",
        headers={**OCTETS, "Authorization": ""},
    )
    assert response.status_code == 401
