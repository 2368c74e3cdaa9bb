"""Filesystem model registry: versioned ONNX files with model cards, published atomically.

Layout::

    <root>/index.json                    # RegistryIndex: the published version numbers
    <root>/versions/000007/model.onnx
    <root>/versions/000007/card.json     # ModelCard: sha256, provenance, metrics, metadata
    <root>/versions/000007/model.sig     # detached Ed25519 signature (when published signed)
    <root>/.staging/                     # half-written versions; never read

A version folder only ever appears complete: it is written and fsync'ed under ``.staging`` and
then renamed into ``versions/`` (``rename(2)`` is atomic on one filesystem; it fails if the
number was taken concurrently, and publish retries with the next one). Readers never trust a
file they have not hashed: :meth:`FileRegistry.load_verified` returns the very bytes it checked,
and checks the signature too when given a verification key (:mod:`models.signing`).

``index.json`` is rewritten (atomically, under a lock) after each publish, so the same tree
served by a static web server or copied to an object store can be read over HTTP without
directory listings (``edge_agent.model_source``); it is a hint, never trusted for integrity.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.durable import fsync_dir, write_synced
from models.errors import IntegrityError, RegistryError, VersionNotFoundError
from models.metadata import ModelMetadata
from models.signing import sign_card, verify_card

logger = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
SIGNATURE_FILE = "model.sig"
INDEX_FILE = "index.json"
VERSIONS_DIR = "versions"
CARD_SCHEMA_VERSION = 1
INDEX_SCHEMA_VERSION = 1
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


class RegistryIndex(BaseModel):
    """``index.json``: which versions a registry holds (for readers without directory listings)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = INDEX_SCHEMA_VERSION
    versions: tuple[Annotated[int, Field(ge=1)], ...] = ()
    updated_at: str = ""

    @property
    def latest(self) -> int | None:
        """Highest listed version, or ``None``."""
        return max(self.versions) if self.versions else None


def version_path(version: int) -> str:
    """Path of a version's folder relative to the registry root, e.g. ``versions/000007``."""
    return f"{VERSIONS_DIR}/{version:0{_DIGITS}d}"


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


class FileRegistry:
    """A model registry in a local (or mounted) directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._versions = self.root / VERSIONS_DIR
        self._staging = self.root / ".staging"

    def _dir(self, version: int) -> Path:
        return self.root / version_path(version)

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

    def signature(self, version: int) -> bytes | None:
        """The detached signature file of ``version``, or ``None`` if it was published unsigned."""
        try:
            return (self._dir(version) / SIGNATURE_FILE).read_bytes()
        except FileNotFoundError:
            return None

    def load_verified(
        self, version: int | None = None, *, verify_key: Ed25519PublicKey | None = None
    ) -> tuple[ModelCard, bytes]:
        """Return a version's card and model bytes after checking the sha256.

        ``version=None`` means the latest. With ``verify_key``, the version's signature must
        also verify (:func:`models.signing.verify_card`). Raises :class:`IntegrityError` on a
        mismatch (:class:`~models.errors.ModelSignatureError` for a bad or missing signature)
        and :class:`VersionNotFoundError` when there is nothing to load.
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
        if verify_key is not None:
            verify_card(card, self.signature(version), verify_key)
        return card, data

    def latest_valid(
        self, *, verify_key: Ed25519PublicKey | None = None
    ) -> tuple[ModelCard, bytes]:
        """The newest version that passes verification (older ones are tried in turn)."""
        errors = []
        for version in reversed(self.versions()):
            try:
                return self.load_verified(version, verify_key=verify_key)
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
        signing_key: Ed25519PrivateKey | None = None,
    ) -> ModelCard:
        """Publish a new version atomically and return its card.

        With ``signing_key``, a detached signature (:func:`models.signing.sign_card`) is
        written beside the model, inside the same atomic rename. ``index.json`` is refreshed
        afterwards.
        """
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
                write_synced(stage / MODEL_FILE, model_bytes)
                card_json = json.dumps(card.model_dump(mode="json"), indent=2) + "\n"
                write_synced(stage / CARD_FILE, card_json.encode())
                if signing_key is not None:
                    write_synced(stage / SIGNATURE_FILE, sign_card(card, signing_key))
                fsync_dir(stage)
                os.rename(stage, self._dir(version))
            except OSError:
                shutil.rmtree(stage, ignore_errors=True)
                if self._dir(version).exists():
                    continue  # another publisher took this number: try the next
                raise
            fsync_dir(self._versions)
            try:
                self.write_index()
            except OSError as exc:  # the version is published; only HTTP readers lag behind
                logger.warning("v%d published, but %s not updated: %s", version, INDEX_FILE, exc)
            return card
        raise RegistryError(f"could not allocate a version number in {self.root}")

    def write_index(self) -> RegistryIndex:
        """Rewrite ``index.json`` from the version folders (atomic; one writer at a time).

        Publish calls it; run it once on a registry written by an older FedPM before serving
        the folder over HTTP.
        """
        self._staging.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".index.lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file is closed
            index = RegistryIndex(
                versions=tuple(self.versions()),
                updated_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            tmp = self._staging / f"index-{uuid.uuid4().hex}.json"
            try:
                write_synced(tmp, (index.model_dump_json(indent=2) + "\n").encode())
                os.replace(tmp, self.root / INDEX_FILE)
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
            fsync_dir(self.root)
        return index

    def index(self) -> RegistryIndex:
        """Read ``index.json`` (an empty index when there is none yet).

        Raises
        ------
        RegistryError
            The file exists but is not a valid index.
        """
        try:
            text = (self.root / INDEX_FILE).read_text(encoding="utf-8")
        except FileNotFoundError:
            return RegistryIndex()
        try:
            return RegistryIndex.model_validate_json(text)
        except ValidationError as exc:
            raise RegistryError(f"invalid {INDEX_FILE} in {self.root}: {exc}") from exc
