"""The demo path end to end, with small settings, as a user runs it (`fedpm demo`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]

FEDPM = [sys.executable, "-m", "fedpm"]


def leftover_processes(marker: str) -> list[str]:
    """Command lines of live processes that mention ``marker`` (the demo's work dir)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status:
            continue
        cmd = raw.replace(b"\0", b" ").decode(errors="replace")
        if marker in cmd:
            found.append(cmd)
    return found


def test_demo_runs_the_whole_chain(tmp_path: Path) -> None:
    # Prepare
    workdir = tmp_path / "demo"
    summary_path = tmp_path / "summary.json"

    # Execute
    result = subprocess.run(
        [
            *FEDPM,
            "demo",
            "--rounds",
            "1",
            "--backlog-s",
            "12",
            "--held-out-windows",
            "8",
            "--workdir",
            str(workdir),
            "--json",
            str(summary_path),
        ],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )

    # Assert
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "mean eval acc" in out  # the per-round table
    assert "held-out accuracy" in out
    summary = json.loads(summary_path.read_text())
    assert len(summary["rounds"]) == 1
    assert set(summary["rounds"][0]["sites"]) == {"site-a", "site-b", "site-c"}
    assert 0.0 <= summary["held_out_accuracy"] <= 1.0
    assert summary["model_version"] == "v1"
    assert set(summary["edge_health"]) >= {"site-a/pump-1", "site-c/mill-3"}
    assert all(v > 0 for v in summary["stored_windows"].values())
    assert leftover_processes(str(workdir)) == []


def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    # Prepare
    workdir = tmp_path / "demo"
    proc = subprocess.Popen(
        [*FEDPM, "demo", "--rounds", "1", "--backlog-s", "6", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    deadline = time.monotonic() + 240
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if "SuperNodes" in line or time.monotonic() > deadline:
            break

    # Execute
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)

    # Assert
    assert proc.returncode == 130, "".join(seen) + rest
    assert "all demo processes stopped" in rest
    assert leftover_processes(str(workdir)) == []
