"""Start a local Flower federation (SuperLink + SuperNodes) and launch runs with ``flwr run``.

This is how the demo and the integration tests drive Flower: real ``flower-superlink`` and
``flower-supernode`` processes on loopback ports, and the run started the way Flower users start
runs, with ``flwr run <app> <connection> --stream`` reading ``$FLWR_HOME/config.toml``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedpm.netutil import free_port, wait_for_port
from fedpm.pki import NodeKey, ServerTls
from fedpm.procs import Child, ProcessGroup, venv_bin

logger = logging.getLogger(__name__)

CONNECTION = "fedpm-local"


@dataclass(frozen=True)
class SiteNode:
    """One SuperNode: the site it stands for, its edge agent's store and its key pair."""

    site_id: str
    store_path: Path
    auth_key: NodeKey | None = None  # SuperNode authentication key pair (see fedpm.pki)


def toml_value(value: object) -> str:
    """Render a scalar as a TOML value: bool, int, float or a basic (double-quoted) string.

    >>> print(toml_value("it's"), toml_value(True), toml_value(3))
    "it's" true 3
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    # JSON's string escapes (\\, \", \n, \uXXXX) are all valid in a TOML basic string
    return json.dumps(str(value), ensure_ascii=False)


def flag_value(value: object) -> str:
    """Render a scalar for Flower's ``--run-config`` / ``--node-config`` ``key=value`` flags.

    Flower cuts a quoted value at the next quote of the same kind, escaped or not, so a string
    with a double quote goes in a literal ``'...'`` string; one with both quote kinds, or with a
    double quote and a control character, cannot be passed this way at all.

    Raises
    ------
    ValueError
        The string cannot be carried by a Flower config flag.

    Examples
    --------
    >>> print(flag_value('say "hi"'), flag_value("it's"))
    'say "hi"' "it's"
    """
    if not isinstance(value, str) or '"' not in value:
        return toml_value(value)
    if "'" in value or any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise ValueError(
            f"{value!r} has a double quote together with a single quote or a control "
            "character: Flower's key=value config flags cannot carry it"
        )
    return f"'{value}'"


def config_arg(values: Mapping[str, object]) -> str:
    """``key=value`` pairs separated by spaces, as Flower's config flags take them."""
    return " ".join(f"{k}={flag_value(v)}" for k, v in values.items())


class FederationError(RuntimeError):
    """A ``flwr`` command against the local SuperLink failed (its output is in the message)."""


class LocalFederation:
    """A SuperLink and one SuperNode per site, all children of ``group``.

    Parameters
    ----------
    group : ProcessGroup
        Starts (and later stops) the Flower processes.
    workdir : Path
        Holds ``flwr-home/`` (the ``flwr`` CLI's config) and ``flwr-run.log``.
    tls : ServerTls or None
        The SuperLink's TLS files (see :func:`fedpm.pki.write_server_tls`); the SuperNodes and
        ``flwr`` trust ``tls.ca_cert``. ``None`` runs insecure, for development only.
    node_auth : bool
        SuperNode authentication (``--enable-supernode-auth``): only SuperNodes whose public key
        was registered (``flwr supernode register``) may join. Needs ``tls``; every site then
        needs an ``auth_key``.
    """

    def __init__(
        self,
        group: ProcessGroup,
        workdir: Path,
        *,
        tls: ServerTls | None = None,
        node_auth: bool = False,
    ) -> None:
        if node_auth and tls is None:
            raise ValueError("SuperNode authentication needs TLS: pass tls= as well")
        if tls is not None:
            for path in (tls.ca_cert, tls.cert, tls.key):
                if not path.is_file():
                    raise ValueError(f"TLS file {path} does not exist")
        self.group = group
        self.workdir = workdir
        self.flwr_home = workdir / "flwr-home"
        self.port = free_port()
        self.tls = tls
        self.node_auth = node_auth

    @property
    def address(self) -> str:
        """``host:port`` of the SuperLink (Fleet and Control API)."""
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment for Flower's processes: our FLWR_HOME, and the venv's scripts on PATH.

        The SuperLink and SuperNodes start ``flower-superexec`` and ``flwr-*app`` by name.
        """
        scripts = str(Path(venv_bin("flwr")).parent)
        return {
            "FLWR_HOME": str(self.flwr_home),
            "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def _write_cli_config(self) -> None:
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        if self.tls is None:
            transport = "insecure = true\n"
        else:
            transport = f"root-certificates = {toml_value(str(self.tls.ca_cert))}\n"
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "{self.address}"\n{transport}',
            encoding="utf-8",
        )

    def start(self, sites: list[SiteNode]) -> None:
        """Start the SuperLink, register the sites' keys (node auth), then a SuperNode per site.

        Raises
        ------
        ValueError
            Node authentication is on and a site has no ``auth_key``.
        FederationError
            A site's public key could not be registered.
        """
        if self.node_auth:
            keyless = [s.site_id for s in sites if s.auth_key is None]
            if keyless:
                raise ValueError(f"node authentication is on but sites {keyless} have no key")
        self._write_cli_config()
        argv = [venv_bin("flower-superlink")]
        if self.tls is None:
            argv.append("--insecure")
        else:
            argv += [
                "--ssl-ca-certfile",
                str(self.tls.ca_cert),
                "--ssl-certfile",
                str(self.tls.cert),
                "--ssl-keyfile",
                str(self.tls.key),
            ]
        if self.node_auth:
            argv.append("--enable-supernode-auth")
        argv += [
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        superlink = self.group.start("superlink", argv, env=self.env(), cwd=self.workdir)
        wait_for_port("127.0.0.1", self.port, timeout_s=60, alive=superlink.alive)
        for site in sites:
            if self.node_auth and site.auth_key is not None:
                self.register_node(site.auth_key.public_key, name=site.site_id)
            self.start_supernode(site)

    def start_supernode(
        self,
        site: SiteNode,
        *,
        root_certificates: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> Child:
        """Start one ``flower-supernode`` for ``site`` (logged to ``supernode-<site>.log``).

        Parameters
        ----------
        site : SiteNode
            The site; its ``auth_key``, when set, is passed as ``--auth-supernode-private-key``.
        root_certificates : Path or None
            CA the SuperNode trusts; defaults to the federation's CA (or ``--insecure``).
        extra_args : Sequence[str]
            More ``flower-supernode`` flags (for instance ``--max-retries``).
        """
        node_config = {"store-path": str(site.store_path), "site-id": site.site_id}
        argv = [venv_bin("flower-supernode")]
        ca = root_certificates or (self.tls.ca_cert if self.tls is not None else None)
        argv += ["--insecure"] if ca is None else ["--root-certificates", str(ca)]
        if site.auth_key is not None:
            argv += ["--auth-supernode-private-key", str(site.auth_key.private_key)]
        argv += [
            "--superlink",
            self.address,
            "--port",
            str(free_port()),
            "--node-config",
            config_arg(node_config),
            *extra_args,
        ]
        return self.group.start(f"supernode-{site.site_id}", argv, env=self.env(), cwd=self.workdir)

    def flwr(self, *args: str, timeout_s: float = 60.0) -> str:
        """Run ``flwr <args>`` against this federation and return its standard output.

        Raises
        ------
        FederationError
            ``flwr`` exited with a non-zero code.
        """
        result = subprocess.run(
            [venv_bin("flwr"), *args],
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            cwd=self.workdir,
        )
        if result.returncode != 0:
            raise FederationError(
                f"flwr {' '.join(args)} exited with {result.returncode}: "
                f"{(result.stdout + result.stderr).strip()[-2000:]}"
            )
        return result.stdout

    def register_node(self, public_key: Path, *, name: str | None = None) -> int:
        """Register a SuperNode's public key with the SuperLink; returns its node id."""
        args = ["supernode", "register", str(public_key), CONNECTION, "--format", "json"]
        if name is not None:
            args += ["--name", name]
        reply = _last_json(self.flwr(*args))
        if not reply.get("success") or "node-id" not in reply:
            raise FederationError(f"registering {public_key} failed: {reply}")
        return int(str(reply["node-id"]))

    def nodes(self) -> list[dict[str, object]]:
        """The SuperNodes the SuperLink knows (``flwr supernode list --format json``)."""
        reply = _last_json(self.flwr("supernode", "list", CONNECTION, "--format", "json"))
        nodes = reply.get("nodes", [])
        if not isinstance(nodes, list):
            raise FederationError(f"unexpected flwr supernode list output: {reply}")
        return nodes

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


def _last_json(text: str) -> dict[str, object]:
    """The JSON object ``flwr --format json`` printed last (it may print a banner first)."""
    start = text.find("{")
    if start < 0:
        raise FederationError(f"no JSON in flwr output: {text.strip()[-500:]}")
    try:
        value = json.loads(text[start:])
    except json.JSONDecodeError as exc:
        raise FederationError(f"unreadable flwr output: {text.strip()[-500:]}") from exc
    if not isinstance(value, dict):
        raise FederationError(f"unexpected flwr output: {text.strip()[-500:]}")
    return value
