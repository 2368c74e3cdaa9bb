"""Run a Mosquitto broker as a child process on a loopback port (demo and tests).

Mosquitto's defaults drop messages silently behind a slow subscriber
(``max_queued_messages 1000``); the generated configuration lifts that limit so that a
persistent-session subscriber that falls behind loses nothing while the broker runs.

With a ``persistence_dir`` the broker can be stopped and started again on the same port
(a broker outage in a fault test): a clean stop writes the sessions, their queued and
in-flight QoS 1 messages and the retained messages to ``mosquitto.db`` there, and the next
start loads them.
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from fedpm.netutil import free_port, wait_for_port
from fedpm.procs import terminate

logger = logging.getLogger(__name__)

_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin"]
)
INSTALL_HINT = (
    "Mosquitto is not installed. On Debian/Ubuntu: `sudo apt-get install mosquitto` "
    "(the broker binary lands in /usr/sbin/mosquitto); on macOS: `brew install mosquitto`."
)


class BrokerError(RuntimeError):
    """The broker binary is missing or did not start."""


def find_mosquitto() -> str | None:
    """Path of the ``mosquitto`` binary, or ``None``."""
    return shutil.which("mosquitto", path=_SEARCH_PATH)


class MosquittoBroker:
    """A private Mosquitto on ``127.0.0.1:<free port>``; use as a context manager.

    Parameters
    ----------
    port
        Listening port; a free one when ``None``. It stays the same across restarts.
    persistence_dir
        Folder of the broker's persistence file; ``None`` keeps everything in memory only.

    Examples
    --------
    An outage of a broker that keeps its sessions (needs the ``mosquitto`` binary)::

        broker = MosquittoBroker(persistence_dir=Path("var/mqtt")).start()
        broker.stop()  # clients reconnect in vain; publishers queue
        broker.start()  # same port, same sessions and queued messages
    """

    def __init__(self, port: int | None = None, *, persistence_dir: Path | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._persistence_dir = persistence_dir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def _config(self, workdir: Path) -> str:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "max_queued_messages 0",  # 0 = unlimited: never drop behind a slow subscriber
            "max_queued_bytes 0",
            "max_inflight_messages 100",
            "max_packet_size 8388608",
            "persistent_client_expiration 1d",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if self._persistence_dir is not None:
            self._persistence_dir.mkdir(parents=True, exist_ok=True)
            lines += [
                "persistence true",
                f"persistence_location {self._persistence_dir}/",
                # run as root, mosquitto drops to user "mosquitto", who cannot write our folder
                f"user {getpass.getuser()}",
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> MosquittoBroker:
        """Start the broker and wait until it accepts connections (again after :meth:`stop`).

        Raises
        ------
        BrokerError
            The binary is missing, the broker is already running, or it did not start.
        """
        if self.running:
            raise BrokerError(f"mosquitto is already running on port {self.port}")
        binary = find_mosquitto()
        if binary is None:
            raise BrokerError(INSTALL_HINT)
        self._tmp = tempfile.TemporaryDirectory(prefix="fedpm-mosquitto-")
        workdir = Path(self._tmp.name)
        conf = workdir / "mosquitto.conf"
        conf.write_text(self._config(workdir), encoding="utf-8")
        log = open(workdir / "mosquitto.log", "wb")  # noqa: SIM115 - handed to the child
        self._proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
        log.close()
        try:
            wait_for_port(self.host, self.port, timeout_s=10)
        except TimeoutError as exc:
            self.stop()
            raise BrokerError(f"mosquitto did not start on port {self.port}") from exc
        logger.info("mosquitto listening on %s:%d", self.host, self.port)
        return self

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Terminate the broker, letting it save its persistence (idempotent)."""
        if self._proc is not None:
            terminate(self._proc)
        self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
