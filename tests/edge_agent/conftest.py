"""Fixtures for the edge-agent tests: real signals, frames, stores, models, broker, agents."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from edge_helpers import CLASSES, AgentProcess, Exported, MqttProbe, Received, export_model
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.store import LocalStore
from fedpm.broker import MosquittoBroker, find_mosquitto
from models.registry import FileRegistry


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    with LocalStore(tmp_path / "store.sqlite") as s:
        yield s


# --- models ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def faulty_model() -> Exported:
    """A real exported WDCNN (2048 samples at 12 kHz) that always predicts inner_race."""
    return export_model(CLASSES.index("inner_race"), 2048)


@pytest.fixture(scope="session")
def healthy_model() -> Exported:
    """A real exported WDCNN (2048 samples at 12 kHz) that always predicts normal."""
    return export_model(CLASSES.index("normal"), 2048)


@pytest.fixture
def registry(tmp_path: Path) -> FileRegistry:
    return FileRegistry(tmp_path / "registry")


# --- broker and MQTT --------------------------------------------------------------------------


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    with MosquittoBroker() as b:
        yield b


@pytest.fixture
def mqtt_probe(broker: MosquittoBroker) -> Iterator[Callable[[], MqttProbe]]:
    probes: list[MqttProbe] = []

    def make() -> MqttProbe:
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        probe = MqttProbe(client)
        connected = threading.Event()
        client.on_connect = lambda *args: connected.set()

        def on_message(c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
            with probe.lock:
                probe.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))

        client.on_message = on_message
        client.connect(broker.host, broker.port)
        client.loop_start()
        assert connected.wait(10), "test client could not connect"
        probes.append(probe)
        return probe

    yield make
    for probe in probes:
        probe.client.disconnect()
        probe.client.loop_stop()


# --- agent processes --------------------------------------------------------------------------


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """Start ``python -m edge_agent`` with the given flags; every agent is stopped afterwards."""
    agents: list[AgentProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> AgentProcess:
        log_path = tmp_path / f"agent-{len(agents)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edge_agent", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a stray signal to the test run does not reach it
            )
        agent = AgentProcess(proc, log_path)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        if agent.proc.poll() is None:
            agent.stop()
        with contextlib.suppress(ProcessLookupError):  # no worker may outlive its test
            os.killpg(agent.proc.pid, signal.SIGKILL)
