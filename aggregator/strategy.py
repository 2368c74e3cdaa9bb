"""FedAvg that remembers, per round, which sites replied, what each reported, and the means."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from aggregator.rounds import RoundLog, record_replies


def _scalars(record: MetricRecord) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if isinstance(v, int | float)}


class RecordingFedAvg(FedAvg):
    """Flower's FedAvg plus a :class:`RoundLog` per round (sites and their metrics)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rounds: dict[int, RoundLog] = {}

    def round_log(self, server_round: int) -> RoundLog:
        """The log of ``server_round`` (created on first use)."""
        return self.rounds.setdefault(server_round, RoundLog(server_round))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record the training replies, then aggregate them as FedAvg does."""
        log = self.round_log(server_round)
        replies = record_replies(log, replies, "train")
        result: tuple[ArrayRecord | None, MetricRecord | None] = super().aggregate_train(
            server_round, replies
        )
        if result[1] is not None:
            log.aggregated.update(_scalars(result[1]))
        return result

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Record the evaluation replies, then aggregate them as FedAvg does."""
        log = self.round_log(server_round)
        replies = record_replies(log, replies, "eval")
        result: MetricRecord | None = super().aggregate_evaluate(server_round, replies)
        if result is not None:
            log.aggregated.update(_scalars(result))
        return result
