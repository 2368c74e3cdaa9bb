"""Closed work order -> label in serving -> ``fedpm edge-labels pull`` -> the site's store.

The real serving app runs under uvicorn in a thread on a loopback port; the command is the
real CLI; the store is a real edge :class:`~edge_agent.store.LocalStore`.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from edge_agent.store import LocalStore
from fedpm.cli import main
from fedpm.labels_pull import cursor_path
from models.metadata import Provenance
from models.network import build_model
from models.onnx_export import export_onnx, metadata_for
from models.registry import FileRegistry
from serving.app import create_app
from serving.settings import ServeSettings
from serving.state import Permission, SqliteStateStore

FS = 12_000.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    net = build_model(seed=0)
    meta = metadata_for(
        net,
        sample_rate_hz=FS,
        class_names=("normal", "inner_race", "outer_race", "ball"),
        provenance=Provenance(source="untrained", run_id="run-test"),
    )
    root = tmp_path / "registry"
    FileRegistry(root).publish(
        export_onnx(net, meta), meta, run_id="run-test", server_round=1, sites=("plant-a",),
        metrics={}, site_metrics={},
    )  # fmt: skip
    return root


@pytest.fixture
def server(registry: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    state = tmp_path / "state.sqlite"
    settings = ServeSettings(
        registry_dir=registry,
        state_path=state,
        model_poll_s=0,
        delivery_enabled=False,
        webhook_allowed_networks=("127.0.0.0/8",),
    )
    port = _free_port()
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", ws="none")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    end = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < end, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", state
    srv.should_exit = True
    thread.join(timeout=20)


def _keys(state: Path) -> tuple[str, str]:
    store = SqliteStateStore(state)
    try:
        admin = store.create_key("acme", list(Permission))[1]
        site = store.create_key("acme", [], sites=["plant-a"], label="edge plant-a")[1]
        return admin, site
    finally:
        store.close()


@pytest.mark.integration
def test_a_closed_work_order_becomes_a_label_in_the_site_store(
    server: tuple[str, Path], tmp_path: Path
):
    # Prepare: a request opened by a rule, closed by the CMMS with a failure code
    base, state = server
    admin, site_key = _keys(state)
    window = (0.5 * np.sin(2 * np.pi * 157 * np.arange(2048) / FS)).tolist()
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}) as http:
        http.put("/v1/webhooks/cmms", json={"url": "http://127.0.0.1:9/x", "secret": "s" * 16})
        rule = {"when": {"failure_probability_gte": 0.0}, "webhook_id": "cmms"}
        http.put("/v1/rules/all", json=rule)
        asset = {"site": "plant-a", "external_ids": {"edge_asset_id": "pump-17"}}
        http.put("/v1/assets/plant-a/pump-17", json=asset)
        body = {"sample_rate_hz": FS, "asset_id": "plant-a/pump-17", "windows": [window]}
        body["measured_at"] = "2026-03-01T08:00:00Z"
        assert http.post("/v1/predictions", json=body).status_code == 200
        rid = http.get("/v1/maintenance-requests").json()["requests"][0]["request_id"]
        closed = http.post(
            f"/v1/maintenance-requests/{rid}/close",
            json={"failure_code": "BRG-IR", "work_order_id": "WO-1"},
        )
        assert closed.status_code == 200, closed.text
    store_path = tmp_path / "site" / "store.sqlite"
    store_path.parent.mkdir()
    LocalStore(store_path).close()
    key_file = tmp_path / "site.key"
    key_file.write_text(site_key + "\n")
    args = ["edge-labels", "pull", "--url", base, "--api-key-file", str(key_file)]
    args += ["--store", str(store_path), "--site", "plant-a"]

    # Execute: pull twice (the second finds nothing new)
    first = main([*args, "--json", str(tmp_path / "first.json")])
    second = main([*args, "--json", str(tmp_path / "second.json")])

    # Assert
    assert (first, second) == (0, 0)
    report = json.loads((tmp_path / "first.json").read_text())
    assert (report["read"], report["added"]) == (1, 1)
    again = json.loads((tmp_path / "second.json").read_text())
    assert (again["read"], again["added"]) == (0, 0)
    assert cursor_path(store_path).exists()
    with LocalStore(store_path) as store:
        assert store.count_labels() == 1
    with sqlite3.connect(store_path) as conn:
        row = conn.execute(
            "SELECT asset_id, label, start_ns, end_ns, source FROM labels"
        ).fetchone()
    start_ns = 1_772_352_000 * 10**9
    assert row[0] == "pump-17"
    assert row[1] == "inner_race"
    assert row[2] == pytest.approx(start_ns, abs=1e3)
    assert row[3] - row[2] == pytest.approx(2048 / FS * 1e9, abs=1e3)
    assert row[4] == "cmms"
