"""Filesystem model registry: versioned ONNX files with model cards, published atomically.

Layout::

    <root>/versions/000007/model.onnx
    <root>/versions/000007/card.json     # ModelCard: sha256, provenance, metrics, metadata
    <root>/.staging/                     # half-written versions; never read

A version folder only ever appears complete: it is written and fsync'ed under ``.staging`` and
then renamed into ``versions/`` (``rename(2)`` is atomic on one filesystem; it fails if the
number was taken concurrently, and publish retries with the next one). Readers never trust a
file they have not hashed: :meth:`FileRegistry.load_verified` returns the very bytes it checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.errors import IntegrityError, RegistryError, VersionNotFoundError
from models.metadata import ModelMetadata

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
CARD_SCHEMA_VERSION = 1
_DIGITS = 6


class ModelCard(BaseModel):
    """What the registry records about one model version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = CARD_SCHEMA_VERSION
    version: int = Field(ge=1)
    created_at: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=1)
    run_id: str = ""
    server_round: int = Field(default=0, ge=0)
    sites: tuple[str, ...] = ()
    metrics: dict[str, float] = Field(default_factory=dict)
    site_metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    metadata: ModelMetadata

    @property
    def label(self) -> str:
        """Human-readable version label, e.g. ``v7``."""
        return f"v{self.version}"


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class FileRegistry:
    """A model registry in a local (or mounted) directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._versions = self.root / "versions"
        self._staging = self.root / ".staging"

    def _dir(self, version: int) -> Path:
        return self._versions / f"{version:0{_DIGITS}d}"

    def versions(self) -> list[int]:
        """Published version numbers, ascending."""
        if not self._versions.is_dir():
            return []
        found = []
        for entry in self._versions.iterdir():
            if entry.is_dir() and entry.name.isdigit() and len(entry.name) == _DIGITS:
                found.append(int(entry.name))
        return sorted(found)

    def latest_version(self) -> int | None:
        """Highest published version, or ``None`` for an empty registry."""
        versions = self.versions()
        return versions[-1] if versions else None

    def card(self, version: int) -> ModelCard:
        """Read and validate a version's card."""
        path = self._dir(version) / CARD_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise VersionNotFoundError(f"registry {self.root} has no version {version}") from exc
        try:
            card = ModelCard.model_validate_json(text)
        except ValidationError as exc:
            raise RegistryError(f"invalid card for version {version}: {exc}") from exc
        if card.version != version:
            raise IntegrityError(f"card in folder {version} claims version {card.version}")
        return card

    def cards(self) -> list[ModelCard]:
        """Cards of every readable version, ascending (unreadable ones are skipped)."""
        out = []
        for v in self.versions():
            try:
                out.append(self.card(v))
            except RegistryError:
                continue
        return out

    def load_verified(self, version: int | None = None) -> tuple[ModelCard, bytes]:
        """Return a version's card and model bytes after checking the sha256.

        ``version=None`` means the latest. Raises :class:`IntegrityError` on a mismatch and
        :class:`VersionNotFoundError` when there is nothing to load.
        """
        if version is None:
            version = self.latest_version()
            if version is None:
                raise VersionNotFoundError(f"registry {self.root} holds no model yet")
        card = self.card(version)
        try:
            data = (self._dir(version) / MODEL_FILE).read_bytes()
        except FileNotFoundError as exc:
            raise IntegrityError(f"version {version} has a card but no model file") from exc
        digest = sha256_hex(data)
        if digest != card.sha256 or len(data) != card.size_bytes:
            raise IntegrityError(
                f"version {version}: model sha256 {digest[:12]}… does not match its card "
                f"({card.sha256[:12]}…); refusing to load it"
            )
        return card, data

    def latest_valid(self) -> tuple[ModelCard, bytes]:
        """The newest version that passes verification (older ones are tried in turn)."""
        errors = []
        for version in reversed(self.versions()):
            try:
                return self.load_verified(version)
            except RegistryError as exc:
                errors.append(str(exc))
        detail = "; ".join(errors) if errors else "it is empty"
        raise VersionNotFoundError(f"registry {self.root} has no valid model: {detail}")

    def publish(
        self,
        model_bytes: bytes,
        metadata: ModelMetadata,
        *,
        run_id: str = "",
        server_round: int = 0,
        sites: tuple[str, ...] = (),
        metrics: dict[str, float] | None = None,
        site_metrics: dict[str, dict[str, float]] | None = None,
    ) -> ModelCard:
        """Publish a new version atomically and return its card."""
        if not model_bytes:
            raise RegistryError("refusing to publish an empty model")
        self._versions.mkdir(parents=True, exist_ok=True)
        self._staging.mkdir(parents=True, exist_ok=True)
        digest = sha256_hex(model_bytes)
        for _attempt in range(100):
            version = (self.latest_version() or 0) + 1
            card = ModelCard(
                version=version,
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                sha256=digest,
                size_bytes=len(model_bytes),
                run_id=run_id,
                server_round=server_round,
                sites=sites,
                metrics=dict(metrics or {}),
                site_metrics={k: dict(v) for k, v in (site_metrics or {}).items()},
                metadata=metadata,
            )
            stage = self._staging / uuid.uuid4().hex
            stage.mkdir()
            try:
                _write_synced(stage / MODEL_FILE, model_bytes)
                card_json = json.dumps(card.model_dump(mode="json"), indent=2) + "\n"
                _write_synced(stage / CARD_FILE, card_json.encode())
                _fsync_dir(stage)
                os.rename(stage, self._dir(version))
            except OSError:
                shutil.rmtree(stage, ignore_errors=True)
                if self._dir(version).exists():
                    continue  # another publisher took this number: try the next
                raise
            _fsync_dir(self._versions)
            return card
        raise RegistryError(f"could not allocate a version number in {self.root}")
