"""Agent conditions recorded in the store reach MQTT: retained, one topic per condition."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from edge_helpers import AgentProcess, MqttProbe, wait_until

from edge_agent.store import LocalStore
from fedpm.broker import MosquittoBroker
from models.windows import Window

SITE = "plant-alarms"


def damage(path: Path) -> None:
    """Overwrite the middle of the file's B-tree pages with garbage (a real corruption)."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        for offset in range(4096, size - 4096, 3 * 4096):
            f.seek(offset + 100)
            f.write(b"\xa5" * 700)


def test_a_corrupt_store_is_quarantined_and_the_alarm_published_retained(
    tmp_path: Path,
    broker: MosquittoBroker,
    mqtt_probe: Callable[[], MqttProbe],
    start_agent: Callable[..., AgentProcess],
) -> None:
    # Prepare: a store with data, closed, then damaged on disk
    store_path = tmp_path / "store.sqlite"
    with LocalStore(store_path) as store:
        samples = [Window(i * 10**9, 1000.0, [0.1] * 256) for i in range(200)]
        store.add_windows("pump-1", "acc-1", 0, samples)
    damage(store_path)
    topic = f"fedpm/v1/{SITE}/agent/alarms/store_integrity"

    # Execute
    agent = start_agent(
        "--site", SITE, "--mqtt-port", str(broker.port), "--store", str(store_path)
    )  # fmt: skip
    probe = mqtt_probe()
    probe.subscribe(f"fedpm/v1/{SITE}/agent/#")
    wait_until(lambda: bool(probe.received(topic)), 30, f"retained alarm\n{agent.log()}")

    late = mqtt_probe()  # a subscriber arriving afterwards gets the retained state
    late.subscribe(f"fedpm/v1/{SITE}/agent/alarms/#")
    wait_until(lambda: bool(late.received(topic)), 10, "retained copy")

    # Assert
    message = late.received(topic)[0]
    body = json.loads(message.payload)
    assert message.retain
    assert (body["site"], body["subject"], body["state"]) == (SITE, "store_integrity", "raised")
    assert Path(body["detail"]["quarantined"]).is_file()
    assert list(tmp_path.glob("store.sqlite.corrupt-*"))
    with LocalStore(store_path, readonly=True) as fresh:
        assert fresh.count_windows() == 0  # a fresh store took the corrupt one's place
    assert agent.proc.poll() is None  # the agent keeps running
