"""One poisoned site of five over many rounds, on Flower's Simulation Engine: robust strategies.

``bench.bench_fl_poison`` runs the attack with real SuperNodes, which costs minutes per round on
this machine, so it stops after 2 rounds. This bench runs the same product ServerApp and the
same attacking ClientApp (``bench.fl_attack``, the production ClientApp plus a mod that sends
``w_global - 10 (w_local - w_global)``) on the Simulation Engine (``fedpm fl simulate``) for as
many rounds as asked, to see whether the robust strategies close the gap to clean with time.

Data: real CWRU 12 kHz drive-end records, the sites of ``bench.bench_fl_poison``: each of the
5 sites holds one inner race, one ball and one outer race (@6:00) record at its own fault
diameter and motor load (site-0 0.007 in 0 hp ... site-4 0.021 in 1 hp); the one healthy
record (0 hp) is site-0's. A generated manifest names each record's site, and the run
partitions ``by:site``. Time split inside each record: the first 70 % trains, the last 30 % is
the held-out set the ServerApp scores the global model on after every round
(``server-eval-npz``). The attacker is the virtual site holding site-4's records.

Runs: FedAvg clean (the product's app folder); FedAvg clean on the 4 honest sites alone (the
attacker's own records left out: no strategy can learn what only the attacker holds, since its
honest update is never sent, so this is the reference a robust strategy can reach); then, with
site-4 poisoning: FedAvg without and
with the norm guard, and FedMedian, FedTrimmedAvg (one site cut per tail), Krum and MultiKrum
(f = 1, MultiKrum averaging 3) without the guard, and, with ``--guard-on all``, each robust
strategy with the guard as well. Prints the held-out accuracy after rounds 2, 5, 10... and
the last, and the gap to the clean run in the mean of the last 3 rounds (a single round's
figure moves by 1-2 points from one round to the next).

    .venv/bin/python -m bench.bench_fl_poison_sim [--rounds 10] [--local-epochs 3] \
        [--guard-on fedavg|all]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.bench_fl_convergence import simulate
from bench.bench_fl_poison import ATTACK, COMBOS, FAULTS, SITES, attack_app
from bench.bench_fl_poison import scenarios as real_process_scenarios
from bench.data import cwru_dir
from edge_agent.fl_data import manifest_windows, partition_data
from fedpm.demo import app_dir
from models.durable import replace_npz
from models.fl_config import RunConfig

EVAL_FRACTION = 0.3
ATTACKER_SITE = f"site-{SITES - 1}"


def site_manifest(work: Path, without: str = "") -> Path:
    """A manifest of the sites' CWRU records (absolute paths) with a ``site`` column.

    ``without`` leaves one site's records out (the honest-sites reference run).
    """
    root = cwru_dir()
    with (root / "MANIFEST.tsv").open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    chosen = []
    for i in range(SITES):
        diameter, load = COMBOS[i * len(COMBOS) // SITES]
        for fault in FAULTS:
            row = next(
                r
                for r in rows
                if r["fault_type"] == fault
                and r["fault_diameter_in"] == diameter
                and r["motor_load_hp"] == load
                and r["or_position"] in ("", "@6:00")
            )
            chosen.append({**row, "site": f"site-{i}"})
    normal = next(r for r in rows if r["fault_type"] == "normal")
    chosen.append({**normal, "site": "site-0"})
    chosen = [row for row in chosen if row["site"] != without]
    for row in chosen:
        row["file"] = str((root / row["file"]).resolve())
    out = work / (f"MANIFEST-without-{without}.tsv" if without else "MANIFEST.tsv")
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, [*fields, "site"], delimiter="\t")
        writer.writeheader()
        writer.writerows(chosen)
    return out


def attacker_partition(cfg: RunConfig) -> int:
    """The partition id whose training windows come from the attacker site's records."""
    data = manifest_windows(cfg)
    for pid in range(SITES):
        windows, _, _ = partition_data(cfg, pid, SITES)
        sites = {data.records[r].metadata["site"] for r in np.unique(windows.group)}
        if sites == {ATTACKER_SITE}:
            return pid
    raise RuntimeError(f"no partition holds exactly {ATTACKER_SITE}'s records")


HONEST_ONLY = f"fedavg clean, without {ATTACKER_SITE}"


def scenarios(guard_on: str) -> list[tuple[str, str, bool, float]]:
    """(name, strategy, poisoned, norm-outlier-mads): the real-process bench's runs, with the
    honest-sites reference second."""
    runs = real_process_scenarios(guard_on)
    return [runs[0], (HONEST_ONLY, "fedavg", False, 5.0), *runs[1:]]


def main() -> None:
    """Run every scenario on the Simulation Engine; print accuracy by round and vs clean."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=3)
    parser.add_argument("--guard-on", choices=("all", "fedavg"), default="fedavg")
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="fedpm-poison-sim-"))
    manifest = site_manifest(work)
    cfg = RunConfig(
        data_manifest=str(manifest), data_partition="by:site", eval_fraction=EVAL_FRACTION
    )
    data = manifest_windows(cfg)
    held_out = work / "held-out.npz"
    replace_npz(held_out, {"x": data.x[~data.train], "y": data.y[~data.train]})
    attacker = attacker_partition(cfg)
    counts = np.bincount(data.y[~data.train], minlength=len(cfg.class_names))
    print(
        f"{len(data.records)} records, {int(data.train.sum())} training windows, held-out"
        f" {dict(zip(cfg.class_names, counts.tolist(), strict=True))}; attacker {ATTACKER_SITE}"
        f" = partition {attacker}, {ATTACK}; {args.rounds} rounds x {args.local_epochs} epochs"
    )
    attack_dir = attack_app(work)
    common = ["--partition", "by:site", "--rounds", str(args.rounds)]
    common += ["--local-epochs", str(args.local_epochs)]
    common += ["--config", f"eval-fraction={EVAL_FRACTION}", "--config", "krum-byzantine=1"]
    common += ["--config", "krum-select=3", "--config", "trimmed-fraction=0.2"]
    results: list[tuple[str, list[float], int]] = []
    for name, strategy, poisoned, mads in scenarios(args.guard_on):
        options = [*common, "--strategy", strategy, "--config", f"norm-outlier-mads={mads}"]
        if poisoned:
            options += ["--app", str(attack_dir), "--config", f"attack='{ATTACK}'"]
            options += ["--config", f"attack-partition={attacker}"]
        else:
            options += ["--app", str(app_dir())]
        run_name = name.replace(",", "").replace(" ", "-")
        if name == HONEST_ONLY:  # the 4 honest sites alone: what is learnable without site-4
            honest = site_manifest(work, without=ATTACKER_SITE)
            run = simulate(run_name, work, honest, held_out, SITES - 1, options)
        else:
            run = simulate(run_name, work, manifest, held_out, SITES, options)
        accuracy, seconds, record = run
        refused = sum(1 for r in record["rounds"] if r.get("rejected"))
        results.append((name, accuracy, refused))
        curve = " ".join(f"{a:.3f}" for a in accuracy)
        print(f"{name} ({seconds:.0f} s, rounds with a refused update: {refused}): {curve}")
    marks = sorted({r for r in (2, 5, 10, 20, 30) if r < args.rounds} | {args.rounds})
    tail = min(3, args.rounds)  # one round's figure moves by 1-2 points: compare a mean

    def settled(accuracy: list[float]) -> float:
        return float(np.mean(accuracy[-tail:]))

    clean, honest_only = settled(results[0][1]), settled(results[1][1])
    print()
    head = " | ".join(f"round {r}" for r in marks)
    print(
        f"| run | {head} | mean of the last {tail} | vs clean | vs clean without"
        f" {ATTACKER_SITE} | rounds with an update refused |"
    )
    print("|---|" + "---|" * (len(marks) + 4))
    for name, accuracy, refused in results:
        cells = " | ".join(f"{accuracy[r - 1]:.1%}" for r in marks)
        mean = settled(accuracy)
        gaps = [f"{(mean - ref) * 100:+.1f} pt" for ref in (clean, honest_only)]
        print(f"| {name} | {cells} | {mean:.1%} | {' | '.join(gaps)} | {refused} |")
    print(f"(whole bench {time.perf_counter() - started:.0f} s; work folder {work})")


if __name__ == "__main__":
    main()
