"""Round checkpoints: contents round-trip, writes are atomic under SIGKILL, resume picks them up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord

from aggregator.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    config_hash,
    to_record,
    weights_sha256,
)
from aggregator.publish import RoundPublisher
from aggregator.rounds import RoundLog
from aggregator.server_app import resume
from models.fl_config import RunConfig
from models.network import build_model
from models.registry import FileRegistry

WRITER = r"""
import sys
import numpy as np
from aggregator.checkpoint import Checkpoint, CheckpointStore
store = CheckpointStore(sys.argv[1], keep=3)
for r in range(1, 10_000):
    # 16 MB of weights per checkpoint, every value equal to its round
    ckpt = Checkpoint(r, {"w": np.full(4_000_000, r, np.float32)}, "cfg")
    ckpt.strategy_state = {"m_t/w": np.full(3, -r, np.float64)}
    store.save(ckpt)
    print(r, flush=True)
"""


def _model_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    net = build_model(RunConfig().network, seed=seed)
    return {k: v.numpy() for k, v in ArrayRecord(net.state_dict()).items()}


def test_checkpoint_round_trips_bit_for_bit(tmp_path: Path) -> None:
    # Prepare
    arrays = _model_arrays()
    log = RoundLog(3, {"north": {"train-loss": 0.3}}, {"eval-accuracy": 0.9}, 1, 2)
    log.rejected["train:south"] = "array 'w' holds NaN or Inf"
    ckpt = Checkpoint(
        3,
        arrays,
        "abc",
        strategy_state={"m_t/fc.weight": np.ones((2, 2))},
        round_logs={3: log},
        registry_versions={3: 7},
        flower_run_ids=["123"],
    )
    store = CheckpointStore(tmp_path / "run")

    # Execute
    path = store.save(ckpt)
    back = store.latest()

    # Assert
    assert path.name == "round-000003.npz"
    assert back is not None
    assert back.weights_sha256 == weights_sha256(arrays)
    for k, v in arrays.items():
        assert back.arrays[k].dtype == v.dtype
        assert back.arrays[k].shape == v.shape
    assert back.round_logs[3] == log
    assert back.registry_versions == {3: 7}
    assert back.flower_run_ids == ["123"]
    assert weights_sha256({k: a.numpy() for k, a in to_record(back.arrays).items()}) == (
        weights_sha256(arrays)
    )


def test_latest_falls_back_past_a_damaged_newest_file(tmp_path: Path) -> None:
    # Prepare
    store = CheckpointStore(tmp_path / "run", keep=5)
    for r in (1, 2, 3):
        store.save(Checkpoint(r, {"w": np.full(10, r, np.float32)}, "cfg"))
    newest = store.path_for(3)
    newest.write_bytes(newest.read_bytes()[:-100])  # torn by something other than our writer
    (store.directory / ".tmp-round-000004.npz.dead").write_bytes(b"half")

    # Execute
    ckpt = store.latest()

    # Assert
    assert ckpt is not None
    assert ckpt.server_round == 2
    assert not list(store.directory.glob(".tmp-*"))


def test_old_checkpoints_are_pruned(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "run", keep=2)
    for r in range(1, 6):
        store.save(Checkpoint(r, {"w": np.zeros(2, np.float32)}, "cfg"))
    assert store.rounds() == [4, 5]


@pytest.mark.integration
@pytest.mark.parametrize("when", ["first-write", "mid-write", "between-writes"])
def test_sigkill_while_writing_leaves_the_last_complete_checkpoint(
    tmp_path: Path, when: str
) -> None:
    # Prepare
    directory = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    written = 0
    try:
        # Execute
        if when == "first-write":
            while not list(directory.glob(".tmp-*")) and proc.poll() is None:
                time.sleep(0.001)
        else:
            while written < 3:
                written = int(proc.stdout.readline())
            if when == "mid-write":
                while not list(directory.glob(".tmp-*")) and proc.poll() is None:
                    time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()

    # Assert: the newest checkpoint is whole, and at least as new as the last one reported
    ckpt = CheckpointStore(directory).latest()
    if when == "first-write":
        assert ckpt is None or ckpt.server_round == 1
        return
    assert ckpt is not None
    assert ckpt.server_round >= written
    assert (ckpt.arrays["w"] == ckpt.server_round).all()
    assert (ckpt.strategy_state["m_t/w"] == -ckpt.server_round).all()
    assert not list(directory.glob(".tmp-*"))


def test_resume_refuses_checkpoints_of_another_configuration(tmp_path: Path) -> None:
    # Prepare
    cfg = RunConfig(registry_dir=str(tmp_path / "registry"), run_name="a")
    store = CheckpointStore(tmp_path / "run")
    store.save(Checkpoint(1, _model_arrays(), config_hash(cfg)))
    other = RunConfig(registry_dir=str(tmp_path / "registry"), run_name="a", learning_rate=0.01)
    more_rounds = RunConfig(
        registry_dir=str(tmp_path / "registry"), run_name="a", num_server_rounds=9
    )
    publisher = RoundPublisher(other, FileRegistry(other.registry_dir), "r2", {})

    # Execute / Assert
    with pytest.raises(CheckpointError, match="another run config"):
        resume(store, other, publisher, "r2")
    assert config_hash(more_rounds) == config_hash(cfg)  # extending a run is allowed


def test_resume_publishes_a_round_killed_before_its_publish_once(tmp_path: Path) -> None:
    # Prepare: round 1 checkpointed by Flower run 11, killed before publishing
    cfg = RunConfig(registry_dir=str(tmp_path / "registry"), run_name="a")
    store = CheckpointStore(tmp_path / "run")
    log = RoundLog(1, {"north": {"train-loss": 0.3, "eval-accuracy": 0.5}})
    store.save(
        Checkpoint(1, _model_arrays(), config_hash(cfg), round_logs={1: log}, flower_run_ids=["11"])
    )
    registry = FileRegistry(cfg.registry_dir)

    # Execute: two restarts in a row
    first = resume(store, cfg, RoundPublisher(cfg, registry, "12", {}), "12")
    second = resume(store, cfg, RoundPublisher(cfg, registry, "13", {}), "13")

    # Assert: published once, and the checkpoint knows the version
    assert first is not None
    assert second is not None
    assert [c.server_round for c in registry.cards()] == [1]
    assert registry.cards()[0].sites == ("north",)
    assert second.registry_versions == {1: 1}
    assert second.flower_run_ids == ["11", "12", "13"]
    assert second.weights_sha256 == weights_sha256(_model_arrays())


def test_resume_adopts_a_version_published_just_before_the_kill(tmp_path: Path) -> None:
    # Prepare: run 11 published round 1 but died before recording the version
    cfg = RunConfig(registry_dir=str(tmp_path / "registry"), run_name="a")
    store = CheckpointStore(tmp_path / "run")
    store.save(Checkpoint(1, _model_arrays(), config_hash(cfg), flower_run_ids=["11"]))
    registry = FileRegistry(cfg.registry_dir)
    RoundPublisher(cfg, registry, "11", {}).publish(1, to_record(_model_arrays()))

    # Execute
    ckpt = resume(store, cfg, RoundPublisher(cfg, registry, "12", {}), "12")

    # Assert
    assert ckpt is not None
    assert ckpt.registry_versions == {1: 1}
    assert len(registry.cards()) == 1
