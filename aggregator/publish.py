"""Export each round's global model to ONNX and publish it to the model registry.

With ``signing-key`` in the run config (a path to an Ed25519 private key, ``fedpm keys
generate``), every version is published with a detached signature that edge agents verify.
"""

from __future__ import annotations

import logging
from pathlib import Path

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
