"""Helpers for the serving tests: API keys in a state file, clients that send them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedpm.netutil import free_port
from serving.state import Permission, SqliteStateStore

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # see conftest.py
    from fastapi.testclient import TestClient

ALL_PERMISSIONS = tuple(Permission)


ALL_PERMISSIONS = tuple(Permission)


def api_key(state_path: Path, tenant: str = "acme", **scope: Any) -> str:
    """Create an API key in the state file at ``state_path`` (all permissions by default)."""
    store = SqliteStateStore(state_path)
    try:
        permissions = scope.pop("permissions", ALL_PERMISSIONS)
        return store.create_key(tenant, permissions, **scope)[1]
    finally:
        store.close()


def authorised(test_client: TestClient, key: str) -> TestClient:
    """Send ``key`` with every request of ``test_client``."""
    test_client.headers["Authorization"] = f"Bearer {key}"
    return test_client


@contextmanager
def running_service(
    registry: Path, cwd: Path, *args: str, env: dict[str, str] | None = None, ready: str = "/health"
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``python -m serving`` on a free loopback port, until ``ready`` answers 200.

    Yields the base URL and the process; stops it with SIGINT (then SIGKILL) on exit. A process
    that exits first, or takes over 90 s (a loaded 2-core machine starts slowly), fails the test
    with its output.
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving", "--registry", str(registry), "--port", str(port), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{proc.stdout.read()}")
            try:
                if httpx.get(f"{base}{ready}", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not answer {ready} within 90 s")
            time.sleep(0.1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
