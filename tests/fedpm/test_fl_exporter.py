"""``fedpm fl exporter``: a real HTTP exporter over a runs folder that ``fl_runs`` wrote."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aggregator.rounds import RoundLog, progress_line, progress_record
from fedpm.fl_exporter import Probe, RunsCollector
from fedpm.fl_runs import RunRecord, RunStore, parse_progress
from fedpm.netutil import free_port

HOST = "127.0.0.1"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def round_line(rnd: int, sites: dict[str, float], *, failures: int = 0) -> str:
    """The ServerApp's progress line for a round whose sites reported these eval accuracies."""
    log = RoundLog(
        server_round=rnd,
        site_metrics={s: {"eval-accuracy": acc} for s, acc in sites.items()},
        aggregated={
            "train-loss": 1.0 / rnd,
            "train-accuracy": 0.5 + rnd / 10,
            "eval-loss": 1.2 / rnd,
            "eval-accuracy": sum(sites.values()) / len(sites),
        },
        failures=failures,
        sampled=len(sites) + failures,
    )
    record = progress_record(
        log,
        num_rounds=3,
        run_name="pilot-1",
        flower_run_id="77",
        strategy="fedprox",
        bytes_up=1000 * rnd,
        bytes_down=2000 * rnd,
        registry_version=rnd,
    )
    return "INFO :      " + progress_line(record)


def save_round(store: RunStore, record: RunRecord, line: str) -> None:
    """What ``fedpm fl run`` does with each streamed line: parse, add, save."""
    parsed = parse_progress(line)
    assert parsed is not None
    record.add_round(parsed)
    store.save(record)


def scrape(url: str) -> Samples:
    text = httpx.get(url, timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def health_server() -> Iterator[str]:
    """Flower's own gRPC health server (what ``--health-server-address`` starts)."""
    from flwr.supercore.grpc_health import run_health_server_grpc_no_tls

    address = f"{HOST}:{free_port()}"
    server = run_health_server_grpc_no_tls(address)
    try:
        yield address
    finally:
        server.stop(grace=None)


def start_exporter(args: list[str], cwd: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedpm", "fl", "exporter", "--port", str(port), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://{HOST}:{port}/metrics"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            pytest.fail(f"exporter exited with {proc.returncode}: {proc.stdout.read()}")  # type: ignore[union-attr]
        try:
            httpx.get(url, timeout=1)
            return proc, url
        except httpx.TransportError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("exporter did not answer within 30 s")
            time.sleep(0.05)


@pytest.mark.integration
def test_exporter_serves_the_rounds_fl_runs_wrote_and_follows_new_ones(
    tmp_path: Path, health_server: str
) -> None:
    # Prepare: a finished run of 1 round and a running run of 1 round, saved as `fl run` does
    store = RunStore(tmp_path / "runs")
    done = RunRecord("20260101T000000Z-fedavg", "run", run_config={"strategy": "fedavg"})
    save_round(store, done, round_line(1, {"site-a": 0.5}))
    done.status = "finished"
    store.save(done)
    live = RunRecord("pilot-1", "run", run_config={"strategy": "fedprox"})
    save_round(store, live, round_line(1, {"site-a": 0.6, "site-b": 0.8}, failures=1))
    (tmp_path / "runs" / "broken").mkdir()
    (tmp_path / "runs" / "broken" / "run.json").write_text("{not json", encoding="utf-8")
    closed = free_port()
    proc, url = start_exporter(
        [
            "--runs-dir",
            str(tmp_path / "runs"),
            "--probe",
            f"superlink={health_server}",
            "--probe",
            f"aggregator={HOST}:{closed}",
        ],
        tmp_path,
    )
    try:
        # Execute: scrape, then the run reports round 2, then scrape again
        first = scrape(url)
        save_round(store, live, round_line(2, {"site-a": 0.9, "site-c": 0.7}))
        second = scrape(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        proc.stdout.close()  # type: ignore[union-attr]

    # Assert: every figure comes from the progress records, per run
    run = (("run", "pilot-1"),)
    assert first[("fedpm_fl_runs_dir_readable", ())] == 1
    assert first[("fedpm_fl_runs", (("status", "finished"),))] == 1
    assert first[("fedpm_fl_runs", (("status", "running"),))] == 1
    assert first[("fedpm_fl_round", run)] == 1
    assert first[("fedpm_fl_round_sites_replied", run)] == 2
    assert first[("fedpm_fl_round_sites_sampled", run)] == 3
    assert first[("fedpm_fl_round_sites_failed", run)] == 1
    assert first[("fedpm_fl_round_eval_accuracy", run)] == pytest.approx(0.7)
    assert first[("fedpm_fl_round_train_loss", run)] == pytest.approx(1.0)
    assert first[("fedpm_fl_run_rounds_planned", run)] == 3
    assert ("fedpm_fl_round_dp_epsilon", run) not in first  # no DP in this run
    assert first[("fedpm_fl_round_site_replied", (*run, ("site", "site-b")))] == 1
    info = (("kind", "run"), ("run", "pilot-1"), ("status", "running"), ("strategy", "fedprox"))
    assert first[("fedpm_fl_run_info", info)] == 1
    assert first[("fedpm_fl_component_up", (("component", "superlink"),))] == 1
    assert first[("fedpm_fl_component_up", (("component", "aggregator"),))] == 0
    # the next scrape sees round 2 without a restart; byte counters add up over the rounds
    assert second[("fedpm_fl_round", run)] == 2
    assert second[("fedpm_fl_rounds_completed_total", run)] == 2
    assert second[("fedpm_fl_round_bytes_up", run)] == 2000
    assert second[("fedpm_fl_bytes_up_total", run)] == 3000
    assert second[("fedpm_fl_bytes_down_total", run)] == 6000
    assert second[("fedpm_fl_round_registry_version", run)] == 2
    assert second[("fedpm_fl_round_eval_loss", run)] == pytest.approx(0.6)
    assert ("fedpm_fl_round_site_replied", (*run, ("site", "site-b"))) not in second
    assert second[("fedpm_fl_round_site_replied", (*run, ("site", "site-c")))] == 1
    assert abs(second[("fedpm_fl_round_timestamp_seconds", run)] - time.time()) < 60
    assert not any(labels and dict(labels).get("run") == "broken" for _, labels in second)
    assert code == 0


def test_collector_bounds_runs_and_reports_an_unreadable_folder(tmp_path: Path) -> None:
    # Prepare: three runs started one after the other; a runs "folder" that is a file
    store = RunStore(tmp_path / "runs")
    for i in range(3):
        record = RunRecord(f"run-{i}", "simulate", started_at=f"2026-01-0{i + 1}T00:00:00+00:00")
        save_round(store, record, round_line(1, {"site-a": 0.5}))
    (tmp_path / "file").write_text("x", encoding="utf-8")

    # Execute
    newest = {
        s.labels.get("run")
        for f in RunsCollector(tmp_path / "runs", max_runs=2).collect()
        for s in f.samples
    }
    unreadable = {f.name: f.samples for f in RunsCollector(tmp_path / "file").collect()}
    absent = {f.name: f.samples for f in RunsCollector(tmp_path / "nothing").collect()}

    # Assert: only the two newest runs; a file is unreadable, an absent folder is empty
    assert newest - {None} == {"run-1", "run-2"}
    assert unreadable["fedpm_fl_runs_dir_readable"][0].value == 0
    assert absent["fedpm_fl_runs_dir_readable"][0].value == 1
    with pytest.raises(ValueError, match="max_runs"):
        RunsCollector(tmp_path, max_runs=0)


@pytest.mark.parametrize("text", ["superlink", "=h:1", "a=host", "a=host:port", "a=:9"])
def test_probe_refuses_malformed_targets(text: str) -> None:
    with pytest.raises(ValueError, match="NAME=HOST:PORT"):
        Probe.parse(text)


def test_exporter_command_refuses_a_bad_probe_with_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fedpm", "fl", "exporter", "--probe", "nope", "--port", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "NAME=HOST:PORT" in result.stderr
