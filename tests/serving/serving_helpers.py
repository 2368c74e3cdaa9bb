"""Helpers for the serving tests: API keys in a state file, clients that send them."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

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
