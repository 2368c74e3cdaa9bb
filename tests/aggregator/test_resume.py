"""A real federation whose ServerApp is SIGKILLed mid-run and restarted under the same run-name.

One federation (SuperLink + two SuperNodes) serves three ``flwr run`` launches in turn: an
uninterrupted reference run, a run whose ``flwr-serverapp`` process is SIGKILLed once its
round-1 checkpoint is on disk (while round 2 is in flight), and that run restarted with the same
``run-name``. The SuperNodes stay up, so their node ids, and with them the clients' training
seeds (``seed + 1000 * server-round + node_id % 1000``), are the same in all three: the resumed
run must end with the reference run's weights, bit for bit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from aggregator.checkpoint import Checkpoint, CheckpointStore
from fedpm.demo import app_dir
from fedpm.federation import CONNECTION, LocalFederation, SiteNode, config_arg
from fedpm.procs import ProcessGroup, venv_bin
from fedpm.seed_store import seed_store
from models.registry import FileRegistry
from models.simulator import MachineProfile

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SITES = {
    "plant-north": (1797.0, ("normal", "inner_race", "ball")),
    "plant-south": (1750.0, ("normal", "outer_race", "inner_race")),
}


def _descendants(root: int) -> dict[int, str]:
    """Command lines of every process below ``root`` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid:
                try:
                    found[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().decode()
                except OSError:
                    continue
                frontier.append(child)
    return found


def _launch(
    federation: LocalFederation, run_config: dict[str, object], log: Path
) -> subprocess.Popen[bytes]:
    argv = [venv_bin("flwr"), "run", str(app_dir()), CONNECTION, "--stream"]
    argv += ["--run-config", config_arg(run_config)]
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **federation.env()},
            cwd=app_dir(),
        )


def _wait(proc: subprocess.Popen[bytes], log: Path) -> None:
    code = proc.wait(timeout=600)
    assert code == 0, log.read_text(errors="replace")[-3000:]


def _checkpoint(directory: Path, server_round: int) -> Checkpoint:
    return Checkpoint.from_bytes(CheckpointStore(directory).path_for(server_round).read_bytes())


def test_serverapp_killed_mid_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    # Prepare
    nodes = []
    for i, (site, (rpm, modes)) in enumerate(SITES.items()):
        store = tmp_path / site / "store.sqlite"
        store.parent.mkdir()
        seed_store(store, MachineProfile(rpm=rpm), modes, windows_per_mode=30, seed=10 * i)
        nodes.append(SiteNode(site, store))
    ckpt_dir = tmp_path / "checkpoints"
    base = {"num-server-rounds": 2, "min-sites": 2, "checkpoint-dir": str(ckpt_dir)}
    ref_cfg = {**base, "run-name": "reference", "registry-dir": str(tmp_path / "reg-ref")}
    crash_cfg = {**base, "run-name": "crash", "registry-dir": str(tmp_path / "reg-crash")}
    log = tmp_path / "flwr-runs.log"

    with ProcessGroup(tmp_path / "logs") as group:
        federation = LocalFederation(group, tmp_path)
        federation.start(nodes)
        superlink = group.children[0].proc.pid

        # Execute: the reference run, then a run killed while round 2 is in flight
        _wait(_launch(federation, ref_cfg, log), log)
        crashing = _launch(federation, crash_cfg, log)
        first = CheckpointStore(ckpt_dir / "crash").path_for(1)
        while not first.exists():
            assert crashing.poll() is None, log.read_text(errors="replace")[-3000:]
            time.sleep(0.05)
        serverapps = [p for p, cmd in _descendants(superlink).items() if "flwr-serverapp" in cmd]
        assert len(serverapps) == 1
        os.kill(serverapps[0], signal.SIGKILL)
        crashing.kill()
        crashing.wait()
        killed_at = CheckpointStore(ckpt_dir / "crash").rounds()
        _wait(_launch(federation, crash_cfg, log), log)

    # Assert: the kill left round 1 only; the restart completed round 2 from it
    assert killed_at == [1]
    ref1, ref2 = _checkpoint(ckpt_dir / "reference", 1), _checkpoint(ckpt_dir / "reference", 2)
    crash1, crash2 = _checkpoint(ckpt_dir / "crash", 1), _checkpoint(ckpt_dir / "crash", 2)
    assert crash1.weights_sha256 == ref1.weights_sha256  # same seeds, same round-1 model
    assert crash2.weights_sha256 == ref2.weights_sha256  # resumed from it: same final model
    assert len(crash2.flower_run_ids) == 2  # written by the killed run, then the restarted one
    assert crash2.round_logs[1].sites == crash2.round_logs[2].sites == tuple(sorted(SITES))
    cards = FileRegistry(tmp_path / "reg-crash").cards()
    assert [c.server_round for c in cards] == [1, 2]  # each round published exactly once
    assert crash2.registry_versions == {c.server_round: c.version for c in cards}
    assert cards[1].run_id == crash2.flower_run_ids[1]
