"""Prometheus metrics of the edge agent, scraped over HTTP from a real running agent."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from edge_helpers import (
    AgentProcess,
    MqttProbe,
    cwru_or_synthetic,
    make_frames,
    wait_online,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from edge_agent.errors import ConfigError, ExitCode
from edge_agent.metrics import MetricsServer, StoreCollector
from edge_agent.outbox import Outbox
from edge_agent.settings import AgentSettings
from edge_agent.store import LocalStore
from fedpm.broker import MosquittoBroker
from models.frame import encode_binary, frame_topic

SITE = "plant-a"
FRAME = 512
STATUS = f"fedpm/v1/{SITE}/agent/status"
#: what an inference worker leaves in the store after 10 model runs over 640 windows
INFERENCE_COUNTERS = {
    "inference_latency_le_5": 2,
    "inference_latency_le_10": 6,
    "inference_latency_le_25": 9,
    "inference_latency_le_50": 9,
    "inference_latency_le_100": 9,
    "inference_latency_le_250": 10,
    "inference_latency_le_500": 10,
    "inference_latency_le_1000": 10,
    "inference_latency_le_2500": 10,
    "inference_latency_le_inf": 10,
    "inference_latency_us_sum": 215_000,
    "inference_windows": 640,
    "inference_batches": 10,
}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def metrics_url(agent: AgentProcess) -> str:
    found = re.search(r"metrics on (http://\S+/metrics)", agent.log())
    return found.group(1) if found else ""


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*"))


@pytest.mark.integration
def test_metrics_count_frames_gaps_duplicates_and_rejects(
    broker: MosquittoBroker,
    mqtt_probe: Callable[[], MqttProbe],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    # Prepare: a store holding inference counters and two queued telemetry points
    store_path = tmp_path / "store.sqlite"
    with LocalStore(store_path) as store:
        store.add_counters(INFERENCE_COUNTERS)
        Outbox(store, max_rows=1000).append(["m,site=plant-a v=1i 1", "m,site=plant-a v=2i 2"])
    frames = make_frames(cwru_or_synthetic(17 * FRAME), FRAME)
    topic = frame_topic(SITE, "pump-1", "acc-1")
    probe = mqtt_probe()
    probe.subscribe(STATUS)
    agent = start_agent(
        "--site", SITE,
        "--mqtt-port", str(broker.port),
        "--store", str(store_path),
        "--window-samples", "2048",
        "--metrics-port", "0",
    )  # fmt: skip
    wait_online(probe, agent, SITE)
    wait_until(lambda: bool(metrics_url(agent)), 10, "the metrics address in the log")
    url = metrics_url(agent)

    # Execute: 12 frames, a duplicate, garbage, then a gap of 3 before the last 2
    for frame in frames[:12]:
        probe.publish(topic, encode_binary(frame), wait=False)
    probe.publish(topic, encode_binary(frames[11]))
    probe.publish(topic, b"\xde\xad\xbe\xef garbage")
    for frame in frames[15:]:
        probe.publish(topic, encode_binary(frame))
    try:
        wait_until(lambda: scrape(url).get(("fedpm_edge_frames_total", ())) == 14, 30, "14")
    except AssertionError:
        raise AssertionError(agent.log()) from None
    before = file_bytes(store_path)
    got = scrape(url)
    after = file_bytes(store_path)

    # Assert
    assert got[("fedpm_edge_up", ())] == 1
    assert got[("fedpm_edge_store_readable", ())] == 1
    assert got[("fedpm_edge_seq_gaps_total", ())] == 1
    assert got[("fedpm_edge_frames_missing_total", ())] == 3
    assert got[("fedpm_edge_duplicates_total", ())] == 1
    assert got[("fedpm_edge_rejects_total", (("reason", "duplicate"),))] == 1
    assert got[("fedpm_edge_rejects_total", (("reason", "bad_magic"),))] == 1
    assert got[("fedpm_edge_windows_stored", ())] == 3  # 12 x 512 samples, 2048 per window
    assert got[("fedpm_edge_outbox_depth", ())] == 2
    assert before <= got[("fedpm_edge_store_bytes", ())] <= after  # equal unless a write came
    hist = "fedpm_edge_inference_latency_seconds"
    assert got[(f"{hist}_bucket", (("le", "0.005"),))] == 2
    assert got[(f"{hist}_bucket", (("le", "0.25"),))] == 10
    assert got[(f"{hist}_bucket", (("le", "+Inf"),))] == 10
    assert got[(f"{hist}_count", ())] == 10
    assert got[(f"{hist}_sum", ())] == pytest.approx(0.215)
    assert got[("fedpm_edge_inference_batches_total", ())] == 10
    assert got[("fedpm_edge_inference_windows_total", ())] == 640
    assert ("fedpm_edge_supernode_restarts_total", ()) not in got  # no SuperNode configured
    assert agent.stop() == ExitCode.SUCCESS


def test_collector_reports_an_unreadable_store_instead_of_failing(tmp_path: Path) -> None:
    # Prepare: no store file yet
    settings = AgentSettings(site_id=SITE, store_path=tmp_path / "absent.sqlite")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(settings, supernode_restarts=lambda: 4))

    # Execute
    readable = registry.get_sample_value("fedpm_edge_store_readable")
    frames = registry.get_sample_value("fedpm_edge_frames_total")

    # Assert
    assert readable == 0
    assert frames is None
    assert registry.get_sample_value("fedpm_edge_up") == 1
    assert registry.get_sample_value("fedpm_edge_store_bytes") == 0
    assert registry.get_sample_value("fedpm_edge_supernode_restarts_total") == 4


def test_collector_counts_start_at_zero_on_a_fresh_store(tmp_path: Path) -> None:
    # Prepare
    settings = AgentSettings(site_id=SITE, store_path=tmp_path / "store.sqlite")
    LocalStore(settings.store_path).close()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(settings))

    # Execute
    values = {
        name: registry.get_sample_value(name)
        for name in (
            "fedpm_edge_frames_total",
            "fedpm_edge_duplicates_total",
            "fedpm_edge_windows_stored",
            "fedpm_edge_dead_letters",
            "fedpm_edge_inference_latency_seconds_count",
        )
    }

    # Assert: absent counters read as zero, the histogram is empty but present
    assert values == dict.fromkeys(values, 0.0)


def test_metrics_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    # Prepare
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = AgentSettings(site_id=SITE, store_path=tmp_path / "s.db", metrics_port=port)
        server = MetricsServer(settings)

        # Execute / Assert
        with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            server.start()
