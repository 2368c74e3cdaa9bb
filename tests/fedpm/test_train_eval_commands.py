"""``fedpm train`` and ``fedpm eval`` end to end on a small simulated set and on real CWRU files."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from fedpm.commands import evaluate as eval_cmd
from fedpm.commands import quantize as quantize_cmd
from fedpm.commands import train as train_cmd
from models.registry import FileRegistry
from models.simulator import FaultMode, MachineProfile, simulate

FS = 12_000
RECORD_SAMPLES = 9_000  # 0.75 s: 5 test windows of 512 after a 70 % cut
FAST = ["--window-samples", "512", "--train-hop", "256", "--epochs", "2", "--batch-size", "16",
        "--threads", "1"]  # fmt: skip
MODES: tuple[FaultMode, ...] = ("normal", "inner_race", "outer_race")


def parse(module: ModuleType, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def call(module: ModuleType, argv: list[str]) -> int:
    code: int = module.run(parse(module, argv))
    return code


@pytest.fixture(scope="module")
def sim_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One normal record, two records per fault at loads 0 and 1, and one unseen 'ball'."""
    root = tmp_path_factory.mktemp("sim")
    rng = np.random.default_rng(7)
    rows = ["file\tfault_type\tfault_diameter_in\tmotor_load_hp\tsample_rate_hz\tchannels"]
    plan: list[tuple[FaultMode, str]] = [
        ("normal", "0"), *((m, load) for m in MODES[1:] for load in "01"), ("ball", "1")
    ]  # fmt: skip
    for mode, load in plan:
        x = simulate(MachineProfile(), mode, 1.0, RECORD_SAMPLES, rng)
        name = f"{mode}_{load}.npz"
        np.savez(root / name, de=x)
        size = "0.000" if mode == "normal" else "0.007"
        rows.append(f"{name}\t{mode}\t{size}\t{load}\t{FS}\tde")
    (root / "MANIFEST.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "MANIFEST.tsv"


@pytest.fixture(scope="module")
def trained(
    sim_set: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any], str]:
    """A registry with one model trained on the simulated set (time split, no 'ball')."""
    out = tmp_path_factory.mktemp("trained")
    args = parse(
        train_cmd,
        ["--manifest", str(sim_set), "--filter", "fault_type!=ball", "--registry",
         str(out / "reg"), "--json", str(out / "train.json"), *FAST],
    )  # fmt: skip
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert train_cmd.run(args) == 0
    return out / "reg", json.loads((out / "train.json").read_text()), stdout.getvalue()


# --- fedpm train -----------------------------------------------------------------------------


def test_train_publishes_a_centralised_model_with_its_metrics(
    trained: tuple[Path, dict[str, Any], str],
) -> None:
    # Prepare
    registry, result, stdout = trained

    # Execute
    card, _ = FileRegistry(registry).load_verified()

    # Assert
    prov = card.metadata.provenance
    assert card.version == result["version"] == 1
    assert prov.source == "centralised"
    assert prov.run_id == card.run_id == result["run_id"]
    assert card.metadata.class_names == ("normal", "inner_race", "outer_race")
    assert card.metadata.window_samples == 512
    assert card.metrics == prov.metrics == result["metrics"]
    assert card.metrics["test-windows"] == 5 * 5  # 5 records, last 30 % = 5 windows each
    assert 0.0 <= card.metrics["test-accuracy"] <= 1.0
    dataset = (prov.model_extra or {})["dataset"]
    assert dataset["split"] == "time"
    assert dataset["filters"] == ["fault_type!=ball"]
    assert dataset["channels"] == ["de"]
    assert result["report"]["window_accuracy"] == card.metrics["test-accuracy"]
    assert "split time, labels fault, 3 classes" in stdout
    assert "confusion (rows: true class" in stdout
    assert "published v1" in stdout


def test_train_record_split_tests_whole_records_and_splits_a_lone_class(
    sim_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    argv = ["--manifest", str(sim_set), "--filter", "fault_type!=ball",
            "--test-filter", "motor_load_hp=1", "--speed-augment", "0.97,1.03", "--no-publish",
            "--json", str(tmp_path / "r.json"), *FAST]  # fmt: skip

    # Execute
    code = call(train_cmd, argv)

    # Assert: 2 whole load-1 records of 17 windows + the normal record's last 30 % (5 windows)
    result = json.loads((tmp_path / "r.json").read_text())
    assert code == 0
    assert result["version"] is None
    assert not (tmp_path / "var").exists()
    assert result["dataset"]["split"] == "record"
    assert result["dataset"]["time_split_records"] == ["normal_0"]
    assert result["metrics"]["test-windows"] == 2 * (RECORD_SAMPLES // 512) + 5
    assert result["dataset"]["speed_factors"] == [1.0, 0.97, 1.03]
    # three records train (normal's first 70 %), each at three speeds
    assert result["metrics"]["train-windows"] > 3 * 3 * ((6300 - 512) // 256)
    assert "split in time (only record of its class): normal_0" in capsys.readouterr().out


def test_train_fault_size_labels(
    sim_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    argv = ["--manifest", str(sim_set), "--labels", "fault_size", "--no-publish",
            "--json", str(tmp_path / "r.json"), *FAST]  # fmt: skip

    # Execute
    code = call(train_cmd, argv)

    # Assert
    result = json.loads((tmp_path / "r.json").read_text())
    assert code == 0
    assert result["class_names"] == [
        "normal", "inner_race@0.007", "outer_race@0.007", "ball@0.007"
    ]  # fmt: skip
    assert "4 classes" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--test-filter", "motor_load_hp=1", "--split", "time"], "use it with --split record"),
        (["--filter", "motor_load_hp=9"], "no record of .* passes the filters"),
        (["--filter", "colour=red"], "no column 'colour'"),
        (["--filter", "fault_type=ball", "--split", "record"], "two classes"),
        (["--train-fraction", "1.5"], "train_fraction must be in"),
        (["--channels", "fe"], r"no array\(s\) fe"),
        (["--speed-augment", "fast"], "--speed-augment takes numbers"),
        (["--speed-augment", "5"], "speed factors must lie in"),
    ],
)
def test_train_reports_bad_input_in_one_line(
    sim_set: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    # Prepare
    argv = ["--manifest", str(sim_set), "--registry", str(tmp_path / "reg"), *FAST, *extra]

    # Execute
    code = call(train_cmd, argv)

    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert re.search(message, err)
    assert not (tmp_path / "reg").exists()


def test_train_reports_a_missing_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = call(train_cmd, ["--manifest", str(tmp_path / "none.tsv"), "--no-publish"])

    # Assert
    assert code == 2
    assert "cannot read manifest" in capsys.readouterr().err


# --- fedpm eval ------------------------------------------------------------------------------


def test_eval_registry_scores_every_record_and_draws_the_matrix(
    trained: tuple[Path, dict[str, Any], str],
    sim_set: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    registry, _, _ = trained
    out_json, out_png = tmp_path / "eval.json", tmp_path / "cm.png"

    # Execute
    code = call(
        eval_cmd,
        ["--model", str(registry), "--manifest", str(sim_set), "--json", str(out_json),
         "--png", str(out_png)],
    )  # fmt: skip

    # Assert
    stdout = capsys.readouterr().out
    result = json.loads(out_json.read_text())
    assert code == 0
    assert result["model"].endswith("reg v1")
    assert len(result["records"]) == 6
    assert result["windows"] == 6 * (RECORD_SAMPLES // 512)
    assert result["scored_windows"] == 5 * (RECORD_SAMPLES // 512)  # 'ball' is not a class
    assert result["confusion"]["true_classes"] == ["normal", "inner_race", "outer_race", "ball"]
    assert np.asarray(result["confusion"]["matrix"]).shape == (4, 3)
    assert "ball" in stdout
    assert "(not a model class)" in stdout
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_after_the_train_fraction_reproduces_trains_test_score(
    trained: tuple[Path, dict[str, Any], str], sim_set: Path, tmp_path: Path
) -> None:
    # Prepare: the very ONNX file of version 1
    registry, train_result, _ = trained
    model = registry / "versions" / "000001" / "model.onnx"

    # Execute
    code = call(
        eval_cmd,
        ["--model", str(model), "--manifest", str(sim_set), "--filter", "fault_type!=ball",
         "--start-fraction", "0.7", "--json", str(tmp_path / "e.json")],
    )  # fmt: skip

    # Assert
    result = json.loads((tmp_path / "e.json").read_text())
    assert code == 0
    assert result["windows"] == train_result["metrics"]["test-windows"]
    assert result["window_accuracy"] == pytest.approx(train_result["metrics"]["test-accuracy"])
    assert result["confusion"] == train_result["report"]["confusion"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--start-fraction", "1"], "--start-fraction must be in"),
        (["--channels", "de,fe"], r"takes 1 channel\(s\)"),
        (["--version", "9"], "has no version 9"),
        (["--filter", "motor_load_hp=7"], "passes the filters"),
    ],
)
def test_eval_reports_bad_input(
    trained: tuple[Path, dict[str, Any], str],
    sim_set: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    # Prepare
    registry, _, _ = trained

    # Execute
    code = call(eval_cmd, ["--model", str(registry), "--manifest", str(sim_set), *extra])

    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(message, err)


def test_eval_refuses_a_file_that_is_not_a_model(
    sim_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not onnx")

    # Execute
    code = call(eval_cmd, ["--model", str(bogus), "--manifest", str(sim_set)])

    # Assert
    assert code == 2
    assert "cannot load the model" in capsys.readouterr().err


def test_eval_names_a_missing_model(
    sim_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = call(eval_cmd, ["--model", str(tmp_path / "nope.onnx"), "--manifest", str(sim_set)])

    # Assert
    assert code == 2
    err = capsys.readouterr().err
    assert "no model at" in err
    assert "Traceback" not in err


# --- fedpm quantize --------------------------------------------------------------------------


def test_quantize_writes_a_checked_w4a8_copy_under_a_quarter_of_the_float_file(
    trained: tuple[Path, dict[str, Any], str],
    sim_set: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    registry, _, _ = trained
    out = tmp_path / "edge" / "model.w4a8.onnx"

    # Execute
    code = call(
        quantize_cmd,
        ["--model", str(registry), "--manifest", str(sim_set), "--filter", "fault_type!=ball",
         "--calibration", "32", "--max-drop", "100", "--out", str(out),
         "--json", str(tmp_path / "q.json")],
    )  # fmt: skip

    # Assert: the file is the quantised model the report describes, and it loads
    from models.runtime import OnnxClassifier

    result = json.loads((tmp_path / "q.json").read_text())
    assert code == 0
    assert result["written"] is True
    assert result["out"] == str(out)
    assert out.stat().st_size == result["quantised_bytes"]
    assert result["size_ratio"] <= 0.25
    assert result["test_windows"] == 5 * 5  # 5 records, 5 windows of 512 after the 70 % cut
    assert 0.0 <= result["argmax_agreement"] <= 1.0
    assert OnnxClassifier(out.read_bytes()).metadata.quantization == "w4a8"
    assert "agreement with float32" in capsys.readouterr().out


def test_quantize_writes_only_what_stays_within_the_accuracy_limit(
    trained: tuple[Path, dict[str, Any], str], sim_set: Path, tmp_path: Path
) -> None:
    # Prepare: no loss at all allowed
    registry, _, _ = trained
    out = tmp_path / "model.int8.onnx"

    # Execute
    code = call(
        quantize_cmd,
        ["--model", str(registry), "--manifest", str(sim_set), "--precision", "int8",
         "--calibration", "16", "--max-drop", "0", "--out", str(out),
         "--json", str(tmp_path / "q.json")],
    )  # fmt: skip

    # Assert: written and exit 0 exactly when the held-out accuracy did not fall
    result = json.loads((tmp_path / "q.json").read_text())
    kept = result["accuracy_drop_points"] <= 0.0
    assert result["written"] is kept
    assert out.exists() is kept
    assert code == (0 if kept else quantize_cmd.EXIT_TOO_LOSSY)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--train-fraction", "1"], "--train-fraction must be in"),
        (["--max-drop", "-1"], "--max-drop must be"),
        ([], "--out is needed"),
        (["--out", "x.onnx", "--channels", "de,fe"], r"takes 1 channel\(s\)"),
    ],
)
def test_quantize_reports_bad_input(
    trained: tuple[Path, dict[str, Any], str],
    sim_set: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    # Prepare
    registry, _, _ = trained

    # Execute
    code = call(quantize_cmd, ["--model", str(registry), "--manifest", str(sim_set), *extra])

    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(message, err)
    assert "Traceback" not in err


# --- Real CWRU records -----------------------------------------------------------------------


def test_train_then_eval_on_real_cwru_records(
    cwru_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: normal (48 kHz, resampled) and the 0.021 in faults at 0 HP, short training
    manifest = cwru_root / "MANIFEST.tsv"
    filters = ["--filter", "motor_load_hp=0", "--filter", "fault_diameter_in=0,0.021",
               "--filter", "or_position!=@3:00,@12:00"]  # fmt: skip
    registry = tmp_path / "reg"

    # Execute
    trained = call(
        train_cmd,
        ["--manifest", str(manifest), *filters, "--window-samples", "1024", "--train-hop",
         "1024", "--epochs", "2", "--threads", "1", "--registry", str(registry), "--json",
         str(tmp_path / "t.json")],
    )  # fmt: skip
    scored = call(
        eval_cmd,
        ["--model", str(registry), "--manifest", str(manifest), *filters,
         "--start-fraction", "0.7", "--json", str(tmp_path / "e.json")],
    )  # fmt: skip

    # Assert: four records, both commands see the same held-out windows and score them alike
    train_result = json.loads((tmp_path / "t.json").read_text())
    eval_result = json.loads((tmp_path / "e.json").read_text())
    assert trained == scored == 0
    assert train_result["class_names"] == ["normal", "inner_race", "outer_race", "ball"]
    assert eval_result["windows"] == train_result["metrics"]["test-windows"]
    assert eval_result["confusion"] == train_result["report"]["confusion"]
    assert sorted(r["name"] for r in eval_result["records"]) == [
        "12k_Drive_End_B021_0_222", "12k_Drive_End_IR021_0_209",
        "12k_Drive_End_OR021@6_0_234", "normal_0_97",
    ]  # fmt: skip
    assert "published v1" in capsys.readouterr().out
