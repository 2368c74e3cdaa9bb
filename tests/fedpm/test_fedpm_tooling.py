"""The local orchestration the demo relies on: broker, process group, Flower config strings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fedpm import broker as broker_module
from fedpm.broker import BrokerError, MosquittoBroker
from fedpm.federation import config_arg, toml_value
from fedpm.procs import ProcessGroup


def test_toml_values_are_quoted_for_flower_config_flags() -> None:
    # Execute
    rendered = config_arg({"store-path": "/var/it's/store.db", "rounds": 3, "lr": 0.5, "on": True})

    # Assert
    assert rendered == 'store-path="/var/it\'s/store.db" rounds=3 lr=0.5 on=true'
    assert toml_value(False) == "false"


@pytest.mark.integration
def test_broker_delivers_between_real_clients() -> None:
    # Prepare
    received: list[bytes] = []
    with MosquittoBroker() as broker:
        sub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        sub.on_message = lambda c, u, m: received.append(m.payload)
        sub.connect(broker.host, broker.port)
        sub.subscribe("t/#", qos=1)
        sub.loop_start()
        pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        time.sleep(0.3)

        # Execute: more than Mosquitto's default queue limit of 1,000 messages
        infos = [pub.publish("t/x", str(i).encode(), qos=1) for i in range(1500)]
        for info in infos:
            info.wait_for_publish(timeout=10)
        deadline = time.monotonic() + 10
        while len(received) < 1500 and time.monotonic() < deadline:
            time.sleep(0.05)
        pub.loop_stop()
        sub.loop_stop()

    # Assert
    assert len(received) == 1500
    assert not broker.running


def test_missing_mosquitto_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.setattr(broker_module, "find_mosquitto", lambda: None)

    # Execute / Assert
    with pytest.raises(BrokerError, match="apt-get install mosquitto"):
        MosquittoBroker().start()


def test_process_group_stops_children_and_their_children(tmp_path: Path) -> None:
    # Prepare: a child that starts a grandchild, as the SuperNode starts flwr-clientapp
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    group = ProcessGroup(tmp_path)
    child = group.start("sleeper", [sys.executable, "-c", script])
    deadline = time.monotonic() + 10
    while not child.log_path.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(child.log_path.read_text().split()[0])

    # Execute
    group.stop(timeout_s=5)

    # Assert
    assert child.proc.poll() is not None
    time.sleep(0.2)
    assert not _alive(grandchild)


def test_check_alive_names_the_dead_child_with_its_log(tmp_path: Path) -> None:
    # Prepare
    group = ProcessGroup(tmp_path)
    child = group.start("crasher", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"])
    child.proc.wait(timeout=10)

    # Execute / Assert
    with pytest.raises(RuntimeError, match=r"crasher exited with code 3(.|\n)*boom"):
        group.check_alive()
    group.stop()


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def test_fedpm_cli_reports_errors_in_one_line() -> None:
    # Execute
    result = subprocess.run(
        [sys.executable, "-m", "fedpm", "sensors", "--site", "no-such-site"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ},
    )

    # Assert
    assert result.returncode == 2
    assert "unknown demo site 'no-such-site'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rounds", "0"], "--rounds must be"),
        (["--backlog-s", "1"], "--backlog-s must be in 5..600"),
        (["--held-out-windows", "1000"], "--held-out-windows must be"),
    ],
)
def test_demo_refuses_bad_options_before_starting_anything(
    flags: list[str], message: str, tmp_path: Path
) -> None:
    # Execute
    result = subprocess.run(
        [sys.executable, "-m", "fedpm", "demo", "--workdir", str(tmp_path / "w"), *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # Assert
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "w").exists()
