"""A site dies mid-round: its SuperNode is SIGKILLed while it handles its round-2 train message.

Real SuperLink + 4 SuperNodes; behaviour only (the timings are in bench/bench_fl_faults.py).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from aggregator.checkpoint import CheckpointStore
from fedpm.demo import app_dir
from fedpm.federation import LocalFederation, SiteNode
from fedpm.procs import Child, ProcessGroup, group_processes
from fedpm.seed_store import seed_store
from models.registry import FileRegistry
from models.simulator import MachineProfile

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SITES = ("site-a", "site-b", "site-c", "site-d")
VICTIM = "site-d"
MODES = ("normal", "inner_race", "outer_race", "ball")


def _clientapp_running(pgid: int) -> bool:
    """Whether a ``flwr-clientapp`` process runs in process group ``pgid``."""
    return bool(group_processes(pgid, b"flwr-clientapp"))


def _kill_when_training(victim: Child, killed: threading.Event) -> None:
    pgid = victim.proc.pid  # the SuperNode leads its own process group (ProcessGroup.start)
    deadline = time.monotonic() + 120
    while not _clientapp_running(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # inside train(): store loaded, model received
    os.killpg(pgid, signal.SIGKILL)
    killed.set()


def _wait_online(federation: LocalFederation, count: int) -> None:
    deadline = time.monotonic() + 120
    while sum(n.get("status") == "online" for n in federation.nodes()) < count:
        assert time.monotonic() < deadline, "SuperNodes did not come online"
        time.sleep(2)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_round_completes_without_a_site_killed_mid_round(tmp_path: Path) -> None:
    # Prepare
    nodes = []
    for i, site in enumerate(SITES):
        store = tmp_path / site / "store.sqlite"
        store.parent.mkdir()
        seed_store(store, MachineProfile(rpm=1797 - 15 * i), MODES, windows_per_mode=10, seed=i)
        nodes.append(SiteNode(site, store))
    lines: list[str] = []
    killed = threading.Event()

    # Execute
    with ProcessGroup(tmp_path / "logs") as group:
        federation = LocalFederation(group, tmp_path)
        federation.start(nodes)
        _wait_online(federation, len(SITES))  # round 1 must sample all four
        victim = next(c for c in group.children if c.name == f"supernode-{VICTIM}")
        killer = threading.Thread(target=_kill_when_training, args=(victim, killed), daemon=True)

        def on_line(line: str) -> None:
            lines.append(line)
            if "[ROUND 2/" in line and not killer.is_alive() and not killed.is_set():
                killer.start()

        code = federation.run(
            app_dir(),
            {
                "num-server-rounds": 3,
                "local-epochs": 1,
                "min-sites": 3,  # later rounds sample the three survivors
                "min-reply-fraction": 0.75,  # 3 of 4 replies carry round 2
                "registry-dir": str(tmp_path / "registry"),
                "checkpoint-dir": str(tmp_path / "checkpoints"),
                "run-name": "faults",
            },
            on_line=on_line,
            timeout_s=800,
        )
        survivors_alive = [c.alive() for c in group.children if c.name != f"supernode-{VICTIM}"]

    # Assert
    assert code == 0, "\n".join(lines[-40:])
    assert killed.is_set()
    assert all(survivors_alive)
    ckpt = CheckpointStore(tmp_path / "checkpoints" / "faults").latest()
    assert ckpt is not None
    logs = ckpt.round_logs
    assert sorted(logs) == [1, 2, 3]
    assert logs[1].sites == SITES
    assert logs[2].sampled == 4  # the victim was asked to train ...
    assert logs[2].sites == SITES[:3]  # ... and its reply is missing
    assert logs[3].sites == SITES[:3]
    assert not any(log.skipped for log in logs.values())
    # every round, the one without the dead site included, was published
    assert [c.server_round for c in FileRegistry(tmp_path / "registry").cards()] == [1, 2, 3]
    assert ckpt.registry_versions.keys() == {1, 2, 3}
