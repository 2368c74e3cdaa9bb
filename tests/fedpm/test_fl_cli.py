"""``fedpm fl``: a real run on a local federation, a real simulation, runs history, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from aggregator.rounds import RoundLog, progress_line, progress_record
from edge_agent.fl_data import partition_data, site_data
from fedpm.cli import main
from fedpm.federation import CONNECTION, LocalFederation, SiteNode
from fedpm.fl_runs import RunStore, parse_progress, round_row
from fedpm.procs import ProcessGroup
from fedpm.seed_store import seed_store
from models.fl_config import RunConfig
from models.registry import FileRegistry
from models.simulator import MachineProfile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge_agent"))
from victoria_helpers import VictoriaMetrics, find_victoria_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FS = 12_000.0
CLASSES = ("normal", "inner_race", "outer_race", "ball")


def write_manifest(folder: Path, *, windows_per_record: int = 12, loads: int = 2) -> Path:
    """A small CWRU-shaped manifest: one npz record per class and motor load, tones per class."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["file\tfault_type\tsample_rate_hz\tchannels\tmotor_load_hp\trpm"]
    t = np.arange(windows_per_record * 2048) / FS
    for k, fault in enumerate(CLASSES):
        for load in range(loads):
            tone = np.sin(2 * np.pi * (400.0 * (k + 1) + 20 * load) * t)
            de = (tone + 0.3 * rng.standard_normal(len(t))).astype(np.float32)
            name = f"{fault}_{load}.npz"
            np.savez(folder / name, de=de, fe=de[::-1].copy())
            rows.append(f"{name}\t{fault}\t{FS:g}\tde,fe\t{load}\t{1797 - 20 * load}")
    manifest = folder / "MANIFEST.tsv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return manifest


# --- fast: data of virtual sites, and bad input ----------------------------------------------


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "by:motor_load_hp"])
def test_virtual_sites_share_the_manifest_without_crossing_the_time_cut(
    tmp_path: Path, spec: str
) -> None:
    # Prepare
    manifest = write_manifest(tmp_path / "data")
    cfg = RunConfig(data_manifest=str(manifest), data_partition=spec)

    # Execute
    shares = [partition_data(cfg, p, 4) for p in range(4)]
    again = site_data({"partition-id": 2, "num-partitions": 4}, cfg)

    # Assert: 8 records of 12 windows, the first 80 % (9 whole windows) train, the rest (2) test
    train_starts = [set(map(int, d.start_ns[t])) for d, t, _ in shares]
    assert sum(len(t) for _, t, _ in shares) == 8 * 9
    assert sum(len(e) for _, _, e in shares) == 8 * 2
    cut_ns = np.floor(12 * 2048 * 0.8) / FS * 1e9
    for data, train, held in shares:
        assert data.x.shape[1:] == (1, 2048)
        assert np.all(data.start_ns[train] + 2048 / FS * 1e9 <= cut_ns + 1)
        assert np.all(data.start_ns[held] >= cut_ns - 1)
        # a site evaluates only on records it also trains on
        assert set(data.group[held]) <= set(data.group[train])
    pairs = [
        (int(g), s) for d, t, _ in shares for g, s in zip(d.group[t], d.start_ns[t], strict=True)
    ]
    assert len(pairs) == len(set(pairs))  # no training window given to two sites
    assert np.array_equal(again[0].x, shares[2][0].x)  # same seed, same share
    assert train_starts  # every site has training windows
    if spec == "by:motor_load_hp":
        for data, train, _ in shares:  # 4 sites over 2 loads: one load per site
            assert len({int(g) % 2 for g in data.group[train]}) == 1


def test_a_simulated_node_without_a_manifest_gets_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data-manifest"):
        site_data({"partition-id": 0, "num-partitions": 2}, RunConfig())
    with pytest.raises(ValueError, match="store-path"):
        site_data({}, RunConfig())
    cfg = RunConfig(data_manifest=str(write_manifest(tmp_path / "d")), data_partition="by:nope")
    with pytest.raises(ValueError, match="no manifest column 'nope'"):
        partition_data(cfg, 0, 2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fl", "run", "--strategy", "fedprx"], "strategy must be one of"),
        (["fl", "run", "--rounds", "0"], "num-server-rounds"),
        (["fl", "run", "--config", "nonsense=1"], "no such run-config key"),
        (["fl", "run", "--config", "novalue"], "KEY=VALUE"),
        (["fl", "run", "--run-name", "../x"], "run id"),
        (["fl", "run", "--influx-url", "http://127.0.0.1:1"], "--influx-token"),
        (["fl", "run", "--strategy", "fedprox", "--proximal-mu", "0"], "proximal-mu"),
        (["fl", "simulate", "--sites", "0", "--manifest", "M"], "--sites"),
        (["fl", "simulate", "--sites", "4", "--manifest", "/nonexistent"], "does not exist"),
        (["fl", "simulate", "--sites", "4", "--manifest", "M", "--partition", "x:1"], "partition"),
        (["fl", "simulate", "--sites", "2", "--manifest", "M", "--min-sites", "3"], "exceeds"),
    ],
)
def test_bad_input_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    manifest = write_manifest(tmp_path / "data", windows_per_record=2, loads=1)
    argv = [str(manifest) if a == "M" else a for a in argv]

    code = main([*argv, "--runs-dir", str(tmp_path / "runs"), "--influx-org", "o"])

    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing was started or recorded


def test_progress_line_round_trips_through_flower_log_formatting() -> None:
    # Prepare: a round whose eval loss is NaN (strict JSON has no NaN)
    log = RoundLog(3, site_metrics={"a": {}, "b": {}}, sampled=3, failures=1)
    log.aggregated.update({"train-loss": 0.5, "eval-loss": float("nan"), "eval-accuracy": 0.9})
    record = progress_record(
        log,
        num_rounds=5,
        run_name="r",
        flower_run_id="42",
        strategy="fedavg",
        bytes_up=10,
        bytes_down=20,
        registry_version=7,
    )

    # Execute
    parsed = parse_progress("\x1b[92mINFO \x1b[0m:      " + progress_line(record))

    # Assert
    assert parsed == record
    assert parsed["eval_loss"] is None
    assert parsed["replied"] == 2
    assert parsed["sampled"] == 3
    assert parse_progress("fedpm-round {not json") is None
    row = round_row(parsed)
    assert row.split()[:2] == ["3/5", "2/3"]
    assert row.split()[-1] == "v7"


def test_history_and_status_on_an_empty_runs_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["fl", "history", "--runs-dir", str(tmp_path), "--json", str(tmp_path / "h.json")])
        == 0
    )
    assert "no runs" in capsys.readouterr().out
    assert json.loads((tmp_path / "h.json").read_text()) == {"runs": []}
    assert main(["fl", "status", "--runs-dir", str(tmp_path), "--no-superlink"]) == 0
    assert "0 in progress" in capsys.readouterr().out


# --- integration: real Flower processes ------------------------------------------------------


def _rows(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.strip().startswith(("1/2", "2/2"))]


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_fl_run_on_a_local_federation_records_rounds_curves_card_and_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: two sites with tiny stores, a SuperLink and two SuperNodes
    nodes = []
    for i, (site, modes) in enumerate(
        {"plant-a": ("normal", "inner_race"), "plant-b": ("normal", "ball")}.items()
    ):
        store = tmp_path / site / "store.sqlite"
        store.parent.mkdir()
        seed_store(store, MachineProfile(), modes, windows_per_mode=20, seed=10 * i)
        nodes.append(SiteNode(site, store))
    runs_dir, registry_dir = tmp_path / "runs", tmp_path / "registry"
    vm_binary = find_victoria_metrics()

    # Execute
    with ProcessGroup(tmp_path / "logs") as group:
        federation = LocalFederation(group, tmp_path)
        federation.start(nodes)
        vm = VictoriaMetrics(tmp_path / "vm", tmp_path / "vm.log") if vm_binary else None
        if vm is not None:
            vm.start()
        try:
            influx = (
                ["--influx-url", vm.url, "--influx-token", "t", "--influx-bucket", "b"]
                if vm
                else []
            )
            code = main(
                [
                    "fl", "run",
                    "--flwr-home", str(federation.flwr_home),
                    "--federation", CONNECTION,
                    "--strategy", "fedprox",
                    "--rounds", "2",
                    "--local-epochs", "1",
                    "--min-sites", "2",
                    "--dp-noise-multiplier", "0.3",
                    "--run-name", "line3-fedprox",
                    "--registry-dir", str(registry_dir),
                    "--checkpoint-dir", str(tmp_path / "checkpoints"),
                    "--runs-dir", str(runs_dir),
                    "--json", str(tmp_path / "run.json"),
                    *influx,
                    "--influx-org", "fedpm",
                ]
            )  # fmt: skip
            out = capsys.readouterr().out
            points = vm.export('{__name__=~"fedpm_fl_round_.*"}') if vm is not None else {}
        finally:
            if vm is not None:
                vm.stop()
        main(["fl", "status", "--runs-dir", str(runs_dir), "--flwr-home",
              str(federation.flwr_home), "--federation", CONNECTION])  # fmt: skip
        status_out = capsys.readouterr().out

    # Assert: a live row per round
    assert code == 0, out
    rows = _rows(out)
    assert len(rows) == 2, out
    assert all(" 2/2 " in row for row in rows)  # 2 of 2 sites replied
    # the saved run
    folder = runs_dir / "line3-fedprox"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    for r in metrics["rounds"]:
        assert r["replied"] == r["sampled"] == 2
        assert r["bytes_up"] > 0
        assert r["bytes_down"] > 0
        assert 0.0 <= r["eval_accuracy"] <= 1.0
        assert r["dp_epsilon"] > 0
    assert metrics["rounds"][1]["dp_epsilon"] > metrics["rounds"][0]["dp_epsilon"]
    assert (folder / "curves.png").read_bytes()[:8] == PNG_MAGIC
    record = RunStore(runs_dir).load("line3-fedprox")
    assert record.status == "finished"
    assert json.loads((tmp_path / "run.json").read_text())["run_id"] == "line3-fedprox"
    # the registered model's card says where it came from
    cards = FileRegistry(registry_dir).cards()
    final = max(cards, key=lambda c: c.server_round)
    assert record.model["version"] == final.version
    prov = final.metadata.provenance.model_extra or {}
    assert prov["run_name"] == "line3-fedprox"
    assert prov["strategy"] == "fedprox"
    assert prov["num_server_rounds"] == 2
    assert prov["dp_epsilon"] == pytest.approx(final.metrics["dp-epsilon"])
    assert final.server_round == 2
    assert final.sites == ("plant-a", "plant-b")
    assert final.run_id == record.flower_run_id
    assert "eval-accuracy" in final.metrics
    # history and status list it
    assert (
        main(["fl", "history", "--runs-dir", str(runs_dir), "--json", str(tmp_path / "h.json")])
        == 0
    )
    history = json.loads((tmp_path / "h.json").read_text())["runs"]
    assert history[0]["run_id"] == "line3-fedprox"
    assert history[0]["registered_version"] == final.version
    assert history[0]["strategy"] == "fedprox"
    assert history[0]["sites"] == 2
    assert "line3-fedprox" in status_out
    assert "finished" in status_out
    assert record.flower_run_id in status_out  # from the SuperLink's `flwr ls`
    # and InfluxDB (VictoriaMetrics speaks its write API) got a point per round
    if vm_binary is not None:
        series = {dict(k)["__name__"]: ts for k, ts in points.items()}
        assert len(series["fedpm_fl_round_eval_accuracy"]) == 2
        assert len(series["fedpm_fl_round_bytes_up"]) == 2


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_fl_simulate_runs_the_same_apps_on_virtual_sites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    manifest = write_manifest(tmp_path / "data")
    runs_dir, registry_dir = tmp_path / "runs", tmp_path / "registry"

    # Execute
    code = main(
        [
            "fl", "simulate",
            "--sites", "4",
            "--manifest", str(manifest),
            "--partition", "dirichlet:0.5",
            "--rounds", "2",
            "--local-epochs", "1",
            "--cpus", "2",
            "--run-name", "sim-4",
            "--registry-dir", str(registry_dir),
            "--checkpoint-dir", str(tmp_path / "checkpoints"),
            "--runs-dir", str(runs_dir),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out

    # Assert
    assert code == 0, out + (runs_dir / "sim-4" / "flwr-run.log").read_text()[-3000:]
    rows = _rows(out)
    assert len(rows) == 2, out
    assert all(" 4/4 " in row for row in rows), out
    record = RunStore(runs_dir).load("sim-4")
    assert record.kind == "simulate"
    assert record.status == "finished"
    assert record.sites == 4
    assert all(r["eval_accuracy"] is not None for r in record.rounds)
    final = max(FileRegistry(registry_dir).cards(), key=lambda c: c.server_round)
    assert len(final.sites) == 4
    prov = final.metadata.provenance.model_extra or {}
    assert prov["data_partition"] == "dirichlet:0.5"
    assert prov["dp_epsilon"] is None
    assert (runs_dir / "sim-4" / "curves.png").read_bytes()[:8] == PNG_MAGIC
    log = (runs_dir / "sim-4" / "flwr-run.log").read_text().splitlines()
    assert sum(parse_progress(line) is not None for line in log) == 2
    assert main(["fl", "history", "--runs-dir", str(runs_dir)]) == 0
    assert "sim-4" in capsys.readouterr().out
