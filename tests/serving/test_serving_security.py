"""API keys, tenants, site scopes and rate limits of the serving API, over its real routes."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from serving_helpers import api_key, authorised

from serving.auth import RateLimiter
from serving.state import Asset, Permission, SqliteStateStore, StateError

WindowFactory = Callable[..., list[float]]


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state.sqlite"


@pytest.fixture
def app_client(make_client: Callable[..., object], served_registry: Path, state: Path) -> object:
    return make_client(served_registry, state_path=state)


def _as(client: object, key: str) -> object:
    return authorised(client, key)  # type: ignore[arg-type]


# --- 401 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer fpm_000000000000_" + "A" * 43},
        {"X-API-Key": "not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
)
def test_v1_routes_refuse_a_missing_or_invalid_key(app_client, headers: dict[str, str]) -> None:
    # Prepare
    app_client.headers.clear()

    # Execute
    responses = [
        app_client.get("/v1/models/current", headers=headers),
        app_client.get("/v1/assets", headers=headers),
        app_client.post("/v1/predictions", headers=headers, json={}),
    ]

    # Assert: 401 with a challenge, before the body is even validated
    for response in responses:
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "API key" in response.json()["detail"]


def test_health_and_ready_need_no_key(app_client) -> None:
    app_client.headers.clear()
    assert app_client.get("/health").status_code == 200
    assert app_client.get("/ready").status_code == 200


def test_a_revoked_key_is_refused_from_the_next_request(app_client, state: Path) -> None:
    # Prepare
    key = api_key(state)
    _as(app_client, key)
    assert app_client.get("/v1/assets").status_code == 200
    store = SqliteStateStore(state)
    key_id = key.split("_")[1]

    # Execute
    store.revoke_key(key_id)
    store.close()

    # Assert
    assert app_client.get("/v1/assets").status_code == 401


def test_a_key_with_a_wrong_secret_is_refused(app_client, state: Path) -> None:
    # Prepare: the right id, another secret
    key = api_key(state)
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")

    # Execute
    response = _as(app_client, forged).get("/v1/assets")

    # Assert
    assert response.status_code == 401


def test_only_the_hash_of_a_key_is_stored(state: Path) -> None:
    # Execute
    key = api_key(state)

    # Assert: the secret part appears nowhere in the database file
    secret = key.split("_", 2)[2]
    with sqlite3.connect(state) as conn:
        dump = "\n".join(conn.iterdump())
    assert secret not in dump
    assert key.split("_")[1] in dump  # the id is kept, to list and revoke


# --- 403 and tenants ---------------------------------------------------------------------------


def test_a_key_without_the_permission_gets_403(
    app_client, state: Path, window: WindowFactory
) -> None:
    # Prepare: a read-and-assets key predicts; a predict-only key manages assets
    assets_only = api_key(state, permissions=[Permission.MANAGE_ASSETS])
    predict_only = api_key(state, permissions=[Permission.PREDICT])

    # Execute
    predicted = _as(app_client, assets_only).post(
        "/v1/predictions", json={"sample_rate_hz": 12000, "windows": [window()]}
    )
    registered = _as(app_client, predict_only).put("/v1/assets/p1", json={"site": "plant-a"})

    # Assert
    assert predicted.status_code == 403
    assert "'predict' permission" in predicted.json()["detail"]
    assert registered.status_code == 403
    assert "'manage_assets' permission" in registered.json()["detail"]


def test_a_site_scoped_key_acts_only_on_its_sites(app_client, state: Path) -> None:
    # Prepare: the tenant's admin registers assets on two sites
    admin = api_key(state)
    scoped = api_key(state, sites=["plant-a"])
    _as(app_client, admin)
    assert app_client.put("/v1/assets/a1", json={"site": "plant-a"}).status_code == 201
    assert app_client.put("/v1/assets/b1", json={"site": "plant-b"}).status_code == 201

    # Execute
    _as(app_client, scoped)
    own = app_client.get("/v1/assets/a1")
    other = app_client.get("/v1/assets/b1")
    listed = app_client.get("/v1/assets")
    register_elsewhere = app_client.put("/v1/assets/b2", json={"site": "plant-b"})
    move_in = app_client.put("/v1/assets/b1", json={"site": "plant-a"})

    # Assert
    assert own.status_code == 200
    assert other.status_code == 403
    assert [a["asset_id"] for a in listed.json()["assets"]] == ["a1"]
    assert register_elsewhere.status_code == 403
    assert move_in.status_code == 403  # taking over another site's asset is not allowed


def test_no_key_reads_or_predicts_on_another_tenants_asset(
    app_client, state: Path, window: WindowFactory
) -> None:
    # Prepare: tenant acme registers pump-1; tenant globex holds a full key
    acme, globex = api_key(state, "acme"), api_key(state, "globex")
    assert _as(app_client, acme).put("/v1/assets/pump-1", json={"site": "s"}).status_code == 201

    # Execute
    _as(app_client, globex)
    read = app_client.get("/v1/assets/pump-1")
    listed = app_client.get("/v1/assets")
    predicted = app_client.post(
        "/v1/predictions",
        json={"sample_rate_hz": 12000, "windows": [window()], "asset_id": "pump-1"},
    )
    overwritten = app_client.put("/v1/assets/pump-1", json={"site": "s"})

    # Assert: invisible (same answer as for an asset that does not exist); a PUT creates
    # globex's own pump-1 and leaves acme's untouched
    assert read.status_code == 404
    assert listed.json() == {"assets": []}
    assert predicted.status_code == 422
    assert "unknown asset 'pump-1'" in predicted.json()["detail"]
    assert overwritten.status_code == 201
    acme_view = _as(app_client, acme).get("/v1/assets/pump-1").json()
    assert acme_view["site"] == "s"
    assert acme_view["created_at"] < overwritten.json()["created_at"]


# --- assets ------------------------------------------------------------------------------------


def test_register_update_and_read_an_asset(app_client, state: Path) -> None:
    # Prepare
    _as(app_client, api_key(state))
    body = {
        "site": "plant-a",
        "machine_group": 1,
        "mounting": "flexible",
        "bearing": "6205",
        "nominal_rpm": 1797.0,
        "description": "pump 17 drive end",
    }

    # Execute
    created = app_client.put("/v1/assets/pump-17/de", json=body)
    updated = app_client.put("/v1/assets/pump-17/de", json={**body, "nominal_rpm": 1750.0})
    read = app_client.get("/v1/assets/pump-17/de")

    # Assert
    assert created.status_code == 201
    assert updated.status_code == 200
    assert read.json()["nominal_rpm"] == 1750.0
    assert read.json()["asset_id"] == "pump-17/de"
    assert read.json()["created_at"] == created.json()["created_at"]
    assert read.json()["updated_at"] >= created.json()["updated_at"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"site": "plant-a", "bearing": "6999-unknown"}, "bearing"),
        ({"site": "plant-a", "bearing": "n=9,d=7.9"}, "missing D"),
        ({"site": "plant-a", "machine_group": 3}, "machine_group"),
        ({"site": "plant-a", "nominal_rpm": -1}, "nominal_rpm"),
        ({"site": "plant a!"}, "site"),
        ({}, "site"),
        ({"site": "plant-a", "colour": "red"}, "colour"),
    ],
)
def test_invalid_assets_get_a_422_that_names_the_field(
    app_client, state: Path, body: dict[str, object], message: str
) -> None:
    # Execute
    response = _as(app_client, api_key(state)).put("/v1/assets/p1", json=body)

    # Assert
    assert response.status_code == 422
    assert message in response.json()["detail"]


@pytest.mark.parametrize("asset_id", ["-bad id", "pump%0A1", "a/%0D/b"])
def test_an_invalid_asset_id_gets_a_422(app_client, state: Path, asset_id: str) -> None:
    # an encoded newline once matched no route at all: a bare 404 (schemathesis found it)
    client = _as(app_client, api_key(state))
    response = client.put(f"/v1/assets/{asset_id}", json={"site": "s"})
    assert response.status_code == 422
    assert "asset id" in response.json()["detail"]
    # reading it reaches the route too: an asset of this tenant that does not exist
    assert "no asset" in client.get(f"/v1/assets/{asset_id}").json()["detail"]


# --- 429 ---------------------------------------------------------------------------------------


def test_a_key_over_its_rate_gets_429_with_retry_after(app_client, state: Path) -> None:
    # Prepare: 3 requests a minute for this key; another key is not affected
    slow = api_key(state, rate_per_minute=3)
    other = api_key(state)

    # Execute
    codes = [_as(app_client, slow).get("/v1/assets").status_code for _ in range(4)]
    limited = app_client.get("/v1/assets")
    unaffected = _as(app_client, other).get("/v1/assets")

    # Assert
    assert codes == [200, 200, 200, 429]
    assert int(limited.headers["Retry-After"]) >= 1
    assert "rate limit" in limited.json()["detail"]
    assert unaffected.status_code == 200


def test_the_rate_limiter_refills_over_time() -> None:
    # Prepare: 60 a minute = one a second, burst of 60
    limiter = RateLimiter(60)
    for _ in range(60):
        assert limiter.acquire("k", now=100.0) == 0.0

    # Execute / Assert
    assert limiter.acquire("k", now=100.0) == pytest.approx(1.0)
    assert limiter.acquire("k", now=100.5) == pytest.approx(0.5)
    assert limiter.acquire("k", now=101.5) == 0.0
    assert RateLimiter(0).acquire("k") == 0.0  # 0: no limit


# --- the store ---------------------------------------------------------------------------------


def test_state_survives_a_restart(state: Path) -> None:
    # Prepare
    store = SqliteStateStore(state)
    key_scope, key = store.create_key("acme", [Permission.PREDICT], sites=["s1"], label="SAP")
    store.put_asset(Asset(tenant="acme", asset_id="a", site="s1", bearing="6203"))
    store.close()

    # Execute
    again = SqliteStateStore(state)

    # Assert
    assert again.authenticate(key) == key_scope
    asset = again.get_asset("acme", "a")
    assert asset is not None
    assert asset.bearing == "6203"
    assert [k.label for k in again.list_keys("acme")] == ["SAP"]
    again.close()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.create_key("bad tenant", [Permission.PREDICT]), "tenant"),
        (lambda s: s.create_key("t", [Permission.PREDICT], rate_per_minute=-1), "rate"),
        (lambda s: s.revoke_key("000000000000"), "no live API key"),
        (lambda s: s.put_asset(Asset(tenant="t", asset_id="", site="s")), "asset id"),
    ],
)
def test_the_store_refuses_bad_input_clearly(
    state: Path, call: Callable[[SqliteStateStore], object], message: str
) -> None:
    store = SqliteStateStore(state)
    with pytest.raises(StateError, match=message):
        call(store)
    store.close()


def test_a_file_that_is_not_a_state_store_is_refused(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"this is not a database" * 100)

    # Execute / Assert
    with pytest.raises(StateError, match="unusable"):
        SqliteStateStore(path)
