"""The aggregator's GPU path: server-side evaluation on CUDA against the CPU, same run.

``aggregator.evaluation.ServerEvaluator`` scores each round's global model on held-out windows
(``server-eval-npz``) on ``server-device`` (``auto`` takes CUDA when PyTorch sees a GPU). This
bench builds held-out windows from the project's own bearing simulator (4 classes, 2,048
samples at 12 kHz), trains the WDCNN briefly on the CPU (so the scores mean something), and
scores the same global model (as the ``ArrayRecord`` a round hands over) on the CPU and on CUDA:
the two must agree (accuracy equal, loss within 1e-4), and the time per evaluation and the
ratio are printed. Without a GPU it says so and scores on the CPU only.

    .venv/bin/python -m bench.bench_server_eval_gpu [--windows 8192] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from flwr.app import ArrayRecord

from aggregator.evaluation import ServerEvaluator, pick_device
from models.fl_config import RunConfig
from models.network import build_model
from models.simulator import MachineProfile, simulate
from models.training import train

CLASSES = ("normal", "inner_race", "outer_race", "ball")
FS, WINDOW = 12_000.0, 2048


def windows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` simulated windows, classes in turn, severities 0.3-1 for the faults."""
    rng = np.random.default_rng(seed)
    profile = MachineProfile()
    x = np.empty((n, 1, WINDOW), dtype=np.float32)
    y = np.arange(n, dtype=np.int64) % len(CLASSES)
    for i in range(n):
        mode = CLASSES[y[i]]
        severity = 0.0 if mode == "normal" else float(rng.uniform(0.3, 1.0))
        x[i, 0] = simulate(profile, mode, severity, WINDOW, rng)  # type: ignore[arg-type]
    return x, y


def timed(
    evaluator: ServerEvaluator, arrays: ArrayRecord, repeats: int
) -> tuple[float, dict[str, float]]:
    """Median seconds of one evaluation (after a warm-up), and its result."""
    result = evaluator(arrays)  # warm-up: CUDA context, kernels, allocator
    times = []
    for _ in range(repeats):
        if evaluator.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        result = evaluator(arrays)
        if evaluator.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), result


def main() -> None:
    """Print CPU and CUDA evaluation times, their ratio, and whether the scores agree."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--windows", type=int, default=8192, help="held-out windows")
    parser.add_argument("--train-windows", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    cfg = RunConfig(class_names=CLASSES)
    x_train, y_train = windows(args.train_windows, seed=1)
    x_eval, y_eval = windows(args.windows, seed=2)
    net = build_model(cfg.network, seed=0)
    started = time.perf_counter()
    train(net, x_train, y_train, epochs=2, batch_size=32, learning_rate=1e-3)
    print(f"trained on {len(y_train)} windows on the CPU in {time.perf_counter() - started:.1f} s")
    arrays = ArrayRecord(net.state_dict())

    cpu_s, cpu = timed(ServerEvaluator(cfg, x_eval, y_eval, torch.device("cpu")), arrays, 1)
    print(
        f"cpu : {cpu_s * 1e3:8.1f} ms per evaluation of {len(y_eval)} windows"
        f"  accuracy {cpu['server-eval-accuracy']:.4f}  loss {cpu['server-eval-loss']:.5f}"
    )
    device = pick_device("auto")
    if device.type != "cuda":
        print("no CUDA device: the GPU path was not run (server-device=auto chose the CPU)")
        return
    gpu_s, gpu = timed(ServerEvaluator(cfg, x_eval, y_eval, device), arrays, args.repeats)
    print(
        f"cuda: {gpu_s * 1e3:8.1f} ms per evaluation ({torch.cuda.get_device_name(0)})"
        f"  accuracy {gpu['server-eval-accuracy']:.4f}  loss {gpu['server-eval-loss']:.5f}"
    )
    agree = (
        gpu["server-eval-accuracy"] == cpu["server-eval-accuracy"]
        and abs(gpu["server-eval-loss"] - cpu["server-eval-loss"]) <= 1e-4
    )
    print(f"cuda is {cpu_s / gpu_s:.1f}x the cpu; scores agree: {agree}")
    if not agree:
        raise SystemExit("CPU and CUDA evaluations disagree")


if __name__ == "__main__":
    main()
