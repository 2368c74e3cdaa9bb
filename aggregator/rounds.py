"""Per-round bookkeeping: which sites replied and what each reported."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message

SITE_RECORD = "site"
SITE_KEY = "site-id"


@dataclass
class RoundLog:
    """What one round's replies said, per site."""

    server_round: int
    site_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    aggregated: dict[str, float] = field(default_factory=dict)
    failures: int = 0

    @property
    def sites(self) -> tuple[str, ...]:
        """Sites that replied, sorted."""
        return tuple(sorted(self.site_metrics))


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
