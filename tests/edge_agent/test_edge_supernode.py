"""The agent's SuperNode supervisor against a real Flower SuperLink."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from edge_helpers import wait_until
from flwr.common.config import parse_config_args

from edge_agent.errors import ConfigError
from edge_agent.settings import AgentSettings
from edge_agent.supernode import (
    MIN_DELAY_S,
    STABLE_AFTER_S,
    SuperNodeSupervisor,
    next_delay,
    supernode_argv,
)
from fedpm.federation import CONNECTION, LocalFederation
from fedpm.netutil import free_port
from fedpm.procs import ProcessGroup, venv_bin

SITE = "plant-a"


@pytest.fixture
def superlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalFederation]:
    """A real insecure ``flower-superlink`` on a loopback port, without SuperNodes."""
    with ProcessGroup(tmp_path / "logs") as group:
        federation = LocalFederation(group, tmp_path)
        federation.start([])
        monkeypatch.setenv("FLWR_HOME", str(federation.flwr_home))  # the SuperNode's too
        yield federation


def online_nodes(federation: LocalFederation) -> set[str]:
    """Node ids the SuperLink lists as online (``flwr supernode list --format json``)."""
    result = subprocess.run(
        [venv_bin("flwr"), "supernode", "list", CONNECTION, "--format", "json"],
        env={**os.environ, **federation.env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    nodes = json.loads(result.stdout)["nodes"]
    return {str(n["node-id"]) for n in nodes if n["status"] == "online"}


def registered(supervisor: SuperNodeSupervisor, federation: LocalFederation) -> str | None:
    node = supervisor.node_id
    return node if node is not None and node in online_nodes(federation) else None


@pytest.mark.integration
def test_supernode_is_restarted_after_a_kill_and_registers_again(
    superlink: LocalFederation, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the supervisor of a site's SuperNode, registered with the SuperLink
    caplog.set_level(logging.INFO, logger="edge_agent.supernode")
    settings = AgentSettings(
        site_id=SITE,
        store_path=tmp_path / "store.sqlite",
        superlink=f"127.0.0.1:{superlink.port}",
        supernode_port=free_port(),
        supernode_restart_max_delay_s=2.0,
    )
    supervisor = SuperNodeSupervisor(settings)
    supervisor.start()
    try:
        wait_until(lambda: registered(supervisor, superlink) is not None, 60, "registration")
        first_node, first_pid = supervisor.node_id, supervisor.pid
        assert first_pid is not None

        # Execute: the SuperNode dies without warning
        os.kill(first_pid, signal.SIGKILL)

        # Assert: a new SuperNode process registers a new node
        wait_until(lambda: supervisor.restarts == 1, 60, "a restart")
        wait_until(
            lambda: registered(supervisor, superlink) not in (None, first_node),
            60,
            "registration of the restarted SuperNode",
        )
        second_pid = supervisor.pid
        assert second_pid not in (None, first_pid)
    finally:
        supervisor.stop()

    # Assert: the stop reached the SuperNode, and its output was logged with a prefix
    assert supervisor.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(second_pid or 0, 0)
    lines = [r.getMessage() for r in caplog.records if r.name == "edge_agent.supernode"]
    assert any(line.startswith("supernode: ") and "SuperNode ID" in line for line in lines)
    assert any("exited with code -9" in line for line in lines)


def test_restart_delay_doubles_up_to_the_cap_and_resets_after_a_stable_run() -> None:
    # Prepare
    delay, delays = MIN_DELAY_S / 2, []

    # Execute: eight quick crashes, then a run that lasted
    for _ in range(8):
        delay = next_delay(delay, ran_s=0.5, max_delay_s=30.0)
        delays.append(delay)
    after_stable = next_delay(delay, ran_s=STABLE_AFTER_S, max_delay_s=30.0)

    # Assert
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert after_stable == MIN_DELAY_S


@pytest.mark.parametrize("name", ["store.sqlite", "it's a store.db", 'back\\slash "q".db'])
def test_supernode_command_line_follows_the_settings(name: str, tmp_path: Path) -> None:
    # Prepare
    ca = tmp_path / "superlink-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    store = tmp_path / name
    base = {"site_id": SITE, "store_path": store, "superlink": "cloud:9092"}

    # Execute
    insecure = supernode_argv(AgentSettings(**base), "flower-supernode")
    secure = supernode_argv(
        AgentSettings(**base, supernode_insecure=False, supernode_root_certificates=ca), "sn"
    )

    # Assert: Flower's own parser reads the node config back unchanged
    assert insecure[-1] == "--insecure"
    node_config = parse_config_args([insecure[insecure.index("--node-config") + 1]])
    assert node_config == {"store-path": str(store.resolve()), "site-id": SITE}
    assert secure[-2:] == ["--root-certificates", str(ca)]
    assert "--insecure" not in secure


def test_contradictory_or_unreadable_supernode_settings_are_config_errors(tmp_path: Path) -> None:
    # Prepare
    base = {"site_id": SITE, "store_path": tmp_path / "s.db", "superlink": "cloud:9092"}
    ca = tmp_path / "ca.pem"
    ca.write_text("x", encoding="utf-8")

    # Execute / Assert
    with pytest.raises(ConfigError, match="needs supernode_insecure = false"):
        supernode_argv(AgentSettings(**base, supernode_root_certificates=ca))
    with pytest.raises(ConfigError, match="cannot be read"):
        supernode_argv(
            AgentSettings(
                **base, supernode_insecure=False, supernode_root_certificates=tmp_path / "no.pem"
            )
        )
    with pytest.raises(ConfigError, match=r"store_path .* cannot be passed"):
        supernode_argv(AgentSettings(**{**base, "store_path": tmp_path / "both ' and \"quotes"}))
    with pytest.raises(ConfigError, match="superlink is not set"):
        SuperNodeSupervisor(AgentSettings(site_id=SITE, store_path=tmp_path / "s.db"))


def test_node_authentication_key_is_passed_only_over_tls(tmp_path: Path) -> None:
    # Prepare: a real key pair as `fedpm keys supernode` writes it
    from fedpm.cli import main as fedpm_main

    assert fedpm_main(["keys", "supernode", "--out", str(tmp_path), "--name", SITE]) == 0
    key = tmp_path / SITE
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    base = {"site_id": SITE, "store_path": tmp_path / "s.db", "superlink": "cloud:9092"}

    # Execute
    argv = supernode_argv(
        AgentSettings(
            **base,
            supernode_insecure=False,
            supernode_root_certificates=ca,
            supernode_auth_private_key=key,
        ),
        "sn",
    )

    # Assert
    assert argv[-2:] == ["--auth-supernode-private-key", str(key)]
    assert (tmp_path / f"{SITE}.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert key.stat().st_mode & 0o077 == 0
    with pytest.raises(ConfigError, match="needs TLS"):
        supernode_argv(AgentSettings(**base, supernode_auth_private_key=key))
    assert fedpm_main(["keys", "supernode", "--out", str(tmp_path), "--name", SITE]) == 1
