"""Supervision of the Flower SuperNode that runs beside the agent (``superlink`` set).

:class:`SuperNodeSupervisor` starts ``flower-supernode --superlink HOST:PORT --port P
--node-config "store-path='...' site-id='...'"`` (``--insecure`` or ``--root-certificates``),
logs each of its output lines under the ``edge_agent.supernode`` logger with a ``supernode:``
prefix, and restarts it whenever it exits: after 1 s, doubling on each quick failure up to
``supernode_restart_max_delay_s``, back to 1 s once a run lasted :data:`STABLE_AFTER_S`.
:meth:`SuperNodeSupervisor.stop` forwards SIGTERM to the SuperNode (and the ``flower-superexec``
it starts, in the same process group) and kills what is left after a grace period.

Examples
--------
>>> from edge_agent.settings import AgentSettings
>>> s = AgentSettings(site_id="plant-a", store_path="/data/a.db", superlink="cloud:9092")
>>> supernode_argv(s, "flower-supernode")[1:5]
['--superlink', 'cloud:9092', '--port', '9094']
>>> [next_delay(d, ran_s=2.0, max_delay_s=60.0) for d in (1.0, 2.0, 32.0, 60.0)]
[2.0, 4.0, 60.0, 60.0]
>>> next_delay(60.0, ran_s=STABLE_AFTER_S, max_delay_s=60.0)
1.0
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from edge_agent.errors import ConfigError
from edge_agent.settings import AgentSettings

logger = logging.getLogger(__name__)

MIN_DELAY_S = 1.0
#: a run at least this long counts as healthy: the next restart waits MIN_DELAY_S again
STABLE_AFTER_S = 60.0
STOP_GRACE_S = 10.0
_NODE_ID = re.compile(r"SuperNode ID: (\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _quoted(key: str, value: str) -> str:
    """``value`` as a TOML string that Flower's ``--node-config`` parser keeps whole.

    Flower cuts ``key='...'`` / ``key="..."`` at the first matching quote, so a value may not
    hold both quote kinds; a literal string ('...') needs no escaping.
    """
    if any(ord(c) < 0x20 or c == "\x7f" for c in value) or ("'" in value and '"' in value):
        raise ConfigError(f"{key} {value!r} cannot be passed to the SuperNode's --node-config")
    if "'" not in value:
        return f"'{value}'"
    return '"' + value.replace("\\", "\\\\") + '"'


def node_config(settings: AgentSettings) -> str:
    """The ``--node-config`` value: the store path (absolute) and the site id.

    Raises
    ------
    ConfigError
        The store path holds control characters or both quote kinds.
    """
    store = str(Path(settings.store_path).resolve())
    return (
        f"store-path={_quoted('store_path', store)} site-id={_quoted('site_id', settings.site_id)}"
    )


def supernode_executable() -> str:
    """``flower-supernode`` beside the running interpreter (a venv), else the name for PATH."""
    candidate = Path(sys.executable).parent / "flower-supernode"
    return str(candidate) if candidate.exists() else "flower-supernode"


def _check_readable(path: Path, setting: str) -> None:
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ConfigError(f"{setting} {path} cannot be read: {exc.strerror or exc}") from exc


def supernode_argv(settings: AgentSettings, executable: str | None = None) -> list[str]:
    """Command line of the SuperNode for ``settings``.

    Raises
    ------
    ConfigError
        No ``superlink`` is set; ``supernode_root_certificates`` or
        ``supernode_auth_private_key`` is set together with ``supernode_insecure = true``; or
        one of those files cannot be read.
    """
    if settings.superlink is None:
        raise ConfigError("superlink is not set: there is no SuperNode to run")
    argv = [
        executable or supernode_executable(),
        "--superlink",
        settings.superlink,
        "--port",
        str(settings.supernode_port),
        "--node-config",
        node_config(settings),
    ]
    certs = settings.supernode_root_certificates
    if certs is not None:
        if settings.supernode_insecure:
            raise ConfigError(
                "supernode_root_certificates needs supernode_insecure = false (TLS to the "
                "SuperLink); set one or the other"
            )
        _check_readable(certs, "supernode_root_certificates")
        argv += ["--root-certificates", str(certs)]
    elif settings.supernode_insecure:
        argv.append("--insecure")
    key = settings.supernode_auth_private_key
    if key is not None:
        if settings.supernode_insecure:
            raise ConfigError(
                "supernode_auth_private_key needs TLS to the SuperLink (supernode_insecure ="
                " false): Flower refuses node authentication over plain connections"
            )
        _check_readable(key, "supernode_auth_private_key")
        argv += ["--auth-supernode-private-key", str(key)]
    return argv


def next_delay(delay_s: float, *, ran_s: float, max_delay_s: float) -> float:
    """Wait before the next restart: doubled after a quick exit, reset after a stable run."""
    if ran_s >= STABLE_AFTER_S:
        return MIN_DELAY_S
    return min(max(delay_s, MIN_DELAY_S / 2) * 2, max_delay_s)


class SuperNodeSupervisor:
    """Keep one ``flower-supernode`` running until :meth:`stop`.

    Parameters
    ----------
    settings
        The agent's settings (``superlink``, ``supernode_*``, ``store_path``, ``site_id``).
    executable
        The ``flower-supernode`` to run (default: :func:`supernode_executable`).

    Raises
    ------
    ConfigError
        From :func:`supernode_argv`.
    """

    def __init__(self, settings: AgentSettings, *, executable: str | None = None) -> None:
        self.argv = supernode_argv(settings, executable)
        self._max_delay_s = settings.supernode_restart_max_delay_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._restarts = 0
        self._node_id: str | None = None
        self._thread = threading.Thread(target=self._run, name="supernode-supervisor", daemon=True)

    @property
    def restarts(self) -> int:
        """How many times the SuperNode was started again after it exited."""
        with self._lock:
            return self._restarts

    @property
    def pid(self) -> int | None:
        """Process id of the running SuperNode, ``None`` between runs."""
        with self._lock:
            proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def node_id(self) -> str | None:
        """Node id the SuperLink gave the current run (from its log), ``None`` until then."""
        with self._lock:
            return self._node_id

    def start(self) -> None:
        """Start the SuperNode and the thread that restarts it."""
        self._spawn()  # a missing executable fails here, in the caller
        self._thread.start()

    def stop(self) -> None:
        """Stop restarting; SIGTERM the SuperNode, SIGKILL it after :data:`STOP_GRACE_S`."""
        self.request_stop()
        if self._thread.is_alive():
            self._thread.join(2 * STOP_GRACE_S + 5.0)

    def request_stop(self) -> None:
        """Stop restarting and SIGTERM the SuperNode, without waiting (signal-handler safe)."""
        self._stop.set()
        proc = self._proc  # no lock: a signal handler must not wait for one
        if proc is not None and proc.returncode is None:
            _signal_group(proc, signal.SIGTERM)

    def _spawn(self) -> subprocess.Popen[bytes]:
        scripts = str(Path(sys.executable).parent)
        env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}"}
        try:
            proc = subprocess.Popen(
                self.argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # stopped through us, with its superexec child
            )
        except OSError as exc:
            raise ConfigError(f"cannot start {self.argv[0]}: {exc.strerror or exc}") from exc
        with self._lock:
            self._proc = proc
            self._node_id = None
        logger.info("supernode started (pid %d): %s", proc.pid, " ".join(self.argv))
        return proc

    def _run(self) -> None:
        delay = MIN_DELAY_S / 2
        with self._lock:
            proc = self._proc
        while proc is not None:
            started = time.monotonic()
            reader = threading.Thread(
                target=self._forward_output, args=(proc,), name="supernode-output", daemon=True
            )
            reader.start()
            while proc.poll() is None and not self._stop.wait(0.2):
                pass
            if self._stop.is_set():
                self._finish(proc)
                reader.join(STOP_GRACE_S)
                return
            _signal_group(proc, signal.SIGKILL)  # a child left behind holds the port
            reader.join(STOP_GRACE_S)
            ran_s = time.monotonic() - started
            delay = next_delay(delay, ran_s=ran_s, max_delay_s=self._max_delay_s)
            logger.warning(
                "supernode exited with code %s after %.0f s; restarting in %.0f s",
                proc.returncode,
                ran_s,
                delay,
            )
            if self._stop.wait(delay):
                return
            try:
                proc = self._spawn()
            except ConfigError as exc:
                logger.error("%s; retrying", exc)
                continue
            with self._lock:
                self._restarts += 1

    def _forward_output(self, proc: subprocess.Popen[bytes]) -> None:
        """Log the SuperNode's lines until its output closes."""
        stream: IO[bytes] | None = proc.stdout
        if stream is None:
            return
        with stream:
            for raw in stream:
                line = _ANSI.sub("", raw.decode("utf-8", errors="replace")).rstrip()
                if not line:
                    continue
                found = _NODE_ID.search(line)
                if found is not None:
                    with self._lock:
                        self._node_id = found.group(1)
                logger.info("supernode: %s", line)

    def _finish(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the SuperNode's group, SIGKILL it after the grace period."""
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            logger.warning("supernode did not stop in %g s; killing it", STOP_GRACE_S)
        _signal_group(proc, signal.SIGKILL)  # and whatever it left behind
        proc.wait()
        logger.info("supernode stopped (exit %s)", proc.returncode)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
