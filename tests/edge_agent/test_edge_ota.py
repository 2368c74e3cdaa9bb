"""Over-the-air model updates: ModelSlot with a real HTTP registry, signatures, cache, rollback.

The registry folder is served by a real ``http.server`` on a loopback port, as any static
server or object store would serve it. The one byte-level fake is the server that drops the
connection halfway through a model, which a healthy static server cannot be made to do.
"""

from __future__ import annotations

import functools
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from edge_helpers import CLASSES, FS_HZ, Exported

from edge_agent.errors import ConfigError
from edge_agent.errors import RegistryError as AgentRegistryError
from edge_agent.model_slot import ModelSlot, smoke_test
from edge_agent.model_source import FolderSource, HttpSource, ModelSource
from edge_agent.settings import AgentSettings
from models.errors import ModelFormatError, RegistryUnavailableError, VersionNotFoundError
from models.metadata import Provenance
from models.network import NetworkConfig, build_model
from models.onnx_export import export_onnx, metadata_for
from models.registry import FileRegistry
from models.runtime import OnnxClassifier
from models.signing import (
    generate_private_key,
    load_private_key,
    save_public_key,
    write_key_pair,
)

SITE = "plant-ota"


# --- a real HTTP registry --------------------------------------------------------------------


class RegistryServer(ThreadingHTTPServer):
    """Serves a registry folder; records request paths; can cut model downloads short."""

    daemon_threads = True

    def __init__(self, root: Path, port: int = 0) -> None:
        handler = functools.partial(_Handler, directory=str(root))
        super().__init__(("127.0.0.1", port), handler)
        self.root = root
        self.requests: list[str] = []
        self.cut_models_short = False
        self._stopped = False
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def model_requests(self, version: int) -> list[str]:
        return [p for p in self.requests if p.endswith(f"{version:06d}/model.onnx")]

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.shutdown()
        self.server_close()
        self._thread.join(10)


class _Handler(SimpleHTTPRequestHandler):
    server: RegistryServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        if self.server.cut_models_short and self.path.endswith("model.onnx"):
            data = (self.server.root / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])  # then the connection closes
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(registry: FileRegistry) -> Iterator[RegistryServer]:
    registry.root.mkdir(parents=True, exist_ok=True)
    srv = RegistryServer(registry.root)
    yield srv
    srv.stop()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return generate_private_key()


@pytest.fixture(scope="module")
def nan_model() -> Exported:
    """A real WDCNN that loads fine but outputs NaN probabilities."""
    net = build_model(NetworkConfig(n_classes=len(CLASSES), window_samples=2048), seed=0)
    with torch.no_grad():
        net.head.bias[0] = float("nan")
    meta = metadata_for(
        net,
        sample_rate_hz=FS_HZ,
        class_names=CLASSES,
        provenance=Provenance(source="untrained", run_id="edge-test"),
    )
    return Exported(meta, export_onnx(net, meta))


def publish(registry: FileRegistry, model: Exported, key: Ed25519PrivateKey | None = None) -> int:
    return registry.publish(model.data, model.metadata, run_id="ota", signing_key=key).version


def version_dir(registry: FileRegistry, version: int) -> Path:
    return registry.root / "versions" / f"{version:06d}"


def http_slot(server: RegistryServer, cache: Path, key: Ed25519PrivateKey | None) -> ModelSlot:
    return ModelSlot(
        source=HttpSource(server.url),
        cache_dir=cache,
        verify_key=key.public_key() if key is not None else None,
    )


def cached(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.is_dir() and p.name.startswith("v"))


def current_version(slot: ModelSlot) -> int | None:
    return slot.current.version if slot.current is not None else None


# --- the ModelSource contract, for both adapters -------------------------------------------


@pytest.fixture(params=["folder", "http"])
def source(
    request: pytest.FixtureRequest, registry: FileRegistry, server: RegistryServer
) -> Iterator[ModelSource]:
    src: ModelSource = (
        FolderSource(registry.root) if request.param == "folder" else HttpSource(server.url)
    )
    yield src
    src.close()


def _read_model(source: ModelSource, version: int) -> bytes:
    chunks = source.stream_model(version, time.monotonic() + 30)
    try:
        return b"".join(chunks)
    finally:
        chunks.close()


@pytest.mark.integration
def test_source_contract_lists_and_reads_published_versions(
    source: ModelSource,
    registry: FileRegistry,
    key: Ed25519PrivateKey,
    faulty_model: Exported,
    healthy_model: Exported,
) -> None:
    # Prepare: v1 signed, v2 unsigned
    empty = source.versions()
    publish(registry, faulty_model, key)
    publish(registry, healthy_model)

    # Execute
    versions = source.versions()
    cards = [source.card(v) for v in versions]
    signatures = [source.signature(v) for v in versions]
    models = [_read_model(source, v) for v in versions]

    # Assert
    assert empty == []
    assert versions == [1, 2]
    assert cards == [registry.card(1), registry.card(2)]
    assert signatures == [registry.signature(1), None]
    assert models == [faulty_model.data, healthy_model.data]


@pytest.mark.integration
def test_source_contract_a_missing_card_is_version_not_found(
    source: ModelSource, registry: FileRegistry, faulty_model: Exported
) -> None:
    # Prepare
    publish(registry, faulty_model)
    (version_dir(registry, 1) / "card.json").unlink()

    # Execute / Assert
    with pytest.raises(VersionNotFoundError):
        source.card(1)


# --- updates ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_newer_version_is_downloaded_verified_cached_and_swapped_in(
    tmp_path: Path,
    registry: FileRegistry,
    server: RegistryServer,
    key: Ed25519PrivateKey,
    faulty_model: Exported,
    healthy_model: Exported,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare
    cache = tmp_path / "models"
    slot = http_slot(server, cache, key)
    publish(registry, faulty_model, key)

    # Execute
    with caplog.at_level(logging.INFO, logger="edge_agent.model_slot"):
        first = slot.poll()
        idle = slot.poll()
        publish(registry, healthy_model, key)
        second = slot.poll()
    slot.close()

    # Assert
    assert (first, idle, second) == (True, False, True)
    assert current_version(slot) == 2
    assert slot.current is not None
    assert slot.current.classifier.predict(np.zeros((1, 1, 2048))).predicted == ["normal"]
    assert cached(cache) == ["v1", "v2"]
    assert (cache / "v2" / "model.onnx").read_bytes() == healthy_model.data
    assert (cache / "v2" / "model.sig").is_file()
    swaps = [r.getMessage() for r in caplog.records if "swapped in" in r.getMessage()]
    assert len(swaps) == 2
    assert "v2" in swaps[1]
    assert "replacing v1" in swaps[1]
    assert len(server.model_requests(1)) == 1  # not downloaded again once current


@pytest.mark.integration
def test_tampered_model_is_refused_the_old_one_kept_and_not_retried_after_restart(
    tmp_path: Path,
    registry: FileRegistry,
    server: RegistryServer,
    faulty_model: Exported,
    healthy_model: Exported,
) -> None:
    # Prepare: no verification key, so the sha256 on the card is what catches it
    cache = tmp_path / "models"
    slot = http_slot(server, cache, None)
    publish(registry, faulty_model)
    slot.poll()
    v2 = publish(registry, healthy_model)
    path = version_dir(registry, v2) / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    # Execute
    swapped = slot.poll()
    again = slot.poll()
    downloads_before_restart = len(server.model_requests(v2))
    restarted = http_slot(server, cache, None)
    restarted.poll()
    restarted.poll()

    # Assert
    assert (swapped, again) == (False, False)
    assert current_version(slot) == 1
    assert slot.refused == {v2}
    assert "sha256" in slot.reasons[v2]
    assert cached(cache) == ["v1"]
    assert current_version(restarted) == 1
    assert restarted.refused == {v2}
    assert downloads_before_restart == 1
    assert len(server.model_requests(v2)) == 1  # the restarted slot did not fetch it again


def _unsigned(registry: FileRegistry, model: Exported, key: Ed25519PrivateKey) -> int:
    return publish(registry, model)


def _other_key(registry: FileRegistry, model: Exported, key: Ed25519PrivateKey) -> int:
    return publish(registry, model, generate_private_key())


def _replayed_signature(registry: FileRegistry, model: Exported, key: Ed25519PrivateKey) -> int:
    """v1's genuine signature copied beside a new version."""
    version = publish(registry, model)
    shutil.copy(version_dir(registry, 1) / "model.sig", version_dir(registry, version))
    return version


def _replayed_version(registry: FileRegistry, model: Exported, key: Ed25519PrivateKey) -> int:
    """v1's signed folder (model, card, signature) served again as a newer version."""
    version = publish(registry, model, key)
    shutil.rmtree(version_dir(registry, version))
    shutil.copytree(version_dir(registry, 1), version_dir(registry, version))
    return version


@pytest.mark.integration
@pytest.mark.parametrize(
    "publish_bad",
    [_unsigned, _other_key, _replayed_signature, _replayed_version],
    ids=["unsigned", "other-key", "replayed-signature", "replayed-folder"],
)
def test_wrong_or_missing_signature_is_refused_before_the_model_is_downloaded(
    tmp_path: Path,
    registry: FileRegistry,
    server: RegistryServer,
    key: Ed25519PrivateKey,
    faulty_model: Exported,
    healthy_model: Exported,
    publish_bad: Any,
) -> None:
    # Prepare
    slot = http_slot(server, tmp_path / "models", key)
    publish(registry, faulty_model, key)
    slot.poll()
    bad = publish_bad(registry, healthy_model, key)

    # Execute
    swapped = slot.poll()

    # Assert
    assert swapped is False
    assert current_version(slot) == 1
    assert slot.refused == {bad}
    assert server.model_requests(bad) == []


@pytest.mark.integration
def test_a_model_that_loads_but_fails_the_smoke_test_is_refused(
    tmp_path: Path,
    registry: FileRegistry,
    server: RegistryServer,
    key: Ed25519PrivateKey,
    faulty_model: Exported,
    nan_model: Exported,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare
    slot = http_slot(server, tmp_path / "models", key)
    publish(registry, faulty_model, key)
    slot.poll()
    bad = publish(registry, nan_model, key)

    # Execute
    with caplog.at_level(logging.ERROR, logger="edge_agent.model_slot"):
        swapped = slot.poll()

    # Assert
    assert swapped is False
    assert current_version(slot) == 1
    assert slot.refused == {bad}
    assert "smoke test" in slot.reasons[bad]
    assert any("keeping v1" in r.getMessage() for r in caplog.records)
    assert cached(tmp_path / "models") == ["v1"]


def test_smoke_test_accepts_a_sound_model_with_real_windows(healthy_model: Exported) -> None:
    # Prepare
    classifier = OnnxClassifier(healthy_model.data)
    t = np.arange(2048) / FS_HZ
    real = (0.1 * np.sin(2 * np.pi * 30 * t)).reshape(1, 1, 2048)

    # Execute / Assert: no exception
    smoke_test(classifier, real)
    smoke_test(classifier, np.zeros((2, 1, 100)))  # windows of another shape are skipped


def test_smoke_test_refuses_nan_outputs(nan_model: Exported) -> None:
    # Prepare
    classifier = OnnxClassifier(nan_model.data)

    # Execute / Assert
    with pytest.raises(ModelFormatError, match="NaN"):
        smoke_test(classifier)


# --- rollback --------------------------------------------------------------------------------


@pytest.mark.integration
def test_report_failure_rolls_back_and_the_version_stays_refused_after_restart(
    tmp_path: Path,
    registry: FileRegistry,
    server: RegistryServer,
    key: Ed25519PrivateKey,
    faulty_model: Exported,
    healthy_model: Exported,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare
    cache = tmp_path / "models"
    slot = http_slot(server, cache, key)
    publish(registry, faulty_model, key)
    slot.poll()
    publish(registry, healthy_model, key)
    slot.poll()

    # Execute
    with caplog.at_level(logging.INFO, logger="edge_agent.model_slot"):
        slot.report_failure(2, ModelFormatError("onnxruntime: bad allocation"))
        after = slot.poll()
    server.stop()  # the registry goes away; the restarted agent works from its cache
    restarted = http_slot(server, cache, key)
    restarted.poll()

    # Assert
    assert after is False
    assert current_version(slot) == 1
    assert slot.refused == {2}
    rollbacks = [r for r in caplog.records if "rolled back to v1" in r.getMessage()]
    assert len(rollbacks) == 1
    assert rollbacks[0].levelno == logging.ERROR
    assert cached(cache) == ["v1"]
    assert current_version(restarted) == 1
    assert restarted.refused == {2}


@pytest.mark.integration
def test_rollback_after_a_restart_comes_from_the_cache(
    tmp_path: Path,
    registry: FileRegistry,
    key: Ed25519PrivateKey,
    faulty_model: Exported,
    healthy_model: Exported,
) -> None:
    # Prepare: v1 then v2 accepted; the agent restarts (v1 only on disk, not in memory)
    cache = tmp_path / "models"
    first = ModelSlot(source=FolderSource(registry.root), cache_dir=cache)
    publish(registry, faulty_model)
    first.poll()
    publish(registry, healthy_model)
    first.poll()
    restarted = ModelSlot(source=FolderSource(registry.root), cache_dir=cache)
    restarted.poll()

    # Execute
    restarted.report_failure(2, RuntimeError("non-finite output at run time"))

    # Assert
    assert current_version(restarted) == 1
    assert restarted.refused == {2}


def test_report_failure_without_anything_to_roll_back_to_leaves_no_model(
    tmp_path: Path, registry: FileRegistry, faulty_model: Exported
) -> None:
    # Prepare
    slot = ModelSlot(source=FolderSource(registry.root), cache_dir=tmp_path / "models")
    publish(registry, faulty_model)
    slot.poll()

    # Execute
    slot.report_failure(1, RuntimeError("boom"))
    slot.poll()

    # Assert
    assert slot.current is None
    assert slot.refused == {1}


def test_report_failure_of_a_version_no_longer_current_only_refuses_it(
    tmp_path: Path, registry: FileRegistry, faulty_model: Exported, healthy_model: Exported
) -> None:
    # Prepare
    slot = ModelSlot(registry.root)
    publish(registry, faulty_model)
    slot.poll()
    publish(registry, healthy_model)
    slot.poll()

    # Execute
    slot.report_failure(1, RuntimeError("late report about v1"))

    # Assert
    assert current_version(slot) == 2
    assert slot.refused == {1}


# --- an unreachable registry and a broken download ---------------------------------------------


@pytest.mark.integration
def test_registry_going_away_keeps_the_current_model_and_a_restart_starts_offline(
    tmp_path: Path,
    registry: FileRegistry,
    server: RegistryServer,
    key: Ed25519PrivateKey,
    faulty_model: Exported,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare
    cache = tmp_path / "models"
    slot = http_slot(server, cache, key)
    publish(registry, faulty_model, key)
    slot.poll()
    server.stop()

    # Execute
    with caplog.at_level(logging.WARNING, logger="edge_agent.model_slot"):
        polls = [slot.poll(), slot.poll(), slot.poll()]
    said = [r for r in caplog.records if "cannot read the model registry" in r.getMessage()]
    restarted = http_slot(server, cache, key)
    offline = restarted.poll()

    # Assert
    assert polls == [False, False, False]
    assert current_version(slot) == 1
    assert len(said) == 1  # said once, not at every poll
    assert "keeping v1" in said[0].getMessage()
    assert offline is True
    assert current_version(restarted) == 1
    assert restarted.refused == set()


@pytest.mark.integration
def test_download_cut_short_is_retried_not_refused_and_leaves_no_partial_file(
    tmp_path: Path,
    registry: FileRegistry,
    server: RegistryServer,
    key: Ed25519PrivateKey,
    faulty_model: Exported,
    healthy_model: Exported,
) -> None:
    # Prepare
    cache = tmp_path / "models"
    slot = http_slot(server, cache, key)
    publish(registry, faulty_model, key)
    slot.poll()
    publish(registry, healthy_model, key)
    server.cut_models_short = True

    # Execute
    during = slot.poll()
    leftovers = list((cache / ".staging").iterdir())
    server.cut_models_short = False
    after = slot.poll()

    # Assert
    assert during is False
    assert leftovers == []
    assert after is True
    assert current_version(slot) == 2
    assert slot.refused == set()


@pytest.mark.integration
def test_a_listed_version_not_fully_uploaded_is_skipped_until_it_is(
    tmp_path: Path,
    registry: FileRegistry,
    server: RegistryServer,
    key: Ed25519PrivateKey,
    faulty_model: Exported,
    healthy_model: Exported,
) -> None:
    # Prepare: index.json lists v2, but its folder is not on the server yet
    slot = http_slot(server, tmp_path / "models", key)
    publish(registry, faulty_model, key)
    v2 = publish(registry, healthy_model, key)
    aside = tmp_path / "upload-in-progress"
    version_dir(registry, v2).rename(aside)

    # Execute
    during = slot.poll()
    aside.rename(version_dir(registry, v2))
    after = slot.poll()

    # Assert: v1 meanwhile, v2 once it is complete, and nothing refused
    assert (during, after) == (True, True)
    assert current_version(slot) == v2
    assert slot.refused == set()


def _grow(path: Path) -> None:
    with open(path, "ab") as fh:
        fh.write(b"\0" * (1 << 20))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.integration
@pytest.mark.parametrize(
    ("alter", "reason"),
    [(_grow, "larger than"), (_truncate, "its card declares")],
    ids=["oversized", "truncated"],
)
def test_served_model_of_another_length_than_its_card_is_refused(
    tmp_path: Path,
    registry: FileRegistry,
    server: RegistryServer,
    faulty_model: Exported,
    healthy_model: Exported,
    alter: Callable[[Path], None],
    reason: str,
) -> None:
    # Prepare: the server sends the altered file completely, with its true Content-Length
    slot = http_slot(server, tmp_path / "models", None)
    publish(registry, faulty_model)
    slot.poll()
    v2 = publish(registry, healthy_model)
    alter(version_dir(registry, v2) / "model.onnx")

    # Execute
    swapped = slot.poll()

    # Assert
    assert swapped is False
    assert current_version(slot) == 1
    assert slot.refused == {v2}
    assert reason in slot.reasons[v2]
    assert cached(tmp_path / "models") == ["v1"]


@pytest.mark.integration
def test_model_over_the_agent_size_limit_is_refused_without_downloading_it(
    tmp_path: Path, registry: FileRegistry, server: RegistryServer, faulty_model: Exported
) -> None:
    # Prepare
    slot = ModelSlot(
        source=HttpSource(server.url), cache_dir=tmp_path / "models", max_model_bytes=50_000
    )
    v1 = publish(registry, faulty_model)

    # Execute
    slot.poll()

    # Assert
    assert slot.current is None
    assert slot.refused == {v1}
    assert "limit" in slot.reasons[v1]
    assert server.model_requests(v1) == []


def test_corrupted_cached_copy_is_discarded_and_fetched_again(
    tmp_path: Path, registry: FileRegistry, faulty_model: Exported
) -> None:
    # Prepare
    cache = tmp_path / "models"
    first = ModelSlot(source=FolderSource(registry.root), cache_dir=cache)
    publish(registry, faulty_model)
    first.poll()
    (cache / "v1" / "model.onnx").write_bytes(b"bit rot")

    # Execute
    restarted = ModelSlot(source=FolderSource(registry.root), cache_dir=cache)
    restarted.poll()

    # Assert: the bad copy is not the version's fault; v1 is fetched again, not refused
    assert current_version(restarted) == 1
    assert restarted.refused == set()
    assert (cache / "v1" / "model.onnx").read_bytes() == faulty_model.data


def test_unreachable_url_is_a_transient_error() -> None:
    # Prepare: port 9 (discard) on loopback; nothing listens there in a test environment
    source = HttpSource("http://127.0.0.1:9/registry", timeout_s=2.0)

    # Execute / Assert
    with pytest.raises(RegistryUnavailableError):
        source.versions()
    source.close()


# --- settings --------------------------------------------------------------------------------


def test_from_settings_uses_the_folder_the_key_and_a_cache_beside_the_store(
    tmp_path: Path, registry: FileRegistry, faulty_model: Exported
) -> None:
    # Prepare
    private_path, public_path = write_key_pair(tmp_path / "keys")
    publish(registry, faulty_model, load_private_key(private_path))
    publish(registry, faulty_model)  # unsigned: must be refused
    settings = AgentSettings(
        site_id=SITE,
        store_path=tmp_path / "site" / "store.sqlite",
        registry_dir=registry.root,
        model_verify_key=public_path,
    )

    # Execute
    slot = ModelSlot.from_settings(settings)
    slot.poll()

    # Assert
    assert current_version(slot) == 1
    assert slot.refused == {2}
    assert cached(tmp_path / "site" / "models") == ["v1"]


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # no model source at all
        {"registry_dir": "REG", "model_verify_key": "missing.pub"},
        {"model_url": "ftp://example.invalid/registry"},
    ],
    ids=["no-source", "missing-key", "not-http"],
)
def test_from_settings_refuses_unusable_settings(tmp_path: Path, overrides: dict[str, str]) -> None:
    # Prepare
    values: dict[str, Any] = {"site_id": SITE, "store_path": tmp_path / "store.sqlite"}
    for name, value in overrides.items():
        values[name] = tmp_path / value if name != "model_url" else value
    settings = AgentSettings(**values)

    # Execute / Assert
    with pytest.raises(ConfigError):
        ModelSlot.from_settings(settings)


def test_a_public_key_file_for_another_key_refuses_every_model(
    tmp_path: Path, registry: FileRegistry, key: Ed25519PrivateKey, faulty_model: Exported
) -> None:
    # Prepare
    other_pub = tmp_path / "other.pub"
    save_public_key(generate_private_key().public_key(), other_pub)
    publish(registry, faulty_model, key)
    settings = AgentSettings(
        site_id=SITE,
        store_path=tmp_path / "store.sqlite",
        registry_dir=registry.root,
        model_verify_key=other_pub,
    )

    # Execute
    slot = ModelSlot.from_settings(settings)
    slot.poll()

    # Assert
    assert slot.current is None
    assert "signed by key" in slot.reasons[1]


def test_from_settings_with_an_unusable_cache_folder_is_a_registry_error(
    tmp_path: Path, registry: FileRegistry
) -> None:
    # Prepare: the store's folder is a regular file, so no models folder can go beside it
    (tmp_path / "not-a-folder").write_text("x")
    settings = AgentSettings(
        site_id=SITE,
        store_path=tmp_path / "not-a-folder" / "store.sqlite",
        registry_dir=registry.root,
    )

    # Execute / Assert
    with pytest.raises(AgentRegistryError, match="model cache"):
        ModelSlot.from_settings(settings)
