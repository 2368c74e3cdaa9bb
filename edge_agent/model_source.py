"""Where the edge agent gets new models: a registry folder, or the same tree over HTTP(S).

Both adapters implement :class:`ModelSource` and read the layout that
:class:`models.registry.FileRegistry` writes::

    <base>/index.json                     # {"versions": [1, 2, 3], ...}
    <base>/versions/000003/card.json      # ModelCard: sha256, size, provenance, metadata
    <base>/versions/000003/model.onnx
    <base>/versions/000003/model.sig      # detached Ed25519 signature (optional)

:class:`FolderSource` reads a local or mounted folder; :class:`HttpSource` reads the same tree
from any static web server or object store (``python -m http.server -d <registry>``, nginx, an
S3 bucket), with httpx, timeouts, a deadline per download and size limits.
:func:`download_verified` is the one way a candidate comes in: the card first, its signature
checked against the card before a byte of the model is fetched, then the model streamed (to a
file when asked) with at most the card's size accepted and its sha256 checked at the end.

Errors tell the caller what to do next: :class:`~models.errors.RegistryUnavailableError` (the
source cannot be reached or read now: try again later) versus any other
:class:`~models.errors.RegistryError` (this version is bad: refuse it), except
:class:`~models.errors.VersionNotFoundError` (a listed version whose files are not all there
yet, as while an upload is in progress: skip it for now).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from models.errors import (
    IntegrityError,
    RegistryError,
    RegistryUnavailableError,
    VersionNotFoundError,
)
from models.registry import (
    CARD_FILE,
    INDEX_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    FileRegistry,
    ModelCard,
    RegistryIndex,
    version_path,
)
from models.signing import MAX_SIGNATURE_BYTES, verify_card

logger = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
MAX_MODEL_BYTES = 64 << 20  # a WDCNN is well under 1 MiB; a card claiming more is refused
MAX_CARD_BYTES = 1 << 20
MAX_INDEX_BYTES = 4 << 20


class ModelSource(Protocol):
    """A place that publishes model versions in the registry layout."""

    @property
    def location(self) -> str:
        """Where the models come from, for log messages."""
        ...

    def versions(self) -> list[int]:
        """Published version numbers, ascending (``RegistryUnavailableError`` if unreachable)."""
        ...

    def card(self, version: int) -> ModelCard:
        """The card of ``version`` (validated, unverified)."""
        ...

    def signature(self, version: int) -> bytes | None:
        """The detached signature of ``version``, or ``None`` when there is none."""
        ...

    def stream_model(self, version: int, deadline: float) -> ChunkIterator:
        """Iterate over the model file's bytes; give up at ``deadline`` (``time.monotonic``)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class ChunkIterator(Protocol):
    """Bytes of a model file, chunk by chunk, closed when done."""

    def __iter__(self) -> ChunkIterator: ...
    def __next__(self) -> bytes: ...
    def close(self) -> None:
        """Stop reading and release the file or connection."""
        ...


@dataclass(frozen=True)
class Candidate:
    """A version whose bytes match its card (and whose signature verified, when checked)."""

    card: ModelCard
    data: bytes
    signature: bytes | None


def download_verified(
    source: ModelSource,
    version: int,
    *,
    into: Path | None = None,
    verify_key: Ed25519PublicKey | None = None,
    max_model_bytes: int = MAX_MODEL_BYTES,
    timeout_s: float = 300.0,
) -> Candidate:
    """Fetch ``version`` from ``source`` and verify it; write the model to ``into`` if given.

    Nothing unverified is returned: the card must name this version, fit ``max_model_bytes``
    and (with ``verify_key``) carry a valid signature before the model is fetched; the model
    may not exceed the card's size (the download stops at the first byte too many), must not
    be shorter, and must hash to the card's sha256. ``into`` (a file path) is written,
    flushed and fsync'ed; the caller decides whether to keep it.

    Raises
    ------
    RegistryUnavailableError
        The source could not be reached or the download broke off, or took over
        ``timeout_s``: try again later.
    IntegrityError
        The version is bad: wrong card, too large, truncated, sha256 mismatch, or (as
        :class:`~models.errors.ModelSignatureError`) a missing or invalid signature.
    """
    card = source.card(version)
    if card.version != version:
        raise IntegrityError(f"card of version {version} claims version {card.version}")
    if card.size_bytes > max_model_bytes:
        raise IntegrityError(
            f"v{version} is {card.size_bytes} bytes, over this agent's limit of "
            f"{max_model_bytes}; not downloading it"
        )
    signature = source.signature(version)
    if verify_key is not None:
        verify_card(card, signature, verify_key)
    hasher = hashlib.sha256()
    data = bytearray()
    chunks = source.stream_model(version, time.monotonic() + timeout_s)
    try:
        for chunk in chunks:
            data += chunk
            if len(data) > card.size_bytes:
                raise IntegrityError(
                    f"v{version}: model is larger than the {card.size_bytes} bytes its card "
                    "declares; download stopped"
                )
            hasher.update(chunk)
    finally:
        chunks.close()
    if len(data) != card.size_bytes:
        raise IntegrityError(
            f"v{version}: model has {len(data)} bytes, its card declares {card.size_bytes}"
        )
    if hasher.hexdigest() != card.sha256:
        raise IntegrityError(
            f"v{version}: model sha256 {hasher.hexdigest()[:12]}… does not match its card "
            f"({card.sha256[:12]}…)"
        )
    if into is not None:
        with open(into, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Candidate(card, bytes(data), signature)


# --- a registry folder -----------------------------------------------------------------------


class _FileChunks:
    def __init__(self, path: Path, deadline: float) -> None:
        self._fh = path.open("rb")
        self._deadline = deadline

    def __iter__(self) -> _FileChunks:
        return self

    def __next__(self) -> bytes:
        if time.monotonic() > self._deadline:
            raise RegistryUnavailableError(f"reading {self._fh.name} took too long")
        try:
            chunk = self._fh.read(CHUNK_BYTES)
        except OSError as exc:
            raise RegistryUnavailableError(f"cannot read {self._fh.name}: {exc}") from exc
        if not chunk:
            raise StopIteration
        return chunk

    def close(self) -> None:
        self._fh.close()


class FolderSource:
    """A registry in a local or mounted directory (:class:`models.registry.FileRegistry`)."""

    def __init__(self, root: str | Path) -> None:
        self.registry = FileRegistry(root)

    @property
    def location(self) -> str:
        """The folder."""
        return str(self.registry.root)

    def versions(self) -> list[int]:
        """Version folders present (no index needed)."""
        try:
            return self.registry.versions()
        except OSError as exc:
            raise RegistryUnavailableError(f"cannot read registry {self.location}: {exc}") from exc

    def card(self, version: int) -> ModelCard:
        """The validated card of ``version``."""
        try:
            return self.registry.card(version)
        except OSError as exc:
            raise RegistryUnavailableError(f"cannot read card of v{version}: {exc}") from exc

    def signature(self, version: int) -> bytes | None:
        """The signature file of ``version``, if any."""
        try:
            return self.registry.signature(version)
        except OSError as exc:
            raise RegistryUnavailableError(f"cannot read signature of v{version}: {exc}") from exc

    def stream_model(self, version: int, deadline: float) -> ChunkIterator:
        """The model file, chunk by chunk."""
        path = self.registry.root / version_path(version) / MODEL_FILE
        try:
            return _FileChunks(path, deadline)
        except FileNotFoundError as exc:
            raise IntegrityError(f"version {version} has a card but no model file") from exc
        except OSError as exc:
            raise RegistryUnavailableError(f"cannot open {path}: {exc}") from exc

    def close(self) -> None:
        """Nothing to release."""


# --- the same tree over HTTP(S) --------------------------------------------------------------


class _HttpChunks:
    def __init__(self, response: httpx.Response, url: str, deadline: float) -> None:
        self._response = response
        self._chunks = response.iter_bytes(CHUNK_BYTES)
        self._url = url
        self._deadline = deadline

    def __iter__(self) -> _HttpChunks:
        return self

    def __next__(self) -> bytes:
        if time.monotonic() > self._deadline:
            raise RegistryUnavailableError(f"download of {self._url} took too long; will retry")
        try:
            return next(self._chunks)
        except httpx.HTTPError as exc:
            raise RegistryUnavailableError(
                f"download of {self._url} broke off ({type(exc).__name__}: {exc}); will retry"
            ) from exc

    def close(self) -> None:
        self._response.close()


class HttpSource:
    """A registry tree served over HTTP(S) by any static server or object store.

    Parameters
    ----------
    base_url
        URL of the registry root (the folder holding ``index.json``).
    timeout_s
        Connect, read and write timeout of each request, in seconds.
    verify_tls
        Check the server's certificate (a CA bundle path also works, as in httpx).
    """

    def __init__(
        self, base_url: str, *, timeout_s: float = 10.0, verify_tls: bool | str = True
    ) -> None:
        url = httpx.URL(base_url if base_url.endswith("/") else base_url + "/")
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"model_url must be an http(s):// URL, got {base_url!r}")
        self.base_url = url
        self._said_no_index = False
        self._client = httpx.Client(
            base_url=url,
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=True,
            max_redirects=3,
            verify=verify_tls,
            headers={"Cache-Control": "no-cache", "User-Agent": "fedpm-edge-agent"},
        )

    @property
    def location(self) -> str:
        """The base URL."""
        return str(self.base_url)

    def _get(self, path: str, limit: int) -> bytes | None:
        """GET ``path`` into memory (``None`` on a 404), refusing bodies over ``limit`` bytes."""
        url = self.base_url.join(path)
        try:
            with self._client.stream("GET", path) as response:
                if response.status_code == httpx.codes.NOT_FOUND:
                    return None
                if response.status_code != httpx.codes.OK:
                    raise RegistryUnavailableError(f"GET {url}: HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes(CHUNK_BYTES):
                    body += chunk
                    if len(body) > limit:
                        raise RegistryError(f"GET {url}: response is over {limit} bytes")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise RegistryUnavailableError(
                f"GET {url} failed ({type(exc).__name__}: {exc})"
            ) from exc

    def versions(self) -> list[int]:
        """Versions listed in ``index.json`` (none while there is no index)."""
        body = self._get(INDEX_FILE, MAX_INDEX_BYTES)
        if body is None:  # nothing published yet, as a folder without versions/
            if not self._said_no_index:
                logger.warning(
                    "no %s at %s yet: nothing published, a wrong model_url, or a registry "
                    "written by an older FedPM (run FileRegistry.write_index() on it)",
                    INDEX_FILE,
                    self.location,
                )
                self._said_no_index = True
            return []
        self._said_no_index = False
        try:
            index = RegistryIndex.model_validate_json(body)
        except ValidationError as exc:
            raise RegistryError(f"invalid {INDEX_FILE} at {self.location}: {exc}") from exc
        return sorted(set(index.versions))

    def card(self, version: int) -> ModelCard:
        """The validated card of ``version`` (``VersionNotFoundError`` while it is missing)."""
        body = self._get(f"{version_path(version)}/{CARD_FILE}", MAX_CARD_BYTES)
        if body is None:
            raise VersionNotFoundError(f"v{version} is listed but its card is not there (yet)")
        try:
            return ModelCard.model_validate_json(body)
        except ValidationError as exc:
            raise RegistryError(f"invalid card for version {version}: {exc}") from exc

    def signature(self, version: int) -> bytes | None:
        """The signature file of ``version``, or ``None`` on a 404."""
        return self._get(f"{version_path(version)}/{SIGNATURE_FILE}", MAX_SIGNATURE_BYTES)

    def stream_model(self, version: int, deadline: float) -> ChunkIterator:
        """Stream the model file (the response is closed with the iterator)."""
        path = f"{version_path(version)}/{MODEL_FILE}"
        url = str(self.base_url.join(path))
        try:
            request = self._client.build_request("GET", path)
            response = self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise RegistryUnavailableError(
                f"GET {url} failed ({type(exc).__name__}: {exc})"
            ) from exc
        if response.status_code != httpx.codes.OK:
            response.close()
            if response.status_code == httpx.codes.NOT_FOUND:
                raise VersionNotFoundError(f"v{version}: {url} is not there (yet)")
            raise RegistryUnavailableError(f"GET {url}: HTTP {response.status_code}")
        return _HttpChunks(response, url, deadline)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


def open_source(registry_dir: Path | None, model_url: str | None) -> ModelSource:
    """The source the settings name: a folder, or a URL (exactly one must be given).

    Raises
    ------
    ValueError
        Neither or both are given, or the URL is not http(s).
    """
    if registry_dir is not None and model_url is None:
        return FolderSource(registry_dir)
    if model_url is not None and registry_dir is None:
        return HttpSource(model_url)
    raise ValueError("configure exactly one of registry_dir and model_url")


__all__ = [
    "Candidate",
    "ChunkIterator",
    "FolderSource",
    "HttpSource",
    "ModelSource",
    "download_verified",
    "open_source",
]
