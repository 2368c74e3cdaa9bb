"""GET /v1/models and /v1/models/{version}: registry versions with their public cards."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import ExportedModels, publish
from serving_helpers import api_key, authorised

from models.registry import FileRegistry


def test_versions_are_listed_newest_first_with_the_served_one_marked(
    make_client: Callable[..., Any], two_versions: FileRegistry
) -> None:
    # Prepare: v1 and v2; the app serves the newest valid one, v2
    client = make_client(two_versions.root, model_poll_s=0)

    # Execute
    response = client.get("/v1/models")

    # Assert
    assert response.status_code == 200
    body = response.json()
    assert [m["version"] for m in body["models"]] == ["v2", "v1"]
    assert [m["served"] for m in body["models"]] == [True, False]
    assert body["served_version"] == "v2"
    assert body["total"] == 2
    assert body["next_offset"] is None
    card = body["models"][1]["card"]
    assert card["version"] == "v1"
    assert card["server_round"] == 1
    assert card["sha256"] == two_versions.card(1).sha256
    assert "path" not in str(sorted(card)).lower()  # public fields only


def test_pages_follow_next_offset(
    make_client: Callable[..., Any], tmp_path: Path, exported: ExportedModels
) -> None:
    # Prepare: five versions
    registry = FileRegistry(tmp_path / "registry")
    for rnd in range(1, 6):
        publish(registry, exported.first, exported.metadata, rnd)
    client = make_client(registry.root, model_poll_s=0)

    # Execute: walk the pages two at a time
    seen, offset, pages = [], 0, 0
    while offset is not None:
        page = client.get("/v1/models", params={"limit": 2, "offset": offset}).json()
        seen += [m["version"] for m in page["models"]]
        offset = page["next_offset"]
        pages += 1

    # Assert
    assert seen == ["v5", "v4", "v3", "v2", "v1"]
    assert pages == 3
    assert client.get("/v1/models", params={"limit": 0}).status_code == 422
    assert client.get("/v1/models", params={"offset": 9}).json()["models"] == []


def test_one_version_by_label_or_number(
    make_client: Callable[..., Any], two_versions: FileRegistry
) -> None:
    client = make_client(two_versions.root, model_poll_s=0)

    v1 = client.get("/v1/models/v1")
    by_number = client.get("/v1/models/2")

    assert v1.status_code == 200
    assert v1.json()["served"] is False
    assert v1.json()["card"]["metrics"] == {"accuracy": 0.51}
    assert by_number.json()["served"] is True
    assert client.get("/v1/models/current").json()["version"] == "v2"  # not taken for {version}


def test_an_unknown_version_is_a_404_that_names_the_known_ones(
    make_client: Callable[..., Any], two_versions: FileRegistry
) -> None:
    client = make_client(two_versions.root, model_poll_s=0)

    for missing in ("v7", "0", "latest", "v1x"):
        response = client.get(f"/v1/models/{missing}")
        assert response.status_code == 404
        assert "v1..v2" in response.json()["detail"]


def test_an_unreadable_card_is_listed_not_hidden(
    make_client: Callable[..., Any], two_versions: FileRegistry
) -> None:
    # Prepare: v1's card broken after publication
    (two_versions.root / "versions" / "000001" / "card.json").write_text("{", encoding="utf-8")
    client = make_client(two_versions.root, model_poll_s=0)

    # Execute
    listed = client.get("/v1/models").json()["models"]
    one = client.get("/v1/models/v1").json()

    # Assert
    assert listed[1] == {"version": "v1", "served": False, "readable": False, "card": None}
    assert one["readable"] is False


def test_listing_needs_a_key_but_no_permission(
    make_client: Callable[..., Any], two_versions: FileRegistry, tmp_path: Path
) -> None:
    client = make_client(two_versions.root, model_poll_s=0)
    state = client.app.state.settings.state_path
    del client.headers["Authorization"]
    assert client.get("/v1/models").status_code == 401
    authorised(client, api_key(state, "globex", permissions=()))
    assert client.get("/v1/models").status_code == 200
    assert client.get("/v1/models/v1").status_code == 200
