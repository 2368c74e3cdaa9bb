"""Tests for models.registry.FileRegistry: publishing, verification, tampering, concurrency.

The registry does not parse the model, so these tests publish random bytes (and stay free of
torch, which keeps the spawned publisher processes quick to start).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import multiprocessing.synchronize
import os
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from models.errors import IntegrityError, RegistryError, VersionNotFoundError
from models.metadata import ModelMetadata, Provenance
from models.registry import CARD_FILE, MODEL_FILE, FileRegistry

CLASSES = ("normal", "inner_race", "outer_race", "ball")
PUBLISHERS = 4
PER_PUBLISHER = 5


def metadata(run_id: str = "run-1", server_round: int = 1) -> ModelMetadata:
    return ModelMetadata(
        sample_rate_hz=12_000.0,
        window_samples=2048,
        channels=1,
        class_names=CLASSES,
        embedding_dim=64,
        provenance=Provenance(source="federated", run_id=run_id, server_round=server_round),
    )


def model_bytes(tag: int, size: int = 4096) -> bytes:
    """Distinct, deterministic stand-ins for ONNX files."""
    return hashlib.sha256(str(tag).encode()).digest() * (size // 32) + bytes([tag % 256])


def publish_round(registry: FileRegistry, rnd: int) -> bytes:
    data = model_bytes(rnd)
    registry.publish(
        data,
        metadata(server_round=rnd),
        run_id="run-1",
        server_round=rnd,
        sites=("site-a", "site-b"),
        metrics={"accuracy": 0.5 + rnd / 100},
        site_metrics={"site-a": {"accuracy": 0.6}, "site-b": {"accuracy": 0.4}},
    )
    return data


def version_dir(root: Path, version: int) -> Path:
    return root / "versions" / f"{version:06d}"


@pytest.fixture
def three_versions(tmp_path: Path) -> tuple[FileRegistry, list[bytes]]:
    registry = FileRegistry(tmp_path / "registry")
    return registry, [publish_round(registry, rnd) for rnd in (1, 2, 3)]


# --- publish and read ------------------------------------------------------------------------


def test_publish_numbers_versions_upwards(three_versions: tuple[FileRegistry, list[bytes]]) -> None:
    # Prepare
    registry, _ = three_versions

    # Execute
    versions = registry.versions()

    # Assert
    assert versions == [1, 2, 3]
    assert registry.latest_version() == 3
    assert [c.version for c in registry.cards()] == [1, 2, 3]
    assert [c.label for c in registry.cards()] == ["v1", "v2", "v3"]


def test_card_records_hash_size_sites_and_metrics(tmp_path: Path) -> None:
    # Prepare
    registry = FileRegistry(tmp_path)
    data = model_bytes(7, size=10_000)
    meta = metadata(run_id="run-7", server_round=4)

    # Execute
    published = registry.publish(
        data,
        meta,
        run_id="run-7",
        server_round=4,
        sites=("site-a", "site-b", "site-c"),
        metrics={"accuracy": 0.91, "loss": 0.25},
        site_metrics={"site-a": {"accuracy": 0.9}, "site-c": {"accuracy": 0.95}},
    )
    card = registry.card(published.version)

    # Assert: the card on disk says what publish returned, and the hash is the file's
    assert card == published
    model_file = version_dir(tmp_path, 1) / MODEL_FILE
    assert card.sha256 == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert card.sha256 == hashlib.sha256(data).hexdigest()
    assert card.size_bytes == len(data) == model_file.stat().st_size
    assert card.run_id == "run-7"
    assert card.server_round == 4
    assert card.sites == ("site-a", "site-b", "site-c")
    assert card.metrics == {"accuracy": 0.91, "loss": 0.25}
    assert card.site_metrics == {"site-a": {"accuracy": 0.9}, "site-c": {"accuracy": 0.95}}
    assert card.metadata == meta
    assert datetime.fromisoformat(card.created_at).utcoffset() is not None
    assert json.loads((version_dir(tmp_path, 1) / CARD_FILE).read_text())["sha256"] == card.sha256


def test_load_verified_returns_the_exact_bytes(
    three_versions: tuple[FileRegistry, list[bytes]],
) -> None:
    # Prepare
    registry, published = three_versions

    # Execute
    loaded = [registry.load_verified(v) for v in (1, 2, 3)]
    latest_card, latest_data = registry.load_verified()

    # Assert
    assert [data for _, data in loaded] == published
    assert [card.version for card, _ in loaded] == [1, 2, 3]
    assert (latest_card.version, latest_data) == (3, published[2])
    assert registry.latest_valid() == (latest_card, latest_data)


def test_publish_refuses_an_empty_model(tmp_path: Path) -> None:
    # Prepare
    registry = FileRegistry(tmp_path)

    # Execute / Assert
    with pytest.raises(RegistryError):
        registry.publish(b"", metadata())
    assert registry.versions() == []


# --- empty registries and stray files --------------------------------------------------------


def test_empty_registry_has_nothing_to_load(tmp_path: Path) -> None:
    # Prepare: one registry that was never written, one with empty folders
    missing = FileRegistry(tmp_path / "never-created")
    empty = FileRegistry(tmp_path / "empty")
    (tmp_path / "empty" / "versions").mkdir(parents=True)

    # Execute / Assert
    for registry in (missing, empty):
        assert registry.versions() == []
        assert registry.latest_version() is None
        assert registry.cards() == []
        with pytest.raises(VersionNotFoundError):
            registry.load_verified()
        with pytest.raises(VersionNotFoundError):
            registry.latest_valid()
        with pytest.raises(VersionNotFoundError):
            registry.load_verified(1)
        with pytest.raises(VersionNotFoundError):
            registry.card(1)


def test_half_written_staging_folder_is_ignored(tmp_path: Path) -> None:
    # Prepare: a publisher that died before its rename, leaving a complete-looking version
    donor = FileRegistry(tmp_path / "donor")
    publish_round(donor, 1)
    registry = FileRegistry(tmp_path / "registry")
    stage = tmp_path / "registry" / ".staging" / "5f2a9c"
    shutil.copytree(version_dir(tmp_path / "donor", 1), stage)
    (tmp_path / "registry" / ".staging" / "0a0b").mkdir()  # and one with nothing in it

    # Execute
    before = registry.versions()
    published = publish_round(registry, 2)

    # Assert
    assert before == []
    assert registry.versions() == [1]
    assert registry.load_verified()[1] == published


def test_stray_entries_in_versions_are_ignored(
    three_versions: tuple[FileRegistry, list[bytes]],
) -> None:
    # Prepare: things an operator or a tool might leave behind
    registry, published = three_versions
    versions = registry.root / "versions"
    (versions / "backup").mkdir()
    (versions / "7").mkdir()
    (versions / "0000009").mkdir()
    (versions / "000010").write_text("not a folder")

    # Execute
    found = registry.versions()
    card, data = registry.latest_valid()

    # Assert
    assert found == [1, 2, 3]
    assert (card.version, data) == (3, published[2])


# --- tampering -------------------------------------------------------------------------------


def flip_a_byte(folder: Path) -> None:
    path = folder / MODEL_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(folder: Path) -> None:
    path = folder / MODEL_FILE
    path.write_bytes(path.read_bytes()[:-1])


def delete_model(folder: Path) -> None:
    (folder / MODEL_FILE).unlink()


def edit_card_sha(folder: Path) -> None:
    path = folder / CARD_FILE
    card = json.loads(path.read_text())
    card["sha256"] = hashlib.sha256(b"some other model").hexdigest()
    path.write_text(json.dumps(card))


def grow_model(folder: Path) -> None:
    path = folder / MODEL_FILE
    path.write_bytes(path.read_bytes() + b"\0")


@pytest.mark.parametrize("tamper", [flip_a_byte, truncate, delete_model, edit_card_sha, grow_model])
def test_tampered_latest_version_is_refused_and_the_previous_one_served(
    three_versions: tuple[FileRegistry, list[bytes]], tamper: Callable[[Path], None]
) -> None:
    # Prepare
    registry, published = three_versions
    tamper(version_dir(registry.root, 3))

    # Execute
    with pytest.raises(IntegrityError):
        registry.load_verified(3)
    with pytest.raises(IntegrityError):
        registry.load_verified()
    card, data = registry.latest_valid()

    # Assert
    assert (card.version, data) == (2, published[1])


def test_latest_valid_falls_back_past_several_bad_versions(
    three_versions: tuple[FileRegistry, list[bytes]],
) -> None:
    # Prepare
    registry, published = three_versions
    flip_a_byte(version_dir(registry.root, 3))
    delete_model(version_dir(registry.root, 2))

    # Execute
    card, data = registry.latest_valid()

    # Assert
    assert (card.version, data) == (1, published[0])


def test_no_valid_version_at_all_is_version_not_found(
    three_versions: tuple[FileRegistry, list[bytes]],
) -> None:
    # Prepare
    registry, _ = three_versions
    for version in (1, 2, 3):
        truncate(version_dir(registry.root, version))

    # Execute / Assert
    with pytest.raises(VersionNotFoundError):
        registry.latest_valid()


def test_card_in_the_wrong_folder_is_an_integrity_error(
    three_versions: tuple[FileRegistry, list[bytes]],
) -> None:
    # Prepare: version 2 copied to folder 5, so its card claims another number
    registry, published = three_versions
    shutil.copytree(version_dir(registry.root, 2), version_dir(registry.root, 5))

    # Execute / Assert
    with pytest.raises(IntegrityError):
        registry.card(5)
    with pytest.raises(IntegrityError):
        registry.load_verified(5)
    card, data = registry.latest_valid()
    assert (card.version, data) == (3, published[2])
    assert [c.version for c in registry.cards()] == [1, 2, 3]


def test_unreadable_card_is_a_registry_error(
    three_versions: tuple[FileRegistry, list[bytes]],
) -> None:
    # Prepare
    registry, published = three_versions
    (version_dir(registry.root, 3) / CARD_FILE).write_text("{not json")

    # Execute / Assert
    with pytest.raises(RegistryError):
        registry.card(3)
    assert registry.latest_valid()[1] == published[1]
    assert [c.version for c in registry.cards()] == [1, 2]


def test_publishing_after_a_bad_version_continues_the_numbering(
    three_versions: tuple[FileRegistry, list[bytes]],
) -> None:
    # Prepare
    registry, _ = three_versions
    flip_a_byte(version_dir(registry.root, 3))

    # Execute
    fresh = publish_round(registry, 4)

    # Assert: the bad version keeps its number; the new one is served
    assert registry.versions() == [1, 2, 3, 4]
    card, data = registry.latest_valid()
    assert (card.version, data) == (4, fresh)


# --- concurrency -----------------------------------------------------------------------------


def _publish_many(root: str, publisher: int, start: multiprocessing.synchronize.Event) -> None:
    """Child process: wait for the starting gun, then publish PER_PUBLISHER versions."""
    registry = FileRegistry(root)
    start.wait(timeout=60)
    for k in range(PER_PUBLISHER):
        registry.publish(model_bytes(1_000 * publisher + k), metadata(run_id=f"pub-{publisher}"))


@pytest.mark.integration
def test_concurrent_publishers_get_distinct_complete_versions(tmp_path: Path) -> None:
    # Prepare: processes (not threads), as two aggregators sharing a mounted registry would be
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    root = tmp_path / "registry"
    procs = [
        ctx.Process(target=_publish_many, args=(str(root), p, start)) for p in range(PUBLISHERS)
    ]
    for proc in procs:
        proc.start()

    # Execute
    start.set()
    for proc in procs:
        proc.join(timeout=60)

    # Assert: every publish landed once, under its own number, intact
    assert [proc.exitcode for proc in procs] == [0] * PUBLISHERS
    registry = FileRegistry(root)
    total = PUBLISHERS * PER_PUBLISHER
    assert registry.versions() == list(range(1, total + 1))
    loaded = {registry.load_verified(v)[1] for v in registry.versions()}
    expected = {model_bytes(1_000 * p + k) for p in range(PUBLISHERS) for k in range(PER_PUBLISHER)}
    assert loaded == expected
    runs = [card.metadata.provenance.run_id for card in registry.cards()]
    assert sorted(set(runs)) == [f"pub-{p}" for p in range(PUBLISHERS)]
    assert os.listdir(root / ".staging") == []
