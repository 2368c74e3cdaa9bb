"""Small networking helpers for local orchestration."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    host: str, port: int, timeout_s: float = 15.0, alive: Callable[[], bool] | None = None
) -> None:
    """Block until a TCP connection to ``host:port`` succeeds, or raise ``TimeoutError``.

    ``alive``, when given, is polled too: once it returns False, waiting stops at once.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if alive is not None and not alive():
            raise TimeoutError(f"the process meant to listen on {host}:{port} has exited")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on {host}:{port} after {timeout_s} s"
                ) from None
            time.sleep(0.05)
