"""Any Flower strategy, wrapped with the guards, a RoundLog per round and a round offset.

:class:`GuardedStrategy` is a Flower ``Strategy`` that delegates sampling and aggregation to
an inner Flower strategy (``aggregator.strategies.build_strategy``) and, around it:

- screens every training reply with ``aggregator.guards`` (structure, finite values, sample
  count cap, update-norm outliers) and hands the inner strategy only the accepted ones, their
  ``num-examples`` clipped;
- skips the round, leaving the global model unchanged, when fewer than ``min_reply_fraction``
  of the sampled sites replied validly (``Strategy.start`` keeps its arrays when
  ``aggregate_train`` returns ``None``);
- records a :class:`~aggregator.rounds.RoundLog` per round (accepted sites' metrics, refused
  sites and why, clipped counts, skip reason) that the publisher's model cards and the
  checkpoints use;
- numbers rounds from ``round_offset + 1``: a resumed run calls ``Strategy.start`` for the
  remaining rounds only, and the inner strategy, the clients (``server-round`` in the train
  config seeds their training) and the logs still see the run's true round numbers;
- keeps the global model's dtypes: FedAvg and FedAdam return float64 for every array
  (BatchNorm's integer ``num_batches_tracked`` too), which the next round's replies, trained in
  float32, would otherwise no longer match.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from aggregator.guards import (
    ArraySpec,
    Candidate,
    GuardConfig,
    Screening,
    enough_replies,
    screen_replies,
    spec_of,
)
from aggregator.rounds import RoundLog, record_replies, site_of
from aggregator.strategies import base_strategy

logger = logging.getLogger(__name__)

NDArrays = dict[str, npt.NDArray[np.generic]]


def _scalars(record: MetricRecord) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if isinstance(v, int | float)}


def _numpy(arrays: ArrayRecord) -> NDArrays:
    return {k: a.numpy() for k, a in arrays.items()}


class GuardedStrategy(Strategy):
    """A Flower strategy with FedPM's guards and bookkeeping around it.

    Parameters
    ----------
    inner : Strategy
        The Flower strategy that samples and aggregates: FedAvg or a subclass, possibly inside
        a wrapper that keeps it as ``.strategy`` (differential privacy).
    guards : GuardConfig
        Thresholds of the guards.
    round_offset : int
        Rounds already completed by an earlier process of this run (0 for a fresh run).
    rounds : dict of int to RoundLog, optional
        Logs of earlier rounds (from a checkpoint); new rounds are added to it.
    evaluate_every : int
        Federated evaluation in every ``evaluate_every``-th (absolute) round and in
        ``last_round``; the other rounds send no evaluate message [``evaluate-every``]. Each
        message costs a site a fresh ClientApp process (about 4 s of CPU for the imports
        alone, docs/federated-benchmarks.md), so evaluating less often shortens rounds.
    last_round : int, optional
        The run's last (absolute) round, always evaluated.
    """

    def __init__(
        self,
        inner: Strategy,
        guards: GuardConfig,
        *,
        round_offset: int = 0,
        rounds: dict[int, RoundLog] | None = None,
        evaluate_every: int = 1,
        last_round: int | None = None,
    ) -> None:
        if round_offset < 0:
            raise ValueError(f"round_offset must be >= 0, got {round_offset}")
        if evaluate_every < 1:
            raise ValueError(f"evaluate_every must be >= 1, got {evaluate_every}")
        self.evaluate_every = evaluate_every
        self.last_round = last_round
        self.inner = inner
        self.guards = guards
        # the metric FedAvg and its family weight by ("num-examples" unless configured)
        self.weight_key = str(getattr(base_strategy(inner), "weighted_by_key", "num-examples"))
        self.round_offset = round_offset
        self.rounds: dict[int, RoundLog] = rounds if rounds is not None else {}
        self._spec: ArraySpec | None = None
        self._global: NDArrays | None = None

    def absolute(self, server_round: int) -> int:
        """The run's round number of ``Strategy.start``'s ``server_round``."""
        return server_round + self.round_offset

    def round_log(self, server_round: int) -> RoundLog:
        """The log of (absolute) ``server_round``, created on first use."""
        return self.rounds.setdefault(server_round, RoundLog(server_round))

    def summary(self) -> None:
        """Log the guards, then the inner strategy's settings."""
        logger.info(
            "guards around %s: min-reply-fraction %.2f, max-examples-per-site %d, "
            "norm-outlier-mads %.1f; rounds numbered from %d",
            type(self.inner).__name__,
            self.guards.min_reply_fraction,
            self.guards.max_examples,
            self.guards.norm_outlier_mads,
            self.round_offset + 1,
        )
        self.inner.summary()

    def set_reference(self, arrays: ArrayRecord) -> None:
        """Fix the names, shapes and dtypes every reply must have (the initial global model)."""
        self._spec = spec_of(_numpy(arrays))

    def begin_round(self, arrays: ArrayRecord) -> None:
        """Remember the global model a round's sites are sent (``configure_train`` calls it)."""
        if self._spec is None:
            self.set_reference(arrays)
        self._global = _numpy(arrays)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Let the inner strategy sample the sites; remember the model they were sent."""
        current = self.absolute(server_round)
        self.begin_round(arrays)
        messages = list(self.inner.configure_train(current, arrays, config, grid))
        self.round_log(current).sampled = len(messages)
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Let the inner strategy sample the sites that evaluate, in the rounds that evaluate."""
        current = self.absolute(server_round)
        if not self.evaluates(current):
            logger.info("round %d: no federated evaluation (evaluate-every)", current)
            return []
        return self.inner.configure_evaluate(current, arrays, config, grid)

    def evaluates(self, server_round: int) -> bool:
        """Whether (absolute) ``server_round`` has a federated evaluation."""
        return (
            self.evaluate_every == 1
            or server_round % self.evaluate_every == 0
            or server_round == self.last_round
        )

    def _candidate(self, msg: Message, with_arrays: bool) -> Candidate:
        content = msg.content
        arrays = None
        if with_arrays and len(content.array_records) == 1:
            record = next(iter(content.array_records.values()))
            arrays = _numpy(record)
        num_examples: float | None = None
        keys: frozenset[str] = frozenset()
        if len(content.metric_records) == 1:
            metrics = next(iter(content.metric_records.values()))
            keys = frozenset(metrics)
            value = metrics.get(self.weight_key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                num_examples = float(value)
        return Candidate(site_of(msg), arrays, num_examples, keys)

    def _screen(
        self, log: RoundLog, replies: Iterable[Message], phase: str
    ) -> tuple[list[Message], Screening]:
        """Guard ``replies``, clip the accepted ones' counts, record them; return the accepted."""
        replies = list(replies)
        errors = [m for m in replies if m.has_error()]
        ok = [m for m in replies if not m.has_error()]
        train = phase == "train"
        candidates = [self._candidate(m, with_arrays=train) for m in ok]
        screening = screen_replies(
            self._spec if train else None,
            self._global if train else None,
            candidates,
            self.guards,
        )
        accepted = [ok[i] for i in screening.accepted]
        for msg, weight in zip(accepted, screening.weights, strict=True):
            record = next(iter(msg.content.metric_records.values()))
            record[self.weight_key] = weight
        record_replies(log, [*errors, *accepted], phase)
        for i, reason in screening.rejected.items():
            site = candidates[i].site
            log.rejected[f"{phase}:{site}"] = reason
            logger.warning(
                "round %d: %s reply of %s refused: %s", log.server_round, phase, site, reason
            )
        for i in screening.clipped:
            site = candidates[i].site
            log.clipped.append(f"{phase}:{site}")
            if train:
                log.site_metrics[site]["train-examples-claimed"] = float(
                    candidates[i].num_examples or 0.0
                )
            logger.warning(
                "round %d: %s of %s clipped from %s to %d",
                log.server_round,
                self.weight_key,
                site,
                candidates[i].num_examples,
                self.guards.max_examples,
            )
        return accepted, screening

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Guard and record the replies; aggregate the accepted ones, or skip the round."""
        current = self.absolute(server_round)
        log = self.round_log(current)
        accepted, screening = self._screen(log, replies, "train")
        log.aggregated.update(
            {
                "guard-accepted": float(len(accepted)),
                "guard-rejected": float(len(screening.rejected)),
                "guard-clipped": float(len(screening.clipped)),
                "guard-failures": float(log.failures),
            }
        )
        sampled = log.sampled or len(accepted) + len(screening.rejected) + log.failures
        if not enough_replies(len(accepted), sampled, self.guards.min_reply_fraction):
            return self._skip(log, f"{len(accepted)} valid replies of {sampled} sampled sites")
        arrays, metrics = self.inner.aggregate_train(current, accepted)
        if arrays is None:
            return self._skip(log, f"{type(self.inner).__name__} aggregated nothing")
        if metrics is not None:
            log.aggregated.update(_scalars(metrics))
        log.aggregated["round-skipped"] = 0.0
        return self._like_global(arrays), metrics

    def _skip(self, log: RoundLog, why: str) -> tuple[None, None]:
        log.skip_reason = why
        log.aggregated["round-skipped"] = 1.0
        logger.warning("round %d skipped, global model unchanged: %s", log.server_round, why)
        return None, None

    def _like_global(self, arrays: ArrayRecord) -> ArrayRecord:
        """``arrays`` cast back to the global model's dtypes and key order."""
        if self._spec is None:
            return arrays
        out = ArrayRecord()
        for name, (_, dtype) in self._spec.items():
            value = arrays[name].numpy()
            if np.issubdtype(dtype, np.integer):
                value = np.rint(value)
            out[name] = Array(np.asarray(value.astype(dtype, copy=False), order="C"))
        return out

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Guard (counts, metric names) and record the replies, then aggregate them."""
        current = self.absolute(server_round)
        if not self.evaluates(current):
            return None
        log = self.round_log(current)
        accepted, _ = self._screen(log, replies, "eval")
        result: MetricRecord | None = self.inner.aggregate_evaluate(current, accepted)
        if result is not None:
            log.aggregated.update(_scalars(result))
        return result
