"""The model the API serves: loaded only after verification, swapped atomically.

A :class:`Predictor` holds one :class:`LoadedModel` (an onnxruntime session plus the registry
card it was verified against). Requests take a reference to the current model once and run on
it to the end, so a swap never mixes two versions in one response.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from models.errors import ModelFormatError, RegistryError
from models.metadata import NORMAL_CLASS, ModelMetadata
from models.registry import FileRegistry, ModelCard
from models.runtime import OnnxClassifier, Prediction
from serving.errors import InvalidInputError, ModelNotLoadedError
from serving.inputs import G_PER_UNIT, Windows, prepare_batch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A verified model version: its registry card and its inference session."""

    card: ModelCard
    classifier: OnnxClassifier

    @property
    def metadata(self) -> ModelMetadata:
        """The input contract embedded in the model file."""
        return self.classifier.metadata


@dataclass(frozen=True)
class BatchResult:
    """Predictions for one request, with the model version that produced them."""

    model: LoadedModel
    prediction: Prediction

    @property
    def failure_probability(self) -> list[float]:
        """Probability of any class but ``normal``, per window."""
        return [float(p) for p in self.prediction.failure_probability(NORMAL_CLASS)]


def _contract(metadata: ModelMetadata) -> tuple[object, ...]:
    return (
        metadata.sample_rate_hz,
        metadata.window_samples,
        metadata.channels,
        metadata.class_names,
        metadata.units,
    )


def load_model(card: ModelCard, model_bytes: bytes, *, onnx_threads: int = 1) -> LoadedModel:
    """Open verified model bytes and check they keep the contract their card states.

    The caller has already checked the bytes against ``card.sha256``
    (:meth:`~models.registry.FileRegistry.load_verified`).

    Raises
    ------
    ModelFormatError
        onnxruntime cannot open the bytes, the embedded metadata disagrees with the card about
        the input contract, or the model expects units this API cannot convert to.
    """
    classifier = OnnxClassifier(model_bytes, intra_op_threads=onnx_threads)
    if _contract(classifier.metadata) != _contract(card.metadata):
        raise ModelFormatError(
            f"{card.label}: the model file's metadata and its card disagree about the input"
        )
    if classifier.metadata.units not in G_PER_UNIT:
        raise ModelFormatError(
            f"{card.label}: model expects units {classifier.metadata.units!r}, not one of "
            f"{sorted(G_PER_UNIT)}"
        )
    return LoadedModel(card=card, classifier=classifier)


def load_latest_valid(
    registry: FileRegistry,
    *,
    onnx_threads: int = 1,
    verify_key: Ed25519PublicKey | None = None,
    refused_log: list[str] | None = None,
) -> LoadedModel:
    """Load the newest registry version that verifies and opens; log each one refused.

    Versions are tried newest first. A version whose bytes do not match its card's sha256,
    whose signature does not verify against ``verify_key`` (when given), whose card is
    unreadable, or that onnxruntime cannot open is refused (logged at ERROR with its number,
    and appended to ``refused_log``) and the next older one is tried; a refused model is never
    run.

    Raises
    ------
    ModelNotLoadedError
        The registry is empty or no version passes.
    """
    refused: list[str] = []
    for version in reversed(registry.versions()):
        try:
            card, data = registry.load_verified(version, verify_key=verify_key)
            return load_model(card, data, onnx_threads=onnx_threads)
        except (RegistryError, ModelFormatError) as exc:
            logger.error("refusing model version v%d from %s: %s", version, registry.root, exc)
            refused.append(f"v{version}")
            if refused_log is not None:
                refused_log.append(f"v{version}: {exc}")
    detail = f"refused {', '.join(refused)}" if refused else "it holds no model yet"
    raise ModelNotLoadedError(f"no valid model in registry {registry.root}: {detail}")


class Predictor:
    """The served model; thread-safe to read and to :meth:`swap`.

    Parameters
    ----------
    model
        The model to start with, or ``None`` to start empty (not ready).
    """

    def __init__(self, model: LoadedModel | None = None) -> None:
        self._lock = threading.Lock()
        self._model = model

    @classmethod
    def from_registry(cls, registry: FileRegistry, *, onnx_threads: int = 1) -> Predictor:
        """Create a predictor serving the newest valid version (see :func:`load_latest_valid`).

        Raises
        ------
        ModelNotLoadedError
            No version passes verification.
        """
        return cls(load_latest_valid(registry, onnx_threads=onnx_threads))

    @property
    def model(self) -> LoadedModel | None:
        """The model now served, or ``None``."""
        with self._lock:
            return self._model

    def current(self) -> LoadedModel:
        """The model now served.

        Raises
        ------
        ModelNotLoadedError
            Nothing is loaded.
        """
        model = self.model
        if model is None:
            raise ModelNotLoadedError(
                "no verified model is loaded yet; publish one to the registry and retry"
            )
        return model

    def swap(self, model: LoadedModel) -> LoadedModel | None:
        """Serve ``model`` from now on and return the one it replaces.

        Requests already running finish on the model they started with.
        """
        with self._lock:
            previous, self._model = self._model, model
        logger.info(
            "serving model %s (sha256 %s, %s)",
            model.card.label,
            model.card.sha256[:12],
            "first load" if previous is None else f"replaces {previous.card.label}",
        )
        return previous

    def reload(
        self,
        registry: FileRegistry,
        *,
        onnx_threads: int = 1,
        verify_key: Ed25519PublicKey | None = None,
        refused_log: list[str] | None = None,
    ) -> LoadedModel:
        """Load the newest valid version from ``registry`` and swap it in if it is new.

        The new model is opened beside the one serving, then swapped in one assignment;
        requests already running finish on the model they started with. On failure the current
        model keeps serving. The same model (same sha256) is not swapped again.

        Raises
        ------
        ModelNotLoadedError
            No version passes verification.
        """
        model = load_latest_valid(
            registry, onnx_threads=onnx_threads, verify_key=verify_key, refused_log=refused_log
        )
        current = self.model
        if current is not None and current.card.sha256 == model.card.sha256:
            return current
        self.swap(model)
        return model

    def predict(self, windows: Windows, sample_rate_hz: float, units: str = "g") -> BatchResult:
        """Classify request windows, resampling and converting units as needed.

        Parameters
        ----------
        windows
            Flat sample lists (one channel) or lists of channel lists, all the same shape.
        sample_rate_hz
            Sample rate of the windows, in Hz.
        units
            Units of the samples, ``"g"`` or ``"m/s^2"``.

        Raises
        ------
        ModelNotLoadedError
            Nothing is loaded.
        InvalidInputError
            The windows cannot be fed to the model; the message says why.
        """
        model = self.current()
        batch = prepare_batch(windows, sample_rate_hz, units, model.metadata)
        try:
            prediction = model.classifier.predict(batch)
        except ModelFormatError as exc:
            raise InvalidInputError(str(exc)) from exc
        if not np.isfinite(prediction.probabilities).all():
            raise InvalidInputError(
                f"model {model.card.label} gave non-finite probabilities for these windows"
            )
        return BatchResult(model=model, prediction=prediction)
