"""One poisoned site of five: held-out CWRU accuracy of FedAvg and the robust strategies.

A real federation on loopback (a SuperLink, five SuperNodes, ``flwr run``), started once and
reused for every run. Each site's store holds windows of its own CWRU 12 kHz drive-end
records (one record per fault type, each site at its own fault diameter and motor load, and
one fifth of the single normal record); inside every record the first 70 % goes into the
site's store, the last 30 % into the server's held-out ``server-eval-npz``, on which the
ServerApp scores the global model after every round (``server-eval-accuracy``).

The clean run uses the product's own app folder (the production ClientApp everywhere). The
poisoned runs use a generated app folder whose ``clientapp`` is ``bench.fl_attack:app``:
every SuperNode runs it, and site-4, started with ``--node-config "attack='signflip:10'"``,
replies ``w_global - 10 (w_local - w_global)``; the other four stay honest. Each strategy
runs with the update-norm guard on (``norm-outlier-mads = 5``, the default) and off (0).

    .venv/bin/python -m bench.bench_fl_poison [--rounds 3] [--guard-on all|fedavg]

Bulyan is not run: it needs ``n >= 4f + 3`` sites, 7 for one attacker (``RunConfig``
refuses it with 5).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from aggregator.rounds import RoundLog
from bench.bench_round_overhead import round_logs, round_spans, stamper, wait_for_nodes
from bench.data import cwru_dir
from edge_agent.store import LocalStore
from fedpm.demo import app_dir
from fedpm.federation import LocalFederation, SiteNode, config_arg
from fedpm.netutil import free_port
from fedpm.procs import ProcessGroup, venv_bin
from models.fl_config import DEFAULT_CLASSES
from models.windows import Window, resample, windows_from_record

FS = 12_000.0
WINDOW = 2048
TRAIN_FRACTION = 0.7
SITES = 5
ATTACKER = "site-4"
ATTACK = "signflip:10"
FAULTS = {"inner_race": "IR", "ball": "B", "outer_race": "OR"}
# (fault diameter, motor load) per site: spread over the 12 combinations
COMBOS = [(d, load) for d in ("0.007", "0.014", "0.021") for load in ("0", "1", "2", "3")]
T0_NS = 1_700_000_000_000_000_000


def _record(rows: list[dict[str, str]], fault: str, diameter: str, load: str) -> dict[str, str]:
    return next(
        r
        for r in rows
        if r["fault_type"] == fault
        and r["fault_diameter_in"] == diameter
        and r["motor_load_hp"] == load
        and r["or_position"] in ("", "@6:00")
    )


def _signal(root: Path, row: dict[str, str]) -> np.ndarray:
    with np.load(root / row["file"]) as data:
        return resample(data["de"], float(row["sample_rate_hz"]), FS)


def seed_cwru(work: Path) -> tuple[list[SiteNode], Path, dict[str, str]]:
    """Stores of the five sites, the held-out npz, and which records each site got."""
    root = cwru_dir()
    with (root / "MANIFEST.tsv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    normal = _signal(root, next(r for r in rows if r["fault_type"] == "normal"))
    classes = {name: i for i, name in enumerate(DEFAULT_CLASSES)}
    step_ns = round(WINDOW * 1e9 / FS)
    x_held, y_held = [], []
    nodes, described = [], {}
    for i in range(SITES):
        diameter, load = COMBOS[i * len(COMBOS) // SITES]
        signals = {
            f: _signal(root, _record(rows, f, diameter, load)) for f in FAULTS
        }  # one record per fault type
        part = len(normal) // SITES
        signals["normal"] = normal[i * part : (i + 1) * part]
        path = work / f"site-{i}" / "store.sqlite"
        path.parent.mkdir(parents=True)
        with LocalStore(path) as store:
            for k, (label, sig) in enumerate(signals.items()):
                cut = int(TRAIN_FRACTION * len(sig))
                hop = WINDOW if label != "normal" else WINDOW // 4  # the normal slice is short
                train_w = windows_from_record(sig[:cut], WINDOW, hop)
                held_w = windows_from_record(sig[cut:], WINDOW, WINDOW // 2)
                t0 = T0_NS + k * 10**12
                hop_ns = round(hop * 1e9 / FS)
                windows = [Window(t0 + j * hop_ns, FS, w) for j, w in enumerate(train_w)]
                store.add_windows(f"asset-{k}", "de", 0, windows)
                store.add_label(f"asset-{k}", label, t0, windows[-1].start_ns + step_ns)
                x_held.append(held_w)
                y_held.append(np.full(len(held_w), classes[label], np.int64))
        nodes.append(SiteNode(f"site-{i}", path))
        described[f"site-{i}"] = f"faults {diameter} in, load {load} hp, normal slice {i + 1}/5"
    held = work / "held-out.npz"
    np.savez(held, x=np.concatenate(x_held)[:, np.newaxis], y=np.concatenate(y_held))
    return nodes, held, described


def attack_app(work: Path) -> Path:
    """A Flower app folder like the product's, with ``bench.fl_attack:app`` as its ClientApp."""
    src = app_dir()
    dst = work / "attack-app"
    for package in ("models", "edge_agent", "aggregator"):
        shutil.copytree(src / package, dst / package, ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "bench").mkdir()
    shutil.copy2(src / "bench" / "fl_attack.py", dst / "bench" / "fl_attack.py")
    text = (src / "pyproject.toml").read_text(encoding="utf-8")
    flwr = text[text.index("[tool.flwr.app]") : text.index("# --- Lint")]
    flwr = flwr.replace(
        'clientapp = "edge_agent.client_app:app"', 'clientapp = "bench.fl_attack:app"'
    ).replace('"aggregator/**/*.py"]', '"aggregator/**/*.py", "bench/fl_attack.py"]')
    # the simulation's attacker is named in the run config (bench.fl_attack.attack_of)
    flwr = flwr.replace(
        "[tool.flwr.app.config]\n",
        '[tool.flwr.app.config]\nattack = ""\nattack-partition = -1\n',
    )
    needed = ("bench.fl_attack:app", "bench/fl_attack.py", "attack-partition")
    if not all(s in flwr for s in needed):
        raise RuntimeError("pyproject.toml's [tool.flwr.app] changed shape; update attack_app()")
    (dst / "pyproject.toml").write_text(
        '[project]\nname = "fedpm-attack-bench"\nversion = "0.1.0"\n'
        'description = "FedPM with one poisoning site (bench only)"\nlicense = "Apache-2.0"\n\n'
        + flwr,
        encoding="utf-8",
    )
    return dst


def start_attacker(fed: LocalFederation, site: SiteNode, attack: str) -> None:
    """``flower-supernode`` for ``site`` with ``attack`` in its node config."""
    node_config = {"store-path": str(site.store_path), "site-id": site.site_id, "attack": attack}
    argv = [
        venv_bin("flower-supernode"),
        "--insecure",
        "--superlink",
        fed.address,
        "--port",
        str(free_port()),
        "--node-config",
        config_arg(node_config),
    ]
    fed.group.start(f"supernode-{site.site_id}", argv, env=fed.env(), cwd=fed.workdir)


def scenarios(guard_on: str) -> list[tuple[str, str, bool, float]]:
    """(name, strategy, poisoned, norm-outlier-mads)."""
    out = [("fedavg clean", "fedavg", False, 5.0)]
    for strategy in ("fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum"):
        out.append((f"{strategy} poisoned, guard off", strategy, True, 0.0))
        if guard_on == "all" or strategy == "fedavg":
            out.append((f"{strategy} poisoned, guard on", strategy, True, 5.0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--guard-on", choices=("all", "fedavg"), default="fedavg")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: list[tuple[str, dict[int, RoundLog], float]] = []
    t_bench = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedpm-poison-") as tmp:
        work = Path(tmp)
        nodes, held, described = seed_cwru(work)
        with np.load(held) as h:
            held_counts = np.bincount(h["y"], minlength=len(DEFAULT_CLASSES))
        poisoned_app = attack_app(work)
        with ProcessGroup(work / "logs") as group:
            fed = LocalFederation(group, work)
            fed.start([n for n in nodes if n.site_id != ATTACKER])
            start_attacker(fed, next(n for n in nodes if n.site_id == ATTACKER), ATTACK)
            wait_for_nodes(fed, SITES)
            for name, strategy, poisoned, mads in scenarios(args.guard_on):
                run_name = name.replace(" ", "-").replace(",", "")
                marks: list[tuple[float, str]] = []
                code = fed.run(
                    poisoned_app if poisoned else app_dir(),
                    {
                        "num-server-rounds": args.rounds,
                        "local-epochs": args.local_epochs,
                        "min-sites": SITES,
                        "strategy": strategy,
                        "krum-byzantine": 1,
                        "krum-select": 3,
                        "trimmed-fraction": 0.2,
                        "norm-outlier-mads": mads,
                        "server-eval-npz": str(held),
                        "registry-dir": str(work / "registry"),
                        "checkpoint-dir": str(work / "checkpoints"),
                        "run-name": run_name,
                    },
                    on_line=stamper(marks),
                )
                if code != 0:
                    raise SystemExit(f"{name}: flwr run failed ({code}); see {work}/flwr-run.log")
                spans = round_spans(marks)
                logs = round_logs(work / "checkpoints", run_name)
                results.append((name, logs, sum(s.seconds for s in spans)))
                accs = [logs[r].aggregated.get("server-eval-accuracy", -1.0) for r in sorted(logs)]
                print(
                    f"{name}: held-out accuracy per round {[round(a, 3) for a in accs]}, "
                    f"{results[-1][2]:.0f} s",
                    flush=True,
                )
    print(
        f"{SITES} SuperNodes on CWRU 12 kHz drive-end windows ({WINDOW} samples), classes "
        f"{', '.join(DEFAULT_CLASSES)}; {args.rounds} rounds x {args.local_epochs} local epochs; "
        f"{ATTACKER} replies {ATTACK}"
    )
    for site, what in described.items():
        print(f"  {site}: {what}")
    print(f"held-out windows per class (last 30 % of every record): {held_counts.tolist()}")
    clean = results[0][1][args.rounds].aggregated["server-eval-accuracy"]
    print("| run | accuracy per round (held-out) | final | vs clean | attacker refused |")
    print("|---|---|---|---|---|")
    for name, logs, _ in results:
        accs = [logs[r].aggregated.get("server-eval-accuracy", float("nan")) for r in sorted(logs)]
        refused = sum(f"train:{ATTACKER}" in logs[r].rejected for r in logs)
        skipped = sum(logs[r].skipped for r in logs)
        final = accs[-1]
        print(
            f"| {name} | {' / '.join(f'{a:.3f}' for a in accs)} | {final:.3f} | "
            f"{100 * (final - clean):+.1f} pt | {refused}/{len(logs)} rounds"
            f"{f', {skipped} skipped' if skipped else ''} |"
        )
    for name, logs, _ in results:
        reasons = {why for log in logs.values() for why in log.rejected.values()}
        if reasons:
            print(f"{name}: refused because {'; '.join(sorted(reasons))}")
    print(f"whole bench: {time.perf_counter() - t_bench:.0f} s")


if __name__ == "__main__":
    main()
