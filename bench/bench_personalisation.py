"""Per-site personalisation on non-identical sites: global FedAvg vs local-bn vs local-head.

In-process FedAvg (no Flower: the same arithmetic, weighted by training windows) through the
ClientApp's own personalisation code (``edge_agent.fl_personal``: state files in a temporary
folder per site, loaded, merged and saved exactly as the ClientApp does). Every site splits
each recording in time: the first 80 % trains, the last 20 % is scored. Per site, after the
last round:

- ``FedAvg``: the global model of plain FedAvg (``personalisation = "none"``), the baseline;
- ``local-bn global`` / ``local-bn personal``: FedBN's run, its global model and the global
  model with the site's own BatchNorm layers;
- ``local-head personal``: plain FedAvg's global body with the site's fine-tuned head (its
  training is plain FedAvg, so the baseline's figures are its global model's, same run).

Each model is also scored on the classes the site never trained on (other sites' scored
windows of those classes): a head tuned to the site's own class mix may stop seeing the
faults the federation was meant to teach it.

Sites:

- ``sim``: the demo's three simulated sites (``fedpm.scenario.DEMO_SITES``): own speed and
  structural resonance, three assets each, each site missing one of the four classes;
- ``cwru``: the CWRU 12 kHz drive-end records split by motor load, one site per load (0-3 HP;
  inner race, ball and outer race @6:00 at 0.007/0.014/0.021 in). The only healthy record is
  at 0 HP, so sites 1-3 HP have three classes and the 0 HP site four.

    .venv/bin/python -m bench.bench_personalisation --data sim --seeds 0,1,2,3,4 --rounds 2 \
        --windows-per-asset 30 --threads 1
    .venv/bin/python -m bench.bench_personalisation --data cwru --seeds 0 --rounds 3 \
        --cwru-hop 2048 --threads 1

(the figures in docs/federated-training.md, "Personalisation per site").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.data import cwru_dir
from edge_agent.fl_personal import after_training, before_training, personal_model
from fedpm.scenario import DEMO_SITES
from models import dataset_windows as dw
from models.datasets import load_manifest
from models.fl_config import RunConfig
from models.network import WDCNN, build_model, reset_norm_statistics
from models.simulator import BearingSignalStream
from models.training import evaluate, train
from models.windows import windows_from_record

TRAIN_FRACTION = 0.8
CWRU_FILTERS = ("or_position!=@3:00,@12:00", "fault_diameter_in!=0.028")


@dataclass
class Site:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray

    @property
    def classes(self) -> int:
        return len(np.unique(self.y_train))


def sim_sites(windows_per_asset: int, cfg: RunConfig) -> list[Site]:
    sites = []
    for spec in DEMO_SITES:
        rng = np.random.default_rng(spec.seed)
        parts: dict[str, list[np.ndarray]] = {"xt": [], "yt": [], "xe": [], "ye": []}
        for asset in spec.assets:
            stream = BearingSignalStream(spec.profile(), rng)
            record = stream.next(windows_per_asset * cfg.window_samples, asset.mode, asset.severity)
            w = windows_from_record(record, cfg.window_samples)[:, None, :].astype(np.float32)
            cut = round(len(w) * TRAIN_FRACTION)
            label = cfg.class_names.index(asset.mode)
            parts["xt"].append(w[:cut])
            parts["xe"].append(w[cut:])
            parts["yt"].append(np.full(cut, label, np.int64))
            parts["ye"].append(np.full(len(w) - cut, label, np.int64))
        sites.append(Site(spec.site_id, *(np.concatenate(parts[k]) for k in parts)))
    return sites


def cwru_sites(root: Path, hop: int, cfg: RunConfig, extra: list[str]) -> list[Site]:
    filters = [dw.RecordFilter.parse(f) for f in (*CWRU_FILTERS, *extra)]
    infos = dw.select(load_manifest(root / "MANIFEST.tsv"), filters)
    options = dw.WindowOptions(train_fraction=TRAIN_FRACTION, train_hop=hop)
    sites = []
    for load in ("0", "1", "2", "3"):
        chosen = dw.select(infos, [dw.RecordFilter.parse(f"motor_load_hp={load}")])
        plan = dw.plan_time_split(chosen)
        tr, te = dw.build_windows(plan, options, scheme="fault", class_names=cfg.class_names)
        sites.append(Site(f"cwru-{load}hp", tr.x, tr.y, te.x, te.y))
    return sites


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    """Weighted mean of the sites' state dicts, in the global dtypes (as GuardedStrategy)."""
    total = sum(weights)
    out = {}
    for k, first in states[0].items():
        mean = sum(s[k].double() * w / total for s, w in zip(states, weights, strict=True))
        out[k] = (mean.round() if not first.is_floating_point() else mean).to(first.dtype)
    return out


Figures = dict[str, float]  # "global", "personal", "global-unseen", "personal-unseen"


def unseen(site: Site, sites: list[Site]) -> tuple[np.ndarray, np.ndarray]:
    """Other sites' scored windows of the classes ``site`` never trained on."""
    known = set(site.y_train.tolist())
    xs, ys = [], []
    for other in sites:
        if other is not site:
            mask = ~np.isin(other.y_eval, list(known))
            xs.append(other.x_eval[mask])
            ys.append(other.y_eval[mask])
    return np.concatenate(xs), np.concatenate(ys)


def run(
    mode: str, sites: list[Site], rounds: int, epochs: int, seed: int, root: Path
) -> dict[str, Figures]:
    """FedAvg rounds with ``personalisation = mode``; per site, the global and personal
    models' accuracy on the site's own scored windows and on classes it never saw."""
    cfg = RunConfig(personalisation=mode, local_epochs=epochs, seed=seed)
    global_net: WDCNN = build_model(cfg.network, seed=seed)
    paths = {s.name: root / mode / s.name / f"fl-personal-run-{seed}.npz" for s in sites}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Figures] = {}
    for r in range(1, rounds + 1):
        states, weights = [], []
        for i, site in enumerate(sites):
            net = build_model(cfg.network)
            net.load_state_dict(global_net.state_dict())
            previous = before_training(net, cfg, paths[site.name])
            reset_norm_statistics(net)
            fit = train(
                net,
                site.x_train,
                site.y_train,
                epochs=epochs,
                batch_size=cfg.batch_size,
                learning_rate=cfg.learning_rate,
                seed=seed + 1000 * r + i,
            )
            after_training(net, cfg, paths[site.name], previous, r)
            states.append(net.state_dict())
            weights.append(fit.num_examples)
        global_net.load_state_dict(fedavg(states, weights))
        if r < rounds and mode != "local-head":
            continue  # local-head tunes its head every round, as the ClientApp's evaluate does
        for i, site in enumerate(sites):
            personal, _ = personal_model(
                global_net,
                cfg,
                paths[site.name],
                site.x_train,
                site.y_train,
                server_round=r,
                seed=seed + 1000 * r + i,
            )
            xu, yu = unseen(site, sites)
            result[site.name] = {
                f"{name}{suffix}": evaluate(net, x, y, cfg.class_names).accuracy
                for name, net in (("global", global_net), ("personal", personal))
                for suffix, (x, y) in (("", (site.x_eval, site.y_eval)), ("-unseen", (xu, yu)))
            }
    return result


COLUMNS = {  # column -> (mode, figure)
    "FedAvg": ("local-head", "global"),
    "local-bn global": ("local-bn", "global"),
    "local-bn personal": ("local-bn", "personal"),
    "local-head personal": ("local-head", "personal"),
}


def report(name: str, sites: list[Site], runs: dict[str, list[dict[str, Figures]]]) -> None:
    def mean(mode: str, names: list[str], figure: str) -> float:
        values = [r[n][figure] for r in runs[mode] for n in names]
        values = [v for v in values if np.isfinite(v)]  # a site that saw every class: none
        return float(np.mean(values)) if values else float("nan")

    def pct(value: float) -> str:
        return f"{value:.1%}" if np.isfinite(value) else "n/a"

    def pts(value: float) -> str:
        return f"{100 * value:+.1f} pts" if np.isfinite(value) else "n/a"

    seeds = len(runs["local-head"])
    for suffix, title in (("", "its own scored windows"), ("-unseen", "classes it never saw")):
        print(f"\n{name}: per-site accuracy on {title} (mean over {seeds} seeds)\n")
        print(
            "| site | classes | train / scored windows | "
            + " | ".join(COLUMNS)
            + " | local-bn personal - FedAvg | local-head personal - FedAvg |"
        )
        print("|---" * (len(COLUMNS) + 5) + "|")
        for row in [s.name for s in sites] + ["mean"]:
            names = [s.name for s in sites] if row == "mean" else [row]
            fig = {c: mean(mode, names, f + suffix) for c, (mode, f) in COLUMNS.items()}
            if row == "mean":
                classes, counts = "", ""
            else:
                site = next(s for s in sites if s.name == row)
                n_scored = len(site.y_eval) if not suffix else len(unseen(site, sites)[1])
                classes, counts = str(site.classes), f"{len(site.y_train)} / {n_scored}"
            base = fig["FedAvg"]
            print(
                f"| {row} | {classes} | {counts} | "
                + " | ".join(pct(v) for v in fig.values())
                + f" | {pts(fig['local-bn personal'] - base)}"
                + f" | {pts(fig['local-head personal'] - base)} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="sim,cwru", help="sim, cwru or both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--windows-per-asset", type=int, default=60)
    parser.add_argument("--cwru-hop", type=int, default=1024, help="training-window hop")
    parser.add_argument("--root", type=Path, default=cwru_dir(), help="CWRU folder")
    parser.add_argument(
        "--cwru-filter",
        action="append",
        default=[],
        help="extra manifest filter, e.g. fault_diameter_in=0,0.007 (repeatable)",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = RunConfig()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(
        f"{args.rounds} rounds, {args.epochs} local epochs, seeds {args.seeds}, "
        f"{args.threads} threads"
    )
    for data in args.data.split(","):
        if data == "sim":
            sites = sim_sites(args.windows_per_asset, cfg)
        elif data == "cwru":
            sites = cwru_sites(args.root, args.cwru_hop, cfg, args.cwru_filter)
        else:
            raise SystemExit(f"unknown data {data!r}: sim or cwru")
        runs: dict[str, list[dict[str, Figures]]] = {}
        for mode in ("local-head", "local-bn"):  # local-head trains as plain FedAvg: baseline
            for seed in seeds:
                started = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    out = run(mode, sites, args.rounds, args.epochs, seed, Path(tmp))
                runs.setdefault(mode, []).append(out)
                figures = " ".join(
                    f"{k} {f['global']:.1%}/{f['personal']:.1%}" for k, f in out.items()
                )
                print(
                    f"  {data} {mode} seed {seed}: global/personal {figures} "
                    f"({time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
        report(data, sites, runs)


if __name__ == "__main__":
    main()
