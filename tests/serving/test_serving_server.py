"""The real server: ``python -m serving`` in a child process, called over loopback HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving_helpers import running_service


@pytest.fixture
def server(served_registry: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    env = {
        "FEDPM_SERVE_MAX_BODY_BYTES": str(64 * 1024),
        "FEDPM_SERVE_STATE_PATH": str(tmp_path / "state.sqlite"),
    }
    with running_service(served_registry, tmp_path, env=env) as started:
        yield started


@pytest.mark.integration
def test_server_answers_over_http(server, served_registry: Path, tmp_path: Path):
    # Prepare
    base, proc = server
    samples = [round(0.01 * ((i * 37) % 101 - 50), 2) for i in range(2048)]
    created = subprocess.run(
        [sys.executable, "-m", "serving", "keys", "create", "--tenant", "acme"],
        cwd=tmp_path,
        env={**os.environ, "FEDPM_SERVE_STATE_PATH": str(tmp_path / "state.sqlite")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = created.stdout.strip()

    with httpx.Client(base_url=base, timeout=10) as anonymous:
        no_key = anonymous.get("/v1/models/current")
    with httpx.Client(base_url=base, timeout=10, headers={"X-API-Key": key}) as http:
        # Execute
        ready = http.get("/ready")
        current = http.get("/v1/models/current")
        predicted = http.post(
            "/v1/predictions", json={"sample_rate_hz": 12000, "windows": [samples, samples]}
        )
        invalid = http.post("/v1/predictions", json={"sample_rate_hz": 12000, "windows": []})
        too_large = http.post(
            "/v1/predictions", json={"sample_rate_hz": 12000, "windows": [samples] * 10}
        )

    # Assert
    assert no_key.status_code == 401
    assert "created key" in created.stderr
    assert ready.status_code == 200
    assert current.json()["version"] == "v1"
    assert predicted.status_code == 200
    body = predicted.json()
    assert body["model_version"] == "v1"
    assert body["model_sha256"] == current.json()["sha256"]
    assert len(body["predictions"]) == 2
    assert invalid.status_code == 422
    assert too_large.status_code == 413
    assert "limit of 65536 bytes" in too_large.json()["detail"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0


def test_serving_imports_no_other_role_and_no_torch():
    # Prepare
    code = (
        "import sys, serving.app, serving.__main__\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in {'edge_agent', 'aggregator', 'fedpm', 'torch'})\n"
        "assert not bad, bad\n"
    )

    # Execute
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )

    # Assert
    assert result.returncode == 0, result.stderr
