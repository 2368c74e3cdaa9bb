"""TLS material and a TLS Mosquitto for the edge-agent tests (real broker, real handshakes).

:func:`make_pki` writes a CA, a server certificate for ``127.0.0.1`` and ``localhost`` (subject
alternative names, unless told otherwise) and a client certificate; :class:`TlsBroker` runs
``mosquitto`` with one TLS listener on a free loopback port, asking for a password or for a
client certificate."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from fedpm.broker import find_mosquitto
from fedpm.netutil import free_port, wait_for_port
from fedpm.pki import issue_cert, write_ca
from fedpm.procs import terminate


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files of one test CA and the certificates it signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_name: str


def make_pki(
    folder: Path,
    *,
    ca_name: str = "FedPM test CA",
    client: str = "edge-plant-a",
    server_names: tuple[str, ...] = ("localhost", "127.0.0.1"),
) -> Pki:
    """A CA, a server certificate for ``server_names``, a client certificate (CN ``client``).

    Made with the product's own :mod:`fedpm.pki`, as ``docker/scripts/make-dev-certs.sh`` does.
    """
    ca = write_ca(folder, valid_days=1, common_name=ca_name)
    server_cert, server_key = issue_cert(ca, folder, "broker", hosts=server_names, valid_days=1)
    client_cert, client_key = issue_cert(ca, folder, client, client=True, valid_days=1)
    return Pki(
        ca=ca.cert,
        server_cert=server_cert,
        server_key=server_key,
        client_cert=client_cert,
        client_key=client_key,
        client_name=client,
    )


class TlsBroker:
    """Mosquitto with one TLS listener on ``127.0.0.1:<free port>``; a context manager.

    Parameters
    ----------
    folder
        Where the configuration, password file and log go.
    pki
        The server certificate and the CA that client certificates must chain to.
    users
        ``{username: password}``: clients log in with a password (``mosquitto_passwd``).
    client_certificates
        Clients must present a certificate signed by ``pki.ca``; its CN is the username.
    """

    def __init__(
        self,
        folder: Path,
        pki: Pki,
        *,
        users: dict[str, str] | None = None,
        client_certificates: bool = False,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.folder = folder
        self.pki = pki
        self.users = users or {}
        self.client_certificates = client_certificates
        self._proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        lines = [
            "per_listener_settings false",
            f"listener {self.port} {self.host}",
            f"cafile {self.pki.ca}",
            f"certfile {self.pki.server_cert}",
            f"keyfile {self.pki.server_key}",
            "tls_version tlsv1.2",
            "allow_anonymous false",
            "max_queued_messages 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:  # else mosquitto drops to user "mosquitto", who cannot read tmp
            lines.append("user root")
        if self.client_certificates:
            lines += ["require_certificate true", "use_identity_as_username true"]
        if self.users:
            lines.append(f"password_file {self._password_file()}")
        return "\n".join(lines) + "\n"

    def _password_file(self) -> Path:
        tool = shutil.which("mosquitto_passwd")
        if tool is None:
            raise RuntimeError("mosquitto_passwd is not installed")
        path = self.folder / "passwd"
        path.unlink(missing_ok=True)
        for user, password in self.users.items():
            flags = ["-b"] if path.exists() else ["-c", "-b"]
            subprocess.run([tool, *flags, str(path), user, password], check=True)
        path.chmod(0o600)
        return path

    @property
    def log_path(self) -> Path:
        """Mosquitto's log file."""
        return self.folder / "mosquitto.log"

    def start(self) -> TlsBroker:
        """Start mosquitto and wait until its port accepts TCP connections."""
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError("mosquitto is not installed")
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "mosquitto.conf"
        conf.write_text(self._config(), encoding="utf-8")
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log)
        try:
            wait_for_port(self.host, self.port, timeout_s=10, alive=lambda: self._alive())
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"TLS mosquitto did not start:\n{self.log_path.read_text(errors='replace')}"
            ) from None
        return self

    def _alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Terminate mosquitto (idempotent)."""
        if self._proc is not None:
            terminate(self._proc)
        self._proc = None

    def __enter__(self) -> TlsBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
