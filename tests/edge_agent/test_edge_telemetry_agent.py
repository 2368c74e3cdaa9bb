"""The whole agent with a telemetry sink: every scored window reaches the sink once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from edge_helpers import (
    AgentProcess,
    Exported,
    MqttProbe,
    cwru_or_synthetic,
    make_frames,
    wait_online,
    wait_until,
)
from victoria_helpers import VictoriaMetrics, require_victoria_metrics

from edge_agent.errors import ExitCode
from fedpm.broker import MosquittoBroker
from models.frame import encode_binary, frame_topic
from models.registry import FileRegistry

SITE = "plant-telemetry"
WINDOWS = 12


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    require_victoria_metrics()
    with VictoriaMetrics(tmp_path / "vm-data", tmp_path / "vm.log") as server:
        yield server


@pytest.mark.integration
def test_agent_features_and_scores_reach_the_sink_exactly_once(
    broker: MosquittoBroker,
    mqtt_probe: Callable[[], MqttProbe],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
    healthy_model: Exported,
    vm: VictoriaMetrics,
) -> None:
    # Prepare: an agent with a model and a telemetry sink; 12 windows of 2048 samples
    registry = FileRegistry(tmp_path / "registry")
    registry.publish(healthy_model.data, healthy_model.metadata, run_id="edge-test")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'influx_url = "{vm.url}"\ntelemetry_batch = 7\n'
        '[assets.pump-1]\nbearing = "6205"\nrpm = 1797.0\n',
        encoding="utf-8",
    )
    store_path = tmp_path / "store.sqlite"
    frames = make_frames(cwru_or_synthetic(WINDOWS * 2048), 1024, asset="pump-1")
    topic = frame_topic(SITE, "pump-1", "acc-1")
    probe = mqtt_probe()
    agent = start_agent(
        "--config", str(config),
        "--site", SITE,
        "--mqtt-port", str(broker.port),
        "--store", str(store_path),
        "--registry", str(registry.root),
        "--model-poll-s", "0.5",
    )  # fmt: skip
    wait_online(probe, agent, SITE)

    # Execute
    for f in frames:
        probe.publish(topic, encode_binary(f), wait=False)

    try:
        wait_until(
            lambda: (
                sum(len(ts) for ts in vm.export('{__name__="fedpm_features_kurtosis"}').values())
                >= WINDOWS
            ),
            60,
            "features in the sink",
        )
    except AssertionError:
        raise AssertionError(agent.log()) from None
    exit_code = agent.stop()

    # Assert: one kurtosis and one failure probability per window, each exactly once
    kurtosis = vm.export('{__name__="fedpm_features_kurtosis"}')
    failure = vm.export('{__name__="fedpm_scores_failure_probability"}')
    for series in (kurtosis, failure):
        assert len(series) == 1, series.keys()
        (stamps,) = series.values()
        assert len(stamps) == WINDOWS
        assert len(set(stamps)) == WINDOWS  # no duplicates
    labels = dict(next(iter(kurtosis)))
    assert (labels["site"], labels["asset"], labels["sensor"]) == (SITE, "pump-1", "acc-1")
    assert exit_code == ExitCode.SUCCESS
