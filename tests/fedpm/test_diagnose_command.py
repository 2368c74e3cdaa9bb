"""Tests for ``fedpm diagnose`` on real CWRU records in a temporary manifest."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest

from fedpm.commands import diagnose

RECORDS = {
    "12k_Drive_End_IR007_0_105.npz": "inner_race",
    "12k_Drive_End_OR007@6_0_130.npz": "outer_race",
    "12k_Drive_End_B028_1_3006.npz": "ball",
    "normal_0_97.npz": "none",  # sampled at 48 kHz
}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedpm diagnose")
    diagnose.add_arguments(parser)
    return parser.parse_args(list(argv))


def write_manifest(root: Path, tmp_path: Path, names: list[str], drop_rpm: str = "") -> Path:
    """A manifest of `names` from the CWRU manifest, files by absolute path."""
    with (root / "MANIFEST.tsv").open(newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        fields = list(reader.fieldnames or [])
        rows = {row["file"]: row for row in reader}
    manifest = tmp_path / "MANIFEST.tsv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fields, delimiter="\t")
        writer.writeheader()
        for name in names:
            row = dict(rows[name], file=str(root / name))
            if name == drop_rpm:
                row.update(rpm_nominal="", rpm_in_file="")
            writer.writerow(row)
    return manifest


def test_diagnoses_real_records_and_scores_accuracy(
    cwru_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    manifest = write_manifest(cwru_root, tmp_path, list(RECORDS))
    out = tmp_path / "out" / "diagnosis.json"

    # Execute
    code = diagnose.run(parse("--manifest", str(manifest), "--bearing", "6205", "--json", str(out)))

    # Assert
    assert code == 0
    report = json.loads(out.read_text())
    verdicts = {row["file"]: row["verdict"] for row in report["records"]}
    assert verdicts == RECORDS
    assert report["accuracy"]["correct"] == report["accuracy"]["labelled"] == 4
    outer = next(r for r in report["records"] if r["expected"] == "outer_race")
    assert outer["best"]["defect"] == "outer_race"
    assert outer["best"]["score_db"] > 20.0
    assert len(outer["evidence"]) == 4
    text = capsys.readouterr().out
    assert "accuracy: 4/4 labelled records (100.0 %)" in text
    assert "outer_race" in text


def test_full_band_custom_geometry_and_a_record_without_speed(
    cwru_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the 6205 given by its geometry; one record loses its speed.
    names = ["12k_Drive_End_OR007@6_0_130.npz", "12k_Drive_End_IR007_0_105.npz"]
    manifest = write_manifest(cwru_root, tmp_path, names, drop_rpm=names[1])
    spec = "n=9,d=0.3126,D=1.537,angle=0"

    # Execute
    code = diagnose.run(parse("--manifest", str(manifest), "--bearing", spec, "--band", "full"))

    # Assert
    assert code == 0
    text = capsys.readouterr().out
    assert "skipped: no rpm" in text
    assert "accuracy: 1/1 labelled records (100.0 %): outer_race 1/1" in text


def test_bad_bearing_and_missing_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    bad_bearing = diagnose.run(parse("--manifest", str(tmp_path / "m.tsv"), "--bearing", "9999"))
    missing = diagnose.run(parse("--manifest", str(tmp_path / "m.tsv"), "--bearing", "6203"))

    # Assert
    assert bad_bearing == 2
    assert missing == 1
    assert capsys.readouterr().err.count("error:") == 2


def test_labels_map_to_verdicts() -> None:
    # Execute / Assert
    assert diagnose.expected_verdict("normal") == "none"
    assert diagnose.expected_verdict(" Inner_Race ") == "inner_race"
    assert diagnose.expected_verdict("unknown") is None
