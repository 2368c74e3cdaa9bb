"""Prometheus metrics of the edge agent, read from the local store at each scrape.

The workers already count everything in the store (``counters``, ``rejects``, the outbox and
dead-letter tables), so the supervisor serves ``/metrics`` from a custom collector that opens
the store read-only per scrape: nothing is kept in memory twice, the figures survive restarts
(counters stay monotonic across them), and a scrape never blocks a writer (WAL mode).

========================================  =========  ===========================================
metric                                    type       meaning
========================================  =========  ===========================================
``fedpm_edge_up``                         gauge      1 while the agent runs
``fedpm_edge_store_readable``             gauge      0 when this scrape could not read the store
``fedpm_edge_frames_total``               counter    frames accepted
``fedpm_edge_seq_gaps_total``             counter    sequence gaps seen
``fedpm_edge_frames_missing_total``       counter    frames missing inside those gaps
``fedpm_edge_seq_restarts_total``         counter    sensors that restarted their sequence
``fedpm_edge_duplicates_total``           counter    frames dropped as already seen
``fedpm_edge_rejects_total{reason}``      counter    messages refused, by reason
``fedpm_edge_windows_stored``             gauge      raw windows in the store
``fedpm_edge_store_bytes``                gauge      size of the store's files (db, -wal, -shm)
``fedpm_edge_outbox_depth``               gauge      telemetry points waiting for the sink
``fedpm_edge_dead_letters``               gauge      messages kept in the dead-letter table
``fedpm_edge_windows_evicted_total``      counter    raw windows evicted to keep the disk budget
``fedpm_edge_outbox_dropped_total``       counter    telemetry points dropped (outbox full)
``fedpm_edge_inference_latency_seconds``  histogram  time of one model run (a batch of windows)
``fedpm_edge_inference_windows_total``    counter    windows scored
``fedpm_edge_inference_batches_total``    counter    inference batches run
``fedpm_edge_supernode_restarts_total``   counter    SuperNode restarts by this agent process
========================================  =========  ===========================================

The latency histogram comes from the cumulative store counters the inference worker bumps once
per model run (:func:`edge_agent.results.latency_counters`): ``inference_latency_le_<ms>`` for
:data:`~edge_agent.results.LATENCY_BUCKETS_MS`, ``inference_latency_le_inf`` and
``inference_latency_us_sum``. Absent counters read as 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from edge_agent.budget import files_bytes
from edge_agent.errors import ConfigError, StoreError
from edge_agent.outbox import Outbox
from edge_agent.results import LATENCY_BUCKETS_MS
from edge_agent.settings import AgentSettings
from edge_agent.store import LocalStore

logger = logging.getLogger(__name__)

PREFIX = "fedpm_edge"
#: store counter -> (metric name without prefix, help)
_COUNTERS = {
    "frames": ("frames", "Frames accepted."),
    "seq_gaps": ("seq_gaps", "Sequence gaps seen."),
    "frames_missing": ("frames_missing", "Frames missing inside sequence gaps."),
    "seq_restarts": ("seq_restarts", "Sensors that restarted their sequence counter."),
    "inference_windows": ("inference_windows", "Windows scored by the inference worker."),
    "inference_batches": ("inference_batches", "Inference batches run."),
    "windows_evicted": ("windows_evicted", "Raw windows evicted to keep the disk budget."),
    "outbox_dropped": ("outbox_dropped", "Telemetry points dropped because the outbox was full."),
}


class StoreCollector(Collector):
    """Collects the agent's figures from the store at ``settings.store_path`` on each scrape.

    Parameters
    ----------
    settings
        The agent's settings (``store_path``, ``outbox_max_rows``).
    supernode_restarts
        Returns the SuperNode supervisor's restart count; ``None`` when no SuperNode runs.
    """

    def __init__(
        self,
        settings: AgentSettings,
        *,
        supernode_restarts: Callable[[], int] | None = None,
    ) -> None:
        self._path = Path(settings.store_path)
        self._outbox_max_rows = settings.outbox_max_rows
        self._supernode_restarts = supernode_restarts

    def collect(self) -> Iterator[Metric]:
        """The metric families of one scrape (see the module docstring)."""
        yield GaugeMetricFamily(f"{PREFIX}_up", "1 while the edge agent runs.", value=1)
        if self._supernode_restarts is not None:
            yield CounterMetricFamily(
                f"{PREFIX}_supernode_restarts",
                "SuperNode restarts by this agent process.",
                value=self._supernode_restarts(),
            )
        yield GaugeMetricFamily(
            f"{PREFIX}_store_bytes",
            "Bytes of the store's files (database, -wal, -shm).",
            value=files_bytes(self._path),
        )
        try:
            families = self._from_store()
        except StoreError as exc:
            logger.warning("metrics: cannot read the store: %s", exc)
            families = []
        yield GaugeMetricFamily(
            f"{PREFIX}_store_readable",
            "1 if this scrape could read the store, else 0 (its figures are then absent).",
            value=1 if families else 0,
        )
        yield from families

    def _from_store(self) -> list[Metric]:
        with LocalStore(self._path, readonly=True) as store:
            counters = store.counters()
            rejects = store.rejects()
            windows = store.count_windows()
            depth = Outbox(store, self._outbox_max_rows).depth()
            dead = store.count_dead_letters()
        families: list[Metric] = [
            CounterMetricFamily(f"{PREFIX}_{name}", text, value=counters.get(key, 0))
            for key, (name, text) in _COUNTERS.items()
        ]
        families.append(
            CounterMetricFamily(
                f"{PREFIX}_duplicates",
                "Frames dropped as already seen (redeliveries, repeats).",
                value=rejects.get("duplicate", 0),
            )
        )
        by_reason = CounterMetricFamily(
            f"{PREFIX}_rejects", "Messages refused, by reason.", labels=["reason"]
        )
        for reason, count in sorted(rejects.items()):
            by_reason.add_metric([reason], count)
        families.append(by_reason)
        families += [
            GaugeMetricFamily(f"{PREFIX}_windows_stored", "Raw windows in the store.", windows),
            GaugeMetricFamily(
                f"{PREFIX}_outbox_depth", "Telemetry points waiting for the sink.", depth
            ),
            GaugeMetricFamily(
                f"{PREFIX}_dead_letters", "Messages kept in the dead-letter table.", dead
            ),
            latency_histogram(counters),
        ]
        return families


def latency_histogram(counters: dict[str, int]) -> HistogramMetricFamily:
    """``fedpm_edge_inference_latency_seconds`` from the store's cumulative counters."""
    buckets = [
        (f"{ms / 1000:g}", float(counters.get(f"inference_latency_le_{ms}", 0)))
        for ms in LATENCY_BUCKETS_MS
    ]
    buckets.append(("+Inf", float(counters.get("inference_latency_le_inf", 0))))
    return HistogramMetricFamily(
        f"{PREFIX}_inference_latency_seconds",
        "Time of one model run (a batch of windows).",
        buckets=buckets,
        sum_value=counters.get("inference_latency_us_sum", 0) / 1e6,
    )


class MetricsServer:
    """``/metrics`` over HTTP on ``settings.metrics_host:metrics_port`` (0: any free port).

    Raises
    ------
    ConfigError
        From :meth:`start`, when the address cannot be bound.
    """

    def __init__(
        self,
        settings: AgentSettings,
        *,
        supernode_restarts: Callable[[], int] | None = None,
    ) -> None:
        self._host = settings.metrics_host
        self._port = settings.metrics_port or 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(settings, supernode_restarts=supernode_restarts))
        self._server: WSGIServer | None = None

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("the metrics server is not started")
        return int(self._server.server_port)

    def start(self) -> None:
        """Serve in a daemon thread; log the bound address."""
        try:
            self._server, _ = start_http_server(self._port, self._host, self.registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {self._host}:{self._port}: {exc.strerror or exc}"
            ) from exc
        logger.info("metrics on http://%s:%d/metrics", self._host, self.port)

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
