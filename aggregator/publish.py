"""Export each round's global model to ONNX and publish it to the model registry.

With ``signing-key`` in the run config (a path to an Ed25519 private key, ``fedpm keys
generate``), every version is published with a detached signature that edge agents verify.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import flwr
from flwr.app import ArrayRecord, MetricRecord

from aggregator.rounds import RoundLog
from models.fl_config import RunConfig
from models.metadata import Provenance
from models.network import build_model
from models.onnx_export import export_onnx, metadata_for
from models.registry import FileRegistry, ModelCard
from models.signing import key_id, load_private_key

logger = logging.getLogger(__name__)


class RoundPublisher:
    """Callable for ``Strategy.start(evaluate_fn=...)``: publishes rounds >= 1."""

    def __init__(
        self,
        cfg: RunConfig,
        registry: FileRegistry,
        run_id: str,
        round_logs: dict[int, RoundLog],
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        self.run_id = run_id
        self.round_logs = round_logs
        self.published: list[ModelCard] = []
        # read once, at start: a missing or bad key fails the run before any training
        self.signing_key = load_private_key(cfg.signing_key) if cfg.signing_key else None
        if self.signing_key is not None:
            logger.info(
                "models will be signed with key %s (%s)",
                key_id(self.signing_key.public_key()),
                cfg.signing_key,
            )

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Publish the global model of ``server_round`` (round 0, the initial model, is not)."""
        if server_round < 1:
            return None
        card = self.publish(server_round, arrays)
        return MetricRecord({"registry-version": card.version})

    def run_facts(self, metrics: dict[str, float]) -> dict[str, Any]:
        """What the card's provenance says about the run besides the round's metrics.

        ``run_name``, ``strategy``, ``num_server_rounds`` (planned), ``min_sites``,
        ``dp_epsilon`` (site-level epsilon spent up to this round at ``dp_delta``; ``None``
        without DP), ``update_compression`` and, for simulated sites, ``data_partition``.
        """
        cfg = self.cfg
        dp = cfg.dp_noise_multiplier > 0
        facts: dict[str, Any] = {
            "run_name": cfg.run_name,
            "strategy": cfg.strategy,
            "num_server_rounds": cfg.num_server_rounds,
            "min_sites": cfg.min_sites,
            "dp_epsilon": metrics.get("dp-epsilon") if dp else None,
            "dp_delta": cfg.dp_delta if dp else None,
            "update_compression": cfg.update_compression,
        }
        if cfg.data_manifest:
            facts["data_partition"] = cfg.data_partition
        return facts

    def publish(self, server_round: int, arrays: ArrayRecord) -> ModelCard:
        """Export ``arrays`` and publish them with this round's metrics."""
        log = self.round_logs.get(server_round, RoundLog(server_round))
        metrics = dict(log.aggregated)  # Flower's example-weighted means of this round
        net = build_model(self.cfg.network)
        net.load_state_dict(arrays.to_torch_state_dict())
        provenance = Provenance(
            source="federated",
            run_id=self.run_id,
            server_round=server_round,
            sites=log.sites,
            metrics=metrics,
            framework={"flwr": flwr.__version__},
            **self.run_facts(metrics),
        )
        metadata = metadata_for(
            net,
            sample_rate_hz=self.cfg.sample_rate_hz,
            class_names=self.cfg.class_names,
            provenance=provenance,
        )
        card = self.registry.publish(
            export_onnx(net, metadata),
            metadata,
            run_id=self.run_id,
            server_round=server_round,
            sites=log.sites,
            metrics=metrics,
            site_metrics=log.site_metrics,
            signing_key=self.signing_key,
        )
        logger.info(
            "round %d published as %s to %s (sites: %s, %s)",
            server_round,
            card.label,
            Path(self.registry.root).resolve(),
            ", ".join(log.sites) or "none",
            "signed" if self.signing_key is not None else "unsigned",
        )
        self.published.append(card)
        return card
