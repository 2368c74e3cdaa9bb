"""``fedpm edge run`` / ``check-config`` and ``python -m edge_agent --config``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from edge_helpers import AgentProcess, MqttProbe, cwru_or_synthetic, make_frames, wait_until
from prometheus_client.parser import text_string_to_metric_families
from tls_helpers import make_pki

from edge_agent.errors import ExitCode
from edge_agent.store import LocalStore
from fedpm.broker import MosquittoBroker
from fedpm.cli import main as fedpm_main
from fedpm.federation import CONNECTION, LocalFederation
from fedpm.netutil import free_port
from fedpm.procs import ProcessGroup, venv_bin
from models.frame import encode_binary, frame_topic

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "edge.example.toml"
MASK = "**********"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process's environment without ``FEDPM_EDGE_*`` (they would override the file)."""
    for key in [k for k in os.environ if k.startswith("FEDPM_EDGE_")]:
        monkeypatch.delenv(key)
    return dict(os.environ)


@pytest.fixture
def superlink(tmp_path: Path) -> Iterator[LocalFederation]:
    """A real insecure ``flower-superlink`` on a loopback port."""
    with ProcessGroup(tmp_path / "flower-logs") as group:
        federation = LocalFederation(group, tmp_path)
        federation.start([])
        yield federation


def online_nodes(federation: LocalFederation) -> int:
    result = subprocess.run(
        [venv_bin("flwr"), "supernode", "list", CONNECTION, "--format", "json"],
        env={**os.environ, **federation.env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return sum(n["status"] == "online" for n in json.loads(result.stdout)["nodes"])


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.integration
def test_edge_run_runs_agent_supernode_and_metrics_from_file_and_env(
    broker: MosquittoBroker,
    mqtt_probe: Callable[[], MqttProbe],
    superlink: LocalFederation,
    clean_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # Prepare: the file names one site, the environment overrides it
    store_path = tmp_path / "store.sqlite"
    config = write(
        tmp_path / "edge.toml",
        f'site_id = "plant-file"\n'
        f"mqtt_port = {broker.port}\n"
        f'store_path = "{store_path}"\n'
        f"window_samples = 2048\n"
        f"metrics_port = 0\n"
        f'superlink = "127.0.0.1:{superlink.port}"\n'
        f"supernode_port = {free_port()}\n",
    )
    env = {**clean_env, **superlink.env(), "FEDPM_EDGE_SITE_ID": "plant-env"}
    probe = mqtt_probe()
    probe.subscribe("fedpm/v1/plant-env/agent/status")
    log_path = tmp_path / "edge-run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedpm", "edge", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    agent = AgentProcess(proc, log_path)
    frames = make_frames(cwru_or_synthetic(8 * 512), 512)

    try:
        # Execute
        wait_until(
            lambda: any(
                m.payload == b"online" for m in probe.received("fedpm/v1/plant-env/agent/status")
            ),
            30,
            "online under the site id from the environment",
        )
        for frame in frames:
            probe.publish(frame_topic("plant-env", "pump-1", "acc-1"), encode_binary(frame))
        wait_until(lambda: _windows(store_path) == 2, 30, "2 windows")
        wait_until(lambda: online_nodes(superlink) == 1, 60, "the SuperNode registered")
        url = re.search(r"metrics on (http://\S+/metrics)", agent.log())
        assert url is not None, agent.log()
        scraped = {
            s.name: s.value
            for f in text_string_to_metric_families(httpx.get(url.group(1), timeout=10).text)
            for s in f.samples
        }
        supernode_pid = int(re.findall(r"supernode started \(pid (\d+)\)", agent.log())[-1])
        code = agent.stop()
    except AssertionError:
        raise AssertionError(agent.log()) from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)

    # Assert
    assert code == ExitCode.SUCCESS, agent.log()
    assert scraped["fedpm_edge_frames_total"] == 8
    assert scraped["fedpm_edge_supernode_restarts_total"] == 0
    with pytest.raises(ProcessLookupError):  # the SuperNode stopped with the agent
        os.kill(supernode_pid, 0)
    assert "supernode: " in agent.log()


def _windows(path: Path) -> int:
    if not path.exists():
        return 0
    with LocalStore(path, readonly=True) as store:
        return store.count_windows()


def test_check_config_prints_effective_settings_with_secrets_masked(
    clean_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    config = write(
        tmp_path / "edge.toml",
        'site_id = "plant-a"\n'
        'mqtt_username = "edge"\n'
        'mqtt_password = "file-secret-1"\n'
        'influx_url = "https://ops:url-secret-2@influx.local:8086"\n'
        "metrics_port = 9464\n",
    )
    monkeypatch.setenv("FEDPM_EDGE_MQTT_PASSWORD", "env-secret-3")
    monkeypatch.setenv("FEDPM_EDGE_INFLUX_TOKEN", "env-secret-4")

    # Execute
    code = fedpm_main(["edge", "check-config", "--config", str(config), "--metrics-port", "0"])

    # Assert
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert code == 0
    assert "secret" not in out
    assert shown["mqtt_password"] == MASK
    assert shown["influx_token"] == MASK
    assert shown["influx_url"] == f"https://ops:{MASK}@influx.local:8086"
    assert shown["site_id"] == "plant-a"  # from the file
    assert shown["mqtt_username"] == "edge"
    assert shown["metrics_port"] == 0  # the flag wins over the file


def test_example_config_is_valid(
    clean_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare: the secrets and the certificate files it points to come from the environment
    pki = make_pki(tmp_path / "pki")
    monkeypatch.setenv("FEDPM_EDGE_MQTT_PASSWORD", "from-the-service-environment")
    monkeypatch.setenv("FEDPM_EDGE_MQTT_CA_FILE", str(pki.ca))
    monkeypatch.setenv("FEDPM_EDGE_SUPERNODE_ROOT_CERTIFICATES", str(pki.ca))

    # Execute
    code = fedpm_main(["edge", "check-config", "--config", str(EXAMPLE)])

    # Assert
    shown = json.loads(capsys.readouterr().out)
    assert code == 0
    assert shown["environment"] == "production"
    assert shown["mqtt_tls"] is True
    assert shown["mqtt_ca_file"] == str(pki.ca)
    assert set(shown["assets"]) == {"pump-1", "fan-3"}


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('site_id = "plant-a"\nmqtt_port = 70000\n', "mqtt_port"),
        ('site_id = "plant-a"\nmqtt_prot = 1883\n', "mqtt_prot"),
        ('site_id = "plant-a"\nmqtt_port = \n', "is not valid TOML"),
        ('site_id = "plant a"\n', "site_id"),
        ('site_id = "plant-a"\nmqtt_tls = true\nmqtt_ca_file = "/nonexistent/ca.pem"\n', "ca.pem"),
        ('site_id = "p"\nsuperlink = "h:1"\nsupernode_root_certificates = "/x.pem"\n', "insecure"),
        (None, "cannot read config file"),
    ],
)
def test_bad_config_is_a_clear_error(
    command: str,
    text: str | None,
    expected: str,
    clean_env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    config = tmp_path / "edge.toml"
    if text is not None:
        write(config, text)

    # Execute
    code = fedpm_main(["edge", command, "--config", str(config)])

    # Assert
    captured = capsys.readouterr()
    assert code == ExitCode.CONFIG_ERROR
    assert captured.out == ""
    assert captured.err.startswith("error: ")
    assert expected in captured.err


def test_agent_module_takes_the_config_file_too(clean_env: dict[str, str], tmp_path: Path) -> None:
    # Prepare
    config = write(tmp_path / "edge.toml", 'site_id = "plant-a"\nstore_budget_bytes = 10\n')

    # Execute
    result = subprocess.run(
        [sys.executable, "-m", "edge_agent", "--config", str(config)],
        capture_output=True,
        text=True,
        env=clean_env,
        timeout=60,
    )

    # Assert
    assert result.returncode == ExitCode.CONFIG_ERROR
    assert "store_budget_bytes" in result.stderr
    assert str(config) in result.stderr
