"""The model the inference worker runs, swapped for a newer verified registry version.

:meth:`ModelSlot.poll` looks for versions newer than the current one. A candidate is loaded
only from bytes whose sha256 matches its card (``FileRegistry.load_verified``), whose ONNX
metadata equals the card's, and whose input this agent can feed (one channel). A version that
fails is refused once, logged, and never retried; the current model keeps running. A registry
that cannot be read right now (an ``OSError``) is retried at the next poll.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from models.errors import ModelFormatError, RegistryError
from models.registry import FileRegistry, ModelCard
from models.runtime import OnnxClassifier

logger = logging.getLogger(__name__)

SUPPORTED_CHANNELS = 1  # the store keeps one window per channel


@dataclass(frozen=True)
class LoadedModel:
    """A verified model ready to run."""

    version: int
    card: ModelCard
    classifier: OnnxClassifier


class ModelSlot:
    """Holds the newest verified model of a filesystem registry."""

    def __init__(self, registry_dir: str | Path) -> None:
        self.registry = FileRegistry(registry_dir)
        self.current: LoadedModel | None = None
        self.refused: set[int] = set()
        self._said_waiting = False
        self._said_unreadable = False

    def poll(self) -> bool:
        """Load the newest acceptable version newer than the current one; ``True`` if swapped."""
        try:
            versions = self.registry.versions()
        except OSError as exc:
            if not self._said_unreadable:
                logger.warning("cannot read registry %s: %s", self.registry.root, exc)
                self._said_unreadable = True
            return False
        self._said_unreadable = False
        floor = self.current.version if self.current is not None else 0
        for version in reversed(versions):
            if version <= floor:
                break
            if version in self.refused:
                continue
            loaded = self._load(version)
            if loaded is not None:
                previous = self.current
                self.current = loaded
                logger.info(
                    "model v%d loaded (classes %s, %g Hz x %d samples)%s",
                    version,
                    ",".join(loaded.card.metadata.class_names),
                    loaded.card.metadata.sample_rate_hz,
                    loaded.card.metadata.window_samples,
                    f", replacing v{previous.version}" if previous else "",
                )
                return True
        if self.current is None and not self._said_waiting:
            logger.info("no usable model in %s yet; waiting for one", self.registry.root)
            self._said_waiting = True
        return False

    def _load(self, version: int) -> LoadedModel | None:
        try:
            card, data = self.registry.load_verified(version)
            classifier = OnnxClassifier(data)
            if classifier.metadata != card.metadata:
                raise ModelFormatError("the model's embedded metadata differs from its card")
            if classifier.metadata.channels != SUPPORTED_CHANNELS:
                raise ModelFormatError(
                    f"model takes {classifier.metadata.channels} channels; this agent feeds "
                    f"{SUPPORTED_CHANNELS}"
                )
        except OSError as exc:
            logger.warning("cannot read model v%d now (%s); will retry", version, exc)
            return None
        except (RegistryError, ModelFormatError) as exc:
            self.refused.add(version)
            kept = f"v{self.current.version}" if self.current else "no model"
            logger.error("refusing model v%d: %s; keeping %s", version, exc, kept)
            return None
        return LoadedModel(version, card, classifier)
