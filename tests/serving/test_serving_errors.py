"""Every invalid request gets a 4xx with a message a person understands, never a 500."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

HEADERS = {"content-type": "application/json"}


def _post_raw(client, text: str):
    return client.post("/v1/predictions", content=text.encode(), headers=HEADERS)


def _window_text(n: int = 2048, value: str = "0.1") -> str:
    return "[" + ",".join([value] * n) + "]"


@pytest.mark.parametrize(
    ("token", "expected"),
    [("NaN", "finite number"), ("Infinity", "finite number"), ("-Infinity", "finite number")],
)
def test_non_finite_samples_are_422(client, token: str, expected: str):
    # Prepare: Python's json parser accepts these non-standard tokens
    samples = ["0.1"] * 2048
    samples[17] = token
    text = '{"sample_rate_hz": 12000, "windows": [[' + ",".join(samples) + "]]}"

    # Execute
    response = _post_raw(client, text)

    # Assert
    assert response.status_code == 422
    body = response.json()
    assert body["detail"] == f"windows[0][17]: Input should be a {expected}"
    assert body["errors"] == [
        {"loc": ["windows", 0, 17], "msg": f"Input should be a {expected}", "type": "finite_number"}
    ]


def test_huge_number_overflowing_to_inf_is_422(client):
    # Prepare: json turns 1e400 into float('inf')
    text = '{"sample_rate_hz": 12000, "windows": [' + _window_text(value="1e400") + "]}"

    # Execute
    response = _post_raw(client, text)

    # Assert
    assert response.status_code == 422
    assert "finite number" in response.json()["detail"]


def test_many_bad_samples_report_a_bounded_list(client):
    # Prepare
    text = '{"sample_rate_hz": 12000, "windows": [' + _window_text(value="NaN") + "]}"

    # Execute
    response = _post_raw(client, text)

    # Assert
    assert response.status_code == 422
    body = response.json()
    assert len(body["errors"]) == 20
    assert body["detail"].endswith("(and 2047 more problem(s))")
    assert len(response.content) < 5000  # the input is not echoed back


W = [0.1] * 2048
_MISSING = object()


def _req(windows=_MISSING, **fields) -> dict:
    payload = {"sample_rate_hz": 12000, "windows": [W] if windows is _MISSING else windows}
    payload.update(fields)
    return {k: v for k, v in payload.items() if v is not _MISSING}


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        pytest.param(
            _req([[0.1] * 2000]),
            "windows have 2000 samples; the model takes 2048 samples at 12000 Hz (170.7 ms)",
            id="wrong-length",
        ),
        pytest.param(
            _req([[W, W]]), "windows have 2 channel(s); the model takes 1", id="wrong-channels"
        ),
        pytest.param(
            _req([W, W[:-1]]),
            "window 1 has 1 channel(s) of 2047 samples but window 0 has 1 channel(s) of 2048",
            id="ragged-batch",
        ),
        pytest.param(
            _req([[W, W[:2000]]]),
            "window 0: channels have different lengths [2048, 2000]",
            id="ragged-channels",
        ),
        pytest.param(_req([[]]), "window 0 holds no samples", id="empty-window"),
        pytest.param(_req([]), "windows: List should have at least 1 item", id="empty-list"),
        pytest.param(
            _req([[0.1, [0.2]]]), "windows[0][1]: Input should be a valid number", id="mixed-forms"
        ),
        pytest.param(
            _req([["0.1"] * 2048]), "windows[0][0]: Input should be a valid number", id="strings"
        ),
        pytest.param(
            _req([[True] * 2048]), "windows[0][0]: Input should be a valid number", id="booleans"
        ),
        pytest.param(_req("abc"), "windows: Input should be a valid list", id="windows-not-list"),
        pytest.param(
            _req(units="mm/s"), "units: Input should be 'g' or 'm/s^2'", id="unsupported-units"
        ),
        pytest.param(
            _req(sample_rate_hz=0), "sample_rate_hz: Input should be greater than 0", id="zero-rate"
        ),
        pytest.param(
            _req(sample_rate_hz="12000"),
            "sample_rate_hz: Input should be a valid number",
            id="string-rate",
        ),
        pytest.param(
            _req(sample_rate_hz=_MISSING), "sample_rate_hz: Field required", id="missing-rate"
        ),
        pytest.param(
            _req(unit="m/s^2"), "unit: Extra inputs are not permitted", id="misspelt-field"
        ),
        pytest.param(
            _req([[1e7] * 2048]), "window 0 has samples beyond ±1,000,000 g", id="too-large"
        ),
        pytest.param(
            _req([[1e300] * 2048]),
            "window 0 has samples beyond ±1,000,000 g",
            id="float32-overflow",
        ),
    ],
)
def test_invalid_input_is_422_with_message(client, payload: dict, fragment: str):
    # Execute
    response = client.post("/v1/predictions", json=payload)

    # Assert
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"]


def test_11khz_window_of_model_length_is_refused(client):
    # Execute
    response = client.post(
        "/v1/predictions", json={"sample_rate_hz": 11000, "windows": [[0.1] * 2048]}
    )

    # Assert
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "windows of 2048 samples at 11000 Hz last 186.2 ms, but the model takes 2048 samples at"
        " 12000 Hz (170.7 ms); at 11000 Hz send windows of 1877 samples"
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"sample_rate_hz": 12000, "windows": [[0.1, 0.2]', "request body: not valid JSON"),
        ("", "request body: Field required"),
        ("[1, 2]", "request body: must be a JSON object"),
        ('{"windows": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ('{"windows": [[1' + "0" * 5000 + "]]}", "a number has more than 4300 digits"),
    ],
    ids=["truncated", "empty", "not-an-object", "deep-nesting", "long-integer"],
)
def test_malformed_body_is_422(client, text: str, fragment: str):
    # Execute
    response = _post_raw(client, text)

    # Assert
    assert response.status_code == 422
    assert fragment in response.json()["detail"]


@pytest.mark.parametrize(
    "text",
    [
        "null",
        '"windows"',
        "{}",
        '{"sample_rate_hz": null, "windows": null}',
        '{"sample_rate_hz": 1e-300, "windows": [[0.1]]}',
        '{"sample_rate_hz": 1e300, "windows": [[0.1]]}',
        '{"sample_rate_hz": 12000, "windows": [{"x": 1}]}',
        '{"sample_rate_hz": 12000, "windows": [[[[0.1]]]]}',
        '{"sample_rate_hz": 12000, "windows": [[0.1]], "asset_id": 7}',
        '{"sample_rate_hz": 12000, "windows": [[0.1]], "asset_id": ""}',
    ],
)
def test_odd_bodies_are_422_never_5xx(client, text: str):
    # Execute
    response = _post_raw(client, text)

    # Assert
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_body_not_utf8_is_422(client):
    # Execute
    response = client.post("/v1/predictions", content=b"\xff\xfe{", headers=HEADERS)

    # Assert
    assert response.status_code == 422
    assert response.json()["detail"] == "request body: not valid JSON: the body is not UTF-8 text"


def test_non_json_content_type_is_422(client):
    # Execute
    response = client.post(
        "/v1/predictions",
        content=json.dumps({"sample_rate_hz": 12000, "windows": [W]}),
        headers={"content-type": "text/plain"},
    )

    # Assert
    assert response.status_code == 422
    assert "sent with 'Content-Type: application/json'" in response.json()["detail"]


def test_too_many_windows_states_the_limit(tmp_path: Path, served_registry: Path, make_client):
    # Prepare
    client = make_client(served_registry, max_windows_per_request=3)

    # Execute
    response = client.post(
        "/v1/predictions", json={"sample_rate_hz": 12000, "windows": [[0.1] * 2048] * 4}
    )

    # Assert
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "4 windows in one request; the limit is 3. Split the batch into several requests."
    )


def test_the_window_limit_comes_from_the_settings(served_registry: Path, make_client):
    # Prepare
    client = make_client(served_registry, max_windows_per_request=1)

    # Execute
    response = client.post(
        "/v1/predictions", json={"sample_rate_hz": 12000, "windows": [[0.1] * 2048] * 2}
    )

    # Assert
    assert response.status_code == 422
    assert "the limit is 1" in response.json()["detail"]


def test_declared_body_over_limit_is_413(served_registry: Path, make_client):
    # Prepare
    client = make_client(served_registry, max_body_bytes=4096)
    text = json.dumps({"sample_rate_hz": 12000, "windows": [[0.1] * 2048]})

    # Execute
    response = _post_raw(client, text)

    # Assert
    assert response.status_code == 413
    assert response.json()["detail"].startswith("request body exceeds the limit of 4096 bytes")


def test_streamed_body_over_limit_is_413(served_registry: Path, make_client):
    # Prepare: a chunked upload declares no Content-Length
    client = make_client(served_registry, max_body_bytes=4096)

    def chunks():
        yield b'{"sample_rate_hz": 12000, "windows": [['
        for _ in range(100):
            yield b"0.1," * 100

    # Execute
    response = client.post("/v1/predictions", content=chunks(), headers=HEADERS)

    # Assert
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413


def test_streamed_body_under_limit_is_served(served_registry: Path, make_client):
    # Prepare
    client = make_client(served_registry, max_body_bytes=64 * 1024)
    text = json.dumps({"sample_rate_hz": 12000, "windows": [[0.1] * 2048]}).encode()

    # Execute
    response = client.post(
        "/v1/predictions",
        content=(text[i : i + 1000] for i in range(0, len(text), 1000)),
        headers=HEADERS,
    )

    # Assert
    assert response.status_code == 200, response.text
