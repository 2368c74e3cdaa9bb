"""Grafana dashboards and provisioning: valid JSON whose queries name only what FedPM writes.

The allowed names are derived from the code (deploy_helpers: the telemetry writers and the
metrics registries and collectors), so a renamed field or metric breaks this check, not the
pilot's dashboards in front of a customer.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    DOCKER,
    TARGET_LABELS,
    compose_file,
    prometheus_metrics,
    telemetry_schema,
)

DASHBOARDS = sorted((DOCKER / "grafana" / "dashboards").glob("*.json"))
PROVISIONING = DOCKER / "grafana" / "provisioning"
PROMETHEUS_YML = DOCKER / "prometheus" / "prometheus.yml"
#: which scrape job serves each metric family (tests/deploy/test_prometheus.py scrapes them)
JOB_OF_PREFIX = {
    "fedpm_edge_": "fedpm-edge",
    "fedpm_serving_": "fedpm-serving",
    "fedpm_fl_": "fedpm-fl",
}
FLUX_COLUMNS = {"_measurement", "_field", "_value", "_time", "_start", "_stop"}
PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "rate", "irate", "increase", "by", "without", "on",
    "ignoring", "group_left", "group_right", "histogram_quantile", "label_values", "and", "or",
    "unless", "bool", "offset", "topk", "bottomk", "abs", "clamp_min", "clamp_max", "delta",
    "deriv", "time", "vector", "scalar", "last_over_time", "max_over_time", "avg_over_time",
}  # fmt: skip


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _queries(board: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(datasource type, query text, legend) of every target and template variable."""
    out = []
    for panel in _panels(board):
        for target in panel.get("targets", []):
            kind = (target.get("datasource") or panel["datasource"])["type"]
            text = target.get("expr") if kind == "prometheus" else target.get("query")
            out.append((kind, text or "", target.get("legendFormat", "")))
    for var in board.get("templating", {}).get("list", []):
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        out.append((var["datasource"]["type"], query, ""))
    return out


@pytest.fixture(scope="module")
def metrics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    return prometheus_metrics(tmp_path_factory.mktemp("metrics"))


@pytest.fixture(scope="module")
def scrape_jobs() -> dict[str, set[str]]:
    """Job name -> static target labels, from docker/prometheus/prometheus.yml."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
    return {
        job["job_name"]: {k for sc in job.get("static_configs", []) for k in sc.get("labels", {})}
        for job in config["scrape_configs"]
    }


def test_dashboards_are_provisioned_json_with_unique_ids() -> None:
    # Prepare
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "fedpm.yml").read_text())
    uids = {ds["uid"]: ds["type"] for ds in datasources["datasources"]}
    assert [p.name for p in DASHBOARDS] == [
        "alarms.json",
        "federated-rounds.json",
        "fleet-health.json",
    ]

    # Execute
    boards = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in DASHBOARDS}

    # Assert: unique uids, every panel on a provisioned data source and with a query
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    for name, board in boards.items():
        panels = _panels(board)
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in panels:
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, (name, panel["title"])
            if panel["type"] == "row":
                continue
            assert uids.get(panel["datasource"]["uid"]) == panel["datasource"]["type"], panel[
                "title"
            ]
            assert panel["targets"], f"{name}: {panel['title']} has no query"
        for kind, text, _ in _queries(board):
            assert text.strip(), f"{name}: an empty {kind} query"


def test_flux_queries_name_measurements_fields_and_tags_fedpm_writes() -> None:
    # Prepare: what the edge agent and `fedpm fl run` write, from the writers themselves
    schema = telemetry_schema()
    assert {"fedpm_features", "fedpm_scores", "fedpm_health", "fedpm_fl_round"} <= set(schema)
    all_tags = set().union(*(tags for tags, _ in schema.values()))
    seen: set[tuple[str, str]] = set()

    for path in DASHBOARDS:
        for kind, query, _ in _queries(json.loads(path.read_text(encoding="utf-8"))):
            if kind != "influxdb":
                continue
            # Execute: what the query reads
            measurements = set(re.findall(r'r\._measurement == "([^"]+)"', query))
            fields = set(re.findall(r'r\._field == "([^"]+)"', query))
            columns = set(re.findall(r"\br\.([A-Za-z_]\w*)", query)) | set(
                re.findall(r'r\["([^"]+)"\]', query)
            )
            for listed in re.findall(r"(?:columns|rowKey|columnKey): \[([^\]]*)\]", query):
                columns |= set(re.findall(r'"([^"]+)"', listed))
            tag_values = set(re.findall(r'tagValues\([^)]*tag: "([^"]+)"', query))

            # Assert
            if tag_values:
                assert tag_values <= all_tags, f"{path.name}: unknown tag in {query}"
                continue
            assert measurements, f"{path.name}: a Flux query without a measurement:\n{query}"
            assert measurements <= set(schema), f"{path.name}: {measurements - set(schema)}"
            tags = set().union(*(schema[m][0] for m in measurements))
            known_fields = set().union(*(schema[m][1] for m in measurements))
            assert fields <= known_fields, f"{path.name}: {fields - known_fields} not written"
            assert columns - FLUX_COLUMNS <= tags, f"{path.name}: {columns - FLUX_COLUMNS - tags}"
            seen |= {(m, f) for m in measurements for f in fields}
    # the fleet view covers the asset verdicts: state, failure probability, velocity
    assert {("fedpm_health", "state_code"), ("fedpm_scores", "failure_probability")} <= seen
    assert ("fedpm_features", "velocity_rms_mm_s") in seen


def test_promql_queries_name_metrics_labels_and_jobs_fedpm_serves(
    metrics: dict[str, set[str]], scrape_jobs: dict[str, set[str]]
) -> None:
    # Prepare
    assert set(JOB_OF_PREFIX.values()) <= set(scrape_jobs)
    used: set[str] = set()

    for path in DASHBOARDS:
        for kind, expr, legend in _queries(json.loads(path.read_text(encoding="utf-8"))):
            if kind != "prometheus":
                continue
            # Execute: metric selectors, the labels they match, group and legend labels
            selectors = re.findall(r"\b([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?", expr)
            names = {n for n, _ in selectors if n.startswith("fedpm_") or n == "up"} - PROMQL_WORDS
            assert names, f"{path.name}: no FedPM metric in {expr!r}"
            available = set(TARGET_LABELS)
            for name, matchers in selectors:
                if name == "up":
                    for job in re.findall(r'job="([^"]+)"', matchers):
                        assert job in scrape_jobs, f"{path.name}: no scrape job {job!r}"
                        available |= scrape_jobs[job]
                    continue
                if not name.startswith("fedpm_"):
                    continue
                assert name in metrics, f"{path.name}: FedPM serves no metric {name!r}"
                job = next(j for p, j in JOB_OF_PREFIX.items() if name.startswith(p))
                labels = metrics[name] | TARGET_LABELS | scrape_jobs[job]
                matched = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
                assert matched <= labels, f"{path.name}: {name} has no label {matched - labels}"
                available |= labels
                used.add(name)
            for keyword, group in re.findall(r"\b(by|without)\s*\(([^)]*)\)", expr):
                grouped = {g.strip() for g in group.split(",") if g.strip()}
                assert grouped <= available, f"{path.name}: {grouped - available} in {expr!r}"
                available = grouped if keyword == "by" else available - grouped
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
                assert label in available, f"{path.name}: legend label {label!r} of {expr!r}"
            for var_label in re.findall(r"label_values\(\s*\w+\s*,\s*(\w+)\s*\)", expr):
                assert var_label in available, f"{path.name}: variable label {var_label!r}"
    # the federated-rounds view shows sites replied, loss, accuracy and bytes
    assert {
        "fedpm_fl_round_sites_replied",
        "fedpm_fl_round_train_loss",
        "fedpm_fl_round_eval_accuracy",
        "fedpm_fl_round_bytes_up",
    } <= used


def test_provisioning_matches_the_compose_mounts() -> None:
    # Prepare
    grafana = compose_file()["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "fedpm.yml").read_text())
    datasources = (PROVISIONING / "datasources" / "fedpm.yml").read_text(encoding="utf-8")

    # Execute
    path = provider["providers"][0]["options"]["path"]
    files = re.findall(r"\$__file\{/run/secrets/([^}]+)\}", datasources)

    # Assert: Grafana finds the dashboards, and the secrets its data sources read are mounted
    assert Path(mounts[path]) == Path("./grafana/dashboards")
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert files
    assert set(files) <= set(grafana["secrets"])
    assert "token:" in datasources
    assert not re.search(r"token: [A-Za-z0-9_-]{20,}", datasources)
