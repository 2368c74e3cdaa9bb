"""Health, readiness, model card and OpenAPI contract of the serving API."""

from __future__ import annotations

from pathlib import Path

from models.registry import FileRegistry, sha256_hex


def test_health_reports_loaded_model(client):
    # Execute
    response = client.get("/health")

    # Assert
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model_loaded": True, "model_version": "v1"}


def test_ready_once_model_loaded(client):
    # Execute
    response = client.get("/ready")

    # Assert
    assert response.status_code == 200
    assert response.json()["model_version"] == "v1"


def test_current_model_is_public_card(client, served_registry: Path):
    # Prepare
    card = FileRegistry(served_registry).card(1)

    # Execute
    response = client.get("/v1/models/current")

    # Assert
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "version": "v1",
        "created_at": card.created_at,
        "sha256": card.sha256,
        "run_id": "run-test",
        "server_round": 3,
        "sites": ["site-a", "site-b"],
        "metrics": {"accuracy": 0.53},
        "site_metrics": {"site-a": {"accuracy": 0.5}, "site-b": {"accuracy": 0.6}},
        "class_names": ["normal", "inner_race", "outer_race", "ball"],
        "sample_rate_hz": 12000.0,
        "window_samples": 2048,
        "channels": 1,
        "units": "g",
    }
    model_file = served_registry / "versions" / "000001" / "model.onnx"
    assert body["sha256"] == sha256_hex(model_file.read_bytes())


def test_empty_registry_is_live_but_not_ready(tmp_path: Path, make_client, window):
    # Prepare
    client = make_client(tmp_path / "empty-registry")

    # Execute
    health = client.get("/health")
    ready = client.get("/ready")
    current = client.get("/v1/models/current")
    predicted = client.post(
        "/v1/predictions", json={"sample_rate_hz": 12000, "windows": [window()]}
    )

    # Assert
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "model_loaded": False, "model_version": None}
    for response in (ready, current, predicted):
        assert response.status_code == 503
        assert "no verified model is loaded" in response.json()["detail"]


def test_operation_ids_are_stable(client):
    # Execute
    spec = client.get("/openapi.json").json()

    # Assert
    operations = {
        (path, method): op["operationId"]
        for path, item in spec["paths"].items()
        for method, op in item.items()
    }
    assert operations == {
        ("/v1/predictions", "post"): "create_predictions",
        ("/v1/predictions/binary", "post"): "create_predictions_binary",
        ("/v1/models/current", "get"): "get_current_model",
        ("/v1/models", "get"): "list_models",
        ("/v1/models/{version}", "get"): "get_model",
        ("/v1/assets/{asset_id}", "put"): "put_asset",
        ("/v1/assets/{asset_id}", "get"): "get_asset",
        ("/v1/assets", "get"): "list_assets",
        ("/v1/baselines/{asset_id}", "put"): "fit_baseline",
        ("/v1/baselines/{asset_id}", "get"): "get_baseline",
        ("/v1/webhooks/{webhook_id}", "put"): "put_webhook",
        ("/v1/webhooks/{webhook_id}", "get"): "get_webhook",
        ("/v1/webhooks/{webhook_id}", "delete"): "delete_webhook",
        ("/v1/webhooks", "get"): "list_webhooks",
        ("/v1/rules/{rule_id}", "put"): "put_rule",
        ("/v1/rules/{rule_id}", "get"): "get_rule",
        ("/v1/rules/{rule_id}", "delete"): "delete_rule",
        ("/v1/rules", "get"): "list_rules",
        ("/v1/maintenance-requests", "get"): "list_maintenance_requests",
        ("/v1/maintenance-requests/{request_id}", "get"): "get_maintenance_request",
        ("/v1/maintenance-requests/{request_id}/close", "post"): "close_maintenance_request",
        ("/v1/labels", "get"): "list_labels",
        ("/v1/failure-codes", "put"): "put_failure_codes",
        ("/v1/failure-codes", "get"): "get_failure_codes",
        ("/v1/dead-letters", "get"): "list_dead_letters",
        ("/v1/dead-letters/{dead_letter_id}/retry", "post"): "retry_dead_letter",
        ("/health", "get"): "get_health",
        ("/ready", "get"): "get_ready",
        ("/metrics", "get"): "get_metrics",
    }
    responses = spec["paths"]["/v1/predictions"]["post"]["responses"]
    assert {"200", "401", "403", "413", "422", "429", "503"} <= set(responses)
    schemes = spec["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}
    # every /v1 operation asks for a key, by either scheme; the probes ask for none
    either = [{name: []} for name in schemes]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            expected = either if path.startswith("/v1/") else None
            assert operation.get("security") == expected, (method, path)
    binary = spec["paths"]["/v1/predictions/binary"]["post"]["parameters"]
    assert {p["name"] for p in binary if p["required"]} == {"sample_rate_hz", "windows", "samples"}
