"""Errors raised by the shared ML core.

Exception tree::

    FedPMModelsError
    ├── FrameError            a sensor frame that cannot be decoded or is invalid
    ├── SignalError           bad arguments to a signal-processing or simulator function
    ├── ModelFormatError      an ONNX file without valid FedPM metadata, or wrong input shape
    │   └── QuantizationError     a model or calibration windows the int8 quantiser cannot use
    ├── AnomalyError          an anomaly baseline that cannot be fitted, applied or parsed
    ├── DatasetError          a manifest or recording on disk that cannot be read as labelled data
    ├── SigningKeyError       a signing or verification key file that cannot be used
    └── RegistryError         the model registry cannot be read or written
        ├── IntegrityError    a model file whose sha256 does not match its card
        │   └── ModelSignatureError   a signature that is missing or does not verify
        ├── RegistryUnavailableError  the registry cannot be reached now (retry later)
        └── VersionNotFoundError   no such registry version (or an empty registry)
"""

from __future__ import annotations


class FedPMModelsError(Exception):
    """Base class of every error raised by ``models``."""


class FrameError(FedPMModelsError, ValueError):
    """A sensor frame could not be decoded or failed validation.

    ``reason`` is a short machine-readable tag (for counters), the message is for people.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SignalError(FedPMModelsError, ValueError):
    """Invalid arguments to a signal-processing or simulation function."""


class ModelFormatError(FedPMModelsError, ValueError):
    """An ONNX model without valid FedPM metadata, or input the model cannot take."""


class DatasetError(FedPMModelsError, ValueError):
    """A manifest or a recording it lists cannot be read; the message names file and line."""


class QuantizationError(ModelFormatError):
    """A model that cannot be quantised (already int8), or unusable calibration windows."""


class AnomalyError(FedPMModelsError, ValueError):
    """An anomaly baseline that cannot be fitted, applied to these windows, or parsed.

    Fitting needs enough finite windows; scoring needs finite rows of the fitted width.
    """


class RegistryError(FedPMModelsError):
    """The model registry cannot be read or written."""


class IntegrityError(RegistryError):
    """A model file whose sha256 does not match the one recorded in its card."""


class VersionNotFoundError(RegistryError, LookupError):
    """The requested registry version does not exist."""


class ModelSignatureError(IntegrityError):
    """A model whose detached signature is missing, malformed, or does not verify.

    Raised only where a verification key is configured; the model must not be loaded.
    """


class RegistryUnavailableError(RegistryError):
    """The registry cannot be reached or read right now (network down, server error).

    Transient: nothing is wrong with any model, and the caller should try again later.
    """


class SigningKeyError(FedPMModelsError, ValueError):
    """A key file that is missing, unreadable, not PEM, or not an Ed25519 key."""
