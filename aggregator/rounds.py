"""Per-round bookkeeping: which sites replied, what each reported, what the guards refused."""

from __future__ import annotations

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
