"""Faults mid-stream lose no frame: a broker outage, a killed agent (real Mosquitto, real agent).

The simulated gateway (:class:`fedpm.sensors.SiteSensors`) streams in real time throughout; the
agent acknowledges a frame only once it is committed, so every frame published ends up stored
exactly once: frame counters equal what was published, every window is there once, and the
windows of each asset follow each other without a gap.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from edge_helpers import AgentProcess, wait_until
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.store import LocalStore
from fedpm.broker import MosquittoBroker, find_mosquitto
from fedpm.scenario import AssetSpec, SiteSpec
from fedpm.sensors import SiteSensors

pytestmark = pytest.mark.integration

SITE = "plant-f"
WINDOW = 2048  # two 1024-sample frames
OUTAGE_S = 30.0
ASSETS = ("pump-1", "pump-2", "fan-1", "mill-3")


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    broker = MosquittoBroker(persistence_dir=tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@dataclass
class Stream:
    """The simulated gateway streaming live in a thread."""

    sensors: SiteSensors
    thread: threading.Thread
    stop_event: threading.Event

    def stop(self) -> None:
        """End the stream (what is published so far is then final)."""
        self.stop_event.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the stream did not stop"


@pytest.fixture
def gateway(persistent_broker: MosquittoBroker) -> Iterator[Callable[[], Stream]]:
    """Start the simulated gateway's live stream in a thread; it is stopped afterwards."""
    streams: list[Stream] = []

    def start() -> Stream:
        site = SiteSpec(
            SITE,
            rpm=1797.0,
            resonance_hz=3000.0,
            assets=tuple(AssetSpec(a, "normal", 0.0) for a in ASSETS),
            seed=5,
        )
        sensors = SiteSensors(
            site, persistent_broker.host, persistent_broker.port, reconnect_max_delay_s=1
        )
        sensors.connect()
        stop = threading.Event()
        thread = threading.Thread(target=sensors.live, args=(time.time_ns(), stop), daemon=True)
        thread.start()
        streams.append(Stream(sensors, thread, stop))
        return streams[-1]

    yield start
    for stream in streams:
        stream.stop_event.set()
        stream.thread.join(10)
        stream.sensors.close()


def agent_flags(broker: MosquittoBroker, store: Path) -> list[str]:
    return [
        "--site", SITE,
        "--mqtt-port", str(broker.port),
        "--store", str(store),
        "--window-samples", str(WINDOW),
    ]  # fmt: skip


def agent_env() -> dict[str, str]:
    return {**os.environ, "FEDPM_EDGE_RECONNECT_MAX_DELAY_S": "1"}


def wait_online(broker: MosquittoBroker, agent: AgentProcess) -> None:
    """Wait for the agent's retained ``online`` status (its ingest session exists then)."""
    online = threading.Event()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: online.set() if m.payload == b"online" else None
    client.on_connect = lambda c, *a: c.subscribe(f"fedpm/v1/{SITE}/agent/status", qos=1)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        if not online.wait(30):
            raise AssertionError(f"agent never came online:\n{agent.log()}")
    finally:
        client.disconnect()
        client.loop_stop()


def stored_frames(path: Path) -> int:
    if not path.exists():
        return 0
    with LocalStore(path, readonly=True) as store:
        return store.counters().get("frames", 0)


def window_starts(path: Path) -> dict[str, list[int]]:
    """Stored window start times per asset, in order."""
    with LocalStore(path, readonly=True) as store, store.reader() as conn:
        rows = conn.execute(
            "SELECT asset_id, start_ns FROM windows ORDER BY asset_id, start_ns"
        ).fetchall()
    starts: dict[str, list[int]] = {}
    for asset_id, start_ns in rows:
        starts.setdefault(asset_id, []).append(start_ns)
    return starts


def wait_all_stored(stream: Stream, store_path: Path, agent: AgentProcess) -> None:
    """Stop the stream, then wait until the store holds as many frames as were published."""
    stream.stop()
    sensors = stream.sensors
    assert sensors.wait_acknowledged(60), "the broker never acknowledged every frame"
    try:
        # after an outage the agent first drops the broker's redelivery of what it had stored
        # but not yet acknowledged (up to Receive Maximum per sensor), then catches up: allow
        # a loaded CI machine time for that; a lost frame still fails here
        wait_until(lambda: stored_frames(store_path) >= sensors.published, 180, "every frame")
    except AssertionError:
        stored = stored_frames(store_path)
        raise AssertionError(
            f"{stored} of {sensors.published} published frames stored\n{agent.log()}"
        ) from None


def assert_stored_exactly_once(sensors: SiteSensors, store_path: Path) -> None:
    published = {a.asset_id: a.seq for a in sensors.assets}  # frames 0 .. seq - 1
    with LocalStore(store_path, readonly=True) as store:
        counters = store.counters()
        last_seq = {a: state.last_seq for (a, _), state in store.sensor_states().items()}
    assert counters["frames"] == sum(published.values())  # lost = published - stored = 0
    assert counters.get("seq_gaps", 0) == 0
    assert counters.get("frames_missing", 0) == 0
    assert last_seq == {a: n - 1 for a, n in published.items()}
    starts = window_starts(store_path)
    window_ns = WINDOW * 1e9 / sensors.fs
    for asset_id, n_frames in published.items():
        got = starts.get(asset_id, [])
        assert len(got) == n_frames * 1024 // WINDOW, asset_id  # every window, once
        steps = [b - a for a, b in itertools.pairwise(got)]
        assert all(abs(step - window_ns) < 1_000 for step in steps), asset_id  # no gap


def test_a_broker_outage_mid_stream_loses_no_frame(
    persistent_broker: MosquittoBroker,
    gateway: Callable[[], SiteSensors],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    # Prepare: the agent ingesting a live stream of four sensors
    store_path = tmp_path / "store.sqlite"
    agent = start_agent(*agent_flags(persistent_broker, store_path), env=agent_env())
    wait_online(persistent_broker, agent)
    stream = gateway()
    wait_until(lambda: stored_frames(store_path) >= 100, 30, "100 frames stored")

    # Execute: the broker goes away for 30 s while the gateway keeps publishing into its queue
    persistent_broker.stop()
    published_before = stream.sensors.published
    time.sleep(OUTAGE_S)
    published_offline = stream.sensors.published - published_before
    persistent_broker.start()  # same port, sessions and queued messages from its persistence
    wait_until(lambda: stored_frames(store_path) > published_before, 60, "the agent is back")
    wait_all_stored(stream, store_path, agent)

    # Assert
    assert published_offline > 0  # the stream went on during the outage
    assert_stored_exactly_once(stream.sensors, store_path)
    log = agent.log()
    assert agent.proc.poll() is None, log
    assert "lost the broker" in log
    assert "session present: True" in log  # the restarted broker kept the agent's session


def test_a_killed_agent_restarted_mid_stream_loses_and_duplicates_nothing(
    persistent_broker: MosquittoBroker,
    gateway: Callable[[], SiteSensors],
    start_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    # Prepare
    store_path = tmp_path / "store.sqlite"
    first = start_agent(*agent_flags(persistent_broker, store_path), env=agent_env())
    wait_online(persistent_broker, first)
    stream = gateway()
    wait_until(lambda: stored_frames(store_path) >= 100, 30, "100 frames stored")

    # Execute: SIGKILL the agent and its workers mid-stream, no clean shutdown at all
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    published_at_kill = stream.sensors.published
    second = start_agent(*agent_flags(persistent_broker, store_path), env=agent_env())
    wait_online(persistent_broker, second)
    wait_until(lambda: stored_frames(store_path) > published_at_kill, 30, "frames after the kill")
    wait_all_stored(stream, store_path, second)

    # Assert
    assert_stored_exactly_once(stream.sensors, store_path)
    assert "session present: True" in second.log()
