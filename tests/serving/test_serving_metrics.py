"""``GET /metrics``: what the serving API tells Prometheus, read back with Prometheus's parser."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

WindowFactory = Callable[..., list[float]]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_count_requests_errors_windows_and_name_the_model(
    make_client: Callable[..., object], served_registry: Path, window: WindowFactory
) -> None:
    # Prepare: a fresh app, so the counts start at zero
    client = make_client(served_registry, max_body_bytes=200 * 1024)
    body = {"sample_rate_hz": 12000, "windows": [window(), window(seed=1)]}
    assert client.post("/v1/predictions", json=body).status_code == 200
    assert client.get("/v1/assets/nope").status_code == 404
    assert client.post("/v1/predictions", json={"windows": []}).status_code == 422
    too_big = {"sample_rate_hz": 12000, "windows": [window()] * 8}
    assert client.post("/v1/predictions", json=too_big).status_code == 413
    assert client.get("/v1/assets", headers={"Authorization": "Bearer x"}).status_code == 401

    # Execute: no key needed
    response = client.get("/metrics", headers={"Authorization": ""})

    # Assert
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    got = _samples(response.text)

    def requests(route: str, method: str, status: str) -> float:
        key = (("method", method), ("route", route), ("status", status))
        return got.get(("fedpm_serving_requests_total", key), 0.0)

    assert requests("/v1/predictions", "POST", "200") == 1
    assert requests("/v1/predictions", "POST", "422") == 1
    assert requests("/v1/predictions", "POST", "413") == 1
    assert requests("/v1/assets/{asset_id}", "GET", "404") == 1  # the template, not the id
    assert requests("/v1/assets", "GET", "401") == 1
    for kind in ("invalid_input", "too_large", "not_found", "unauthorised"):
        assert got[("fedpm_serving_errors_total", (("kind", kind),))] == 1
    assert got[("fedpm_serving_windows_total", ())] == 2
    latency = (("method", "POST"), ("route", "/v1/predictions"))
    assert got[("fedpm_serving_request_seconds_count", latency)] == 3
    assert got[("fedpm_serving_model_loaded", ())] == 1
    info = [labels for (name, labels) in got if name == "fedpm_serving_model_info"]
    assert [dict(labels)["version"] for labels in info] == ["v1"]


def test_metrics_say_when_no_model_is_loaded(
    make_client: Callable[..., object], tmp_path: Path
) -> None:
    # Prepare
    client = make_client(tmp_path / "empty-registry")

    # Execute
    got = _samples(client.get("/metrics").text)

    # Assert
    assert got[("fedpm_serving_model_loaded", ())] == 0
    assert not [name for (name, _) in got if name == "fedpm_serving_model_info"]
