"""MQTT over TLS: the agent verifies the broker and logs in with a password or a certificate."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from edge_helpers import (
    AgentProcess,
    MqttProbe,
    Received,
    cwru_or_synthetic,
    make_frames,
    wait_until,
)
from paho.mqtt.enums import CallbackAPIVersion
from tls_helpers import Pki, TlsBroker, make_pki

from edge_agent.errors import ConfigError, ExitCode
from edge_agent.mqtt import make_client
from edge_agent.settings import AgentSettings
from edge_agent.store import LocalStore
from fedpm.broker import find_mosquitto
from models.frame import encode_binary, frame_topic

SITE = "plant-a"
FRAME = 512
WINDOW = 2048
STATUS = f"fedpm/v1/{SITE}/agent/status"
AGENT_PASSWORD = "agent-pw-7f3a"
GATEWAY_PASSWORD = "gateway-pw-91c2"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_probes() -> Iterator[Callable[..., MqttProbe]]:
    """Test-side TLS clients (the sensor gateway), disconnected afterwards."""
    probes: list[MqttProbe] = []

    def make(broker: TlsBroker, *, password: str | None = None) -> MqttProbe:
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if broker.client_certificates:
            client.tls_set(
                ca_certs=str(broker.pki.ca),
                certfile=str(broker.pki.client_cert),
                keyfile=str(broker.pki.client_key),
            )
        else:
            client.tls_set(ca_certs=str(broker.pki.ca))
            client.username_pw_set("gateway", password)
        probe = MqttProbe(client)
        connected = threading.Event()
        client.on_connect = lambda c, u, f, rc, p: connected.set() if not rc.is_failure else None

        def on_message(c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
            with probe.lock:
                probe.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))

        client.on_message = on_message
        client.connect(broker.host, broker.port)
        client.loop_start()
        probes.append(probe)
        assert connected.wait(10), f"test client could not log in:\n{broker.log_path.read_text()}"
        return probe

    yield make
    for probe in probes:
        probe.client.disconnect()
        probe.client.loop_stop()


def _needs_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")


def _agent_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDPM_EDGE_")}
    env.update({f"FEDPM_EDGE_{k.upper()}": v for k, v in settings.items()})
    return env


def _windows(path: Path) -> int:
    if not path.exists():
        return 0
    with LocalStore(path, readonly=True) as store:
        return store.count_windows()


@pytest.mark.integration
@pytest.mark.parametrize("login", ["password", "client_certificate"])
def test_agent_ingests_over_tls(
    login: str,
    pki: Pki,
    tmp_path: Path,
    start_agent: Callable[..., AgentProcess],
    tls_probes: Callable[..., MqttProbe],
) -> None:
    # Prepare: a TLS-only broker refusing anonymous clients
    _needs_mosquitto()
    with_cert = login == "client_certificate"
    users = {} if with_cert else {"edge-plant-a": AGENT_PASSWORD, "gateway": GATEWAY_PASSWORD}
    broker = TlsBroker(tmp_path / "broker", pki, users=users, client_certificates=with_cert)
    credentials = (
        {"mqtt_cert_file": str(pki.client_cert), "mqtt_key_file": str(pki.client_key)}
        if with_cert
        else {"mqtt_username": "edge-plant-a", "mqtt_password": AGENT_PASSWORD}
    )
    env = _agent_env(mqtt_tls="true", mqtt_ca_file=str(pki.ca), **credentials)
    store_path = tmp_path / "store.sqlite"
    frames = make_frames(cwru_or_synthetic(8 * FRAME), FRAME)
    topic = frame_topic(SITE, "pump-1", "acc-1")

    with broker:
        gateway = tls_probes(broker, password=GATEWAY_PASSWORD)
        gateway.subscribe(STATUS)
        agent = start_agent(
            "--site", SITE,
            "--mqtt-host", "localhost",  # verified against the certificate's DNS name
            "--mqtt-port", str(broker.port),
            "--store", str(store_path),
            "--window-samples", str(WINDOW),
            env=env,
        )  # fmt: skip
        try:
            wait_until(lambda: any(m.payload == b"online" for m in gateway.received(STATUS)), 30)
        except AssertionError:
            raise AssertionError(f"{agent.log()}\n{broker.log_path.read_text()}") from None

        # Execute
        for frame in frames:
            gateway.publish(topic, encode_binary(frame))

        # Assert: both windows stored, then a clean stop
        try:
            wait_until(lambda: _windows(store_path) == 2, 30, "2 windows over TLS")
        except AssertionError:
            raise AssertionError(agent.log()) from None
        assert agent.stop() == ExitCode.SUCCESS


@pytest.mark.integration
@pytest.mark.parametrize("wrong", ["signed_by_another_ca", "issued_for_another_host"])
def test_broker_that_fails_verification_is_refused(
    wrong: str, pki: Pki, tmp_path: Path, start_agent: Callable[..., AgentProcess]
) -> None:
    # Prepare: the broker's certificate comes from a CA the agent does not trust, or names
    # another host than the one the agent connects to
    _needs_mosquitto()
    if wrong == "signed_by_another_ca":
        served = make_pki(tmp_path / "rogue-pki", ca_name="Someone else's CA")
    else:
        served = make_pki(tmp_path / "other-host-pki", server_names=("broker.elsewhere",))
    env = _agent_env(
        mqtt_tls="true",
        mqtt_ca_file=str(served.ca if wrong == "issued_for_another_host" else pki.ca),
        mqtt_username="edge-plant-a",
        mqtt_password=AGENT_PASSWORD,
    )

    with TlsBroker(tmp_path / "broker", served, users={"edge-plant-a": AGENT_PASSWORD}) as broker:
        # Execute
        agent = start_agent(
            "--site", SITE,
            "--mqtt-port", str(broker.port),
            "--store", str(tmp_path / "store.sqlite"),
            env=env,
        )  # fmt: skip
        code = agent.proc.wait(60)

    # Assert: refused at once, with a message that says why and names the CA file
    log = agent.log()
    assert code == ExitCode.BROKER_UNREACHABLE, log
    assert "failed TLS verification" in log
    assert "mqtt_ca_file" in log
    if wrong == "issued_for_another_host":
        assert "mismatch" in log


def test_unreadable_tls_files_are_config_errors(pki: Pki, tmp_path: Path) -> None:
    # Prepare
    base = {"site_id": SITE, "store_path": tmp_path / "s.db", "mqtt_tls": True}
    missing_ca = AgentSettings(**base, mqtt_ca_file=tmp_path / "nope.pem")
    not_a_ca = AgentSettings(**base, mqtt_ca_file=pki.client_key)
    other = make_pki(tmp_path / "other")
    wrong_key = AgentSettings(
        **base, mqtt_ca_file=pki.ca, mqtt_cert_file=pki.client_cert, mqtt_key_file=other.client_key
    )

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"mqtt_ca_file .*nope\.pem cannot be read"):
        make_client(missing_ca, "t")
    with pytest.raises(ConfigError, match=r"mqtt_ca_file .* no usable CA certificate"):
        make_client(not_a_ca, "t")
    with pytest.raises(ConfigError, match="cannot load the MQTT client certificate"):
        make_client(wrong_key, "t")
