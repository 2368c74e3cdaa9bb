"""Server-side evaluation (CUDA when present, tested on CPU) and what a round's close records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from aggregator.checkpoint import Checkpoint, CheckpointStore, config_hash
from aggregator.evaluation import ServerEvaluator, load_windows, pick_device
from aggregator.publish import RoundPublisher
from aggregator.server_app import RoundCloser, guard_config
from aggregator.strategies import build_strategy
from aggregator.strategy import GuardedStrategy
from models.errors import SignalError
from models.fl_config import RunConfig
from models.network import build_model
from models.registry import FileRegistry
from models.training import evaluate


def _windows(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1, 2048)).astype(np.float32)
    y = (np.arange(n) % 4).astype(np.int64)
    return x, y


def test_device_is_cuda_only_when_present() -> None:
    # Prepare / Execute / Assert
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(SignalError, match="no CUDA device"):
            pick_device("cuda")
    with pytest.raises(SignalError, match="auto, cpu or cuda"):
        pick_device("tpu")


def test_server_evaluator_scores_the_global_model_like_local_evaluation(tmp_path: Path) -> None:
    # Prepare
    x, y = _windows()
    path = tmp_path / "holdout.npz"
    np.savez(path, x=x, y=y)
    cfg = RunConfig(server_eval_npz=str(path), server_device="cpu")
    net = build_model(cfg.network, seed=3)
    expected = evaluate(net, x, y, cfg.class_names)

    # Execute
    evaluator = ServerEvaluator.from_config(cfg)
    assert evaluator is not None
    metrics = evaluator(ArrayRecord(net.state_dict()))

    # Assert
    assert evaluator.device.type == "cpu"
    assert metrics["server-eval-examples"] == len(y)
    assert metrics["server-eval-accuracy"] == pytest.approx(expected.accuracy)
    assert metrics["server-eval-loss"] == pytest.approx(expected.loss, rel=1e-5)
    assert ServerEvaluator.from_config(RunConfig()) is None


def test_bad_holdout_files_are_refused_before_training(tmp_path: Path) -> None:
    # Prepare
    x, y = _windows()
    no_y, short, labels, pickled = (tmp_path / f"{n}.npz" for n in ("no_y", "short", "lab", "pk"))
    np.savez(no_y, x=x)
    np.savez(short, x=x[:, :, :100], y=y)
    np.savez(labels, x=x, y=y + 10)
    np.savez(pickled, x=np.array([object()], dtype=object), y=y)

    # Execute / Assert
    with pytest.raises(SignalError, match="server-eval-npz"):
        load_windows(no_y)
    with pytest.raises(SignalError, match="network expects"):
        ServerEvaluator.from_config(RunConfig(server_eval_npz=str(short)))
    with pytest.raises(SignalError, match="out of range"):
        ServerEvaluator.from_config(RunConfig(server_eval_npz=str(labels)))
    with pytest.raises(SignalError, match="server-eval-npz"):
        load_windows(pickled)
    with pytest.raises(SignalError, match="server-eval-npz"):
        load_windows(tmp_path / "missing.npz")


def test_round_close_checkpoints_then_publishes_and_skips_skipped_rounds(tmp_path: Path) -> None:
    # Prepare
    x, y = _windows()
    np.savez(tmp_path / "holdout.npz", x=x, y=y)
    cfg = RunConfig(
        registry_dir=str(tmp_path / "registry"),
        server_eval_npz=str(tmp_path / "holdout.npz"),
        server_device="cpu",
    )
    strategy = GuardedStrategy(build_strategy(cfg), guard_config(cfg), round_offset=4)
    registry = FileRegistry(cfg.registry_dir)
    publisher = RoundPublisher(cfg, registry, "77", strategy.rounds)
    store = CheckpointStore(tmp_path / "ckpt")
    closer = RoundCloser(
        strategy,
        publisher,
        store,
        Checkpoint(4, {}, config_hash(cfg), flower_run_ids=["77"]),
        ServerEvaluator.from_config(cfg),
    )
    arrays = ArrayRecord(build_model(cfg.network, seed=1).state_dict())
    strategy.round_log(6).skip_reason = "0 valid replies of 2 sampled sites"

    # Execute: Strategy.start's rounds 1 and 2 are the run's rounds 5 and 6
    published = closer(1, arrays)
    skipped = closer(2, arrays)

    # Assert
    assert published is not None
    assert published["registry-version"] == 1
    assert skipped is not None
    assert skipped["round-skipped"] == 1
    assert [c.server_round for c in registry.cards()] == [5]
    assert "server-eval-accuracy" in registry.cards()[0].metrics
    ckpt = store.latest()
    assert ckpt is not None
    assert ckpt.server_round == 6
    assert ckpt.registry_versions == {5: 1}
    assert ckpt.round_logs[6].skipped
    assert ckpt.round_logs[6].aggregated["server-eval-examples"] == len(y)
