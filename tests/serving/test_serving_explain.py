"""Explained predictions for a registered asset: ISO zone, anomaly score, bearing evidence.

The served model is an untrained WDCNN (conftest): the evidence checked here does not depend on
what the model learned, only on the windows (indicators, zone, envelope analysis) and on the
asset's own baseline of the served model's embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving_helpers import api_key, authorised

from models.anomaly import AnomalyBaseline
from models.simulator import MachineProfile, simulate
from serving.state import SqliteStateStore, StoredBaseline

FS = 12_000
WINDOW = 2048


@pytest.fixture
def api(make_client: Callable[..., Any], served_registry: Path, tmp_path: Path) -> Any:
    state = tmp_path / "state.sqlite"
    client = make_client(served_registry, state_path=state)
    client.state_path = state
    return client


def _register(api: Any, asset: str = "pump-17", **extra: object) -> None:
    body = {"site": "plant-a", "machine_group": 2, "mounting": "rigid", **extra}
    assert api.put(f"/v1/assets/{asset}", json=body).status_code in (200, 201)


def _windows(x: np.ndarray, n: int) -> list[list[float]]:
    return x[: n * WINDOW].reshape(n, WINDOW).astype(float).tolist()


def _simulated(mode: str, n: int, seed: int, severity: float = 0.8) -> list[list[float]]:
    x = simulate(MachineProfile(), mode, severity, n * WINDOW, np.random.default_rng(seed))  # type: ignore[arg-type]
    return _windows(x, n)


def test_a_prediction_without_asset_carries_no_evidence(api: Any) -> None:
    body = {"sample_rate_hz": FS, "windows": _simulated("normal", 1, 0)}
    response = api.post("/v1/predictions", json=body).json()
    assert response["explanation"] is None
    assert response["predictions"][0]["evidence"] is None


def test_every_window_gets_its_velocity_and_iso_zone(api: Any) -> None:
    # Prepare: a sine of known velocity: 0.3 g at 100 Hz is 0.3 * 9.80665 / (2 pi 100) m/s
    # peak = 3.31 mm/s RMS -> zone C (2.8-4.5 mm/s) on a group 2 machine, rigid foundation
    _register(api)
    t = np.arange(WINDOW) / FS
    sine = (0.3 * np.sin(2 * np.pi * 100.0 * t)).tolist()
    body = {"sample_rate_hz": FS, "windows": [sine], "asset_id": "pump-17"}

    # Execute
    response = api.post("/v1/predictions", json=body)

    # Assert
    assert response.status_code == 200
    evidence = response.json()["predictions"][0]["evidence"]
    assert evidence["velocity_rms_mm_s"] == pytest.approx(3.31, rel=0.03)
    assert evidence["iso_zone"] == "C"
    assert evidence["rms_g"] == pytest.approx(0.3 / np.sqrt(2), rel=0.01)
    assert evidence["anomaly_score"] is None  # no baseline yet
    explanation = response.json()["explanation"]
    assert explanation["asset_id"] == "pump-17"
    assert "no healthy baseline" in explanation["baseline_note"]
    assert "bearing" in explanation["bearing_note"]


def test_units_are_converted_before_the_zone_is_judged(api: Any) -> None:
    # Prepare: the same sine in m/s^2
    _register(api)
    t = np.arange(WINDOW) / FS
    sine = (0.5 * 9.80665 * np.sin(2 * np.pi * 100.0 * t)).tolist()
    body = {"sample_rate_hz": FS, "units": "m/s^2", "windows": [sine], "asset_id": "pump-17"}

    # Execute
    evidence = api.post("/v1/predictions", json=body).json()["predictions"][0]["evidence"]

    # Assert
    assert evidence["velocity_rms_mm_s"] == pytest.approx(5.52, rel=0.03)


def test_contiguous_windows_of_a_real_inner_race_fault_name_bpfi(api: Any, cwru_root: Path) -> None:
    # Prepare: CWRU record 105 (inner race 0.007 in, 0 HP, 1797 rpm, SKF 6205), 4 windows
    _register(api, bearing="6205", nominal_rpm=1797.0)
    x = np.load(cwru_root / "12k_Drive_End_IR007_0_105.npz")["de"]
    body = {
        "sample_rate_hz": FS,
        "windows": _windows(x, 4),
        "asset_id": "pump-17",
        "contiguous": True,
    }

    # Execute
    response = api.post("/v1/predictions", json=body)

    # Assert: the inner-race defect frequency stands far over the floor
    assert response.status_code == 200
    bearing = response.json()["explanation"]["bearing"]
    assert bearing["verdict"] == "inner_race"
    assert bearing["defect_frequency"] == "BPFI"
    assert bearing["defect_hz"] == pytest.approx(bearing["expected_hz"]["inner_race"], rel=0.03)
    assert bearing["score_db"] >= bearing["threshold_db"]
    assert bearing["signal_s"] == pytest.approx(4 * WINDOW / FS)


def test_too_little_signal_for_an_envelope_gets_a_note_not_a_guess(api: Any) -> None:
    # Prepare: separate (not contiguous) windows of 0.17 s are 5 shaft turns at 1797 rpm
    _register(api, bearing="6205", nominal_rpm=1797.0)
    body = {"sample_rate_hz": FS, "windows": _simulated("inner_race", 3, 1), "asset_id": "pump-17"}

    # Execute
    explanation = api.post("/v1/predictions", json=body).json()["explanation"]

    # Assert
    assert explanation["bearing"] is None
    assert "shaft turns" in explanation["bearing_note"]
    assert "contiguous" in explanation["bearing_note"]


def test_a_fitted_baseline_scores_windows_and_flags_faults(api: Any) -> None:
    # Prepare: 80 healthy windows fit a 5 % baseline
    _register(api)
    healthy = _simulated("normal", 80, 10)
    fitted = api.put(
        "/v1/baselines/pump-17",
        json={"sample_rate_hz": FS, "windows": healthy, "false_alarm_rate": 0.05},
    )
    assert fitted.status_code == 200, fitted.text

    # Execute: fresh healthy windows and strong outer-race fault windows
    fresh = api.post(
        "/v1/predictions",
        json={"sample_rate_hz": FS, "windows": _simulated("normal", 20, 11), "asset_id": "pump-17"},
    ).json()
    faulty = api.post(
        "/v1/predictions",
        json={
            "sample_rate_hz": FS,
            "windows": _simulated("outer_race", 20, 12, severity=1.0),
            "asset_id": "pump-17",
        },
    ).json()

    # Assert
    info = fitted.json()
    assert info["current"] is True
    assert info["windows"] == 80
    assert info["model_version"] == "v1"
    threshold = fresh["explanation"]["anomaly_threshold"]
    assert threshold == pytest.approx(info["threshold"])
    healthy_flags = [p["evidence"]["anomalous"] for p in fresh["predictions"]]
    fault_flags = [p["evidence"]["anomalous"] for p in faulty["predictions"]]
    assert sum(healthy_flags) <= 4  # 5 % of 20 is 1; allow sampling noise
    assert sum(fault_flags) >= 18
    assert api.get("/v1/baselines/pump-17").json()["threshold"] == pytest.approx(threshold)


def test_a_baseline_of_another_model_is_not_used(api: Any) -> None:
    # Prepare: a baseline stored for a model that is not served
    _register(api)
    rows = np.random.default_rng(0).normal(size=(100, 4))
    document = AnomalyBaseline.fit(rows, 0.05, source="0" * 64).to_json()
    store = SqliteStateStore(api.state_path)
    store.put_baseline(StoredBaseline("acme", "pump-17", "0" * 64, "v0", document, 100, 0.05, 0.0))
    store.close()

    # Execute
    body = {"sample_rate_hz": FS, "windows": _simulated("normal", 1, 0), "asset_id": "pump-17"}
    explanation = api.post("/v1/predictions", json=body).json()["explanation"]

    # Assert
    assert explanation["anomaly_threshold"] is None
    assert "fitted with model v0" in explanation["baseline_note"]
    assert api.get("/v1/baselines/pump-17").json()["current"] is False


@pytest.mark.parametrize(
    ("extra", "status", "message"),
    [
        ({"false_alarm_rate": 0.01}, 422, "at least 329"),
        ({"false_alarm_rate": 0.6}, 422, "false_alarm_rate"),
        ({"asset_id": "other"}, 422, "differs from the path"),
    ],
)
def test_bad_baseline_requests_are_refused_clearly(
    api: Any, extra: dict[str, object], status: int, message: str
) -> None:
    _register(api)
    body = {"sample_rate_hz": FS, "windows": _simulated("normal", 80, 3), **extra}
    response = api.put("/v1/baselines/pump-17", json=body)
    assert response.status_code == status
    assert message in response.json()["detail"]


def test_baselines_of_unknown_or_foreign_assets_are_not_found(api: Any) -> None:
    # Prepare: acme's asset; a key of another tenant
    _register(api)
    authorised(api, api_key(api.state_path, "globex"))
    body = {"sample_rate_hz": FS, "windows": _simulated("normal", 80, 4), "false_alarm_rate": 0.05}

    # Execute / Assert
    assert api.put("/v1/baselines/pump-17", json=body).status_code == 404
    assert api.get("/v1/baselines/pump-17").status_code == 404
