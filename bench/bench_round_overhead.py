"""What a federated round costs beyond the training itself, with real Flower processes.

Runs a real federation on loopback (a SuperLink, one SuperNode per site, ``flwr run``) for a
few rounds on stores seeded with simulated windows, and times each round from the ServerApp's
log stream. Baseline, measured in the same run: the same local work (load the store, train
``local-epochs`` epochs, evaluate) done in-process for every site, one after the other.

    .venv/bin/python -m bench.bench_round_overhead [--sites 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import torch

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


def in_process_round(stores: list[Path], cfg: RunConfig) -> float:
    t = time.perf_counter()
    for path in stores:
        with LocalStore(path, readonly=True) as store:
            d = store.labelled_windows(cfg.class_names, cfg.sample_rate_hz, cfg.window_samples)
        tr, ev = time_split(d.group, d.start_ns, cfg.eval_fraction)
        net = build_model(cfg.network, seed=0)
        train(net, d.x[tr], d.y[tr], epochs=cfg.local_epochs, batch_size=cfg.batch_size)
        evaluate(net, d.x[ev], d.y[ev], cfg.class_names)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--windows-per-mode", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = RunConfig(num_server_rounds=args.rounds)
    with tempfile.TemporaryDirectory(prefix="fedpm-bench-") as tmp:
        work = Path(tmp)
        nodes = []
        for i in range(args.sites):
            path = work / f"site-{i}" / "store.sqlite"
            path.parent.mkdir()
            seed_store(
                path,
                MachineProfile(rpm=1797 - 20 * i),
                MODES,
                windows_per_mode=args.windows_per_mode,
                seed=i,
            )
            nodes.append(SiteNode(f"site-{i}", path))
        baseline = in_process_round([n.store_path for n in nodes], cfg)
        marks: list[tuple[float, str]] = []
        with ProcessGroup(work / "logs") as group:
            fed = LocalFederation(group, work)
            t_start = time.perf_counter()
            fed.start(nodes)
            code = fed.run(
                app_dir(),
                {
                    "num-server-rounds": args.rounds,
                    "min-sites": args.sites,
                    "registry-dir": str(work / "registry"),
                },
                on_line=lambda line: marks.append((time.perf_counter(), line)),
            )
            total = time.perf_counter() - t_start
        if code != 0:
            raise SystemExit(f"flwr run failed ({code}); logs were in {work}")
    starts = [t for t, line in marks if re.search(r"\[ROUND \d+/", line)]
    end = next(t for t, line in marks if "Strategy execution finished" in line)
    rounds = [b - a for a, b in zip(starts, [*starts[1:], end], strict=True)]
    print(
        f"{args.sites} sites x {len(MODES) * args.windows_per_mode} windows, "
        f"{cfg.local_epochs} local epochs, {args.rounds} rounds"
    )
    print(f"start-up (SuperLink, SuperNodes, FAB install) to round 1: {starts[0] - t_start:.1f} s")
    for i, r in enumerate(rounds, 1):
        print(f"round {i}: {r:5.1f} s")
    mean = sum(rounds) / len(rounds)
    print(f"in-process baseline (same local work, all sites serially): {baseline:.1f} s per round")
    print(
        f"Flower round / in-process work: {mean / baseline:.1f}x "
        f"({mean - baseline:.1f} s overhead per round)"
    )
    print(f"whole run incl. SuperLink/SuperNode start: {total:.1f} s")


if __name__ == "__main__":
    main()
