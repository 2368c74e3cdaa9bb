"""Update compression on real CWRU data: bytes per round both ways, and final accuracy.

Federated averaging in one process over four simulated sites, one per CWRU motor load (0-3 HP;
the single normal record's training windows are dealt out to all four), on the classic
10-class task (normal + inner race, ball, outer race @6:00 at 0.007/0.014/0.021 in), every
record split in time (first 70 % trains, last 30 % tests; ``models.dataset_windows``). Each
round runs through the code a deployment runs: real Flower Messages, the ClientApp's
``update_compression_mod`` (its residual file in a temporary site folder), the server's
``decompress_replies`` and Flower's own ``FedAvg.aggregate_train``. Two runs per seed, the
same seed, data and site order: ``update-compression = "none"`` and ``"int8"``.

Bytes are Flower's serialised objects (``aggregator.compression.message_wire_bytes``): down
is one train instruction (global float32 weights + config) per site, up one train reply
(weights or int8 update + metrics + site id) per site; evaluate messages are not counted
(they carry the same global weights down and only metrics up in both runs).

    .venv/bin/python -m bench.bench_compression [--rounds 5] [--epochs 1] [--seeds 0,1] [--hop 2048]
    .venv/bin/python -m bench.bench_compression --rounds 8 --seeds 0,1,2 --hop 1024  # longer
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg

from aggregator.compression import decompress_replies, message_wire_bytes
from bench.data import cwru_dir
from edge_agent.fl_mods import update_compression_mod
from models import dataset_windows as dw
from models.datasets import load_manifest
from models.network import NetworkConfig, build_model, reset_norm_statistics
from models.training import evaluate, train

CLASSIC = ("or_position!=@3:00,@12:00", "fault_diameter_in!=0.028")
SCHEME = "fault_size"


@dataclass
class Site:
    node_id: int
    x: np.ndarray
    y: np.ndarray
    folder: Path


@dataclass
class RunResult:
    accuracy: list[float] = field(default_factory=list)
    down: list[int] = field(default_factory=list)
    up: list[int] = field(default_factory=list)
    seconds: float = 0.0


def load(root: Path, hop: int) -> tuple[dw.WindowSet, dw.WindowSet]:
    infos = load_manifest(root / "MANIFEST.tsv")
    classic = dw.select(infos, [dw.RecordFilter.parse(f) for f in CLASSIC])
    plan = dw.plan_time_split(classic)
    return dw.build_windows(plan, dw.WindowOptions(train_hop=hop), scheme=SCHEME)


def make_sites(train_set: dw.WindowSet, workdir: Path) -> list[Site]:
    load_of = np.array(
        [int(float(train_set.records[r].metadata["motor_load_hp"])) for r in train_set.record]
    )
    normal = train_set.class_names.index("normal")
    healthy = np.flatnonzero(train_set.y == normal)
    sites = []
    for k, hp in enumerate(sorted(set(load_of.tolist()))):
        faulty = np.flatnonzero((load_of == hp) & (train_set.y != normal))
        idx = np.concatenate([faulty, healthy[k::4]])
        folder = workdir / f"site-{hp}hp"
        folder.mkdir()
        sites.append(Site(k + 1, train_set.x[idx], train_set.y[idx], folder))
    return sites


def instruction(arrays: ArrayRecord, site: Site, server_round: int) -> Message:
    """A train message as the SuperLink delivers it (its id is its content hash)."""
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})})
    metadata = Metadata(
        run_id=7,
        message_id="",
        src_node_id=0,
        dst_node_id=site.node_id,
        reply_to_message_id="",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )
    msg = Message(metadata=metadata, content=content)  # type: ignore[call-overload]
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


def run(
    codec: str, sites: list[Site], test: dw.WindowSet, args: argparse.Namespace, seed: int
) -> RunResult:
    config = NetworkConfig(n_classes=len(test.class_names))
    global_arrays = ArrayRecord(build_model(config, seed=seed).state_dict())
    strategy = FedAvg(min_train_nodes=len(sites), min_available_nodes=len(sites))
    result = RunResult()
    started = time.perf_counter()
    for r in range(1, args.rounds + 1):
        replies, down, up = [], 0, 0
        for site in sites:
            msg = instruction(global_arrays, site, r)
            down += message_wire_bytes(msg)

            def handler(msg: Message, ctx: Context, site: Site = site, r: int = r) -> Message:
                net = build_model(config)
                net.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
                reset_norm_statistics(net)
                res = train(
                    net, site.x, site.y, epochs=args.epochs, seed=seed * 1000 + r * 10 + ctx.node_id
                )
                metrics = MetricRecord({"train-loss": res.loss, "num-examples": res.num_examples})
                content = RecordDict(
                    {
                        "arrays": ArrayRecord(net.state_dict()),
                        "metrics": metrics,
                        "site": ConfigRecord({"site-id": site.folder.name}),
                    }
                )
                return Message(content=content, reply_to=msg)

            ctx = Context(
                run_id=7,
                node_id=site.node_id,
                node_config={"store-path": str(site.folder / "store.sqlite")},
                state=RecordDict(),
                run_config={"update-compression": codec},
            )
            reply = update_compression_mod(msg, ctx, handler)
            up += message_wire_bytes(reply)
            replies.append(reply)
        decoded = decompress_replies(replies, global_arrays)
        aggregated, _ = strategy.aggregate_train(r, decoded)
        assert aggregated is not None, "FedAvg refused the round"
        global_arrays = aggregated
        net = build_model(config)
        net.load_state_dict(global_arrays.to_torch_state_dict())
        result.accuracy.append(evaluate(net, test.x, test.y, test.class_names).accuracy)
        result.down.append(down)
        result.up.append(up)
        print(
            f"  {codec:<4} seed {seed} round {r}: accuracy {result.accuracy[-1]:6.2%}, "
            f"down {down:,} B, up {up:,} B",
            flush=True,
        )
    result.seconds = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=cwru_dir(), help="CWRU folder")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    parser.add_argument("--hop", type=int, default=2048, help="training-window hop (samples)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("flwr").setLevel(logging.WARNING)  # FedAvg logs every aggregation
    train_set, test = load(args.root, args.hop)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[RunResult]] = {"none": [], "int8": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for codec in results:
                workdir = Path(tmp) / f"{codec}-{seed}"
                workdir.mkdir()
                sites = make_sites(train_set, workdir)
                results[codec].append(run(codec, sites, test, args, seed))
    sizes = ", ".join(f"{len(s.y)}" for s in sites)
    print(
        f"\nCWRU {SCHEME} ({len(test.class_names)} classes), 4 sites by motor load "
        f"({sizes} training windows), {len(test.y)} test windows; {args.rounds} rounds x "
        f"{args.epochs} local epochs; seeds {args.seeds}\n"
    )
    print(
        "| codec | final accuracy (per seed) | down B/round | up B/round | up vs float32 | s/run |"
    )
    print("|---|---|---|---|---|---|")
    base_up = float(np.mean([np.mean(r.up) for r in results["none"]]))
    for codec, runs in results.items():
        finals = [r.accuracy[-1] for r in runs]
        per_seed = ", ".join(f"{a:.2%}" for a in finals)
        up = float(np.mean([np.mean(r.up) for r in runs]))
        down = float(np.mean([np.mean(r.down) for r in runs]))
        print(
            f"| {codec} | {np.mean(finals):.2%} ({per_seed}) | {down:,.0f} | {up:,.0f} "
            f"| {up / base_up:.1%} | {np.mean([r.seconds for r in runs]):.0f} |"
        )
    gaps = [
        100 * (a.accuracy[-1] - b.accuracy[-1])
        for a, b in zip(results["int8"], results["none"], strict=True)
    ]
    per_site_up = base_up / len(sites)
    print(
        f"\nuplink per site per round: {per_site_up:,.0f} B float32 -> "
        f"{float(np.mean([np.mean(r.up) for r in results['int8']])) / len(sites):,.0f} B int8; "
        f"final accuracy int8 - none: {np.mean(gaps):+.2f} points "
        f"(per seed {', '.join(f'{g:+.2f}' for g in gaps)})"
    )


if __name__ == "__main__":
    main()
