"""docker/compose.yml: Debian's docker-compose validates it, its secrets are files the dev script
makes, its services' settings and commands are what FedPM's own parsers accept, and one site of
it (broker, agent, sensor gateway) runs for real from its configuration, without Docker.

The secrets do not have to exist for ``docker-compose config`` (1.29 does not open them), so the
module runs docker/scripts/make-dev-certs.sh into a temporary folder first (about a second,
offline) and points FEDPM_SECRETS_DIR there: the checks then see the files a pilot would use.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from cryptography import x509
from deploy_helpers import (
    CERT_SCRIPT,
    COMPOSE,
    DOCKER,
    HOST,
    REPO,
    compose_config,
    compose_file,
    dockerfile_env,
    edge_sites,
    free_port,
    make_dev_secrets,
    require_binary,
    resolve_secrets,
    wait_for,
)
from paho.mqtt.enums import CallbackAPIVersion

from fedpm.procs import terminate

SECRETISH = re.compile(r"PASSWORD|TOKEN|SECRET|PRIVATE_KEY", re.I)


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    started = time.monotonic()
    out = make_dev_secrets(tmp_path_factory.mktemp("pilot") / "secrets")
    assert time.monotonic() - started < 15, "the dev secrets script should take seconds"
    return out


@pytest.fixture(scope="module")
def config(secrets_dir: Path) -> dict[str, Any]:
    return compose_config(secrets_dir)


def _service_text(service: dict[str, Any]) -> str:
    """Everything of a service that can name a file: environment, command, entrypoint, check."""
    parts: list[Any] = [
        service.get("environment", {}),
        service.get("command", []),
        service.get("entrypoint", []),
        service.get("healthcheck", {}),
    ]
    return yaml.safe_dump(parts)


def test_compose_validates_and_builds_from_the_repository(config: dict[str, Any]) -> None:
    services = config["services"]
    sites = edge_sites(config)
    assert sites == ["site-a", "site-b", "site-c"]
    expected = {"mosquitto", "influxdb", "prometheus", "grafana", "superlink", "aggregator"}
    expected |= {"fl-register", "fl-run", "fl-exporter", "serving", "superlink-state-init"}
    expected |= {f"{kind}-{site}" for kind in ("edge", "sensors") for site in sites}
    assert set(services) == expected
    for name, service in services.items():
        if "build" in service:
            assert Path(service["build"]["context"]) == REPO, name
            assert (REPO / service["build"]["dockerfile"]).is_file(), name
    assert compose_file()["services"]["fl-run"]["profiles"] == ["train"]


def test_gpu_override_gives_the_aggregator_one_gpu(secrets_dir: Path) -> None:
    with_gpu = compose_config(secrets_dir, DOCKER / "compose.gpu.yml")["services"]
    (device,) = with_gpu["aggregator"]["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert not [name for name, svc in with_gpu.items() if "deploy" in svc and name != "aggregator"]


def test_every_secret_is_a_mounted_file_the_script_makes(
    config: dict[str, Any], secrets_dir: Path
) -> None:
    # Assert: the secret files exist where compose takes them from
    for name, secret in config["secrets"].items():
        assert Path(secret["file"]) == secrets_dir / name, name
        assert Path(secret["file"]).is_file(), f"{name}: the script does not make it"
    # ... a service mounts every /run/secrets file it names (settings, commands, checks)
    configs = {
        "mosquitto": (DOCKER / "mosquitto" / "mosquitto.conf").read_text(),
        "prometheus": (DOCKER / "prometheus" / "prometheus.yml").read_text(),
    }

    def mounted(name: str) -> set[str]:
        return {
            s["source"] if isinstance(s, dict) else s
            for s in config["services"][name].get("secrets", [])
        }

    for name, service in config["services"].items():
        text = _service_text(service)
        # run-config paths (`fedpm fl run --config=signing-key=...`) are the ServerApp's files
        on_server = set(re.findall(r"--config=[\w-]+=/run/secrets/([\w.-]+)", text))
        assert on_server <= mounted("aggregator"), f"{name}: the aggregator lacks {on_server}"
        text = re.sub(r"--config=[\w-]+=/run/secrets/[\w.-]+", "", text)
        named = set(re.findall(r"/run/secrets/([\w.-]+)", text))
        named |= set(re.findall(r"/run/secrets/([\w.-]+)", configs.get(name, "")))
        assert named <= mounted(name), f"{name} names unmounted secrets {named - mounted(name)}"
    # ... and nothing secret is written in the compose file itself
    for name, service in compose_file()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRETISH.search(key):
                assert (
                    key.endswith("__FILE")
                    or key.endswith("_FILE")
                    or (str(value).startswith("/run/secrets/"))
                ), f"{name}: {key} holds a value, not a secret file"


def test_dev_secrets_are_what_the_services_check(secrets_dir: Path) -> None:
    # Prepare
    ca = x509.load_pem_x509_certificate((secrets_dir / "fedpm-ca.crt").read_bytes())
    acl = (DOCKER / "mosquitto" / "acl").read_text()
    users = re.findall(r"^user (\S+)$", acl, re.M)

    # Assert: servers carry their compose host names, clients their MQTT user names
    for server in ("mosquitto", "superlink", "influxdb"):
        cert = x509.load_pem_x509_certificate((secrets_dir / f"{server}.crt").read_bytes())
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert server in names.get_values_for_type(x509.DNSName)
    for user in users:
        cert = x509.load_pem_x509_certificate((secrets_dir / f"{user}-mqtt.crt").read_bytes())
        cert.verify_directly_issued_by(ca)
        assert cert.subject.rfc4514_string() == f"CN={user}-mqtt"
    hashed = dict(
        line.split(":", 1) for line in (secrets_dir / "mosquitto-passwd").read_text().split()
    )
    assert sorted(hashed) == sorted(users)
    assert all(h.startswith("$7$") for h in hashed.values())  # mosquitto_passwd's PBKDF2
    # ... the folder is private, the CA key more so; a second run refuses to overwrite
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((secrets_dir / "ca-private" / "fedpm-ca.key").stat().st_mode) == 0o600
    again = subprocess.run(
        [str(CERT_SCRIPT), str(secrets_dir)], capture_output=True, text=True, check=False
    )
    assert again.returncode == 1
    assert "--force" in again.stderr


def test_sites_agree_across_compose_acl_prometheus_scripts_and_simulator(
    config: dict[str, Any],
) -> None:
    # Prepare
    from fedpm.scenario import DEMO_SITES

    services = config["services"]
    sites = edge_sites(config)
    acl = (DOCKER / "mosquitto" / "acl").read_text()
    prometheus = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    edge_job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "fedpm-edge")
    script = (DOCKER / "scripts" / "make-dev-certs.sh").read_text()

    # Assert
    assert set(re.findall(r"^user (\S+)$", acl, re.M)) == {
        u for s in sites for u in (s, f"gateway-{s}")
    }
    for site in sites:  # an agent reads its own site's frames only
        block = acl.split(f"user {site}\n")[1].split("\n\n")[0]
        assert re.findall(r"fedpm/v1/([^/]+)/", block) == [site] * len(block.splitlines())
    assert [(sc["labels"]["site"], sc["targets"]) for sc in edge_job["static_configs"]] == [
        (s, [f"edge-{s}:9100"]) for s in sites
    ]
    assert services["fl-register"]["environment"]["FEDPM_SITES"].split() == sites
    assert re.search(r"FEDPM_SITES:-([^}]+)\}", script).group(1).split() == sites  # type: ignore[union-attr]
    assert set(sites) <= {s.site_id for s in DEMO_SITES}  # `fedpm sensors --site` knows them
    for site in sites:
        command = services[f"sensors-{site}"]["command"]
        assert f"--site={site}" in command
        assert f"--username=gateway-{site}" in command


def test_services_settings_and_commands_pass_fedpm_and_flower_parsers(
    config: dict[str, Any], secrets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    from flwr.supercore.cli.flower_superexec import _parse_args as superexec_args
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink

    from edge_agent.settings import AgentSettings
    from edge_agent.supernode import supernode_argv
    from fedpm.cli import build_parser
    from serving.settings import ServeSettings

    services = config["services"]
    for key in [k for k in os.environ if k.startswith(("FEDPM_EDGE_", "FEDPM_SERVE_"))]:
        monkeypatch.delenv(key)

    # Execute / Assert: each edge agent's environment is valid production settings, and the
    # SuperNode it starts gets TLS and its authentication key
    for site in edge_sites(config):
        env = {
            **dockerfile_env(DOCKER / "edge.Dockerfile"),
            **resolve_secrets(services[f"edge-{site}"]["environment"], secrets_dir),
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = AgentSettings()  # type: ignore[call-arg]  # site id from the environment
        assert (settings.site_id, settings.environment) == (site, "production")
        argv = supernode_argv(settings, "flower-supernode")
        assert argv[argv.index("--root-certificates") + 1] == str(secrets_dir / "fedpm-ca.crt")
        assert argv[argv.index("--auth-supernode-private-key") + 1].endswith(f"{site}-supernode")
        for key in env:
            monkeypatch.delenv(key)
    # the prediction API: image defaults plus compose, several workers
    for key, value in {
        **dockerfile_env(DOCKER / "serving.Dockerfile"),
        **resolve_secrets(services["serving"]["environment"], secrets_dir),
    }.items():
        if key.startswith("FEDPM_SERVE_"):
            monkeypatch.setenv(key, value)
    serving = ServeSettings()
    assert serving.workers >= 2
    assert serving.model_verify_key == secrets_dir / "model-signing.pub"
    # the FedPM commands, with FedPM's parser; Flower's commands, with Flower's parsers
    for name in ("fl-run", "fl-exporter", *(f"sensors-{s}" for s in edge_sites(config))):
        args = build_parser().parse_args(services[name]["command"][1:])
        assert callable(args.func), name
    superlink = _parse_args_run_superlink().parse_args(services["superlink"]["command"])
    assert (superlink.isolation, superlink.enable_supernode_auth) == ("process", True)
    superexec = superexec_args().parse_args(services["aggregator"]["command"][1:])
    assert superexec.runtime_api_address == "superlink:9093"
    assert isinstance(superexec, argparse.Namespace)


# --- one site of the pilot, for real ------------------------------------------------------------


@pytest.fixture
def pilot_broker(secrets_dir: Path, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """Mosquitto with docker/mosquitto/ (conf and ACL) and the dev secrets, on a free port."""
    binary = require_binary("mosquitto", "mosquitto", "/usr/sbin/mosquitto")
    port = free_port()
    conf = (DOCKER / "mosquitto" / "mosquitto.conf").read_text()
    conf = conf.replace("/run/secrets/", f"{secrets_dir}/")
    conf = conf.replace("/mosquitto/config/acl", str(DOCKER / "mosquitto" / "acl"))
    conf = conf.replace("/mosquitto/data/", f"{tmp_path}/")
    conf = conf.replace("listener 8883", f"listener {port} {HOST}")
    log_path = tmp_path / "mosquitto.log"  # a file log is flushed line by line; stdout is not
    conf = conf.replace("log_dest stdout", f"log_dest file {log_path}")
    conf += "log_type subscribe\n"  # the test waits for the agent's subscription
    if os.geteuid() == 0:  # else mosquitto drops to user "mosquitto", who cannot read tmp
        conf += "user root\n"
    (tmp_path / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen(
        [binary, "-c", str(tmp_path / "mosquitto.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: log_path.exists() and " running" in log_path.read_text(),
            10,
            "mosquitto running",
        )
        yield port, log_path
    finally:
        terminate(proc)


def _client(secrets_dir: Path, user: str, *, password: str | None = None, cert: bool = True):  # type: ignore[no-untyped-def]
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"test-{user}-{time.monotonic_ns()}",
        protocol=mqtt.MQTTv5,
    )
    context = ssl.create_default_context(cafile=str(secrets_dir / "fedpm-ca.crt"))
    if cert:
        context.load_cert_chain(secrets_dir / f"{user}-mqtt.crt", secrets_dir / f"{user}-mqtt.key")
    client.tls_set_context(context)
    real = (secrets_dir / f"{user}-mqtt-password").read_text().strip()
    client.username_pw_set(user, real if password is None else password)
    return client


def _connack(client: mqtt.Client, port: int, *, keep: bool = False) -> str:
    """The CONNACK reason (or the TLS error) of one connection attempt; ``keep`` stays on."""
    got: dict[str, str] = {}
    done = threading.Event()

    def on_connect(c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        got["reason"] = str(reason)
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(HOST, port, keepalive=10)
    except (ssl.SSLError, OSError) as exc:
        return f"tls: {exc}"
    client.loop_start()
    connected = done.wait(5)
    if not keep:
        client.loop_stop()
        client.disconnect()
    return got.get("reason", "closed without CONNACK" if not connected else "")


@pytest.mark.integration
def test_one_site_runs_from_the_compose_settings_against_the_pilot_broker(
    config: dict[str, Any], secrets_dir: Path, pilot_broker: tuple[int, Path], tmp_path: Path
) -> None:
    # Prepare: edge-site-a's environment, its network peers moved to loopback; no SuperLink
    # here (test_prometheus and the federation tests run Flower), InfluxDB unreachable
    port, broker_log = pilot_broker
    services = config["services"]
    metrics_port = free_port()
    env = {
        **dockerfile_env(DOCKER / "edge.Dockerfile"),
        **resolve_secrets(services["edge-site-a"]["environment"], secrets_dir),
        "FEDPM_EDGE_MQTT_HOST": HOST,
        "FEDPM_EDGE_MQTT_PORT": str(port),
        "FEDPM_EDGE_INFLUX_URL": f"https://{HOST}:{free_port()}",
        "FEDPM_EDGE_STORE_PATH": str(tmp_path / "store" / "store.sqlite"),
        "FEDPM_EDGE_REGISTRY_DIR": str(tmp_path / "registry"),
        "FEDPM_EDGE_METRICS_HOST": HOST,
        "FEDPM_EDGE_METRICS_PORT": str(metrics_port),
        "FLWR_HOME": str(tmp_path / "flwr"),
    }
    del env["FEDPM_EDGE_SUPERLINK"]
    (tmp_path / "registry").mkdir()
    sensors = [
        arg.replace("/run/secrets/", f"{secrets_dir}/")
        for arg in services["sensors-site-a"]["command"]
        if arg != "--live"
    ]
    sensors = [a for a in sensors if not a.startswith(("--mqtt-host", "--mqtt-port"))]
    sensors += [f"--mqtt-host={HOST}", f"--mqtt-port={port}", "--backlog-s=2"]
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("FEDPM_")}
    agent_log = tmp_path / "agent.log"
    with open(agent_log, "wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "edge_agent"],
            env={**base_env, **env},
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: (
                "fedpm-edge-site-a-ingest 1 fedpm/v1/site-a/+/+/frames" in broker_log.read_text()
                or agent.poll() is not None
            ),
            60,
            "the agent's subscription",
        )
        assert agent.poll() is None, agent_log.read_text()[-3000:]

        # another site's agent listens to site-a's frames (subscriptions are granted; the
        # ACL withholds what it may not read)
        other_site = _client(secrets_dir, "site-b")
        leaked: list[str] = []
        other_site.on_message = lambda c, u, msg: leaked.append(msg.topic)
        assert _connack(other_site, port, keep=True) == "Success"
        other_site.subscribe("fedpm/v1/site-a/#", qos=1)

        # Execute: the gateway's compose command (backlog only), then ask the agent
        gateway = subprocess.run(
            [sys.executable, "-m", "fedpm", *sensors[1:]],
            env=base_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

        def frames() -> float:
            import urllib.request

            with urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=2) as r:
                text = r.read().decode()
            found = re.search(r"^fedpm_edge_frames_total (\S+)$", text, re.M)
            return float(found.group(1)) if found else 0.0

        wait_for(lambda: frames() > 0, 30, "frames counted by the agent")
        other_site.loop_stop()
        other_site.disconnect()
        wrong_password = _connack(_client(secrets_dir, "gateway-site-a", password="guess"), port)
        no_certificate = _connack(_client(secrets_dir, "gateway-site-a", cert=False), port)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()

    # Assert: frames went gateway -> TLS broker -> agent under the pilot's identities
    assert gateway.returncode == 0, gateway.stderr
    assert leaked == []  # the ACL keeps sites apart: site-b saw none of site-a's frames
    assert "Bad user name or password" in wrong_password or "Not authorized" in wrong_password
    assert no_certificate.startswith("tls:") or "closed" in no_certificate


def test_compose_file_is_the_one_the_readme_runs() -> None:
    readme = (DOCKER / "README.md").read_text()
    assert f"docker compose -f docker/{COMPOSE.name} up" in readme
    assert "make-dev-certs.sh" in readme


@pytest.mark.integration
def test_fl_register_registers_each_site_once_with_a_real_superlink(
    config: dict[str, Any], secrets_dir: Path, tmp_path: Path
) -> None:
    # Prepare: the compose SuperLink's flags (TLS with the dev certificate, node auth), on
    # loopback; the one-shot's environment pointed at it
    scripts = str(Path(sys.executable).parent)
    path = f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"
    port = free_port()
    flags = [
        flag.replace("/run/secrets/", f"{secrets_dir}/")
        for flag in config["services"]["superlink"]["command"]
        if not flag.startswith(("--host", "--port", "--database", "--health-server"))
    ]
    register = config["services"]["fl-register"]
    env = {
        "PATH": path,
        "HOME": str(tmp_path),
        "FLWR_HOME": str(tmp_path / "flwr-cli"),
        "FEDPM_SITES": register["environment"]["FEDPM_SITES"],
        "FEDPM_SUPERLINK": f"{HOST}:{port}",
        "FEDPM_CA": str(secrets_dir / "fedpm-ca.crt"),
        "FEDPM_KEYS": str(secrets_dir),
    }
    script = register["volumes"][0].split(":")[0]
    assert script.endswith("register-supernodes.sh")
    script_path = DOCKER / script.removeprefix("./")
    with open(tmp_path / "superlink.log", "wb") as log:
        superlink = subprocess.Popen(
            ["flower-superlink", *flags, f"--host={HOST}", f"--port={port}"],
            env={**os.environ, "PATH": path, "FLWR_HOME": str(tmp_path / "flwr-link")},
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: (
                superlink.poll() is not None
                or "Starting" in (tmp_path / "superlink.log").read_text()
            ),
            30,
            "the SuperLink",
        )
        from fedpm.netutil import wait_for_port

        wait_for_port(HOST, port, timeout_s=30, alive=lambda: superlink.poll() is None)

        # Execute: the one-shot, then again for one site (a restart of the stack)
        first = subprocess.run(
            ["/bin/sh", str(script_path)], env=env, capture_output=True, text=True, timeout=120
        )
        again = subprocess.run(
            ["/bin/sh", str(script_path)],
            env={**env, "FEDPM_SITES": "site-a"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        terminate(superlink)
    unreachable = subprocess.run(
        ["/bin/sh", str(script_path)],
        env={**env, "FEDPM_SITES": "site-a"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Assert: three keys registered, the second run keeps site-a's, the CLI config written;
    # with the SuperLink gone the one-shot fails (compose then holds the edge agents back)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count("registered site-") == 3
    assert again.returncode == 0, again.stdout + again.stderr
    assert "site-a: key already registered" in again.stdout
    written = (tmp_path / "flwr-cli" / "config.toml").read_text()
    assert f'address = "{HOST}:{port}"' in written
    assert unreachable.returncode == 1
    assert "registering site-a failed" in unreachable.stderr
