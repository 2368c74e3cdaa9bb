"""A real VictoriaMetrics for the telemetry tests, and a stub for what it cannot be made to do.

VictoriaMetrics (Debian's ``victoria-metrics``) accepts InfluxDB line protocol on
``/api/v2/write``: a point ``m,tag=v f=1 ts`` becomes the sample ``m_f{tag="v"}`` at ``ts``
rounded to milliseconds. It is started with

- ``-search.latencyOffset=0s`` and ``-search.disableCache``: a read sees every sample at once;
- no ``-dedup.minScrapeInterval``: a point written twice is kept twice, so ``/api/v1/export``
  shows a duplicate as a duplicate;
- ``-retentionPeriod=100y``: old test timestamps are not dropped.

Samples ingested in the last second sit in an in-memory buffer; :meth:`VictoriaMetrics.export`
asks ``/internal/force_flush`` first so they can be read.

VictoriaMetrics skips a malformed line with a log message and still answers 204, so the
InfluxDB answers to bad points (400 with a JSON body) and to a bad token (401) come from
:class:`InfluxWriteStub`, a small HTTP server that speaks only the v2 write endpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from fedpm.netutil import free_port
from fedpm.procs import terminate

HOST = "127.0.0.1"
Series = tuple[tuple[str, str], ...]


def find_victoria_metrics() -> str | None:
    """Path of the ``victoria-metrics`` binary, or None."""
    return shutil.which("victoria-metrics") or (
        "/usr/bin/victoria-metrics" if Path("/usr/bin/victoria-metrics").is_file() else None
    )


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until true; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


class VictoriaMetrics:
    """One ``victoria-metrics`` child process on a fixed loopback port and storage folder.

    :meth:`stop` and :meth:`start` may alternate: the port and the data survive.
    """

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        binary = find_victoria_metrics()
        if binary is None:
            raise FileNotFoundError("victoria-metrics is not installed")
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL (the InfluxDB ``url`` setting)."""
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        """Start it and wait until ``/health`` answers."""
        assert self.proc is None, "already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"-httpListenAddr={HOST}:{self.port}",
                    f"-storageDataPath={self.data_dir}",
                    "-retentionPeriod=100y",
                    "-search.latencyOffset=0s",
                    "-search.disableCache",
                    "-loggerLevel=WARN",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._healthy, 30, f"victoria-metrics on port {self.port} (see {self.log_path})")

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"victoria-metrics exited {self.proc.returncode}; see log")
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """Stop it gracefully (SIGTERM: in-flight writes finish, buffers reach the disk)."""
        if self.proc is None:
            return
        terminate(self.proc, 30.0)
        self.proc = None

    def export(self, match: str = '{__name__=~"fedpm_.*"}') -> dict[Series, list[int]]:
        """Every stored sample of the matching series: series labels -> timestamps (ms).

        Duplicates are kept, in storage order; ``__name__`` is one of the labels.
        """
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10):
            pass
        query = urllib.parse.urlencode({"match[]": match})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=30) as resp:
            body = resp.read().decode()
        out: dict[Series, list[int]] = {}
        for line in body.splitlines():
            if line.strip():
                row: dict[str, Any] = json.loads(line)
                key = tuple(sorted(row["metric"].items()))
                out.setdefault(key, []).extend(int(t) for t in row["timestamps"])
        return out

    def count(self, match: str = '{__name__=~"fedpm_.*"}') -> int:
        """Number of stored samples (duplicates included)."""
        return sum(len(ts) for ts in self.export(match).values())

    def __enter__(self) -> VictoriaMetrics:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# InfluxDB's line protocol, strictly enough to refuse what InfluxDB refuses as unparsable.
_KEY = r"(?:[^,= \\]|\\.)+"
_LINE = re.compile(
    rf"^{_KEY}(?:,{_KEY}={_KEY})* "
    rf"{_KEY}=(?:\"(?:[^\"\\]|\\.)*\"|-?\d+i|-?[0-9.]+(?:e-?\d+)?|true|false)"
    rf"(?:,{_KEY}=(?:\"(?:[^\"\\]|\\.)*\"|-?\d+i|-?[0-9.]+(?:e-?\d+)?|true|false))*"
    r" \d{1,19}$"
)


class InfluxWriteStub:
    """An HTTP server answering ``POST /api/v2/write`` as InfluxDB 2 does.

    A wrong token gets 401; a body with a line that does not parse gets 400 with InfluxDB's
    JSON error and nothing of it is kept; otherwise 204 and the lines are kept in
    :attr:`lines`. While ``overloaded`` is set every write gets 503 with ``Retry-After: 1``.
    ``token`` and ``overloaded`` may be changed while it runs.
    """

    def __init__(self, token: str) -> None:
        self.token = token
        self.overloaded = False
        self.lines: list[str] = []
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, answer = stub._answer(self.path, self.headers.get("Authorization"), body)
                self.send_response(status)
                if status == 503:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _answer(self, path: str, auth: str | None, body: bytes) -> tuple[int, bytes]:
        with self._lock:
            if self.overloaded:
                status, error = 503, {"code": "unavailable", "message": "too many writes"}
            elif not path.startswith("/api/v2/write"):
                status, error = 404, {"code": "not found", "message": "path not found"}
            elif auth != f"Token {self.token}":
                status, error = 401, {"code": "unauthorized", "message": "unauthorized access"}
            else:
                lines = body.decode().split("\n")
                bad = [line for line in lines if not _LINE.match(line)]
                if bad:
                    message = f"unable to parse '{bad[0]}': bad timestamp"
                    status, error = 400, {"code": "invalid", "message": message}
                else:
                    status, error = 204, {}
                    self.lines.extend(lines)
            self.statuses.append(status)
        return status, (json.dumps(error).encode() if error else b"")

    def __enter__(self) -> InfluxWriteStub:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Send ``sig`` and wait (killing after 30 s); return the exit code."""
    return terminate(proc, 30.0, sig)


def require_victoria_metrics() -> str:
    """The victoria-metrics binary; skips the test when it is absent, but fails under CI.

    CI installs it (``scripts/bootstrap.sh --dev``), so there a missing binary would silently
    skip the telemetry integration tests: it is an error instead.
    """
    binary = find_victoria_metrics()
    if binary is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("victoria-metrics missing under CI: scripts/bootstrap.sh --dev installs it")
        pytest.skip("victoria-metrics is not installed (apt-get install victoria-metrics)")
    return binary
