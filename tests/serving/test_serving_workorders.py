"""Webhooks, rules, maintenance requests, labels and dead letters through the real app.

The delivery worker is off here (``delivery_enabled=False``): these tests look at what the
request path writes (requests, outbox rows, labels) in the real SQLite state store.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from serving_helpers import api_key

from serving.integration_sqlite import idempotency_key
from serving.integration_types import OPENED_EVENT
from serving.state import SCHEMA_VERSION, Asset, SqliteStateStore

SECRET = "a-test-secret-of-32-characters!!"
WEBHOOK = {"url": "http://127.0.0.1:9/hook", "format": "json", "secret": SECRET}
# no delivery worker; the operator allows webhooks to this host (serving.egress)
OFFLINE: dict[str, Any] = {"delivery_enabled": False, "webhook_allowed_networks": ("127.0.0.0/8",)}


def _setup(client: Any, rule: dict[str, Any] | None = None, assets: tuple[str, ...] = ()) -> None:
    assert client.put("/v1/webhooks/cmms", json=WEBHOOK).status_code == 201
    body = rule or {"when": {"failure_probability_gte": 0.0}, "webhook_id": "cmms"}
    assert client.put("/v1/rules/always", json=body).status_code == 201
    for asset in assets:
        put = client.put(f"/v1/assets/{asset}", json={"site": "plant-a"})
        assert put.status_code == 201


def _predict(client: Any, window: Callable[..., list[float]], asset: str, n: int = 1, **kw: Any):
    body = {"sample_rate_hz": 12000, "asset_id": asset, "windows": [window()] * n, **kw}
    answer = client.post("/v1/predictions", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _outbox(state: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(state) as conn:
        return conn.execute(
            "SELECT request_id, idempotency_key, status, body FROM outbox ORDER BY outbox_id"
        ).fetchall()


def test_webhook_secret_is_returned_once_and_never_again(make_client, tmp_path, served_registry):
    # Prepare
    client = make_client(served_registry, state_path=tmp_path / "state.sqlite", **OFFLINE)
    headers = {"Authorization": "Basic c2VjcmV0"}

    # Execute
    created = client.put(
        "/v1/webhooks/sap",
        json={"url": "https://erp.example/x", "format": "sap", "headers": headers},
    )
    read = client.get("/v1/webhooks/sap")
    listed = client.get("/v1/webhooks")
    updated = client.put("/v1/webhooks/sap", json={"url": "https://erp.example/y", "format": "sap"})

    # Assert
    assert created.status_code == 201
    assert created.json()["secret"].startswith("whsec_")
    assert read.status_code == 200
    assert read.json()["secret"] is None
    assert read.json()["header_names"] == ["Authorization"]
    assert "c2VjcmV0" not in read.text
    assert "c2VjcmV0" not in listed.text
    assert created.json()["secret"] not in read.text + listed.text + updated.text
    assert updated.status_code == 200
    assert updated.json()["url"] == "https://erp.example/y"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"url": "ftp://erp.example/x"}, "http"),
        ({"url": "https://user:pw@erp.example/x"}, "credentials"),
        ({"url": "https://erp.example/x", "secret": "short"}, "secret"),
        ({"url": "https://erp.example/x", "headers": {"Idempotency-Key": "x"}}, "set by FedPM"),
        ({"url": "https://erp.example/x", "settings": {"maximo_siteid": "X"}}, "do not apply"),
    ],
)
def test_invalid_webhooks_are_refused_with_a_reason(
    make_client, tmp_path, served_registry, body, fragment
):
    # Prepare
    client = make_client(served_registry, state_path=tmp_path / "state.sqlite", **OFFLINE)

    # Execute
    answer = client.put("/v1/webhooks/bad", json=body)

    # Assert
    assert answer.status_code == 422
    assert fragment in answer.json()["detail"]


def test_rules_need_an_existing_webhook_and_a_tenant_wide_key(
    make_client, tmp_path, served_registry
):
    # Prepare
    client = make_client(served_registry, state_path=tmp_path / "state.sqlite", **OFFLINE)
    state = tmp_path / "state.sqlite"
    site_key = api_key(state, sites=["plant-a"])
    rule = {"when": {"iso_zones": ["C", "D"]}, "consecutive": 3, "webhook_id": "nope"}

    # Execute
    missing = client.put("/v1/rules/r1", json=rule)
    empty = client.put("/v1/rules/r1", json={"when": {}, "webhook_id": "nope"})
    client.put("/v1/webhooks/nope", json=WEBHOOK)
    created = client.put("/v1/rules/r1", json=rule)
    in_use = client.delete("/v1/webhooks/nope")
    scoped = client.get("/v1/rules", headers={"Authorization": f"Bearer {site_key}"})

    # Assert
    assert missing.status_code == 404
    assert "PUT /v1/webhooks/nope" in missing.json()["detail"]
    assert empty.status_code == 422
    assert "at least one" in empty.json()["detail"]
    assert created.status_code == 201
    assert created.json()["when"]["iso_zones"] == ["C", "D"]
    assert in_use.status_code == 409
    assert "r1" in in_use.json()["detail"]
    assert scoped.status_code == 403


def test_consecutive_windows_count_across_requests_and_open_one_request(
    make_client, tmp_path, served_registry, window
):
    # Prepare
    client = make_client(served_registry, state_path=tmp_path / "state.sqlite", **OFFLINE)
    rule = {"when": {"failure_probability_gte": 0.0}, "consecutive": 3, "webhook_id": "cmms"}
    _setup(client, rule, assets=("pump-1",))
    state = tmp_path / "state.sqlite"

    # Execute: 2 windows, then 1 (the rule fires), then 2 more (the open request is updated)
    _predict(client, window, "pump-1", n=2)
    before = client.get("/v1/maintenance-requests").json()["requests"]
    _predict(client, window, "pump-1", n=1)
    _predict(client, window, "pump-1", n=2)
    after = client.get("/v1/maintenance-requests", params={"status": "open"}).json()["requests"]

    # Assert
    assert before == []
    assert len(after) == 1
    request = after[0]
    assert request["windows"] == 5
    assert request["asset_id"] == "pump-1"
    rows = _outbox(state)
    assert len(rows) == 1  # queued once, whatever the updates
    assert rows[0][1] == idempotency_key(request["request_id"], OPENED_EVENT)
    event = json.loads(rows[0][3])
    assert event["schema"] == "fedpm.maintenance_request/v1"
    assert event["request"]["id"] == request["request_id"]


def test_counters_survive_a_restart(make_client, served_registry, window, tmp_path):
    # Prepare
    state = tmp_path / "state.sqlite"
    rule = {"when": {"failure_probability_gte": 0.0}, "consecutive": 2, "webhook_id": "cmms"}
    first = make_client(served_registry, state_path=state, **OFFLINE)
    _setup(first, rule, assets=("pump-1",))
    _predict(first, window, "pump-1", n=1)
    first.__exit__(None, None, None)

    # Execute: a new process on the same state file sees the second window
    second = make_client(served_registry, state_path=state, **OFFLINE)
    _predict(second, window, "pump-1", n=1)

    # Assert
    assert len(second.get("/v1/maintenance-requests").json()["requests"]) == 1


def test_closing_frees_dedup_and_records_a_label(make_client, tmp_path, served_registry, window):
    # Prepare
    client = make_client(served_registry, state_path=tmp_path / "state.sqlite", **OFFLINE)
    _setup(client, assets=("pump-1",))
    _predict(client, window, "pump-1", measured_at="2026-03-01T08:00:00Z", contiguous=True, n=2)
    request = client.get("/v1/maintenance-requests").json()["requests"][0]
    rid = request["request_id"]

    # Execute
    closed = client.post(
        f"/v1/maintenance-requests/{rid}/close",
        json={"failure_code": "brg-or", "work_order_id": "WO-4711"},
    )
    twice = client.post(f"/v1/maintenance-requests/{rid}/close", json={"failure_code": "BRG-OR"})
    _predict(client, window, "pump-1")
    labels = client.get("/v1/labels", params={"site": "plant-a"}).json()
    later = client.get("/v1/labels", params={"after": labels["next_cursor"]}).json()
    reopened = client.get("/v1/maintenance-requests", params={"status": "open"}).json()
    new_id = reopened["requests"][0]["request_id"]
    unknown = client.post(
        f"/v1/maintenance-requests/{new_id}/close", json={"failure_code": "PUMP-SEAL"}
    )

    # Assert
    assert closed.status_code == 200, closed.text
    assert closed.json()["request"]["status"] == "closed"
    label = closed.json()["label"]
    assert label["label"] == "outer_race"
    assert label["asset_id"] == "pump-1"
    # two contiguous 2048-sample windows at 12 kHz from 08:00:00 (times are float s: ~µs)
    assert label["start_ns"] == 1_772_352_000 * 10**9
    assert label["end_ns"] - label["start_ns"] == pytest.approx(2 * 2048 / 12000 * 1e9, abs=1e3)
    assert twice.status_code == 409
    assert len(client.get("/v1/maintenance-requests").json()["requests"]) == 2  # a new one
    assert [x["request_id"] for x in labels["labels"]] == [rid]
    assert later == {"labels": [], "next_cursor": labels["next_cursor"]}
    assert unknown.status_code == 422
    assert "PUMP-SEAL" in unknown.json()["detail"]


def test_a_tenants_own_failure_codes_label_its_closes(
    make_client, tmp_path, served_registry, window
):
    # Prepare: acme's CMMS uses its own damage codes; globex has none
    client = make_client(served_registry, state_path=tmp_path / "state.sqlite", **OFFLINE)
    _setup(client, assets=("pump-1",))
    state = tmp_path / "state.sqlite"
    globex = {"Authorization": f"Bearer {api_key(state, tenant='globex')}"}
    site_key = {"Authorization": f"Bearer {api_key(state, sites=['plant-a'])}"}
    codes = {"DMG-0815": "outer_race", "dmg-0816 ": "inner_race"}

    # Execute
    put = client.put("/v1/failure-codes", json={"codes": codes})
    _predict(client, window, "pump-1")
    rid = client.get("/v1/maintenance-requests").json()["requests"][0]["request_id"]
    closed = client.post(f"/v1/maintenance-requests/{rid}/close", json={"failure_code": "dmg-0815"})
    theirs = client.get("/v1/failure-codes", headers=globex).json()
    clash = client.put("/v1/failure-codes", json={"codes": {"a": "ball", "A": "cage"}})
    bad_class = client.put("/v1/failure-codes", json={"codes": {"X-1": "no spaces"}})
    scoped = client.put("/v1/failure-codes", json={"codes": {}}, headers=site_key)
    cleared = client.put("/v1/failure-codes", json={"codes": {}})

    # Assert: stored upper case, used by the close, invisible to another tenant
    assert put.status_code == 200, put.text
    assert put.json()["codes"] == {"DMG-0815": "outer_race", "DMG-0816": "inner_race"}
    assert put.json()["defaults"]["BRG-OR"] == "outer_race"
    assert closed.status_code == 200, closed.text
    assert closed.json()["label"]["label"] == "outer_race"
    assert closed.json()["request"]["failure_code"] == "dmg-0815"  # as the CMMS sent it
    assert theirs["codes"] == {}
    assert clash.status_code == 422
    assert "twice" in clash.json()["detail"]
    assert bad_class.status_code == 422
    assert scoped.status_code == 403  # codes belong to the whole tenant
    assert cleared.json()["codes"] == {}


def test_site_scoped_keys_see_only_their_sites(make_client, tmp_path, served_registry, window):
    # Prepare
    client = make_client(served_registry, state_path=tmp_path / "state.sqlite", **OFFLINE)
    _setup(client, assets=("pump-1",))
    _predict(client, window, "pump-1")
    rid = client.get("/v1/maintenance-requests").json()["requests"][0]["request_id"]
    state = tmp_path / "state.sqlite"
    other = {"Authorization": f"Bearer {api_key(state, sites=['plant-b'])}"}
    stranger = {"Authorization": f"Bearer {api_key(state, tenant='globex')}"}

    # Execute
    listed = client.get("/v1/maintenance-requests", headers=other).json()["requests"]
    one = client.get(f"/v1/maintenance-requests/{rid}", headers=other)
    labels = client.get("/v1/labels", params={"site": "plant-a"}, headers=other)
    foreign = client.get(f"/v1/maintenance-requests/{rid}", headers=stranger)

    # Assert
    assert listed == []
    assert one.status_code == 403
    assert labels.status_code == 403
    assert foreign.status_code == 404


def test_sap_and_maximo_webhooks_queue_their_formats(
    make_client, tmp_path, served_registry, window
):
    # Prepare
    client = make_client(served_registry, state_path=tmp_path / "state.sqlite", **OFFLINE)
    state = tmp_path / "state.sqlite"
    client.put(
        "/v1/webhooks/sap",
        json={**WEBHOOK, "format": "sap", "settings": {"sap_plant": "1010"}},
    )
    client.put("/v1/webhooks/maximo", json={**WEBHOOK, "format": "maximo"})
    for hook in ("sap", "maximo"):
        rule = {"when": {"failure_probability_gte": 0.0}, "webhook_id": hook}
        client.put(f"/v1/rules/to-{hook}", json=rule)
    ids = {"sap_equipment": "10000042", "maximo_assetnum": "PUMP17", "maximo_siteid": "BEDFORD"}
    client.put("/v1/assets/pump-17", json={"site": "plant-a", "external_ids": ids})

    # Execute
    _predict(client, window, "pump-17")

    # Assert: one request, sent to both webhooks in their own formats, with one key
    requests = client.get("/v1/maintenance-requests").json()["requests"]
    assert len(requests) == 1
    bodies = [json.loads(row[3]) for row in _outbox(state)]
    sap = next(b for b in bodies if "NotificationText" in b)
    maximo = next(b for b in bodies if "assetnum" in b)
    assert sap["TechnicalObject"] == "10000042"
    assert sap["MaintenancePlanningPlant"] == "1010"
    assert maximo["assetnum"] == "PUMP17"
    assert maximo["siteid"] == "BEDFORD"
    assert maximo["externalrefid"] == requests[0]["request_id"]
    assert client.get("/v1/assets/pump-17").json()["external_ids"] == ids


def test_a_schema_1_state_file_is_migrated(tmp_path):
    # Prepare: a state file as the previous release wrote it
    path = tmp_path / "state.sqlite"
    key = api_key(path)
    store = SqliteStateStore(path)
    store.put_asset(Asset(tenant="acme", asset_id="pump-1", site="plant-a"))
    store.close()
    with sqlite3.connect(path) as conn:
        for table in ("webhooks", "rules", "rule_streaks", "maintenance_requests", "outbox"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("DROP TABLE labels")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")

    # Execute
    store = SqliteStateStore(path)

    # Assert
    try:
        assert store.authenticate(key) is not None
        assert store.get_asset("acme", "pump-1") is not None
        assert store.outbox_counts() == {"pending": 0, "delivered": 0, "dead": 0}
        assert store._query("SELECT value FROM meta WHERE key = 'schema'") == [
            (str(SCHEMA_VERSION),)
        ]
    finally:
        store.close()


def test_dead_letters_are_listed_and_can_be_retried(make_client, tmp_path, served_registry, window):
    # Prepare: a dead letter, as the worker leaves one after a permanent error
    client = make_client(served_registry, state_path=tmp_path / "state.sqlite", **OFFLINE)
    _setup(client, assets=("pump-1",))
    _predict(client, window, "pump-1")
    state = tmp_path / "state.sqlite"
    with sqlite3.connect(state) as conn:
        conn.execute("UPDATE outbox SET status = 'dead', attempts = 1, last_status = 400")

    # Execute
    dead = client.get("/v1/dead-letters").json()["dead_letters"]
    retried = client.post(f"/v1/dead-letters/{dead[0]['dead_letter_id']}/retry")
    again = client.post(f"/v1/dead-letters/{dead[0]['dead_letter_id']}/retry")

    # Assert
    assert len(dead) == 1
    assert dead[0]["last_status"] == 400
    assert retried.status_code == 200
    assert again.status_code == 404
    assert _outbox(state)[0][2] == "pending"
    assert client.get("/v1/dead-letters").json()["dead_letters"] == []
