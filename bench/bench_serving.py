"""Serving API speed: latency with one client, throughput at 16 and 64, against two baselines.

All figures from one run, on this machine:

1. **floor**: the in-process onnxruntime call (``OnnxClassifier.predict``) on one 2,048-sample
   window: p50 and p99;
2. **FedPM over HTTP**: the real service (``python -m serving``, one uvicorn worker, an API
   key, a WDCNN in its registry), one client sending one window per request, JSON body and
   binary body: p50 and p99, and the ratio end-to-end / in-process. The client is Python's
   ``http.client`` on one keep-alive connection: it adds about 0.1 ms of its own, where
   httpx adds 1-2 ms on this machine, which would be measured as the service's latency;
3. **throughput** at 16 and 64 concurrent connections (one window per request) for FedPM
   (JSON and binary) and for the baseline a user would write instead
   (``bench/naive_service.py``: FastAPI + PyTorch, the window as a JSON list, one uvicorn
   worker): requests/s and the ratio FedPM / baseline. The load comes from ``wrk``
   (``apt-get install wrk``), a C load generator, so that the cores go to the services; without
   it, from asyncio + httpx in this process (said in the output), which takes a large share
   of a 2-core machine itself.

Goals (issue 6): p99 <= 5 ms with one client; >= 3x the baseline's throughput. The load
generator runs on the same cores as the servers; on a 2-core machine every figure is a floor.

    .venv/bin/python -m bench.bench_serving [--requests 400] [--duration 8] [--latency-rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Call:
    """One request, as both load generators send it."""

    path: str  # with its query string
    body: bytes
    headers: dict[str, str]


def one_client(port: int, call: Call, n: int) -> list[float]:
    """Seconds per request of ``n`` requests in a row on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    gc.collect()
    gc.disable()  # this process holds torch and the model: its collections are not the service's
    try:
        for i in range(n + 20):  # 20 to warm up
            t = time.perf_counter()
            conn.request("POST", call.path, body=call.body, headers=call.headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{call.path}: HTTP {response.status}")
            if i >= 20:
                times.append(time.perf_counter() - t)
    finally:
        gc.enable()
        conn.close()
    return times


_WRK_SCRIPT = """
wrk.method = "POST"
local f = assert(io.open(os.getenv("FEDPM_BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("FEDPM_BENCH_TYPE")
local auth = os.getenv("FEDPM_BENCH_AUTH")
if auth ~= nil and auth ~= "" then wrk.headers["Authorization"] = auth end
"""


def wrk_throughput(port: int, call: Call, clients: int, duration_s: float, work: Path) -> float:
    """Requests/s that ``wrk`` gets with ``clients`` connections; refuses any non-2xx answer."""
    script, body = work / "post.lua", work / "body.bin"
    script.write_text(_WRK_SCRIPT, encoding="utf-8")
    body.write_bytes(call.body)
    env = {
        **os.environ,
        "FEDPM_BENCH_BODY": str(body),
        "FEDPM_BENCH_TYPE": call.headers["Content-Type"],
        "FEDPM_BENCH_AUTH": call.headers.get("Authorization", ""),
    }
    argv = ["wrk", "-t2", f"-c{clients}", f"-d{duration_s:g}s", "--timeout", "30s"]
    argv += ["-s", str(script)]
    out = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}{call.path}"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors on {call.path}:\n{out}")
    match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if match is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{out}")
    return float(match.group(1))


async def _throughput(base: str, call: Call, clients: int, duration_s: float) -> float:
    done = 0
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        end = time.monotonic() + duration_s

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < end:
                response = await client.post(call.path, content=call.body, headers=call.headers)
                if response.status_code == 200:
                    done += 1
                else:
                    errors += 1

        t = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.monotonic() - t
    if errors:
        print(f"    ({errors} non-200 answers from {call.path})")
    return done / elapsed


def throughput(port: int, call: Call, clients: int, s: float, work: Path) -> float:
    """Requests/s with ``clients`` concurrent connections: wrk when installed, else httpx."""
    if shutil.which("wrk"):
        return wrk_throughput(port, call, clients, s, work)
    return asyncio.run(_throughput(f"http://127.0.0.1:{port}", call, clients, s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument(
        "--latency-rounds", type=int, default=3, help="one-client rounds per row (tail spread)"
    )
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
            auth = {"Authorization": f"Bearer {key}"}
            query = urllib.parse.urlencode({"sample_rate_hz": FS, "windows": 1, "samples": WINDOW})
            json_type = {"Content-Type": "application/json"}
            calls = {
                "FedPM JSON": (port, Call(
                    "/v1/predictions",
                    json.dumps({"sample_rate_hz": FS, "windows": [window.tolist()]}).encode(),
                    {**auth, **json_type},
                )),
                "FedPM binary": (port, Call(
                    f"/v1/predictions/binary?{query}",
                    window.astype("<f4").tobytes(),
                    {**auth, "Content-Type": "application/octet-stream"},
                )),
                "baseline (FastAPI + PyTorch)": (naive_port, Call(
                    "/predict", json.dumps({"windows": [window.tolist()]}).encode(), json_type
                )),
            }  # fmt: skip

            # 2. latency, one client
            rounds = args.latency_rounds
            print(
                f"one 2,048-sample window per request, {rounds} rounds of {args.requests}"
                " requests per row, rows interleaved round by round (p50/p99 of all of them,"
                " then each round's p99)"
            )
            print(f"  in-process onnxruntime (floor)   p50 {f50:6.2f} ms  p99 {f99:6.2f} ms")
            samples: dict[str, list[list[float]]] = {name: [] for name in calls}
            for _ in range(rounds):
                for name, (target, call) in calls.items():
                    samples[name].append(one_client(target, call, args.requests))
            for name, runs in samples.items():
                p50, p99 = percentiles([t for run in runs for t in run])
                each = " ".join(f"{percentiles(run)[1]:.2f}" for run in runs)
                print(
                    f"  {name:<32} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
                    f"   end-to-end / in-process p50 {p50 / f50:5.1f}x   rounds' p99: {each}"
                )

            # 3. throughput
            generator = "wrk" if shutil.which("wrk") else "asyncio + httpx (no wrk installed)"
            print(f"throughput, {args.duration:g} s per figure, load from {generator}")
            for clients in (16, 64):
                rates = {
                    name: throughput(target, call, clients, args.duration, root)
                    for name, (target, call) in calls.items()
                }
                base_rate = rates["baseline (FastAPI + PyTorch)"]
                line = "  ".join(
                    f"{n.split(' (')[0]} {r:,.0f}/s ({r / base_rate:.2f}x)"
                    for n, r in rates.items()
                )
                print(f"  {clients:>2} connections: {line}")
        finally:
            for proc in (fedpm, naive):
                proc.terminate()
                proc.wait(timeout=30)
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
