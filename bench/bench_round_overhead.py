"""What a federated round costs beyond the training itself, with real Flower processes.

Runs a real federation on loopback (a SuperLink, one SuperNode per site, ``flwr run``) for a
few rounds on stores seeded with simulated windows, and times each round from the ServerApp's
log stream. Each site's ClientApp reports its own local training wall time (``train-seconds``,
``edge_agent.client_app``); the round overhead is the round's wall time minus the slowest
site's ``train-seconds``: sending the model, starting the ClientApp processes, loading the
stores, the federated evaluation, aggregation, checkpoint and publish. Baseline, measured in
the same run: the same local work (load the store, train ``local-epochs`` epochs, evaluate)
done in-process for every site, one after the other.

    .venv/bin/python -m bench.bench_round_overhead [--sites 10] [--rounds 3]

The helpers below (seeding, waiting for the SuperNodes, cutting the log stream into rounds,
reading the round logs from the checkpoints) are shared with ``bench.bench_fl_faults`` and
``bench.bench_fl_poison``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from aggregator.checkpoint import CheckpointStore
from aggregator.rounds import RoundLog
from edge_agent.store import LocalStore
from fedpm.demo import app_dir
from fedpm.federation import LocalFederation, SiteNode
from fedpm.procs import ProcessGroup
from fedpm.seed_store import seed_store
from models.fl_config import RunConfig
from models.network import build_model
from models.simulator import MachineProfile
from models.training import evaluate, time_split, train

MODES = ("normal", "inner_race", "outer_race", "ball")
ROUND_RE = re.compile(r"\[ROUND (\d+)/\d+\]")
# a round's train phase ends where its evaluation is configured, or skipped (evaluate-every)
TRAIN_END_MARKS = ("configure_evaluate: Sampled", "no federated evaluation")


@dataclass(frozen=True)
class RoundSpan:
    """Wall-clock marks of one round from the ``flwr run --stream`` log."""

    server_round: int
    start: float
    train_end: float  # configure_evaluate: the train replies are in and aggregated
    end: float  # next round's start or "Strategy execution finished"

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def train_phase(self) -> float:
        return self.train_end - self.start


def round_spans(marks: Sequence[tuple[float, str]]) -> list[RoundSpan]:
    """Cut the timestamped log lines of one ``flwr run`` into rounds."""
    starts: list[tuple[int, float]] = []
    train_ends: dict[int, float] = {}
    end = None
    for t, line in marks:
        if m := ROUND_RE.search(line):
            starts.append((int(m.group(1)), t))
        elif (
            "configure_evaluate: Sampled" in line or "no federated evaluation" in line
        ) and starts:
            train_ends.setdefault(starts[-1][0], t)
        elif "Strategy execution finished" in line:
            end = t
    if end is None:
        raise RuntimeError("the run did not finish its rounds")
    bounds = [t for _, t in starts[1:]] + [end]
    return [
        RoundSpan(r, t, train_ends.get(r, b), b) for (r, t), b in zip(starts, bounds, strict=True)
    ]


def stamper(marks: list[tuple[float, str]]) -> Callable[[str], None]:
    """An ``on_line`` callback that appends ``(perf_counter, line)`` to ``marks``."""

    def on_line(line: str) -> None:
        marks.append((time.perf_counter(), line))

    return on_line


def seed_sites(work: Path, sites: int, windows_per_mode: int) -> list[SiteNode]:
    """One store of simulated windows (all four modes) per site, each at its own speed."""
    nodes = []
    for i in range(sites):
        path = work / f"site-{i}" / "store.sqlite"
        path.parent.mkdir(parents=True)
        seed_store(
            path,
            MachineProfile(rpm=1797 - 20 * i),
            MODES,
            windows_per_mode=windows_per_mode,
            seed=i,
        )
        nodes.append(SiteNode(f"site-{i}", path))
    return nodes


def wait_for_nodes(fed: LocalFederation, count: int, timeout_s: float = 180.0) -> None:
    """Block until the SuperLink lists ``count`` online SuperNodes (so round 1 samples all)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fed.group.check_alive()
        if sum(n.get("status") == "online" for n in fed.nodes()) >= count:
            return
        time.sleep(2.0)
    raise TimeoutError(f"fewer than {count} SuperNodes online after {timeout_s:.0f} s")


def round_logs(checkpoint_dir: Path, run_name: str) -> dict[int, RoundLog]:
    """The RoundLogs of a run, from its newest checkpoint."""
    ckpt = CheckpointStore(checkpoint_dir / run_name).latest()
    if ckpt is None:
        raise RuntimeError(f"no checkpoint in {checkpoint_dir / run_name}")
    return ckpt.round_logs


def in_process_round(stores: list[Path], cfg: RunConfig) -> tuple[float, float]:
    """Seconds for every site's local work serially, and the longest single ``train`` call."""
    t = time.perf_counter()
    longest_train = 0.0
    for path in stores:
        with LocalStore(path, readonly=True) as store:
            d = store.labelled_windows(cfg.class_names, cfg.sample_rate_hz, cfg.window_samples)
        tr, ev = time_split(d.group, d.start_ns, cfg.eval_fraction)
        net = build_model(cfg.network, seed=0)
        t_train = time.perf_counter()
        train(net, d.x[tr], d.y[tr], epochs=cfg.local_epochs, batch_size=cfg.batch_size)
        longest_train = max(longest_train, time.perf_counter() - t_train)
        evaluate(net, d.x[ev], d.y[ev], cfg.class_names)
    return time.perf_counter() - t, longest_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--windows-per-mode", type=int, default=30)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument(
        "--evaluate-every",
        type=int,
        default=1,
        help="federated evaluation every N rounds and in the last (run config evaluate-every)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = RunConfig(num_server_rounds=args.rounds, local_epochs=args.local_epochs)
    with tempfile.TemporaryDirectory(prefix="fedpm-bench-") as tmp:
        work = Path(tmp)
        nodes = seed_sites(work, args.sites, args.windows_per_mode)
        baseline, baseline_train = in_process_round([n.store_path for n in nodes], cfg)
        marks: list[tuple[float, str]] = []
        with ProcessGroup(work / "logs") as group:
            fed = LocalFederation(group, work)
            t_start = time.perf_counter()
            fed.start(nodes)
            wait_for_nodes(fed, args.sites)
            t_online = time.perf_counter()
            code = fed.run(
                app_dir(),
                {
                    "num-server-rounds": args.rounds,
                    "local-epochs": args.local_epochs,
                    "evaluate-every": args.evaluate_every,
                    "min-sites": args.sites,
                    "registry-dir": str(work / "registry"),
                    "checkpoint-dir": str(work / "checkpoints"),
                    "run-name": "overhead",
                },
                on_line=stamper(marks),
            )
            total = time.perf_counter() - t_start
        if code != 0:
            raise SystemExit(f"flwr run failed ({code}); logs were in {work}")
        logs = round_logs(work / "checkpoints", "overhead")
    spans = round_spans(marks)
    print(
        f"{args.sites} SuperNodes x {len(MODES) * args.windows_per_mode} windows, "
        f"{args.local_epochs} local epoch(s), {args.rounds} rounds, {torch.get_num_threads()} "
        f"torch thread per ClientApp, federated evaluation every {args.evaluate_every} round(s)"
    )
    print(f"start-up (SuperLink, {args.sites} SuperNodes online): {t_online - t_start:.1f} s")
    print(
        f"flwr run to round 1 (FAB build and upload, ServerApp start): "
        f"{spans[0].start - t_online:.1f} s"
    )
    print("| round | evaluated | wall s | train phase s | slowest train-seconds | overhead s |")
    print("|---|---|---|---|---|---|")
    overheads, walls, slowest_all = [], [], []
    for span in spans:
        secs = [m["train-seconds"] for m in logs[span.server_round].site_metrics.values()]
        slowest = max(secs)
        overhead = span.seconds - slowest
        overheads.append(overhead)
        walls.append(span.seconds)
        slowest_all.append(slowest)
        evaluated = any("eval-examples" in m for m in logs[span.server_round].site_metrics.values())
        print(
            f"| {span.server_round} | {'yes' if evaluated else 'no'} | {span.seconds:.1f} | "
            f"{span.train_phase:.1f} | "
            f"{slowest:.1f} (of {len(secs)} sites) | {overhead:.1f} |"
        )
    med_wall, med_over = statistics.median(walls), statistics.median(overheads)
    print(
        f"median round wall time: {med_wall:.1f} s; median slowest train-seconds "
        f"{statistics.median(slowest_all):.1f} s; median overhead {med_over:.1f} s"
    )
    print(
        f"in-process baseline (same local work, all sites serially, one process): "
        f"{baseline:.1f} s per round; longest single site's train(): {baseline_train:.1f} s"
    )
    print(
        f"Flower round / in-process round: {med_wall / baseline:.2f}x; "
        f"overhead / in-process round: {med_over / baseline:.2f}x"
    )
    print(f"whole run incl. SuperLink/SuperNode start: {total:.1f} s")


if __name__ == "__main__":
    main()
