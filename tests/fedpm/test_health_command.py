"""``fedpm simulate-history`` then ``fedpm health``, end to end on files."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from types import ModuleType

import pytest

from fedpm.commands import health, simulate_history


def run_command(module: ModuleType, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=module.NAME)
    module.add_arguments(parser)
    code: int = module.run(parser.parse_args(argv))
    return code


def write_history(folder: Path, mode: str = "outer_race") -> Path:
    argv = ["--out", str(folder), "--records", "36", "--onset", "18", "--mode", mode]
    argv += ["--record-samples", "4096", "--variability", "none", "--seed", "2"]
    assert run_command(simulate_history, argv) == 0
    return folder / "MANIFEST.tsv"


@pytest.fixture(scope="module")
def degrading(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest of a 36-record outer-race history, damage from record 18."""
    return write_history(tmp_path_factory.mktemp("history"))


def test_simulate_history_writes_a_timestamped_manifest(degrading: Path) -> None:
    # Execute (in the fixture)
    manifest = degrading

    # Assert
    with manifest.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert list(rows[0]) == list(simulate_history.MANIFEST_COLUMNS)
    assert len(rows) == 36
    assert [r["fault_type"] for r in rows[:19]] == ["normal"] * 19
    assert {r["fault_type"] for r in rows[19:]} == {"outer_race"}
    assert rows[1]["timestamp"] == "2026-01-01T01:00:00+00:00"
    assert all((manifest.parent / r["file"]).is_file() for r in rows)


def test_health_reports_alarm_and_rul_with_json_and_png(
    tmp_path: Path, degrading: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    manifest = degrading
    json_path, png_path = tmp_path / "out" / "health.json", tmp_path / "out" / "health.png"

    # Execute
    outputs = ["--json", str(json_path), "--png", str(png_path)]
    code = run_command(
        health,
        ["--manifest", str(manifest), "--baseline", "12", "--failure-threshold", "5000", *outputs],
    )

    # Assert
    assert code == 0
    out = capsys.readouterr().out
    assert "first alarm: record" in out
    assert " h [10-90 %: " in out
    report = json.loads(json_path.read_text(encoding="utf-8"))
    alarm = report["first_alarm"]["index"]
    assert 18 < alarm < 35
    assert report["time_unit"] == "h"
    assert report["failure_threshold_source"] == "given"
    assert [r["state"] for r in report["records"][:12]] == ["baseline"] * 12
    assert report["records"][alarm]["state"] == "alarm"
    assert report["records"][34]["rul"]["rul"] is not None
    assert report["records"][34]["rul"]["lower"] <= report["records"][34]["rul"]["upper"]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_health_on_a_healthy_history_raises_no_alarm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    manifest = write_history(tmp_path / "history", mode="normal")
    capsys.readouterr()

    # Execute
    code = run_command(
        health,
        ["--manifest", str(manifest), "--baseline", "12", "--json", str(tmp_path / "h.json")],
    )

    # Assert
    assert code == 0
    assert "first alarm: none" in capsys.readouterr().out
    report = json.loads((tmp_path / "h.json").read_text(encoding="utf-8"))
    assert report["first_alarm"] is None
    assert report["rul"] is None
    assert report["failure_threshold_source"].startswith("derived")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--baseline", "4"], "--baseline must be at least 8"),
        (["--baseline", "40"], "leave none after --baseline"),
        (["--baseline", "12", "--persistence", "0"], "--persistence"),
        (["--baseline", "12", "--channel", "fe"], "error:"),
    ],
    ids=["short-baseline", "baseline-covers-all", "persistence", "missing-channel"],
)
def test_health_refuses_bad_arguments(
    degrading: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    # Execute
    code = run_command(health, ["--manifest", str(degrading), *extra])

    # Assert
    assert code in (1, 2)
    assert message in capsys.readouterr().err
