"""The agent's local copy of its good models, and the versions it refused for good.

Layout (``<store dir>/models`` by default)::

    <cache>/v7/model.onnx, card.json, model.sig     # a model that passed every check here
    <cache>/.staging/<random>/                       # downloads in progress; cleared at start
    <cache>/refused.json                             # {"refused": {"8": "why"}, ...}

A version folder appears only complete: the model is downloaded into ``.staging``, verified,
smoke-tested, fsync'ed and renamed into place. So a restarted agent finds its last good model
even while the registry is unreachable, and does not retry a version it refused before.
Cached files are verified again (sha256, signature) every time they are loaded.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from models.durable import fsync_dir, write_synced
from models.errors import IntegrityError, RegistryError
from models.registry import CARD_FILE, MODEL_FILE, SIGNATURE_FILE, ModelCard, sha256_hex
from models.signing import verify_card

logger = logging.getLogger(__name__)

REFUSED_FILE = "refused.json"
_VERSION_DIR = re.compile(r"^v([1-9][0-9]{0,9})$")


class ModelCache:
    """Verified models kept on the agent's disk, plus its list of refused versions.

    Parameters
    ----------
    root
        The cache folder (created if missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._staging = self.root / ".staging"
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._staging, ignore_errors=True)  # a download cut short by a crash
        self._staging.mkdir()

    def _dir(self, version: int) -> Path:
        return self.root / f"v{version}"

    def versions(self) -> list[int]:
        """Cached version numbers, ascending."""
        found = []
        for entry in self.root.iterdir():
            match = _VERSION_DIR.match(entry.name)
            if match and entry.is_dir():
                found.append(int(match.group(1)))
        return sorted(found)

    def new_stage(self) -> Path:
        """An empty folder to download a candidate into (see :meth:`commit`)."""
        stage = self._staging / uuid.uuid4().hex
        stage.mkdir()
        return stage

    def drop_stage(self, stage: Path) -> None:
        """Remove a stage folder that will not be committed."""
        shutil.rmtree(stage, ignore_errors=True)

    def commit(self, stage: Path, card: ModelCard, signature: bytes | None) -> None:
        """Move a verified candidate (``stage`` holds its model file) into the cache.

        Raises
        ------
        OSError
            The disk is full or not writable (the cache then keeps what it had).
        """
        try:
            write_synced(stage / CARD_FILE, card.model_dump_json(indent=2).encode())
            if signature is not None:
                write_synced(stage / SIGNATURE_FILE, signature)
            fsync_dir(stage)
            target = self._dir(card.version)
            if target.exists():  # an older copy that failed to load: replace it
                shutil.rmtree(target)
            os.rename(stage, target)
            fsync_dir(self.root)
        finally:
            self.drop_stage(stage)  # gone after the rename; removed after a failure

    def load(
        self, version: int, verify_key: Ed25519PublicKey | None = None
    ) -> tuple[ModelCard, bytes]:
        """Read a cached version after checking its sha256 (and its signature, with a key).

        Raises
        ------
        RegistryError
            Missing or invalid files, a hash mismatch, or a signature that does not verify
            (:class:`~models.errors.ModelSignatureError`).
        """
        folder = self._dir(version)
        try:
            card = ModelCard.model_validate_json((folder / CARD_FILE).read_bytes())
            data = (folder / MODEL_FILE).read_bytes()
            sig_path = folder / SIGNATURE_FILE
            signature = sig_path.read_bytes() if sig_path.exists() else None
        except ValidationError as exc:
            raise RegistryError(f"cached v{version} has an invalid card: {exc}") from exc
        except OSError as exc:
            raise RegistryError(f"cannot read cached v{version}: {exc}") from exc
        if card.version != version:
            raise IntegrityError(f"cached folder v{version} holds v{card.version}")
        if len(data) != card.size_bytes or sha256_hex(data) != card.sha256:
            raise IntegrityError(f"cached v{version} does not match its card (disk corruption?)")
        if verify_key is not None:
            verify_card(card, signature, verify_key)
        return card, data

    def discard(self, version: int) -> None:
        """Delete a cached version (no error if absent)."""
        shutil.rmtree(self._dir(version), ignore_errors=True)

    def prune(self, keep: Iterable[int]) -> None:
        """Delete every cached version not in ``keep``."""
        wanted = set(keep)
        for version in self.versions():
            if version not in wanted:
                self.discard(version)
                logger.debug("removed cached model v%d", version)

    def read_refused(self) -> dict[int, str]:
        """Versions refused earlier, with the reason (an unreadable file counts as empty)."""
        path = self.root / REFUSED_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            refused = raw["refused"]
            return {int(k): str(v) for k, v in refused.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning(
                "ignoring unreadable %s (%s); it is rewritten at the next refusal", path, exc
            )
            return {}

    def write_refused(self, refused: dict[int, str]) -> None:
        """Record the refused versions (atomically: temporary file, fsync, rename).

        Raises
        ------
        OSError
            The file cannot be written.
        """
        text = json.dumps(
            {"schema_version": 1, "refused": {str(k): v for k, v in sorted(refused.items())}},
            indent=2,
        )
        tmp = self._staging / f"refused-{uuid.uuid4().hex}.json"
        try:
            write_synced(tmp, (text + "\n").encode())
            os.replace(tmp, self.root / REFUSED_FILE)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.root)
