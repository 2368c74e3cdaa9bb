"""Ed25519 signatures of published models: keys, signing and verification.

The aggregator signs each version it publishes with a private key; edge agents (and anyone
else) verify it with the matching public key before loading the model. What is signed is not
the model file alone but a small canonical statement about it (:func:`signing_payload`)::

    fedpm-model-signature-v1
    {"created_at":"...","run_id":"...","server_round":3,"sha256":"<model sha256>",
     "sites":["site-a"],"size_bytes":412345,"version":7}

The model's sha256 ties the signature to the bytes; the version number ties it to its place
in the registry, so a signed v3 cannot be served again as v8 (a replay), and the run, round
and creation time cannot be rewritten on the card. The model's input contract is not signed
separately: it is embedded in the ONNX file, which the sha256 covers, and loaders check that
the card repeats it exactly.

The detached signature is a short JSON file beside the model (``model.sig``)::

    {"format": "fedpm-model-signature-v1", "algorithm": "ed25519",
     "key_id": "3f0c9a...", "signature": "<base64 of 64 bytes>"}

``key_id`` (the first 16 hex digits of the sha256 of the raw public key) only makes error
messages useful ("signed by another key"); trust comes from the verification alone.

Examples
--------
>>> key = generate_private_key()
>>> len(key_id(key.public_key()))
16
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.errors import ModelSignatureError, SigningKeyError

if TYPE_CHECKING:
    from models.registry import ModelCard

logger = logging.getLogger(__name__)

SIGNATURE_FORMAT: Final = "fedpm-model-signature-v1"
PRIVATE_KEY_FILE = "model-signing.key"
PUBLIC_KEY_FILE = "model-signing.pub"
MAX_KEY_FILE_BYTES = 64 * 1024
MAX_SIGNATURE_BYTES = 4096


class ModelSignature(BaseModel):
    """The detached signature file of one model version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["fedpm-model-signature-v1"] = SIGNATURE_FORMAT
    algorithm: Literal["ed25519"] = "ed25519"
    key_id: str = Field(pattern=r"^[0-9a-f]{16}$")
    signature: str = Field(min_length=1, max_length=200)


# --- keys ------------------------------------------------------------------------------------


def generate_private_key() -> Ed25519PrivateKey:
    """A new random Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint of ``public_key``: 16 hex digits of the sha256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _write_new_file(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` with ``mode`` from the start (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise SigningKeyError(f"{path} already exists; refusing to overwrite a key")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it; never widen a private key's
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if a key appeared meanwhile
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_private_key(key: Ed25519PrivateKey, path: str | Path, *, overwrite: bool = False) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, readable by its owner only (mode 0600).

    Raises
    ------
    SigningKeyError
        ``path`` exists and ``overwrite`` is false.
    """
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new_file(Path(path), pem, 0o600, overwrite=overwrite)


def save_public_key(
    public_key: Ed25519PublicKey, path: str | Path, *, overwrite: bool = False
) -> None:
    """Write ``public_key`` as SubjectPublicKeyInfo PEM (mode 0644).

    Raises
    ------
    SigningKeyError
        ``path`` exists and ``overwrite`` is false.
    """
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_new_file(Path(path), pem, 0o644, overwrite=overwrite)


def write_key_pair(directory: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Generate a key pair into ``directory``; return (private key path, public key path).

    The files are ``model-signing.key`` (0600; stays with the aggregator) and
    ``model-signing.pub`` (copied to every edge agent as ``model_verify_key``).

    Raises
    ------
    SigningKeyError
        A key file already exists there and ``overwrite`` is false.
    """
    folder = Path(directory)
    private_path, public_path = folder / PRIVATE_KEY_FILE, folder / PUBLIC_KEY_FILE
    if not overwrite:
        for path in (private_path, public_path):
            if path.exists():
                raise SigningKeyError(f"{path} already exists; refusing to overwrite a key")
    key = generate_private_key()
    save_private_key(key, private_path, overwrite=overwrite)
    save_public_key(key.public_key(), public_path, overwrite=overwrite)
    return private_path, public_path


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise SigningKeyError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_KEY_FILE_BYTES:
        raise SigningKeyError(f"{what} {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    return data


def load_private_key(path: str | Path, password: bytes | None = None) -> Ed25519PrivateKey:
    """Read an Ed25519 private key from a PEM file.

    A key file that others can read is used, with a warning.

    Raises
    ------
    SigningKeyError
        Missing or unreadable file, not PEM, encrypted without ``password``, or another
        algorithm than Ed25519.
    """
    p = Path(path)
    data = _read_key_file(p, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError as exc:  # encrypted without a password, or a password for a plain key
        raise SigningKeyError(f"private key {p}: {exc}") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"{p} is not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{p} holds a {type(key).__name__}, not an Ed25519 key")
    if p.stat().st_mode & 0o077:
        logger.warning("private key %s is readable by other users; chmod 600 it", p)
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key from a PEM file.

    Raises
    ------
    SigningKeyError
        Missing or unreadable file, not a PEM public key, or not Ed25519.
    """
    p = Path(path)
    data = _read_key_file(p, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"{p} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{p} holds a {type(key).__name__}, not an Ed25519 key")
    return key


# --- signatures ------------------------------------------------------------------------------


def signing_payload(card: ModelCard) -> bytes:
    """The exact bytes signed for ``card``: a format line and canonical JSON of its essentials."""
    essentials = {
        "created_at": card.created_at,
        "run_id": card.run_id,
        "server_round": card.server_round,
        "sha256": card.sha256,
        "sites": list(card.sites),
        "size_bytes": card.size_bytes,
        "version": card.version,
    }
    body = json.dumps(essentials, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"{SIGNATURE_FORMAT}\n{body}".encode("ascii")


def sign_card(card: ModelCard, private_key: Ed25519PrivateKey) -> bytes:
    """Sign ``card``'s essentials; return the detached signature file's bytes."""
    raw = private_key.sign(signing_payload(card))
    sig = ModelSignature(
        key_id=key_id(private_key.public_key()),
        signature=base64.b64encode(raw).decode("ascii"),
    )
    return (json.dumps(sig.model_dump(mode="json"), indent=2) + "\n").encode("ascii")


def parse_signature(data: bytes) -> ModelSignature:
    """Parse a detached signature file.

    Raises
    ------
    ModelSignatureError
        Too large, not JSON, or not a signature of a known format.
    """
    if len(data) > MAX_SIGNATURE_BYTES:
        raise ModelSignatureError(f"signature file is larger than {MAX_SIGNATURE_BYTES} bytes")
    try:
        return ModelSignature.model_validate_json(data)
    except ValidationError as exc:
        raise ModelSignatureError(f"malformed signature file: {exc}") from exc


def verify_card(card: ModelCard, signature: bytes | None, public_key: Ed25519PublicKey) -> None:
    """Check that ``signature`` (a signature file's bytes) signs ``card`` with ``public_key``.

    Raises
    ------
    ModelSignatureError
        The signature is missing, malformed, made by another key, or does not match this
        card (another version, model, run or round).
    """
    label = f"v{card.version}"
    if signature is None:
        raise ModelSignatureError(f"{label} is not signed, and a verification key is configured")
    sig = parse_signature(signature)
    expected = key_id(public_key)
    if sig.key_id != expected:
        raise ModelSignatureError(
            f"{label} is signed by key {sig.key_id}, not by the configured key {expected}"
        )
    try:
        raw = base64.b64decode(sig.signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ModelSignatureError(f"{label}: signature is not valid base64") from exc
    try:
        public_key.verify(raw, signing_payload(card))
    except InvalidSignature as exc:
        raise ModelSignatureError(
            f"{label}: signature does not match the card (model sha256, version, run or round "
            "differ from what was signed)"
        ) from exc
