"""Fixtures for the serving tests: real ONNX models in real filesystem registries."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving_helpers import api_key, authorised

from models.metadata import ModelMetadata, Provenance
from models.network import build_model
from models.onnx_export import export_onnx, metadata_for
from models.registry import FileRegistry
from serving.app import create_app
from serving.settings import ServeSettings

with warnings.catch_warnings():
    # Starlette 1.x deprecates plain httpx for its TestClient (it wants httpx2) and the import
    # touches a deprecated anyio alias; neither concerns the code under test.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

FS_HZ = 12_000.0
WINDOW = 2048
CLASSES = ("normal", "inner_race", "outer_race", "ball")


@dataclass(frozen=True)
class ExportedModels:
    """Two different real models sharing one input contract."""

    metadata: ModelMetadata
    first: bytes  # build_model(seed=0)
    second: bytes  # build_model(seed=1)


@pytest.fixture(scope="session")
def exported() -> ExportedModels:
    net = build_model(seed=0)
    metadata = metadata_for(
        net,
        sample_rate_hz=FS_HZ,
        class_names=CLASSES,
        provenance=Provenance(source="untrained", run_id="run-test"),
    )
    return ExportedModels(
        metadata=metadata,
        first=export_onnx(net, metadata),
        second=export_onnx(build_model(seed=1), metadata),
    )


def publish(registry: FileRegistry, data: bytes, metadata: ModelMetadata, rnd: int) -> None:
    registry.publish(
        data,
        metadata,
        run_id="run-test",
        server_round=rnd,
        sites=("site-a", "site-b"),
        metrics={"accuracy": 0.5 + rnd / 100},
        site_metrics={"site-a": {"accuracy": 0.5}, "site-b": {"accuracy": 0.6}},
    )


@pytest.fixture(scope="session")
def served_registry(tmp_path_factory: pytest.TempPathFactory, exported: ExportedModels) -> Path:
    """A registry holding one version (v1); read-only for the tests."""
    root = tmp_path_factory.mktemp("registry")
    publish(FileRegistry(root), exported.first, exported.metadata, rnd=3)
    return root


@pytest.fixture
def two_versions(tmp_path: Path, exported: ExportedModels) -> FileRegistry:
    """A fresh registry with v1 (seed 0) and v2 (seed 1), free to tamper with."""
    registry = FileRegistry(tmp_path / "registry")
    publish(registry, exported.first, exported.metadata, rnd=1)
    publish(registry, exported.second, exported.metadata, rnd=2)
    return registry


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def flip_byte() -> Callable[[Path], None]:
    """Corrupt one byte in the middle of a file, keeping its size."""
    return _flip_byte


@pytest.fixture(scope="session")
def client(served_registry: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A started app (lifespan run) serving :func:`served_registry`, with an all-powerful key."""
    state = tmp_path_factory.mktemp("state") / "state.sqlite"
    settings = ServeSettings(registry_dir=served_registry, state_path=state)
    key = api_key(state)
    with TestClient(create_app(settings)) as test_client:
        yield authorised(test_client, key)


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client() -> Iterator[ClientFactory]:
    """Start apps on given settings; every one is shut down after the test."""
    started: list[TestClient] = []

    def make(registry_dir: Path, **overrides: Any) -> TestClient:
        overrides.setdefault("state_path", registry_dir.parent / f"state-{len(started)}.sqlite")
        settings = ServeSettings(registry_dir=registry_dir, **overrides)
        key = api_key(settings.state_path)
        test_client = TestClient(create_app(settings))
        test_client.__enter__()
        started.append(test_client)
        return authorised(test_client, key)

    yield make
    for test_client in started:
        test_client.__exit__(None, None, None)


def _sine_window(
    n: int = WINDOW, fs: float = FS_HZ, freq: float = 157.0, amp: float = 0.5, seed: int = 0
) -> list[float]:
    t = np.arange(n) / fs
    noise = np.random.default_rng(seed).normal(scale=0.05, size=n)
    return (amp * np.sin(2 * np.pi * freq * t) + noise).tolist()


@pytest.fixture
def window() -> Callable[..., list[float]]:
    """``window(n=2048, fs=12000, freq=157, amp=0.5, seed=0)``: a sine of ``amp`` g at
    ``freq`` Hz plus a little noise, as a JSON-ready list."""
    return _sine_window
