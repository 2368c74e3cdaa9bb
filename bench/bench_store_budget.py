"""Measure what the store's disk budget costs: ingest rate with and without it, eviction, checks.

Run from the repository root (about a minute)::

    .venv/bin/python -m bench.bench_store_budget

Prints one line per figure; the numbers are quoted in ``docs/edge-store.md``. Frames are 512
random float32 samples (incompressible), windows 2048 samples, group commits of 64 frames.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np

from edge_agent.ingest import Ingestor
from edge_agent.integrity import quick_check
from edge_agent.store import LocalStore
from models.frame import Frame, encode_binary, frame_topic

SITE, WINDOW, FRAME, FS = "plant-a", 2048, 512, 12_000.0
TOPIC = frame_topic(SITE, "pump-1", "acc-1")


def frames(n: int, first_seq: int = 0) -> list[bytes]:
    x = np.random.default_rng(first_seq).standard_normal((n, FRAME)).astype(np.float32)
    step = round(FRAME * 1e9 / FS)
    return [
        encode_binary(Frame("pump-1", "acc-1", first_seq + k, k * step, FS, "g", x[k]))
        for k in range(n)
    ]


def rate(store: LocalStore, ingestor: Ingestor, payloads: list[bytes], batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(payloads), batch):
        with store.batch():
            for p in payloads[i : i + batch]:
                ingestor.handle(TOPIC, p)
    return len(payloads) / (time.perf_counter() - t0)


def main() -> None:
    budget = 16 << 20  # ~1,700 windows of 2048 float32 samples
    fill, measure = frames(8000), frames(4000, first_seq=8000)
    cases = (("no budget", None), ("2 GiB budget", 2 << 30), ("16 MiB budget", budget))
    for label, budget_bytes in cases:
        rates_fill, rates_evict = [], []
        for _ in range(3):
            with tempfile.TemporaryDirectory() as tmp:
                store = LocalStore(Path(tmp) / "s.sqlite", budget_bytes=budget_bytes)
                ingestor = Ingestor(store, SITE, WINDOW)
                rates_fill.append(rate(store, ingestor, fill[:2000], 64))
                rate(store, ingestor, fill[2000:], 64)
                rates_evict.append(rate(store, ingestor, measure, 64))
                evicted = store.counters().get("windows_evicted", 0)
                store.close()
        print(
            f"{label}: {statistics.median(rates_fill):.0f} frames/s while filling,"
            f" {statistics.median(rates_evict):.0f} frames/s when full"
            f" ({evicted} windows evicted), batches of 64 frames of 512 samples"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.sqlite"
        store = LocalStore(path, budget_bytes=budget)
        rate(store, Ingestor(store, SITE, WINDOW), fill[:6000], 64)
        conn = sqlite3.connect(path)
        n = 20_000
        pragma = timeit.timeit(lambda: conn.execute("PRAGMA page_count").fetchone(), number=n)
        stat = timeit.timeit(lambda: os.stat(path), number=n)
        print(f"PRAGMA page_count: {pragma / n * 1e6:.1f} us; os.stat: {stat / n * 1e6:.1f} us")
        conn.close()
        store.close()
        size = path.stat().st_size
        t0 = time.perf_counter()
        assert quick_check(path) == []
        dt = time.perf_counter() - t0
        mib = size / 2**20
        print(f"quick_check: {dt * 1e3:.0f} ms for {mib:.1f} MiB ({dt / mib * 1024:.2f} s/GiB)")


if __name__ == "__main__":
    main()
