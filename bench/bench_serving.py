"""Serving API speed: latency with one client, throughput at 16 and 64, against two baselines.

All figures from one run, on this machine:

1. **floor**: the in-process onnxruntime call (``OnnxClassifier.predict``) on one 2,048-sample
   window: p50 and p99;
2. **FedPM over HTTP**: the real service (``python -m serving``, one uvicorn worker, an API
   key, a WDCNN in its registry), one client sending one window per request, JSON body and
   binary body: p50 and p99, and the ratio end-to-end / in-process;
3. **throughput** at 16 and 64 concurrent clients (asyncio + httpx, one window per request)
   for FedPM (JSON and binary) and for the baseline a user would write instead
   (``bench/naive_service.py``: FastAPI + PyTorch, the window as a JSON list, one uvicorn
   worker): requests/s and the ratio FedPM / baseline.

Goals (issue 6): p99 <= 5 ms with one client; >= 3x the baseline's throughput. The load
generator runs on the same cores as the servers; on a 2-core machine every figure is a floor.

    .venv/bin/python -m bench.bench_serving [--requests 400] [--duration 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from fedpm.netutil import free_port
from models.metadata import Provenance
from models.network import build_model
from models.onnx_export import export_onnx, metadata_for
from models.registry import FileRegistry
from models.runtime import OnnxClassifier
from serving.state import Permission, SqliteStateStore

FS = 12_000.0
WINDOW = 2048
CLASSES = ("normal", "inner_race", "outer_race", "ball")


def percentiles(samples_s: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    ms = np.asarray(samples_s) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def start(cmd: list[str], env: dict[str, str], url: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{cmd} did not come up")


def one_client(send: Callable[[httpx.Client], httpx.Response], base: str, n: int) -> list[float]:
    times = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(20):  # warm up
            send(client).raise_for_status()
        for _ in range(n):
            t = time.perf_counter()
            send(client).raise_for_status()
            times.append(time.perf_counter() - t)
    return times


async def _throughput(
    base: str, path: str, kwargs: dict[str, object], clients: int, duration_s: float
) -> float:
    done = 0
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        end = time.monotonic() + duration_s

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < end:
                response = await client.post(path, **kwargs)  # type: ignore[arg-type]
                if response.status_code == 200:
                    done += 1
                else:
                    errors += 1

        t = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.monotonic() - t
    if errors:
        print(f"    ({errors} non-200 answers from {path})")
    return done / elapsed


def throughput(base: str, path: str, kwargs: dict[str, object], clients: int, s: float) -> float:
    return asyncio.run(_throughput(base, path, kwargs, clients, s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--duration", type=float, default=8.0)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    window = (0.5 * rng.standard_normal(WINDOW)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="fedpm-bench-serving-") as tmp:
        root = Path(tmp)
        net = build_model(seed=0)
        meta = metadata_for(
            net, sample_rate_hz=FS, class_names=CLASSES, provenance=Provenance(source="bench")
        )
        model = export_onnx(net, meta)
        FileRegistry(root / "registry").publish(model, meta, run_id="bench", server_round=1)
        store = SqliteStateStore(root / "state.sqlite")
        _, key = store.create_key("bench", [Permission.PREDICT])
        store.close()

        # 1. the floor
        classifier = OnnxClassifier(model)
        x = window[np.newaxis, np.newaxis]
        for _ in range(50):
            classifier.predict(x)
        floor = []
        for _ in range(args.requests):
            t = time.perf_counter()
            classifier.predict(x)
            floor.append(time.perf_counter() - t)
        f50, f99 = percentiles(floor)

        port, naive_port = free_port(), free_port()
        env = {
            **os.environ,
            "FEDPM_SERVE_STATE_PATH": str(root / "state.sqlite"),
            "FEDPM_SERVE_LOG_LEVEL": "WARNING",
            "FEDPM_SERVE_RATE_LIMIT_PER_MINUTE": "0",
        }
        fedpm = start(
            [sys.executable, "-m", "serving", "--registry", str(root / "registry"),
             "--port", str(port)],
            env, f"http://127.0.0.1:{port}/ready",
        )  # fmt: skip
        naive = start(
            [sys.executable, "-m", "bench.naive_service", str(naive_port)],
            dict(os.environ), f"http://127.0.0.1:{naive_port}/docs",
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            naive_base = f"http://127.0.0.1:{naive_port}"
            headers = {"Authorization": f"Bearer {key}"}
            json_body = {"sample_rate_hz": FS, "windows": [window.tolist()]}
            raw = window.astype("<f4").tobytes()
            params = {"sample_rate_hz": FS, "windows": 1, "samples": WINDOW}
            binary_headers = {**headers, "Content-Type": "application/octet-stream"}
            json_kwargs: dict[str, object] = {"json": json_body, "headers": headers}
            binary_kwargs: dict[str, object] = {
                "content": raw, "params": params, "headers": binary_headers,
            }  # fmt: skip
            naive_kwargs: dict[str, object] = {"json": {"windows": [window.tolist()]}}

            # 2. latency, one client
            lat = {
                "FedPM JSON": one_client(
                    lambda c: c.post("/v1/predictions", **json_kwargs),  # type: ignore[arg-type]
                    base, args.requests,
                ),
                "FedPM binary": one_client(
                    lambda c: c.post("/v1/predictions/binary", **binary_kwargs),  # type: ignore[arg-type]
                    base, args.requests,
                ),
                "baseline (FastAPI + PyTorch)": one_client(
                    lambda c: c.post("/predict", **naive_kwargs),  # type: ignore[arg-type]
                    naive_base, args.requests,
                ),
            }  # fmt: skip
            print(f"one 2,048-sample window per request, {args.requests} requests per row")
            print(f"  in-process onnxruntime (floor)   p50 {f50:6.2f} ms  p99 {f99:6.2f} ms")
            for name, times in lat.items():
                p50, p99 = percentiles(times)
                print(
                    f"  {name:<32} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
                    f"   end-to-end / in-process p50 {p50 / f50:5.1f}x"
                )

            # 3. throughput
            for clients in (16, 64):
                rates = {
                    "FedPM JSON": throughput(
                        base, "/v1/predictions", json_kwargs, clients, args.duration
                    ),
                    "FedPM binary": throughput(
                        base, "/v1/predictions/binary", binary_kwargs, clients, args.duration
                    ),
                    "baseline": throughput(
                        naive_base, "/predict", naive_kwargs, clients, args.duration
                    ),
                }
                line = "  ".join(
                    f"{n} {r:,.0f}/s ({r / rates['baseline']:.2f}x)" for n, r in rates.items()
                )
                print(f"  {clients:>2} clients: {line}")
        finally:
            for proc in (fedpm, naive):
                proc.terminate()
                proc.wait(timeout=30)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
