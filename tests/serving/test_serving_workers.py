"""``python -m serving --workers N``: N real uvicorn workers, one ``/metrics`` summing them all."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from serving_helpers import running_service

from serving.settings import ServeSettings

HEALTH = (("method", "GET"), ("route", "/health"), ("status", "200"))


def _health_count(families: object) -> float:
    for family in families:  # type: ignore[attr-defined]
        for s in family.samples:
            if s.name == "fedpm_serving_requests_total" and tuple(sorted(s.labels.items())) == (
                HEALTH
            ):
                return float(s.value)
    return 0.0


def _per_worker_counts(folder: Path, scratch: Path) -> list[float]:
    """Each worker's own count, read from its counter file alone."""
    counts = []
    for db in sorted(folder.glob("counter_*.db")):
        alone = scratch / db.stem
        alone.mkdir(parents=True)
        shutil.copy(db, alone / db.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        counts.append(_health_count(registry.collect()))
    return counts


@pytest.mark.integration
def test_two_workers_answer_and_metrics_sum_both(served_registry: Path, tmp_path: Path) -> None:
    # Prepare: two workers sharing one metrics folder given by the environment
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale")  # left by an earlier run: removed
    env = {
        "FEDPM_SERVE_STATE_PATH": str(tmp_path / "state.sqlite"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    args = ("--workers", "2", "--model-poll-s", "0")
    with running_service(served_registry, tmp_path, *args, env=env, ready="/ready") as (base, proc):
        deadline = time.monotonic() + 90

        # both workers must have started: one counter file each (the parent's has only zeros)
        def workers() -> list[Path]:
            return [p for p in metrics_dir.glob("counter_*.db") if p.stem != f"counter_{proc.pid}"]

        while len(workers()) < 2:
            if time.monotonic() > deadline:
                pytest.fail(f"one worker only: {sorted(p.name for p in metrics_dir.iterdir())}")
            time.sleep(0.1)
        before = _health_count(text_string_to_metric_families(httpx.get(f"{base}/metrics").text))

        # Execute: 60 requests, each on its own connection, 12 at a time
        def hit(_: int) -> int:
            with httpx.Client() as client:  # a new connection: any worker may accept it
                return client.get(f"{base}/health", timeout=10).status_code

        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(hit, range(60)))
        scrapes = [
            _health_count(text_string_to_metric_families(httpx.get(f"{base}/metrics").text))
            for _ in range(6)
        ]
        per_worker = _per_worker_counts(metrics_dir, tmp_path / "alone")

    # Assert: every scrape, whichever worker answers it, counts all 60 (plus earlier ones)
    assert codes == [200] * 60
    assert scrapes == [before + 60] * 6
    assert sum(per_worker) == before + 60
    busy = [count for count in per_worker if count > 0]
    assert len(busy) == 2, f"not both workers answered: {per_worker}"


def test_workers_setting_bounds_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServeSettings().workers == 1
    monkeypatch.setenv("FEDPM_SERVE_WORKERS", "4")
    assert ServeSettings().workers == 4
    for bad in (0, 65):
        with pytest.raises(ValueError, match="workers"):
            ServeSettings(workers=bad)
