"""FedAvg on non-identical sites: how BatchNorm statistics are handled decides round-1 quality.

Runs FedAvg in-process (no Flower: same arithmetic, weighted by examples) over the demo's three
simulated sites (each missing one fault class), and scores every round's global model on windows
from an unseen machine. Baseline: BatchNorm's default exponential running average
(momentum 0.1). FedPM: cumulative average (momentum=None) re-estimated each local round
(``models.network.reset_norm_statistics``). Prints held-out accuracy per round and the ratio.

    .venv/bin/python -m bench.bench_federated_norm [--rounds 3] [--epochs 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from fedpm.erp_client import held_out_windows
from fedpm.scenario import DEMO_SITES
from models.fl_config import RunConfig
from models.network import WDCNN, build_model, reset_norm_statistics
from models.simulator import BearingSignalStream
from models.training import evaluate, train
from models.windows import windows_from_record


def site_data(windows_per_asset: int, window: int) -> list[tuple[np.ndarray, np.ndarray]]:
    cfg = RunConfig()
    out = []
    for site in DEMO_SITES:
        rng = np.random.default_rng(site.seed)
        xs, ys = [], []
        for asset in site.assets:
            stream = BearingSignalStream(site.profile(), rng)
            record = stream.next(windows_per_asset * window, asset.mode, asset.severity)
            w = windows_from_record(record, window)
            xs.append(w[:, None, :])
            ys.append(np.full(len(w), cfg.class_names.index(asset.mode), np.int64))
        out.append((np.concatenate(xs), np.concatenate(ys)))
    return out


def run(variant: str, rounds: int, epochs: int, sites: list, held_out: tuple) -> list[float]:
    cfg = RunConfig()
    global_net = build_model(cfg.network, seed=0)
    if variant == "baseline":
        for m in global_net.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.momentum = 0.1
    accs = []
    for r in range(1, rounds + 1):
        states, weights = [], []
        for x, y in sites:
            net: WDCNN = build_model(cfg.network)
            for src, dst in zip(global_net.modules(), net.modules(), strict=True):
                if isinstance(dst, nn.BatchNorm1d):
                    dst.momentum = src.momentum  # type: ignore[union-attr]
            net.load_state_dict(global_net.state_dict())
            if variant == "fedpm":
                reset_norm_statistics(net)
            res = train(net, x, y, epochs=epochs, batch_size=32, learning_rate=1e-3, seed=r)
            states.append({k: v.double() for k, v in net.state_dict().items()})
            weights.append(res.num_examples)
        total = sum(weights)
        avg = {
            k: sum(s[k] * w / total for s, w in zip(states, weights, strict=True))
            for k in states[0]
        }
        global_net.load_state_dict(avg)
        accs.append(evaluate(global_net, *held_out, cfg.class_names).accuracy)
    return accs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--windows-per-asset", type=int, default=56)
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = RunConfig()
    sites = site_data(args.windows_per_asset, cfg.window_samples)
    xh = np.concatenate([held_out_windows(c, 25, cfg.window_samples) for c in cfg.class_names])
    yh = np.repeat(np.arange(len(cfg.class_names)), 25).astype(np.int64)
    print(
        f"3 sites x 3 assets x {args.windows_per_asset} windows, {args.epochs} local epochs; "
        f"held-out: {len(yh)} windows of an unseen machine"
    )
    results = {}
    for variant in ("baseline", "fedpm"):
        t = time.perf_counter()
        results[variant] = run(variant, args.rounds, args.epochs, sites, (xh[:, None, :], yh))
        per_round = " ".join(f"{100 * a:5.1f}%" for a in results[variant])
        print(
            f"{variant:<9} held-out accuracy per round: {per_round}  "
            f"({time.perf_counter() - t:.1f} s)"
        )
    for r in range(args.rounds):
        base, ours = results["baseline"][r], results["fedpm"][r]
        print(f"round {r + 1}: fedpm / baseline accuracy = {ours / max(base, 1e-9):.2f}x")


if __name__ == "__main__":
    main()
