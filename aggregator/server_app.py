"""Flower ServerApp: FedAvg over the sites, every round's global model published to the registry."""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from aggregator.publish import RoundPublisher
from aggregator.strategy import RecordingFedAvg
from models.fl_config import RunConfig
from models.network import build_model
from models.registry import FileRegistry

logger = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds of FedAvg and publish each round's model."""
    # Both apps read the hyper-parameters from the run config (models.fl_config); the train
    # messages carry only the weights and Flower's server-round.
    cfg = RunConfig.from_run_config(context.run_config)
    net = build_model(cfg.network, seed=cfg.seed)
    strategy = RecordingFedAvg(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=1.0,
        min_train_nodes=cfg.min_sites,
        min_evaluate_nodes=cfg.min_sites,
        min_available_nodes=cfg.min_sites,
    )
    publisher = RoundPublisher(
        cfg, FileRegistry(cfg.registry_dir), str(context.run_id), strategy.rounds
    )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(net.state_dict()),
        num_rounds=cfg.num_server_rounds,
        timeout=cfg.round_timeout_s,
        evaluate_fn=publisher,
    )
    logger.info("run %s finished: %d versions published", context.run_id, len(publisher.published))
