"""Child-process supervision for local orchestration: start, log to files, stop in order."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)


def venv_bin(name: str) -> str:
    """Path of console script ``name`` next to the running interpreter (falls back to PATH)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class Child:
    """A started child process and where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        """Last lines of the child's log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class ProcessGroup:
    """Children started in order and stopped in reverse order (also on Ctrl-C)."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        """Start ``argv`` with stdout and stderr sent to ``<log_dir>/<name>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
            )
        child = Child(name, proc, log_path)
        self.children.append(child)
        logger.debug("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return child

    def check_alive(self) -> None:
        """Raise ``RuntimeError`` naming any child that has exited."""
        for child in self.children:
            if not child.alive():
                raise RuntimeError(
                    f"{child.name} exited with code {child.proc.returncode}; "
                    f"last log lines:\n{child.tail()}"
                )

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every child (newest first), then SIGKILL what is left after ``timeout_s``."""
        for child in reversed(self.children):
            if child.alive():
                _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in time; killing it", child.name)
                _signal_group(child.proc, signal.SIGKILL)
                child.proc.wait()
        self.children.clear()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the child's whole process group (Flower's subprocesses included)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def terminate(
    proc: subprocess.Popen[bytes], timeout_s: float = 5.0, sig: int = signal.SIGTERM
) -> int:
    """Send ``sig`` (SIGTERM: let it save its state), wait ``timeout_s``, then kill it.

    Returns the exit status; a process already gone just returns its status.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def group_processes(pgid: int, command: bytes) -> list[int]:
    """Pids in process group ``pgid`` whose command line contains ``command`` (Linux ``/proc``).

    A SuperNode starts its ``flwr-clientapp`` processes in its own group: this finds them, to
    kill a site in the middle of its work in the fault tests and benches.
    """
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        # fields after the ")" that ends the command name: state ppid pgrp ...
        if int(stat[stat.rfind(")") + 2 :].split()[2]) == pgid and command in cmdline:
            pids.append(int(entry.name))
    return pids
