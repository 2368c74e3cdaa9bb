"""Errors raised by the serving package.

Exception tree::

    ServingError
    ├── ModelNotLoadedError      no verified model is loaded (yet)            -> HTTP 503
    └── InvalidInputError        a request the loaded model cannot take      -> HTTP 422
        ├── ShapeError           wrong channel count or window length, ragged windows
        └── ResampleError        a sample rate that cannot be mapped onto the model's

Errors from :mod:`models` (``RegistryError``, ``ModelFormatError``, ``SignalError``) are
translated into these at the boundary with ``raise ... from exc``; the routes in
:mod:`serving.app` turn them into HTTP errors, nothing else does.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base class of every error raised by ``serving``."""


class ModelNotLoadedError(ServingError):
    """No verified model is loaded, so nothing can be predicted."""


class InvalidInputError(ServingError, ValueError):
    """Input the loaded model cannot take; the message is written for the API's caller."""


class ShapeError(InvalidInputError):
    """Windows with the wrong channel count or length, or of uneven shape."""


class ResampleError(InvalidInputError):
    """A sample rate that cannot be resampled onto the model's window."""
