"""Prometheus exporter of federated rounds: ``fedpm fl exporter --runs-dir DIR --port P``.

A ServerApp run is a short-lived process (``flwr-serverapp``, one per run), so Prometheus
cannot scrape it. What it leaves is the runs folder that ``fedpm fl run`` keeps
(:mod:`fedpm.fl_runs`: ``<runs-dir>/<run-id>/run.json`` with every round's progress record).
This exporter reads that folder at each scrape (a custom collector: nothing is cached, a new
round shows at the next scrape, a restart loses nothing) and serves:

==============================================  =========  ====================================
metric                                          type       meaning
==============================================  =========  ====================================
``fedpm_fl_runs_dir_readable``                  gauge      1 if the runs folder could be listed
``fedpm_fl_runs{status}``                       gauge      runs by recorded status
``fedpm_fl_run_info{run,strategy,kind,status}`` gauge      1 per run exported
``fedpm_fl_run_rounds_planned{run}``            gauge      ``num-server-rounds`` of the run
``fedpm_fl_rounds_completed_total{run}``        counter    rounds recorded
``fedpm_fl_round{run}``                         gauge      number of the latest round
``fedpm_fl_round_timestamp_seconds{run}``       gauge      when it was received (UNIX s)
``fedpm_fl_round_sites_sampled{run}``           gauge      sites asked to train
``fedpm_fl_round_sites_replied{run}``           gauge      sites whose replies counted
``fedpm_fl_round_sites_failed{run}``            gauge      replies that were errors
``fedpm_fl_round_sites_rejected{run}``          gauge      replies the guards refused
``fedpm_fl_round_skipped{run}``                 gauge      1 if the global model was kept
``fedpm_fl_round_site_replied{run,site}``       gauge      1 per site that counted
``fedpm_fl_round_train_loss{run}`` (and         gauge      aggregated figures of the round
``_train_accuracy``, ``_eval_loss``,                       (absent when the round has none)
``_eval_accuracy``, ``_dp_epsilon``)
``fedpm_fl_round_bytes_up{run}``,               gauge      bytes of the round's replies /
``fedpm_fl_round_bytes_down{run}``                         messages, as Flower serialises them
``fedpm_fl_bytes_up_total{run}``,               counter    the same, summed over the run
``fedpm_fl_bytes_down_total{run}``
``fedpm_fl_round_registry_version{run}``        gauge      model version the round published
``fedpm_fl_component_up{component}``            gauge      1 if a ``--probe`` target answered
                                                           its gRPC health check as SERVING
==============================================  =========  ====================================

Only the newest ``--max-runs`` runs (by start time) are exported, so the label set stays
bounded. ``status`` is what ``run.json`` records (``running``, ``finished``, ``failed``); the
CLI that drives a run may live in another container, so its process id is not checked here
(``fedpm fl status`` does that on the CLI's own machine). The round figures are the progress
records of :func:`aggregator.rounds.progress_record`, as docs/fl-workflow.md describes.

``--probe NAME=HOST:PORT`` (repeatable) checks a Flower health server (``flower-superlink`` /
``flower-superexec --health-server-address``, plain gRPC) at each scrape: Flower has no metrics
endpoint of its own, and this makes the SuperLink's and the aggregator's liveness visible to
Prometheus beside the rounds.

Examples
--------
>>> from fedpm.fl_runs import RunRecord
>>> record = RunRecord("r1", "run", rounds=[{"round": 1, "replied": 2, "sites": ["a", "b"]}])
>>> sorted(s.labels["site"] for s in _round_families([record])["site_replied"].samples)
['a', 'b']
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from fedpm.fl_runs import DEFAULT_RUNS_DIR, RunRecord, RunStore

logger = logging.getLogger(__name__)

PREFIX = "fedpm_fl"
DEFAULT_PORT = 9108
DEFAULT_MAX_RUNS = 20
PROBE_TIMEOUT_S = 1.0
STATUSES = ("running", "finished", "failed")

#: progress-record key -> (gauge name without prefix, help); one sample per run
ROUND_GAUGES: Mapping[str, tuple[str, str]] = {
    "round": ("round", "Number of the latest round recorded."),
    "sampled": ("round_sites_sampled", "Sites asked to train in the latest round."),
    "replied": ("round_sites_replied", "Sites whose replies counted in the latest round."),
    "failures": ("round_sites_failed", "Replies that were errors in the latest round."),
    "rejected": ("round_sites_rejected", "Replies the guards refused in the latest round."),
    "train_loss": ("round_train_loss", "Aggregated training loss of the latest round."),
    "train_accuracy": ("round_train_accuracy", "Aggregated training accuracy, latest round."),
    "eval_loss": ("round_eval_loss", "Aggregated evaluation loss of the latest round."),
    "eval_accuracy": ("round_eval_accuracy", "Aggregated evaluation accuracy, latest round."),
    "dp_epsilon": ("round_dp_epsilon", "Site-level DP epsilon spent up to the latest round."),
    "bytes_up": ("round_bytes_up", "Bytes of the latest round's replies (sites to server)."),
    "bytes_down": ("round_bytes_down", "Bytes of the latest round's messages (server to sites)."),
    "registry_version": ("round_registry_version", "Model version the latest round published."),
}
#: progress-record key -> (counter name without prefix and _total, help); summed over rounds
RUN_COUNTERS: Mapping[str, tuple[str, str]] = {
    "bytes_up": ("bytes_up", "Bytes of every round's replies (sites to server)."),
    "bytes_down": ("bytes_down", "Bytes of every round's messages (server to sites)."),
}


def _number(value: object) -> float | None:
    """``value`` as a float when it is a real number (not a bool), else ``None``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _timestamp(value: object) -> float | None:
    """An ISO 8601 time as UNIX seconds, ``None`` when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _planned(record: RunRecord) -> float | None:
    """Rounds the run was started for: the latest round's ``num_rounds``, else its config."""
    return _number(record.last.get("num_rounds")) or _number(
        record.run_config.get("num-server-rounds")
    )


def _round_families(records: Sequence[RunRecord]) -> dict[str, Metric]:
    """The per-run families of ``records`` (keyed by a short name, for tests and doctests)."""
    gauges = {
        key: GaugeMetricFamily(f"{PREFIX}_{name}", text, labels=["run"])
        for key, (name, text) in ROUND_GAUGES.items()
    }
    counters = {
        key: CounterMetricFamily(f"{PREFIX}_{name}", text, labels=["run"])
        for key, (name, text) in RUN_COUNTERS.items()
    }
    info = GaugeMetricFamily(
        f"{PREFIX}_run_info",
        "1 per exported run, with its strategy, kind and recorded status.",
        labels=["run", "strategy", "kind", "status"],
    )
    planned = GaugeMetricFamily(
        f"{PREFIX}_run_rounds_planned", "Rounds the run was started for.", labels=["run"]
    )
    completed = CounterMetricFamily(
        f"{PREFIX}_rounds_completed", "Rounds recorded for the run.", labels=["run"]
    )
    stamp = GaugeMetricFamily(
        f"{PREFIX}_round_timestamp_seconds",
        "When the latest round was received (UNIX seconds).",
        labels=["run"],
    )
    skipped = GaugeMetricFamily(
        f"{PREFIX}_round_skipped",
        "1 if the latest round kept the global model (too few valid replies).",
        labels=["run"],
    )
    site_replied = GaugeMetricFamily(
        f"{PREFIX}_round_site_replied",
        "1 per site whose reply counted in the latest round.",
        labels=["run", "site"],
    )
    for record in records:
        run = record.run_id
        info.add_metric([run, record.strategy, record.kind, record.status], 1)
        completed.add_metric([run], len(record.rounds))
        if (rounds := _planned(record)) is not None:
            planned.add_metric([run], rounds)
        for key, counter in counters.items():
            counter.add_metric([run], sum(_number(r.get(key)) or 0.0 for r in record.rounds))
        last = record.last
        if not last:
            continue
        for key, family in gauges.items():
            if (value := _number(last.get(key))) is not None:
                family.add_metric([run], value)
        if (at := _timestamp(last.get("received_at"))) is not None:
            stamp.add_metric([run], at)
        skipped.add_metric([run], 1 if last.get("skipped") else 0)
        for site in last.get("sites") or ():
            site_replied.add_metric([run, str(site)], 1)
    return {
        **gauges,
        **{f"{key}_total": counter for key, counter in counters.items()},
        "info": info,
        "planned": planned,
        "completed": completed,
        "timestamp": stamp,
        "skipped": skipped,
        "site_replied": site_replied,
    }


@dataclass(frozen=True)
class Probe:
    """A Flower gRPC health server to check at each scrape (``NAME=HOST:PORT``)."""

    name: str
    address: str

    @classmethod
    def parse(cls, text: str) -> Probe:
        """``NAME=HOST:PORT`` as a :class:`Probe`.

        Raises
        ------
        ValueError
            No ``=``, an empty name, or an address without a port.

        Examples
        --------
        >>> Probe.parse("superlink=superlink:9095")
        Probe(name='superlink', address='superlink:9095')
        """
        name, sep, address = text.partition("=")
        host, colon, port = address.rpartition(":")
        if not sep or not name or not colon or not host or not port.isdigit():
            raise ValueError(f"--probe wants NAME=HOST:PORT, got {text!r}")
        return cls(name, address)

    def serving(self, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
        """Whether the health server answers SERVING within ``timeout_s`` seconds."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        channel = grpc.insecure_channel(self.address)
        try:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            logger.debug("probe %s (%s) failed: %s", self.name, self.address, exc)
            return False
        finally:
            channel.close()
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class RunsCollector(Collector):
    """Collects the federated runs of a runs folder at each scrape (module docstring).

    Parameters
    ----------
    root
        The runs folder (``fedpm fl run --runs-dir``).
    max_runs
        Export only the newest runs, at most this many.
    probes
        Health servers to check at each scrape (``fedpm_fl_component_up``).
    """

    def __init__(
        self, root: str | Path, *, max_runs: int = DEFAULT_MAX_RUNS, probes: Iterable[Probe] = ()
    ) -> None:
        if max_runs < 1:
            raise ValueError(f"max_runs must be 1 or more, got {max_runs}")
        self.store = RunStore(root)
        self.max_runs = max_runs
        self.probes = tuple(probes)

    def collect(self) -> Iterator[Metric]:
        """The metric families of one scrape."""
        readable = True
        try:
            runs = self.store.runs()
            if self.store.root.exists() and not self.store.root.is_dir():
                raise NotADirectoryError(str(self.store.root))
        except OSError as exc:
            logger.warning("cannot list runs folder %s: %s", self.store.root, exc)
            readable, runs = False, []
        yield GaugeMetricFamily(
            f"{PREFIX}_runs_dir_readable",
            "1 if the runs folder could be listed at this scrape (absent counts as empty).",
            value=1 if readable else 0,
        )
        by_status = GaugeMetricFamily(
            f"{PREFIX}_runs", "Runs in the folder by recorded status.", labels=["status"]
        )
        counts = Counter(r.status for r in runs)
        for status in sorted(set(STATUSES) | set(counts)):
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        yield from _round_families(runs[-self.max_runs :]).values()
        if self.probes:
            up = GaugeMetricFamily(
                f"{PREFIX}_component_up",
                "1 if the component's Flower health server answered SERVING.",
                labels=["component"],
            )
            for probe in self.probes:
                up.add_metric([probe.name], 1 if probe.serving() else 0)
            yield up


def exporter_registry(
    root: str | Path, *, max_runs: int = DEFAULT_MAX_RUNS, probes: Iterable[Probe] = ()
) -> CollectorRegistry:
    """A registry holding only a :class:`RunsCollector` (no process or platform metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunsCollector(root, max_runs=max_runs, probes=probes))
    return registry


def add_exporter_command(fl_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fedpm fl exporter`` to the ``fl`` subcommands."""
    p = fl_sub.add_parser(
        "exporter",
        help="serve the runs folder's rounds as Prometheus metrics",
        description="Serve federated rounds (runs folder of `fedpm fl run`) at /metrics.",
    )
    p.add_argument(
        "--runs-dir", type=Path, default=DEFAULT_RUNS_DIR, help="runs folder (var/fl-runs)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any)"
    )
    p.add_argument(
        "--max-runs",
        type=int,
        default=DEFAULT_MAX_RUNS,
        help=f"export the newest runs only (default {DEFAULT_MAX_RUNS})",
    )
    p.add_argument(
        "--probe",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="a Flower health server to check at each scrape (repeatable)",
    )
    p.set_defaults(func=exporter_command)


def exporter_command(args: argparse.Namespace) -> int:
    """``fedpm fl exporter``: serve until SIGTERM or SIGINT; exit 0, 2 on bad options."""
    try:
        probes = [Probe.parse(text) for text in args.probe]
        registry = exporter_registry(args.runs_dir, max_runs=args.max_runs, probes=probes)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        server, _ = start_http_server(args.port, args.host, registry)
    except OSError as exc:
        print(
            f"error: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"serving {args.runs_dir} at http://{args.host}:{server.server_port}/metrics", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.shutdown()
        server.server_close()
    return 0
