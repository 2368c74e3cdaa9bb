"""Start a local Flower federation (SuperLink + SuperNodes) and launch runs with ``flwr run``.

This is how the demo and the integration tests drive Flower: real ``flower-superlink`` and
``flower-supernode`` processes on loopback ports, and the run started the way Flower users start
runs, with ``flwr run <app> <connection> --stream`` reading ``$FLWR_HOME/config.toml``.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fedpm.netutil import free_port, wait_for_port
from fedpm.procs import ProcessGroup, venv_bin

logger = logging.getLogger(__name__)

CONNECTION = "fedpm-local"


@dataclass(frozen=True)
class SiteNode:
    """One SuperNode: the site it stands for and its edge agent's store."""

    site_id: str
    store_path: Path


def toml_value(value: object) -> str:
    """Render a scalar as a TOML value (for ``--run-config`` and ``--node-config``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def config_arg(values: Mapping[str, object]) -> str:
    """``key=value`` pairs separated by spaces, as Flower's config flags take them."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in values.items())


class LocalFederation:
    """A SuperLink and one SuperNode per site, all children of ``group``, insecure (dev only)."""

    def __init__(self, group: ProcessGroup, workdir: Path) -> None:
        self.group = group
        self.workdir = workdir
        self.flwr_home = workdir / "flwr-home"
        self.port = free_port()

    def env(self) -> dict[str, str]:
        """Environment for Flower's processes: our FLWR_HOME, and the venv's scripts on PATH.

        The SuperLink and SuperNodes start ``flower-superexec`` and ``flwr-*app`` by name.
        """
        scripts = str(Path(venv_bin("flwr")).parent)
        return {
            "FLWR_HOME": str(self.flwr_home),
            "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def start(self, sites: list[SiteNode]) -> None:
        """Start the SuperLink, then a SuperNode per site."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n',
            encoding="utf-8",
        )
        env = self.env()
        superlink = self.group.start(
            "superlink",
            [
                venv_bin("flower-superlink"),
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ],
            env=env,
            cwd=self.workdir,
        )
        wait_for_port("127.0.0.1", self.port, timeout_s=60, alive=superlink.alive)
        for site in sites:
            node_config = {"store-path": str(site.store_path), "site-id": site.site_id}
            self.group.start(
                f"supernode-{site.site_id}",
                [
                    venv_bin("flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{self.port}",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    config_arg(node_config),
                ],
                env=env,
                cwd=self.workdir,
            )

    def run(
        self,
        app_dir: Path,
        run_config: Mapping[str, object],
        *,
        on_line: Callable[[str], None] | None = None,
        timeout_s: float = 1800.0,
    ) -> int:
        """Launch a run with ``flwr run --stream`` and wait for it; returns flwr's exit code.

        Every streamed line goes to ``<workdir>/flwr-run.log`` and to ``on_line``.
        """
        argv = [
            venv_bin("flwr"),
            "run",
            str(app_dir),
            CONNECTION,
            "--stream",
            "--run-config",
            config_arg(run_config),
        ]
        env = self.env()
        log_path = self.workdir / "flwr-run.log"
        with (
            open(log_path, "a", encoding="utf-8") as log,
            subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
                cwd=app_dir,
                text=True,
                bufsize=1,
            ) as proc,
        ):
            for line in proc.stdout or ():
                log.write(line)
                log.flush()
                if on_line is not None:
                    on_line(line.rstrip("\n"))
            try:
                return proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
