"""Rounds to accuracy on real CWRU data: FedAvg and FedProx on non-identical sites vs centralised.

Issue 5, item 7: "4 sites split by motor load (non-identical), and a Dirichlet split: FedAvg and
FedProx reach at least 99 % of the centralised accuracy within 30 rounds; the table of
rounds-to-accuracy".

Data: every record of the CWRU 12 kHz drive-end manifest (61 records: the 0 HP healthy record
and inner race / ball / outer race faults at 0.007-0.028 in and 0-3 HP), four classes
(normal, inner_race, outer_race, ball), 2,048-sample windows without overlap. **Time split
inside each record**: its first ``1 - eval-fraction`` (80 %) trains, the rest is held out
(``edge_agent.fl_data``, the Simulation Engine's data source, which this bench uses as is).

- **Centralised baseline**, same run: the same WDCNN (``RunConfig().network``) trained on the
  union of all training windows with the product's recipe (Adam, cosine decay, BatchNorm
  statistics re-estimated, ``models.centralised``'s steps), scored on all held-out windows.
- **Federated**: ``fedpm fl simulate`` (the product's ServerApp and ClientApp on Flower's
  Simulation Engine, 4 virtual sites) with ``--partition by:motor_load_hp`` (one site per load:
  the healthy record only at the 0 HP site) and ``--partition dirichlet:ALPHA`` (label skew,
  Hsu et al.). The ServerApp scores each round's global model on the same held-out windows
  (``server-eval-npz``), so both figures are on one test set.

Prints, per run, the held-out accuracy of every round, the first round reaching 99 % of the
centralised accuracy, the round from which it stays there, and the ratio of the final accuracy
to centralised. Each strategy runs with a constant local step and with the step decayed over
the rounds (``round-lr-schedule = "cosine"``, ``models.fl_config.RunConfig.round_learning_rate``).

    .venv/bin/python -m bench.bench_fl_convergence [--rounds 30] [--strategies fedavg,fedprox] \
        [--partitions by:motor_load_hp,dirichlet:0.5] [--schedules constant,cosine] \
        [--local-epochs 1] [--central-epochs 20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data import cwru_dir
from edge_agent.fl_data import manifest_windows
from models.durable import replace_npz
from models.fl_config import RunConfig
from models.network import build_model
from models.training import evaluate, recalibrate_norm_statistics, train

TARGET = 0.99  # of the centralised accuracy


@dataclass(frozen=True)
class FedRun:
    """One federated run's held-out accuracy per round."""

    strategy: str
    partition: str
    schedule: str
    accuracy: list[float]
    seconds: float

    def first_round_at(self, threshold: float) -> int | None:
        """First round whose global model reaches ``threshold``, or ``None``."""
        for index, acc in enumerate(self.accuracy, start=1):
            if acc >= threshold:
                return index
        return None

    def held_from(self, threshold: float) -> int | None:
        """First round from which every later round stays at or above ``threshold``."""
        held = None
        for index, acc in enumerate(self.accuracy, start=1):
            if acc < threshold:
                held = None
            elif held is None:
                held = index
        return held


def centralised(cfg: RunConfig, epochs: int, seeds: list[int]) -> tuple[list[float], Path]:
    """Accuracy of centralised training per seed; also writes the held-out ``.npz``."""
    data = manifest_windows(cfg)
    x_train, y_train = data.x[data.train], data.y[data.train]
    x_test, y_test = data.x[~data.train], data.y[~data.train]
    print(
        f"CWRU: {len(data.records)} records, {len(y_train)} training and {len(y_test)} held-out"
        f" windows; training classes {np.bincount(y_train, minlength=len(cfg.class_names))}"
    )
    held_out = Path(tempfile.mkdtemp(prefix="fedpm-conv-")) / "held-out.npz"
    replace_npz(held_out, {"x": x_test, "y": y_test})
    accs = []
    for seed in seeds:
        t0 = time.perf_counter()
        net = build_model(cfg.network, seed=seed)
        train(
            net,
            x_train,
            y_train,
            epochs=epochs,
            batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            seed=seed,
            lr_schedule="cosine",
        )
        recalibrate_norm_statistics(net, x_train)
        acc = evaluate(net, x_test, y_test, cfg.class_names).accuracy
        accs.append(acc)
        print(
            f"centralised seed {seed}: {epochs} epochs, held-out accuracy {acc:.4f}"
            f" ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return accs, held_out


def simulate(
    name: str, work: Path, manifest: Path, held_out: Path, sites: int, options: list[str]
) -> tuple[list[float], float, dict[str, Any]]:
    """One ``fedpm fl simulate`` run on ``sites`` virtual sites scoring ``held_out`` each round.

    ``options`` are further ``fedpm fl simulate`` options (``--partition``, ``--strategy``,
    ``--config KEY=VALUE``, ``--app``...). Returns the held-out accuracy of the global model
    per round, the wall time, and the run's record (``--json``). Shared with
    ``bench.bench_fl_poison_sim``.
    """
    out = work / f"{name}.json"
    argv = [
        sys.executable,
        "-m",
        "fedpm",
        "fl",
        "simulate",
        "--sites",
        str(sites),
        "--min-sites",
        str(sites),
        "--manifest",
        str(manifest),
        "--run-name",
        name,
        "--runs-dir",
        str(work / "runs"),
        "--registry-dir",
        str(work / name / "registry"),
        "--checkpoint-dir",
        str(work / name / "checkpoints"),
        "--json",
        str(out),
        "--config",
        f"server-eval-npz='{held_out}'",
        "--timeout-s",
        "3600",
        *options,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise RuntimeError(f"{name}: fedpm fl simulate exited {proc.returncode}")
    record: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    accuracy = []
    for row in record["rounds"]:
        value = row.get("metrics", {}).get("server-eval-accuracy")
        if value is None:
            raise RuntimeError(f"{name}: round {row.get('round')} has no server-eval-accuracy")
        accuracy.append(float(value))
    return accuracy, seconds, record


def federated(
    manifest: Path,
    held_out: Path,
    strategy: str,
    partition: str,
    schedule: str,
    rounds: int,
    local_epochs: int,
    work: Path,
) -> FedRun:
    """One run on 4 virtual sites; the server's held-out accuracy per round."""
    name = f"{strategy}-{schedule}-{partition.replace(':', '-')}"
    options = ["--partition", partition, "--strategy", strategy, "--rounds", str(rounds)]
    options += ["--local-epochs", str(local_epochs), "--round-lr-schedule", schedule]
    accuracy, seconds, _ = simulate(name, work, manifest, held_out, 4, options)
    return FedRun(strategy, partition, schedule, accuracy, seconds)


def main() -> None:
    """Run the centralised baseline and every (partition, strategy) pair; print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--strategies", default="fedavg,fedprox")
    parser.add_argument("--partitions", default="by:motor_load_hp,dirichlet:0.5")
    parser.add_argument("--schedules", default="constant,cosine")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--central-epochs", type=int, default=20)
    parser.add_argument("--central-seeds", default="0")
    args = parser.parse_args()
    torch.set_num_threads(1)
    manifest = cwru_dir() / "MANIFEST.tsv"
    cfg = RunConfig(data_manifest=str(manifest))
    accs, held_out = centralised(
        cfg, args.central_epochs, [int(s) for s in args.central_seeds.split(",")]
    )
    central = float(np.mean(accs))
    target = TARGET * central
    print(f"centralised accuracy {central:.4f}; target {TARGET:.0%} of it = {target:.4f}")
    work = held_out.parent
    runs = []
    for partition in args.partitions.split(","):
        for strategy in args.strategies.split(","):
            for schedule in args.schedules.split(","):
                run = federated(
                    manifest,
                    held_out,
                    strategy,
                    partition,
                    schedule,
                    args.rounds,
                    args.local_epochs,
                    work,
                )
                runs.append(run)
                curve = " ".join(f"{a:.3f}" for a in run.accuracy)
                head = f"{strategy} {schedule} {partition} ({run.seconds:.0f} s)"
                print(f"{head}: {curve}", flush=True)
    print()
    print(
        "| partition | strategy | local step | rounds to 90 % | to 95 % | to 99 % of centralised"
        " | 99 % held from round | final accuracy | final / centralised | best | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        marks = [run.first_round_at(level) for level in (0.90, 0.95, target)]
        marks.append(run.held_from(target))
        cells = [str(m) if m is not None else f"> {args.rounds}" for m in marks]
        final = run.accuracy[-1]
        print(
            f"| {run.partition} | {run.strategy} | {run.schedule} | {' | '.join(cells)} |"
            f" {final:.4f} | {final / central:.4f} | {max(run.accuracy):.4f} | {run.seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
