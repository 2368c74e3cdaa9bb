"""Flower ServerApp: the chosen strategy under guards, a checkpoint and a published model per round.

A run resumes when its ``run-name`` names a checkpoint folder that already holds rounds: it
loads the newest valid checkpoint (weights, strategy state, round logs, registry versions) and
runs only the remaining rounds, numbered on from there (docs/federated-training.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log as flwr_log
from flwr.serverapp import Grid, ServerApp

from aggregator.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    config_hash,
    to_record,
)
from aggregator.compression import CompressionGrid, RoundTraffic
from aggregator.evaluation import ServerEvaluator
from aggregator.guards import GuardConfig
from aggregator.privacy import with_dp
from aggregator.publish import RoundPublisher
from aggregator.rounds import progress_line, progress_record
from aggregator.strategies import build_strategy, load_strategy_state, strategy_state
from aggregator.strategy import GuardedStrategy
from models.fl_config import RunConfig
from models.network import build_model
from models.registry import FileRegistry

logger = logging.getLogger(__name__)

app = ServerApp()


def guard_config(cfg: RunConfig) -> GuardConfig:
    """The guards' thresholds from the run config."""
    return GuardConfig(
        max_examples=cfg.max_examples_per_site,
        norm_outlier_mads=cfg.norm_outlier_mads,
        min_reply_fraction=cfg.min_reply_fraction,
    )


class RoundCloser:
    """``evaluate_fn`` of ``Strategy.start``: after each round, checkpoint, then publish.

    The checkpoint is written before the model is published and again, with the registry
    version, after it: a kill between the two leaves a checkpoint whose round is not yet
    published, which :func:`resume` publishes (or adopts, when the registry already has it).
    Last, it logs the round's progress line (:func:`aggregator.rounds.progress_line`) through
    Flower's logger, so ``flwr run --stream`` shows it; ``traffic`` (the
    :class:`CompressionGrid`'s) gives its byte counts.
    """

    def __init__(
        self,
        strategy: GuardedStrategy,
        publisher: RoundPublisher,
        store: CheckpointStore,
        base: Checkpoint,
        evaluator: ServerEvaluator | None = None,
        traffic: Mapping[tuple[str, str], RoundTraffic] | None = None,
    ) -> None:
        self.strategy = strategy
        self.traffic = traffic
        self.publisher = publisher
        self.store = store
        self.base = base
        self.evaluator = evaluator

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Checkpoint and publish the global model after ``server_round`` (0: nothing)."""
        if server_round < 1:
            return None
        current = self.strategy.absolute(server_round)
        log = self.strategy.round_log(current)
        if self.evaluator is not None:
            log.aggregated.update(self.evaluator(arrays))
        for site, (global_acc, personal_acc) in log.personal_accuracy().items():
            logger.info(
                "round %d, %s: global accuracy %.3f, personalised %.3f",
                current,
                site,
                global_acc,
                personal_acc,
            )
        ckpt = self.base
        ckpt.server_round = current
        ckpt.arrays = {k: a.numpy() for k, a in arrays.items()}
        ckpt.strategy_state = strategy_state(self.strategy.inner)
        ckpt.round_logs = self.strategy.rounds
        self.store.save(ckpt)
        if log.skipped:
            logger.warning("round %d skipped (%s): not published", current, log.skip_reason)
            self.report(current, None)
            return MetricRecord({"round-skipped": 1})
        card = self.publisher.publish(current, arrays)
        ckpt.registry_versions[current] = card.version
        self.store.save(ckpt)
        self.report(current, card.version)
        return MetricRecord({"registry-version": card.version})

    def report(self, server_round: int, registry_version: int | None) -> None:
        """Log the progress line of (absolute) ``server_round``."""
        cfg = self.publisher.cfg
        rounds = [t for (r, _), t in (self.traffic or {}).items() if r == str(server_round)]
        record = progress_record(
            self.strategy.round_log(server_round),
            num_rounds=cfg.num_server_rounds,
            run_name=cfg.run_name,
            flower_run_id=self.publisher.run_id,
            strategy=cfg.strategy,
            bytes_up=sum(t.up_bytes for t in rounds),
            bytes_down=sum(t.down_bytes for t in rounds),
            registry_version=registry_version,
        )
        flwr_log(logging.INFO, "%s", progress_line(record))


def resume(
    store: CheckpointStore, cfg: RunConfig, publisher: RoundPublisher, run_id: str
) -> Checkpoint | None:
    """Newest valid checkpoint of this run, its last round published; ``None`` for a fresh run.

    Raises
    ------
    CheckpointError
        When the checkpoint was written under another run configuration.
    """
    ckpt = store.latest()
    if ckpt is None:
        return None
    if ckpt.config_hash != config_hash(cfg):
        raise CheckpointError(
            f"checkpoints in {store.directory} were written with another run config; "
            "resume with the same settings (only num-server-rounds, round-timeout-s and "
            "server-device may change) or choose another run-name"
        )
    last = ckpt.server_round
    log = ckpt.round_logs.get(last)
    if last not in ckpt.registry_versions and not (log is not None and log.skipped):
        # killed between checkpoint and publish: adopt the version if it made it, else publish
        known = [
            c
            for c in publisher.registry.cards()
            if c.server_round == last and c.run_id in ckpt.flower_run_ids
        ]
        if known:
            ckpt.registry_versions[last] = known[-1].version
        else:
            publisher.round_logs.update(ckpt.round_logs)
            card = publisher.publish(last, to_record(ckpt.arrays))
            ckpt.registry_versions[last] = card.version
    ckpt.flower_run_ids.append(run_id)
    store.save(ckpt)
    return ckpt


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the remaining rounds of the configured strategy; checkpoint and publish each."""
    # Both apps read the hyper-parameters from the run config (models.fl_config); the train
    # messages carry only the weights and Flower's server-round (and FedProx's proximal-mu).
    cfg = RunConfig.from_run_config(context.run_config)
    run_id = str(context.run_id)
    store = CheckpointStore.for_run(cfg, run_id)
    publisher = RoundPublisher(cfg, FileRegistry(cfg.registry_dir), run_id, {})
    evaluator = ServerEvaluator.from_config(cfg)  # a bad file fails here, before round 1
    # guards outside DP: clipping and noise see only the accepted replies (docs/federated-*.md)
    inner = with_dp(build_strategy(cfg), cfg)
    net = build_model(cfg.network, seed=cfg.seed)
    reference = ArrayRecord(net.state_dict())
    ckpt = resume(store, cfg, publisher, run_id)
    if ckpt is None:
        ckpt = Checkpoint(0, {}, config_hash(cfg), flower_run_ids=[run_id])
        initial = reference
    else:
        load_strategy_state(inner, ckpt.strategy_state)
        initial = to_record(ckpt.arrays)
        logger.info(
            "run %s resumes after round %d from %s (weights sha256 %s)",
            cfg.run_name,
            ckpt.server_round,
            store.directory,
            ckpt.weights_sha256,
        )
    strategy = GuardedStrategy(
        inner,
        guard_config(cfg),
        round_offset=ckpt.server_round,
        rounds=ckpt.round_logs,
        evaluate_every=cfg.evaluate_every,
        last_round=cfg.num_server_rounds,
    )
    strategy.set_reference(reference)
    publisher.round_logs = strategy.rounds
    remaining = cfg.num_server_rounds - ckpt.server_round
    if remaining <= 0:
        logger.info("run %s already completed %d rounds", cfg.run_name, ckpt.server_round)
        return
    wrapped = CompressionGrid(grid)  # decodes compressed replies; passes others through
    strategy.start(
        grid=wrapped,
        initial_arrays=initial,
        num_rounds=remaining,
        timeout=cfg.round_timeout_s,
        evaluate_fn=RoundCloser(strategy, publisher, store, ckpt, evaluator, wrapped.traffic),
    )
    logger.info("run %s finished: %d versions published", run_id, len(publisher.published))
