"""Per-round bookkeeping: which sites replied, what each reported, what the guards refused."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from flwr.app import Message

SITE_RECORD = "site"
SITE_KEY = "site-id"


@dataclass
class RoundLog:
    """What one round's replies said, per site.

    ``site_metrics`` holds the sites whose replies counted; ``rejected`` the sites the guards
    refused, with the reason; ``clipped`` the sites whose ``num-examples`` was capped;
    ``sampled`` how many sites were asked to train; ``skip_reason`` is set when too few valid
    replies came back and the global model was left unchanged.
    """

    server_round: int
    site_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    aggregated: dict[str, float] = field(default_factory=dict)
    failures: int = 0
    sampled: int = 0
    rejected: dict[str, str] = field(default_factory=dict)
    clipped: list[str] = field(default_factory=list)
    skip_reason: str = ""

    @property
    def sites(self) -> tuple[str, ...]:
        """Sites that replied, sorted."""
        return tuple(sorted(self.site_metrics))

    @property
    def skipped(self) -> bool:
        """Whether the round was skipped (global model unchanged)."""
        return bool(self.skip_reason)

    def personal_accuracy(self) -> dict[str, tuple[float, float]]:
        """Per site that evaluated a personalised model: (global, personalised) accuracy.

        From the evaluate replies' ``eval-accuracy`` and ``personal-eval-accuracy``
        (``personalisation`` in the run config, ``edge_agent.fl_personal``).
        """
        return {
            site: (m["eval-accuracy"], m["personal-eval-accuracy"])
            for site, m in sorted(self.site_metrics.items())
            if "eval-accuracy" in m and "personal-eval-accuracy" in m
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RoundLog:
        """Inverse of :meth:`to_dict`."""
        return cls(
            server_round=int(raw["server_round"]),
            site_metrics={
                str(s): {str(k): float(v) for k, v in m.items()}
                for s, m in raw.get("site_metrics", {}).items()
            },
            aggregated={str(k): float(v) for k, v in raw.get("aggregated", {}).items()},
            failures=int(raw.get("failures", 0)),
            sampled=int(raw.get("sampled", 0)),
            rejected={str(k): str(v) for k, v in raw.get("rejected", {}).items()},
            clipped=[str(s) for s in raw.get("clipped", [])],
            skip_reason=str(raw.get("skip_reason", "")),
        )


def site_of(msg: Message) -> str:
    """Site name a reply carries (``site`` ConfigRecord), else its node id."""
    record = msg.content.config_records.get(SITE_RECORD)
    if record is not None and SITE_KEY in record:
        return str(record[SITE_KEY])
    return f"node-{msg.metadata.src_node_id}"


def record_replies(log: RoundLog, replies: Iterable[Message], phase: str) -> list[Message]:
    """Add each reply's metrics to ``log`` under its site; return the replies as a list.

    ``num-examples`` is kept per phase (``train-examples``, ``eval-examples``): a site trains
    and evaluates on different windows.
    """
    replies = list(replies)
    for msg in replies:
        if msg.has_error():
            log.failures += 1
            continue
        metrics = log.site_metrics.setdefault(site_of(msg), {})
        for record in msg.content.metric_records.values():
            for key, value in record.items():
                if isinstance(value, int | float):
                    name = f"{phase}-examples" if key == "num-examples" else key
                    metrics[name] = float(value)
    return replies


# --- live progress: one machine-readable log line per round --------------------------------

#: Prefix of the per-round progress line the ServerApp logs (``fedpm fl run`` parses it from
#: ``flwr run --stream``); the rest of the line is one JSON object, see :func:`progress_record`.
PROGRESS_PREFIX = "fedpm-round "


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def progress_record(
    log: RoundLog,
    *,
    num_rounds: int,
    run_name: str,
    flower_run_id: str,
    strategy: str,
    bytes_up: int,
    bytes_down: int,
    registry_version: int | None,
) -> dict[str, Any]:
    """What the progress line of one finished round says (JSON-ready, NaN as ``None``).

    ``bytes_up`` / ``bytes_down`` are the bytes of the round's train and evaluate replies /
    messages as Flower serialises them (:class:`aggregator.compression.RoundTraffic`).
    """
    agg = log.aggregated

    def metric(key: str) -> float | None:
        return _finite(agg[key]) if key in agg else None

    return {
        "round": log.server_round,
        "num_rounds": num_rounds,
        "run_name": run_name,
        "flower_run_id": flower_run_id,
        "strategy": strategy,
        "sampled": log.sampled,
        "replied": len(log.site_metrics),
        "failures": log.failures,
        "rejected": len(log.rejected),
        "skipped": log.skipped,
        "skip_reason": log.skip_reason,
        "sites": list(log.sites),
        "train_loss": metric("train-loss"),
        "train_accuracy": metric("train-accuracy"),
        "eval_loss": metric("eval-loss"),
        "eval_accuracy": metric("eval-accuracy"),
        "dp_epsilon": metric("dp-epsilon"),
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "registry_version": registry_version,
        "metrics": {k: _finite(v) for k, v in sorted(agg.items())},
    }


def progress_line(record: Mapping[str, Any]) -> str:
    """:data:`PROGRESS_PREFIX` followed by ``record`` as one line of strict JSON."""
    return PROGRESS_PREFIX + json.dumps(record, sort_keys=True, allow_nan=False)
