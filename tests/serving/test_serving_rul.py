"""Health state and remaining useful life per asset, from the predictions' own history.

Simulated run-to-failure histories (``fedpm simulate-history``'s machinery) are sent to a real
app with a real state store, one request per record with increasing ``measured_at``, as a
plant's gateway would; nothing is mocked.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving_helpers import api_key, authorised

from fedpm.commands.simulate_history import History, simulate_history
from serving.health import HEALTH_BASELINE_POINTS
from serving.history import HistoryPoint
from serving.state import _SCHEMA, SCHEMA_VERSION, Asset, SqliteStateStore

FS = 12_000
WINDOW = 2048
PER_REQUEST = 4  # windows per request: one record of 4 x 2048 samples (0.68 s)
START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)


@pytest.fixture
def api(make_client: Callable[..., Any], served_registry: Path, tmp_path: Path) -> Any:
    state = tmp_path / "state.sqlite"
    client = make_client(served_registry, state_path=state, rate_limit_per_minute=0)
    client.state_path = state
    return client


def _register(api: Any, asset: str = "pump-17") -> None:
    body = {"site": "plant-a", "machine_group": 2, "mounting": "rigid"}
    assert api.put(f"/v1/assets/{asset}", json=body).status_code in (200, 201)


def _history(mode: str, records: int, onset: int, seed: int = 0) -> History:
    return simulate_history(records, onset, mode, seed, record_samples=PER_REQUEST * WINDOW)  # type: ignore[arg-type]


def _send(api: Any, record: np.ndarray, hour: float, asset: str = "pump-17") -> dict[str, Any]:
    body = {
        "sample_rate_hz": FS,
        "windows": record.reshape(PER_REQUEST, WINDOW).astype(float).tolist(),
        "asset_id": asset,
        "measured_at": (START + timedelta(hours=hour)).isoformat(),
    }
    response = api.post("/v1/predictions", json=body)
    assert response.status_code == 200, response.text
    rul: dict[str, Any] = response.json()["remaining_useful_life"]
    return rul


@pytest.fixture(scope="module")
def degrading() -> History:
    """60 hourly records, outer-race damage from record 30 to failure at record 59."""
    return _history("outer_race", 60, 30)


def test_a_run_to_failure_gets_a_rul_only_after_the_alarm_and_it_shrinks(
    api: Any, degrading: History
) -> None:
    # Prepare
    _register(api)

    # Execute: the history, one record an hour
    answers = [_send(api, x, float(i)) for i, x in enumerate(degrading.records)]

    # Assert: the baseline is collected first, and says so
    for i, answer in enumerate(answers[: HEALTH_BASELINE_POINTS - 1]):
        assert answer["state"] == "baseline"
        assert answer["rul_hours"] is None
        assert answer["health_indicator"] is None
        assert f"{i + 1} of {HEALTH_BASELINE_POINTS} baseline points" in answer["reason"]
    # healthy after the baseline: no alarm, no RUL, and why
    healthy = answers[HEALTH_BASELINE_POINTS : degrading.onset]
    assert all(a["state"] in ("normal", "warning") for a in healthy)
    assert all(a["rul_hours"] is None and a["reason"] for a in healthy)
    assert any("no degradation trend" in a["reason"] for a in healthy)
    # the alarm comes after the onset, latched, with a RUL and a coherent interval
    states = [a["state"] for a in answers]
    first_alarm = states.index("alarm")
    assert degrading.onset <= first_alarm < 59
    assert set(states[first_alarm:]) == {"alarm"}
    estimated = [a for a in answers[first_alarm:] if a["rul_hours"] is not None]
    assert len(estimated) >= 10
    for a in estimated:
        assert a["rul_lower_hours"] <= a["rul_hours"]
        assert a["rul_upper_hours"] is None or a["rul_hours"] <= a["rul_upper_hours"]
        assert a["points_used"] >= 5
        assert a["alarm_at"] == answers[first_alarm]["measured_at"]
    # it shrinks as failure nears: the last estimates are below the first ones
    ruls = [a["rul_hours"] for a in estimated]
    assert np.median(ruls[-3:]) < np.median(ruls[:3])
    assert answers[-1]["history_points"] == 60
    assert answers[-1]["baseline_source"] == "history"


def test_a_healthy_history_never_alarms(api: Any) -> None:
    # Prepare: 45 records of a machine that stays healthy
    _register(api)
    history = _history("normal", 45, 30, seed=1)

    # Execute
    answers = [_send(api, x, float(i)) for i, x in enumerate(history.records)]

    # Assert
    assert {a["state"] for a in answers} <= {"baseline", "normal", "warning"}
    assert all(a["rul_hours"] is None for a in answers)
    assert answers[-1]["health_indicator"] < answers[-1]["alarm_threshold"] * 3


def test_another_tenant_cannot_see_the_history(api: Any, degrading: History) -> None:
    # Prepare: acme's asset with 25 points; globex registers the same asset id
    _register(api)
    for i, x in enumerate(degrading.records[:25]):
        _send(api, x, float(i))
    authorised(api, api_key(api.state_path, "globex"))
    _register(api)

    # Execute
    answer = _send(api, degrading.records[0], 0.0)

    # Assert: globex's asset starts its own history
    assert answer["history_points"] == 1
    assert answer["state"] == "baseline"


def test_out_of_order_points_are_sorted_and_a_repeat_replaces(api: Any, degrading: History) -> None:
    # Prepare: the baseline records uploaded in a shuffled batch
    _register(api)
    order = np.random.default_rng(0).permutation(HEALTH_BASELINE_POINTS)

    # Execute
    for i in order:
        _send(api, degrading.records[i], float(i))
    again = _send(api, degrading.records[3], 3.0)  # the same measurement sent twice
    store = SqliteStateStore(api.state_path)
    stored = store.get_history("acme", "pump-17")
    store.close()

    # Assert
    assert [p.measured_at for p in stored] == sorted(p.measured_at for p in stored)
    assert len(stored) == HEALTH_BASELINE_POINTS
    assert again["history_points"] == HEALTH_BASELINE_POINTS
    assert again["state"] == "baseline"  # an old point is judged as of its own time


def test_a_time_in_the_future_is_refused_clearly(api: Any, degrading: History) -> None:
    _register(api)
    later = datetime.now(UTC) + timedelta(hours=2)
    body = {
        "sample_rate_hz": FS,
        "windows": degrading.records[0].reshape(PER_REQUEST, WINDOW).astype(float).tolist(),
        "asset_id": "pump-17",
        "measured_at": later.isoformat(),
    }

    response = api.post("/v1/predictions", json=body)
    naive = api.post("/v1/predictions", json={**body, "measured_at": "2026-01-01T00:00:00"})

    assert response.status_code == 422
    assert "ahead of the server's clock" in response.json()["detail"]
    assert naive.status_code == 422
    assert "timezone" in naive.json()["detail"]


def test_the_binary_route_takes_measured_at_in_the_query(api: Any, degrading: History) -> None:
    _register(api)
    x = degrading.records[0].reshape(PER_REQUEST, 1, WINDOW).astype("<f4")
    params = {
        "sample_rate_hz": FS,
        "windows": PER_REQUEST,
        "samples": WINDOW,
        "asset_id": "pump-17",
        "measured_at": START.isoformat(),
    }

    response = api.post(
        "/v1/predictions/binary",
        params=params,
        content=x.tobytes(),
        headers={"Content-Type": "application/octet-stream"},
    )

    assert response.status_code == 200, response.text
    rul = response.json()["remaining_useful_life"]
    assert datetime.fromisoformat(rul["measured_at"]) == START
    assert rul["history_points"] == 1


def test_healthy_windows_sent_as_a_baseline_fit_the_health_baseline_too(
    api: Any, degrading: History
) -> None:
    # Prepare: 80 healthy windows (20 records) as an explicit baseline
    _register(api)
    windows = np.concatenate(degrading.records[:20]).reshape(-1, WINDOW)
    body = {
        "sample_rate_hz": FS,
        "windows": windows.astype(float).tolist(),
        "false_alarm_rate": 0.05,
    }
    fitted = api.put("/v1/baselines/pump-17", json=body)
    assert fitted.status_code == 200, fitted.text

    # Execute: the next record, measured now
    answer = _send(api, degrading.records[20], 30 * 24.0 - 1.0)

    # Assert: assessed at once, against the windows' baseline
    assert fitted.json()["health_points"] == 80
    assert answer["baseline_source"] == "windows"
    assert answer["state"] in ("normal", "warning")
    assert answer["health_indicator"] is not None


def test_a_version_1_state_file_is_migrated_and_keeps_its_assets(tmp_path: Path) -> None:
    # Prepare: a state file as the previous release wrote it
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(_SCHEMA)
    conn.execute("INSERT INTO meta VALUES ('schema', '1')")
    conn.commit()
    conn.close()
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO assets VALUES ('acme', 'pump-1', 'plant-a', 2, 'rigid', NULL, NULL, '',"
        " '{}', 0, 0)"
    )
    conn.commit()
    conn.close()

    # Execute
    store = SqliteStateStore(path)

    # Assert
    try:
        assert store.get_asset("acme", "pump-1") == Asset(
            "acme", "pump-1", "plant-a", created_at=0.0, updated_at=0.0
        )
        assert store.get_history("acme", "pump-1") == []
        assert store._query("SELECT value FROM meta WHERE key = 'schema'") == [
            (str(SCHEMA_VERSION),)
        ]
    finally:
        store.close()


def test_the_history_is_bounded_by_thinning_its_older_half(tmp_path: Path) -> None:
    # Prepare
    store = SqliteStateStore(tmp_path / "state.sqlite")
    features = (0.1, 3.0, 4.0, 0.01)

    # Execute: 100 hourly points into a history bounded at 16
    for hour in range(100):
        point = HistoryPoint("acme", "pump-1", 3600.0 * hour, 0.0, FS, WINDOW, 1, features)
        series = store.add_history_point(point, max_points=16)
    kept = [p.measured_at / 3600 for p in store.get_history("acme", "pump-1")]
    store.close()

    # Assert: never more than the bound; the oldest and the newest 8 kept, the middle sparse
    assert len(kept) <= 16
    assert len(series.measured_at) == len(kept) == series.total
    assert kept[0] == 0
    assert kept[-8:] == list(range(92, 100))
    assert np.all(np.diff(kept) > 0)
