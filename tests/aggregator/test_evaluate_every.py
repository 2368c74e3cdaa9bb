"""``evaluate-every``: federated evaluation only in some rounds, through Flower's own round loop."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from test_compression_mods import (
    RUN_ID,
    LoopbackGrid,
    _global_arrays,
    _moved,
    _numpy,
    _replying_with,
)

from aggregator.guards import GuardConfig
from aggregator.strategy import GuardedStrategy


def _counting_app(evaluated: list[int]) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        received = _numpy(msg.content["arrays"])
        return _replying_with(_moved(received, 1e-3, seed=ctx.node_id))(msg, ctx)

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        evaluated.append(int(str(msg.content["config"]["server-round"])))
        metrics = MetricRecord({"eval-loss": 0.1, "eval-accuracy": 0.9, "num-examples": 10})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


@pytest.mark.parametrize(("every", "offset", "expected"), [(2, 0, [2, 4, 5]), (3, 1, [3, 5])])
def test_only_every_nth_and_the_last_round_evaluate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every: int, offset: int, expected: list[int]
) -> None:
    # Prepare: two sites; a run of 5 rounds, possibly resumed after `offset` rounds
    monkeypatch.setattr(TaskIdentity, "_run_id", RUN_ID)  # what a ServerApp process has
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    evaluated: list[int] = []
    stores = {n: tmp_path / f"site-{n}" / "store.sqlite" for n in (1, 2)}
    grid = LoopbackGrid(_counting_app(evaluated), stores, "none")
    inner = FedAvg(min_train_nodes=2, min_available_nodes=2, min_evaluate_nodes=2)
    strategy = GuardedStrategy(
        inner, GuardConfig(), round_offset=offset, evaluate_every=every, last_round=5
    )

    # Execute
    strategy.start(grid=grid, initial_arrays=_global_arrays(), num_rounds=5 - offset)

    # Assert: each evaluating round asked both sites, the others none; every round trained
    assert evaluated == [r for r in expected for _ in range(2)]
    assert sorted(strategy.rounds) == list(range(offset + 1, 6))
    for server_round, log in strategy.rounds.items():
        assert "train-loss" in log.aggregated
        assert ("eval-accuracy" in log.aggregated) == (server_round in expected)
        assert not log.skipped


def test_evaluate_every_must_be_positive() -> None:
    with pytest.raises(ValueError, match="evaluate_every"):
        GuardedStrategy(FedAvg(), GuardConfig(), evaluate_every=0)
