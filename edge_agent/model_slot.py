"""The model the inference worker runs: updated over the air, verified, smoke-tested, reversible.

:meth:`ModelSlot.poll` asks its :class:`~edge_agent.model_source.ModelSource` (a registry
folder or an HTTP(S) registry) for versions newer than the current one, newest first. A
candidate is swapped in only after every check passed, in this order:

1. its card names this version and fits the size limit; with a verification key, its
   Ed25519 signature verifies (``models.signing``) - all before the model is downloaded;
2. the downloaded bytes are exactly as long as the card says and hash to its sha256;
3. onnxruntime loads it, its embedded metadata equals the card's, and this agent can feed it
   (one channel);
4. a smoke test runs it on a few windows (zeros, noise, a sine, and real windows if given)
   and its probabilities are finite, in [0, 1] and sum to one, its embedding finite.

A version that fails any check is refused for good: logged, remembered in the cache's
``refused.json`` (so a restart does not retry it) and never loaded; the current model keeps
running. A source that cannot be reached right now is retried at the next poll.

Accepted models are kept in a :class:`~edge_agent.model_cache.ModelCache` (``<store
dir>/models``): a restarted agent starts from its newest cached model before it asks the
registry anything, so it scores while the registry is away. When the running model fails at
run time, :meth:`ModelSlot.report_failure` refuses it and rolls back to the previous good
model (kept in memory, else read back from the cache).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge_agent.errors import ConfigError
from edge_agent.errors import RegistryError as AgentRegistryError
from edge_agent.model_cache import ModelCache
from edge_agent.model_source import (
    MAX_MODEL_BYTES,
    FolderSource,
    ModelSource,
    download_verified,
    open_source,
)
from models.errors import (
    FedPMModelsError,
    ModelFormatError,
    RegistryError,
    RegistryUnavailableError,
    SigningKeyError,
    VersionNotFoundError,
)
from models.registry import MODEL_FILE, ModelCard
from models.runtime import OnnxClassifier
from models.signing import load_public_key

if TYPE_CHECKING:
    from edge_agent.settings import AgentSettings

logger = logging.getLogger(__name__)

SUPPORTED_CHANNELS = 1  # the store keeps one window per channel
KEEP_PREVIOUS = 2  # good models kept (in memory and in the cache) to roll back to
PROBABILITY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class LoadedModel:
    """A verified model ready to run."""

    version: int
    card: ModelCard
    classifier: OnnxClassifier


class _Outcome(Enum):
    LOADED = "loaded"
    REFUSED = "refused"
    RETRY = "retry"
    SKIPPED = "skipped"


def smoke_test(classifier: OnnxClassifier, windows: npt.ArrayLike | None = None) -> None:
    """Run ``classifier`` on a few windows and check that its outputs make sense.

    The windows are all-zero, unit white noise and a unit sine (1 / 20 of the sample rate),
    shaped (channels, samples) from the model's metadata, plus ``windows`` (batch, channels,
    samples) when their shape fits the model.

    Raises
    ------
    ModelFormatError
        The model raised, or its probabilities are not finite, outside [0, 1] or do not sum
        to one, or its embedding is not finite or has the wrong shape.
    """
    meta = classifier.metadata
    channels, samples = classifier.input_shape
    t = np.arange(samples, dtype=np.float64) / meta.sample_rate_hz
    sine = np.sin(2 * np.pi * (meta.sample_rate_hz / 20) * t)
    noise = np.random.default_rng(0).standard_normal((channels, samples))
    batch = [np.zeros((channels, samples)), noise, np.broadcast_to(sine, (channels, samples))]
    if windows is not None:
        real = np.asarray(windows, dtype=np.float32)
        if real.ndim == 3 and real.shape[1:] == (channels, samples) and np.isfinite(real).all():
            batch.extend(real)
    x = np.stack(batch).astype(np.float32)
    try:
        prediction = classifier.predict(x)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelFormatError(f"smoke test: the model failed to run: {exc}") from exc
    probs, emb = prediction.probabilities, prediction.embedding
    n, k = x.shape[0], len(meta.class_names)
    if probs.shape != (n, k) or emb.shape != (n, meta.embedding_dim):
        raise ModelFormatError(
            f"smoke test: outputs shaped {probs.shape} and {emb.shape}, expected "
            f"({n}, {k}) and ({n}, {meta.embedding_dim})"
        )
    if not (np.isfinite(probs).all() and np.isfinite(emb).all()):
        raise ModelFormatError("smoke test: the model outputs NaN or Inf")
    tol = PROBABILITY_TOLERANCE
    if probs.min() < -tol or probs.max() > 1 + tol:
        raise ModelFormatError("smoke test: probabilities outside [0, 1]")
    sums = probs.sum(axis=1)
    if np.abs(sums - 1).max() > tol:
        raise ModelFormatError(
            f"smoke test: probabilities sum to {sums.min():.4f}..{sums.max():.4f}"
        )


class ModelSlot:
    """Holds the newest good model of a model source, with rollback and a local cache.

    Parameters
    ----------
    registry_dir
        A registry folder (shorthand for ``source=FolderSource(registry_dir)``).
    source
        Where versions come from (instead of ``registry_dir``).
    cache_dir
        Where accepted models and refused versions are kept across restarts; ``None`` keeps
        nothing on disk (refusals last as long as the process).
    verify_key
        Ed25519 public key: every model must carry its valid signature.
    smoke_windows
        Real windows (batch, channels, samples) added to the smoke test when they fit.
    max_model_bytes
        Larger models are refused before they are downloaded.
    """

    def __init__(
        self,
        registry_dir: str | Path | None = None,
        *,
        source: ModelSource | None = None,
        cache_dir: str | Path | None = None,
        verify_key: Ed25519PublicKey | None = None,
        smoke_windows: npt.ArrayLike | None = None,
        max_model_bytes: int = MAX_MODEL_BYTES,
    ) -> None:
        if registry_dir is not None and source is None:
            source = FolderSource(registry_dir)
        elif source is None or registry_dir is not None:
            raise ValueError("give a registry_dir or a source, not both or neither")
        self.source: ModelSource = source
        self.cache = ModelCache(cache_dir) if cache_dir is not None else None
        self.verify_key = verify_key
        self.smoke_windows = smoke_windows
        self.max_model_bytes = max_model_bytes
        self.current: LoadedModel | None = None
        self.previous: list[LoadedModel] = []  # newest last; rollback targets
        self.reasons: dict[int, str] = self.cache.read_refused() if self.cache else {}
        self.refused: set[int] = set(self.reasons)
        self._started = False
        self._said_waiting = False
        self._said_unreachable = False
        self._said_missing: set[int] = set()
        if self.refused:
            logger.info(
                "refused earlier, not retried: %s",
                ", ".join(f"v{v}" for v in sorted(self.refused)),
            )

    @classmethod
    def from_settings(cls, settings: AgentSettings, **kwargs: Any) -> ModelSlot:
        """A slot for ``settings``: its model source, verify key and a ``<store dir>/models`` cache.

        ``kwargs`` go to the constructor (``smoke_windows``, ``max_model_bytes``).

        Raises
        ------
        ConfigError
            No model source configured, a bad ``model_url``, or an unusable verify key.
        edge_agent.errors.RegistryError
            The model cache folder cannot be created or written.
        """
        try:
            source = open_source(settings.registry_dir, settings.model_url)
        except ValueError as exc:
            raise ConfigError(f"model source: {exc}") from exc
        verify_key = None
        if settings.model_verify_key is not None:
            try:
                verify_key = load_public_key(settings.model_verify_key)
            except SigningKeyError as exc:
                raise ConfigError(f"model_verify_key: {exc}") from exc
        elif settings.environment != "development":
            logger.warning(
                "no model_verify_key: models from %s are checked against their card's sha256 "
                "only, not signed by the aggregator",
                source.location,
            )
        cache_dir = Path(settings.store_path).parent / "models"
        try:
            return cls(source=source, cache_dir=cache_dir, verify_key=verify_key, **kwargs)
        except OSError as exc:
            raise AgentRegistryError(f"cannot use the model cache {cache_dir}: {exc}") from exc

    # --- polling -----------------------------------------------------------------------------

    def poll(self) -> bool:
        """Swap in the newest acceptable version newer than the current one.

        The first poll starts from the newest good cached model, if any, before asking the
        source. Returns ``True`` if the current model changed.
        """
        swapped = False
        if not self._started:
            self._started = True
            swapped = self._load_from_cache(below=None)
        try:
            versions = self.source.versions()
        except RegistryError as exc:
            if not self._said_unreachable:
                kept = self._kept()
                logger.warning(
                    "cannot read the model registry %s now (%s); keeping %s, will retry",
                    self.source.location,
                    exc,
                    kept,
                )
                self._said_unreachable = True
            return swapped
        if self._said_unreachable:
            logger.info("model registry %s is reachable again", self.source.location)
        self._said_unreachable = False
        floor = self.current.version if self.current is not None else 0
        for version in reversed(versions):
            if version <= floor:
                break
            if version in self.refused:
                continue
            outcome = self._try(version)
            if outcome is _Outcome.LOADED:
                return True
            if outcome is _Outcome.RETRY:
                break
        if self.current is None and not self._said_waiting:
            logger.info("no usable model in %s yet; waiting for one", self.source.location)
            self._said_waiting = True
        return swapped

    def _try(self, version: int) -> _Outcome:
        stage = self.cache.new_stage() if self.cache is not None else None
        try:
            candidate = download_verified(
                self.source,
                version,
                into=stage / MODEL_FILE if stage is not None else None,
                verify_key=self.verify_key,
                max_model_bytes=self.max_model_bytes,
            )
            loaded = self._accept(candidate.card, candidate.data)
        except (RegistryUnavailableError, OSError) as exc:
            logger.warning("cannot fetch model v%d now (%s); will retry", version, exc)
            self._drop(stage)
            return _Outcome.RETRY
        except VersionNotFoundError as exc:  # listed, but not all of it is there yet
            if version not in self._said_missing:
                logger.info("skipping model v%d for now: %s", version, exc)
                self._said_missing.add(version)
            self._drop(stage)
            return _Outcome.SKIPPED
        except FedPMModelsError as exc:  # registry, integrity, signature, format, smoke test
            self._drop(stage)
            self._refuse(version, exc)
            return _Outcome.REFUSED
        if self.cache is not None and stage is not None:
            try:
                self.cache.commit(stage, candidate.card, candidate.signature)
            except OSError as exc:
                logger.warning("model v%d runs but could not be cached: %s", version, exc)
        self._swap(loaded, how=f"after download from {self.source.location}")
        return _Outcome.LOADED

    def _drop(self, stage: Path | None) -> None:
        if self.cache is not None and stage is not None:
            self.cache.drop_stage(stage)

    def _accept(self, card: ModelCard, data: bytes) -> LoadedModel:
        """Load verified bytes and check the model fits this agent and passes the smoke test."""
        classifier = OnnxClassifier(data)
        if classifier.metadata != card.metadata:
            raise ModelFormatError("the model's embedded metadata differs from its card")
        if classifier.metadata.channels != SUPPORTED_CHANNELS:
            raise ModelFormatError(
                f"model takes {classifier.metadata.channels} channels; this agent feeds "
                f"{SUPPORTED_CHANNELS}"
            )
        smoke_test(classifier, self.smoke_windows)
        return LoadedModel(card.version, card, classifier)

    def _load_from_cache(self, below: int | None) -> bool:
        """Make the newest good cached version (under ``below``) current; ``True`` if one was."""
        if self.cache is None:
            return False
        for version in reversed(self.cache.versions()):
            if (below is not None and version >= below) or version in self.refused:
                continue
            try:
                card, data = self.cache.load(version, self.verify_key)
                loaded = self._accept(card, data)
            except FedPMModelsError as exc:
                # the cached copy is bad (or the key changed), not necessarily the version:
                # drop the copy and let the registry offer it again
                logger.warning("discarding cached model v%d: %s", version, exc)
                self.cache.discard(version)
                continue
            self._swap(loaded, how="from the local cache", remember_previous=False)
            return True
        return False

    # --- swapping, refusing, rolling back ----------------------------------------------------

    def _kept(self) -> str:
        return f"v{self.current.version}" if self.current is not None else "no model"

    def _swap(self, loaded: LoadedModel, *, how: str, remember_previous: bool = True) -> None:
        previous = self.current
        if previous is not None and remember_previous:
            self.previous = [*self.previous, previous][-KEEP_PREVIOUS:]
        self.current = loaded
        meta = loaded.card.metadata
        logger.info(
            "model v%d swapped in %s (sha256 %s…, classes %s, %g Hz x %d samples)%s",
            loaded.version,
            how,
            loaded.card.sha256[:12],
            ",".join(meta.class_names),
            meta.sample_rate_hz,
            meta.window_samples,
            f", replacing v{previous.version}" if previous else "",
        )
        if self.cache is not None:  # keep the current model and a few older ones to roll back to
            older = [
                v for v in self.cache.versions() if v < loaded.version and v not in self.refused
            ]
            self.cache.prune({loaded.version, *older[-KEEP_PREVIOUS:]})

    def _record_refusal(self, version: int, reason: str) -> None:
        self.refused.add(version)
        self.reasons[version] = reason
        if self.cache is not None:
            self.cache.discard(version)
            try:
                self.cache.write_refused(self.reasons)
            except OSError as exc:
                logger.warning("could not record refused v%d on disk: %s", version, exc)

    def _refuse(self, version: int, error: BaseException) -> None:
        logger.error("refusing model v%d: %s; keeping %s", version, error, self._kept())
        self._record_refusal(version, f"{type(error).__name__}: {error}")

    def report_failure(self, version: int, error: BaseException) -> None:
        """Refuse ``version`` for good after it failed at run time; roll back if it is current.

        The previous good model (in memory, else the newest good one in the cache) becomes
        current; with none left, inference waits for a new version. A version no longer
        current is only refused.
        """
        if version in self.refused:
            return
        self.previous = [m for m in self.previous if m.version != version]
        if self.current is None or self.current.version != version:
            self._refuse(version, error)
            return
        self._record_refusal(version, f"{type(error).__name__} at run time: {error}")
        self.current = None
        if self.previous:
            self._swap(self.previous.pop(), how="by rollback", remember_previous=False)
        else:
            self._load_from_cache(below=version)
        if self.current is None:
            logger.error(
                "model v%d failed at run time (%s); refused for good, and no good model is "
                "left to roll back to: waiting for a new version",
                version,
                error,
            )
        else:
            logger.error(
                "model v%d failed at run time (%s); refused for good, rolled back to v%d",
                version,
                error,
                self.current.version,
            )

    def close(self) -> None:
        """Release the source's connections."""
        self.source.close()
