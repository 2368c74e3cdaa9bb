"""docker/prometheus/prometheus.yml against a real Prometheus scraping real FedPM processes.

A real ``prometheus`` (Debian's, /usr/bin/prometheus) runs on a free loopback port with the
project's scrape configuration, only its targets rewritten to loopback (job names, metrics
paths, schemes, TLS settings and static labels kept). It scrapes a real ``python -m serving``
with a model, three edge-agent metrics endpoints (the agent's own ``MetricsServer`` over real
stores), ``fedpm fl exporter`` over a runs folder written by ``fedpm.fl_runs``, and a real
``flower-superlink`` over HTTPS with a certificate of the test's CA. The test asks Prometheus's
HTTP API until every job's targets are ``up == 1`` and FedPM's metrics are there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import DOCKER, HOST, free_port, require_binary, wait_for

from fedpm.procs import terminate

PROMETHEUS_YML = DOCKER / "prometheus" / "prometheus.yml"
SITES = ("site-a", "site-b", "site-c")


def _get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return bytes(reply.read())


def _answers(url: str) -> bool:
    try:
        _get(url, timeout=1.0)
    except OSError:
        return False
    return True


class Children:
    """Child processes of one test, stopped (SIGTERM, then SIGKILL) by process id."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, **kwargs)
        log.close()
        self.procs[name] = proc
        return proc

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for proc in self.procs.values():
            terminate(proc, timeout_s=10)


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    (tmp_path / "logs").mkdir()
    group = Children(tmp_path / "logs")
    try:
        yield group
    finally:
        group.stop()


def _registry_with_a_model(root: Path) -> Path:
    from models.metadata import Provenance
    from models.network import build_model
    from models.onnx_export import export_onnx, metadata_for
    from models.registry import FileRegistry

    net = build_model(seed=0)
    meta = metadata_for(
        net,
        sample_rate_hz=12_000.0,
        class_names=("normal", "inner_race", "outer_race", "ball"),
        provenance=Provenance(source="untrained", run_id="prometheus-test"),
    )
    FileRegistry(root).publish(export_onnx(net, meta), meta, run_id="prometheus-test")
    return root


def _runs_folder(root: Path) -> Path:
    from aggregator.rounds import RoundLog, progress_line, progress_record
    from fedpm.fl_runs import RunRecord, RunStore, parse_progress

    record = RunRecord("pilot-1", "run", run_config={"strategy": "fedavg"})
    log = RoundLog(
        server_round=1,
        site_metrics={s: {"eval-accuracy": 0.8} for s in SITES},
        aggregated={"train-loss": 0.7, "eval-accuracy": 0.8},
        sampled=3,
    )
    line = progress_line(
        progress_record(
            log,
            num_rounds=3,
            run_name="pilot-1",
            flower_run_id="1",
            strategy="fedavg",
            bytes_up=300_000,
            bytes_down=290_000,
            registry_version=1,
        )
    )
    parsed = parse_progress(line)
    assert parsed is not None
    record.add_round(parsed)
    RunStore(root).save(record)
    return root


def _rewrite(config: dict[str, Any], ports: dict[str, Any], ca: Path) -> dict[str, Any]:
    """The project's scrape config with loopback targets; everything else as it is."""
    config["global"] = {**config["global"], "scrape_interval": "1s", "scrape_timeout": "1s"}
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if "tls_config" in job:
            job["tls_config"]["ca_file"] = str(ca)
        for static in job["static_configs"]:
            site = static.get("labels", {}).get("site")
            port = ports[name][site] if site else ports[name]
            static["targets"] = [f"{HOST}:{port}"]
    return config


def _query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    reply = json.loads(_get(url))
    assert reply["status"] == "success", reply
    result: list[dict[str, Any]] = reply["data"]["result"]
    return result


def test_promtool_accepts_the_scrape_config() -> None:
    promtool = require_binary("promtool", "prometheus")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_YML)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
def test_prometheus_scrapes_every_fedpm_job_of_the_pilot_config(
    tmp_path: Path, children: Children
) -> None:
    # Prepare: the slow starters first (SuperLink, exporter, serving), then the rest meanwhile
    prometheus = require_binary("prometheus", "prometheus", "/usr/bin/prometheus")
    from edge_agent.metrics import MetricsServer
    from edge_agent.settings import AgentSettings
    from edge_agent.store import LocalStore
    from fedpm.pki import issue_cert, write_ca

    scripts = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"}
    ca = write_ca(tmp_path / "ca")
    crt, key = issue_cert(ca, tmp_path / "tls", "superlink", hosts=["superlink", HOST])
    ports: dict[str, Any] = {
        "flower-superlink": free_port(),
        "fedpm-fl": free_port(),
        "fedpm-serving": free_port(),
        "prometheus": free_port(),
    }
    children.start(
        "superlink",
        [
            "flower-superlink",
            f"--ssl-ca-certfile={ca.cert}",
            f"--ssl-certfile={crt}",
            f"--ssl-keyfile={key}",
            "--isolation=process",
            "--disable-runtime-dependency-installation",
            f"--host={HOST}",
            f"--port={ports['flower-superlink']}",
        ],
        env={**env, "FLWR_HOME": str(tmp_path / "flwr")},
        cwd=tmp_path,
    )
    runs = _runs_folder(tmp_path / "runs")
    children.start(
        "exporter",
        [
            sys.executable,
            "-m",
            "fedpm",
            "fl",
            "exporter",
            f"--runs-dir={runs}",
            f"--port={ports['fedpm-fl']}",
        ],
        env=env,
        cwd=tmp_path,
    )
    registry = _registry_with_a_model(tmp_path / "registry")
    children.start(
        "serving",
        [
            sys.executable,
            "-m",
            "serving",
            f"--registry={registry}",
            f"--port={ports['fedpm-serving']}",
            "--model-poll-s=0",
        ],
        env={**env, "FEDPM_SERVE_STATE_PATH": str(tmp_path / "serving.sqlite")},
        cwd=tmp_path,
    )
    edges = []
    ports["fedpm-edge"] = {}
    for site in SITES:
        store = tmp_path / site / "store.sqlite"
        LocalStore(store).close()
        settings = AgentSettings(site_id=site, store_path=store, metrics_port=0)
        server = MetricsServer(settings, supernode_restarts=lambda: 0)
        server.start()
        edges.append(server)
        ports["fedpm-edge"][site] = server.port
    config = _rewrite(yaml.safe_load(PROMETHEUS_YML.read_text()), ports, ca.cert)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    base = f"http://{HOST}:{ports['prometheus']}"
    started = time.monotonic()
    try:
        # Execute: a real Prometheus with the rewritten pilot config
        children.start(
            "prometheus",
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={HOST}:{ports['prometheus']}",
            ],
            cwd=tmp_path,
        )
        wait_for(lambda: _answers(f"{base}/-/ready"), 30, "Prometheus ready")

        def every_target_up() -> bool:
            for name in ("superlink", "exporter", "serving", "prometheus"):
                assert children.alive(name), f"{name} exited:\n{children.log(name)}"
            up = {
                (r["metric"]["job"], r["metric"]["instance"]): r["value"][1]
                for r in _query(base, "up")
            }
            return len(up) == 7 and set(up.values()) == {"1"}

        try:
            wait_for(every_target_up, 60, "every scrape target up")
        except AssertionError:
            targets = json.loads(_get(f"{base}/api/v1/targets"))["data"]["activeTargets"]
            details = [(t["labels"]["job"], t["health"], t["lastError"]) for t in targets]
            raise AssertionError(f"targets not all up: {details}") from None
        wait_for(
            lambda: bool(_query(base, "fedpm_serving_model_loaded == 1")),
            20,
            "the served model in Prometheus",
        )
        up = _query(base, "up")
        loaded = _query(base, "fedpm_serving_model_loaded")
        replied = _query(base, 'fedpm_fl_round_sites_replied{run="pilot-1"}')
        edge_up = _query(base, "fedpm_edge_up")
        superlink_samples = _query(base, 'scrape_samples_scraped{job="flower-superlink"}')
    finally:
        for server in edges:
            server.stop()
    elapsed = time.monotonic() - started

    # Assert: every job of the pilot config answered, with FedPM's own metrics
    jobs = {r["metric"]["job"] for r in up}
    assert jobs == {"fedpm-serving", "fedpm-edge", "fedpm-fl", "flower-superlink", "prometheus"}
    assert [r["metric"]["job"] for r in loaded] == ["fedpm-serving"]
    assert [(r["metric"]["job"], r["value"][1]) for r in replied] == [("fedpm-fl", "3")]
    assert sorted(r["metric"]["site"] for r in edge_up) == list(SITES)  # static labels kept
    assert superlink_samples[0]["value"][1] == "0"  # /health: up, and an empty exposition
    assert elapsed < 60, f"Prometheus took {elapsed:.0f} s to see every target"
