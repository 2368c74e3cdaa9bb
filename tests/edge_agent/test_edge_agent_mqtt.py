"""The whole agent (``python -m edge_agent``) against a real Mosquitto."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from edge_helpers import (
    CLASSES,
    T0_NS,
    AgentProcess,
    Exported,
    MqttProbe,
    cwru_or_synthetic,
    make_frames,
    wait_online,
    wait_until,
)
from edge_helpers import with_nan_sample as nan_payload

from edge_agent.errors import ExitCode
from edge_agent.ingest import Ingestor
from edge_agent.ingest_worker import IngestClient
from edge_agent.settings import load_settings
from edge_agent.store import LocalStore
from fedpm.broker import MosquittoBroker
from models.frame import encode_binary, encode_json, frame_topic
from models.registry import FileRegistry

pytestmark = pytest.mark.integration

SITE = "plant-a"
FRAME = 512
WINDOW = 2048
STATUS = f"fedpm/v1/{SITE}/agent/status"


def agent_flags(broker: MosquittoBroker, store: Path, *extra: str) -> list[str]:
    return [
        "--site", SITE,
        "--mqtt-port", str(broker.port),
        "--store", str(store),
        "--window-samples", str(WINDOW),
        *extra,
    ]  # fmt: skip


def read_store(path: Path, what: Callable[[LocalStore], object]) -> object:
    if not path.exists():
        return None
    with LocalStore(path, readonly=True) as store:
        return what(store)


def test_agent_ingests_frames_labels_and_counts_rejects(
    broker: MosquittoBroker,
    mqtt_probe: Callable[[], MqttProbe],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    # Prepare: 300 real CWRU frames of 512 samples (75 windows), bad payloads in between
    store_path = tmp_path / "store.sqlite"
    frames = make_frames(cwru_or_synthetic(300 * FRAME), FRAME)
    topic = frame_topic(SITE, "pump-1", "acc-1")
    good = [encode_binary(f) if f.seq % 2 else encode_json(f) for f in frames]
    wrong_sensor = make_frames(cwru_or_synthetic(FRAME), FRAME, sensor="acc-2")[0]
    label = {
        "v": 1,
        "asset_id": "pump-1",
        "label": "normal",
        "start_ns": T0_NS,
        "end_ns": frames[-1].end_timestamp_ns(),
        "source": "test",
    }
    probe = mqtt_probe()
    agent = start_agent(*agent_flags(broker, store_path))
    wait_online(probe, agent, SITE)

    # Execute
    for payload in good[:150]:
        probe.publish(topic, payload, wait=False)
    probe.publish(topic, good[149])  # a duplicate
    probe.publish(topic, b"\xde\xad\xbe\xef garbage")
    probe.publish(topic, encode_binary(frames[150])[:-50])  # truncated
    probe.publish(topic, nan_payload(frames[150]))
    probe.publish(topic, encode_binary(wrong_sensor))  # payload disagrees with the topic
    probe.publish(f"fedpm/v1/{SITE}/pump-1/labels", b"{not json")
    for payload in good[150:]:
        probe.publish(topic, payload, wait=False)
    probe.publish(f"fedpm/v1/{SITE}/pump-1/labels", json.dumps(label).encode())

    # Assert
    def landed() -> bool:
        return read_store(store_path, lambda s: (s.count_windows(), s.count_labels())) == (75, 1)

    try:
        wait_until(landed, 30, "75 windows and 1 label")
    except AssertionError:
        raise AssertionError(agent.log()) from None
    rejects = read_store(store_path, lambda s: s.rejects())
    assert rejects == {
        "duplicate": 1,
        "bad_magic": 1,
        "truncated": 1,
        "non_finite": 1,
        "topic_mismatch": 1,
        "label_json": 1,
    }
    data = read_store(store_path, lambda s: s.labelled_windows(CLASSES, 12_000.0, WINDOW))
    assert data.x.shape == (75, 1, WINDOW)  # type: ignore[attr-defined]
    assert set(data.y.tolist()) == {0}  # type: ignore[attr-defined]
    assert agent.stop() == ExitCode.SUCCESS
    wait_until(lambda: probe.received(STATUS)[-1].payload == b"offline", 10, "offline")


def test_restarted_agent_resumes_its_session(
    broker: MosquittoBroker,
    mqtt_probe: Callable[[], MqttProbe],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    # Prepare
    store_path = tmp_path / "store.sqlite"
    frames = make_frames(cwru_or_synthetic(48 * FRAME), FRAME)
    topic = frame_topic(SITE, "pump-1", "acc-1")
    probe = mqtt_probe()
    first = start_agent(*agent_flags(broker, store_path))
    wait_online(probe, first, SITE)
    for f in frames[:24]:
        probe.publish(topic, encode_binary(f))
    wait_until(lambda: read_store(store_path, lambda s: s.count_windows()) == 6, 30, "6 windows")
    assert first.stop(signal.SIGINT) == ExitCode.SUCCESS

    # Execute: frames published while the agent is down wait in its persistent session
    for f in frames[24:]:
        probe.publish(topic, encode_binary(f))
    second = start_agent(*agent_flags(broker, store_path))

    # Assert
    try:
        wait_until(lambda: read_store(store_path, lambda s: s.count_windows()) == 12, 30, "12")
    except AssertionError:
        raise AssertionError(second.log()) from None
    assert read_store(store_path, lambda s: s.rejects()) == {}
    assert "session present: True" in second.log()


def test_a_store_failure_exits_without_acknowledging_so_nothing_is_lost(
    broker: MosquittoBroker,
    mqtt_probe: Callable[[], MqttProbe],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    # Prepare: an agent whose store another process holds locked past the busy timeout
    store_path = tmp_path / "store.sqlite"
    frames = make_frames(cwru_or_synthetic(16 * FRAME), FRAME)
    topic = frame_topic(SITE, "pump-1", "acc-1")
    probe = mqtt_probe()
    first = start_agent(*agent_flags(broker, store_path))
    wait_online(probe, first, SITE)
    lock = sqlite3.connect(store_path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")

    # Execute: the frames reach the agent, which cannot commit them
    for f in frames:
        probe.publish(topic, encode_binary(f))
    code = first.proc.wait(60)
    lock.execute("ROLLBACK")
    lock.close()
    second = start_agent(*agent_flags(broker, store_path))

    # Assert: exit 11, and the broker redelivers every unacknowledged frame to the next agent
    assert code == ExitCode.STORE_ERROR, first.log()
    try:
        wait_until(lambda: read_store(store_path, lambda s: s.count_windows()) == 4, 30, "4")
    except AssertionError:
        raise AssertionError(second.log()) from None
    assert read_store(store_path, lambda s: s.counters().get("frames")) == 16
    assert read_store(store_path, lambda s: s.rejects()) == {}


def test_the_ingest_client_refuses_a_batch_the_broker_window_cannot_hold(tmp_path: Path) -> None:
    # Prepare
    settings = load_settings(site_id=SITE, store_path=tmp_path / "store.sqlite")

    # Execute / Assert
    with LocalStore(settings.store_path) as store:
        ingestor = Ingestor(store, SITE, WINDOW)
        with pytest.raises(ValueError, match="batch_max must be in"):
            IngestClient(settings, ingestor, store, batch_max=64, receive_maximum=64)
        with pytest.raises(ValueError, match="batch_delay_s must be positive"):
            IngestClient(settings, ingestor, store, batch_delay_s=0.0)
        with pytest.raises(ValueError, match="receive_maximum must be in"):
            IngestClient(settings, ingestor, store, receive_maximum=70_000)


def test_agent_publishes_retained_health_from_a_registry_model(
    broker: MosquittoBroker,
    mqtt_probe: Callable[[], MqttProbe],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
    faulty_model: Exported,
) -> None:
    # Prepare: a real exported model that always predicts inner_race
    registry = FileRegistry(tmp_path / "registry")
    card = registry.publish(faulty_model.data, faulty_model.metadata, run_id="edge-test")
    store_path = tmp_path / "store.sqlite"
    signal_g = cwru_or_synthetic(40 * FRAME, "12k_Drive_End_IR007_0_105.npz")
    frames = make_frames(signal_g, FRAME, asset="pump-7")
    topic = frame_topic(SITE, "pump-7", "acc-1")
    health_topic = f"fedpm/v1/{SITE}/pump-7/health"
    probe = mqtt_probe()
    agent = start_agent(
        *agent_flags(broker, store_path, "--registry", str(registry.root), "--model-poll-s", "0.5")
    )
    wait_online(probe, agent, SITE)
    probe.subscribe(health_topic)
    last_window_ns = frames[36].timestamp_ns  # 40 frames = 10 windows of 4 frames

    def seen() -> list[dict[str, object]]:
        return [json.loads(m.payload) for m in probe.received(health_topic)]

    # Execute
    for f in frames:
        probe.publish(topic, encode_binary(f), wait=False)
    try:
        wait_until(lambda: any(m["window_start_ns"] == last_window_ns for m in seen()), 40)
    except AssertionError:
        raise AssertionError(agent.log()) from None
    late = mqtt_probe()  # subscribes after the fact: gets the retained message
    late.subscribe(health_topic)
    wait_until(lambda: bool(late.received(health_topic)), 10, "retained health")

    # Assert: warning at the first faulty window, alarm at the third, alarm retained
    states = [m["state"] for m in seen()]
    assert states[0] == "warning"
    assert "alarm" in states
    assert states.index("alarm") == len([s for s in states if s == "warning"])
    retained = late.received(health_topic)[0]
    assert retained.retain is True
    message = json.loads(retained.payload)
    assert message["v"] == 1
    assert (message["site"], message["asset_id"]) == (SITE, "pump-7")
    assert message["state"] == "alarm"
    assert message["predicted_class"] == "inner_race"
    assert message["model_version"] == card.version
    assert set(message["probabilities"]) == set(CLASSES)
    assert message["failure_probability"] == pytest.approx(
        1 - message["probabilities"]["normal"], abs=1e-6
    )
    assert message["window_start_ns"] == last_window_ns
    assert abs(message["ts_ns"] - time.time_ns()) < 60 * 10**9
    assert read_store(store_path, lambda s: s.count_scores()) == 10
    assert agent.stop() == ExitCode.SUCCESS


def test_unreachable_broker_exits_with_its_code(
    start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    # Prepare
    from fedpm.netutil import free_port

    env = {**os.environ, "FEDPM_EDGE_CONNECT_TIMEOUT_S": "0.5"}

    # Execute
    agent = start_agent(
        "--site", SITE, "--mqtt-port", str(free_port()), "--store", str(tmp_path / "s.db"),
        env=env,
    )  # fmt: skip
    code = agent.proc.wait(30)

    # Assert
    assert code == ExitCode.BROKER_UNREACHABLE, agent.log()


def test_invalid_settings_exit_with_the_config_code(tmp_path: Path) -> None:
    import subprocess

    # Execute
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent", "--site", "bad/site", "--store", str(tmp_path)],
        capture_output=True,
        timeout=30,
        check=False,
    )

    # Assert
    assert done.returncode == ExitCode.CONFIG_ERROR
    assert b"site_id" in done.stderr


def test_unusable_store_exits_with_the_store_code(tmp_path: Path) -> None:
    import subprocess

    # Prepare: the store path is a directory
    (tmp_path / "store-dir").mkdir()

    # Execute
    store_dir = str(tmp_path / "store-dir")
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent", "--site", SITE, "--store", store_dir],
        capture_output=True,
        timeout=30,
        check=False,
    )

    # Assert
    assert done.returncode == ExitCode.STORE_ERROR, done.stderr


def test_a_dead_worker_stops_the_agent_which_goes_offline(
    broker: MosquittoBroker,
    mqtt_probe: Callable[[], MqttProbe],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    # Prepare
    probe = mqtt_probe()
    agent = start_agent(*agent_flags(broker, tmp_path / "store.sqlite"))
    wait_online(probe, agent, SITE)
    found = re.search(r"ingest \(pid (\d+)\)", agent.log())
    assert found is not None
    pid = int(found.group(1))

    # Execute
    os.kill(pid, signal.SIGKILL)
    code = agent.proc.wait(30)

    # Assert
    assert code == ExitCode.WORKER_FAILED, agent.log()
    wait_until(lambda: probe.received(STATUS)[-1].payload == b"offline", 10, "offline")


def test_a_killed_agent_leaves_its_will(
    broker: MosquittoBroker,
    mqtt_probe: Callable[[], MqttProbe],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    # Prepare
    probe = mqtt_probe()
    agent = start_agent(*agent_flags(broker, tmp_path / "store.sqlite"))
    wait_online(probe, agent, SITE)

    # Execute: no clean shutdown at all (the agent runs in its own process group)
    os.killpg(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait(10)

    # Assert: the broker publishes the last will, retained
    wait_until(lambda: probe.received(STATUS)[-1].payload == b"offline", 10, "will")
    late = mqtt_probe()
    late.subscribe(STATUS)
    wait_until(lambda: bool(late.received(STATUS)), 10, "retained status")
    assert late.received(STATUS)[0].payload == b"offline"
    assert late.received(STATUS)[0].retain is True
