"""Tests for models.signing (Ed25519 keys and model signatures) and signed registry publishing.

Real keys, real files; the registry tests publish random bytes (no ONNX parsing is involved).
"""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from models.errors import IntegrityError, ModelSignatureError, RegistryError, SigningKeyError
from models.metadata import ModelMetadata, Provenance
from models.registry import SIGNATURE_FILE, FileRegistry, ModelCard
from models.signing import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    generate_private_key,
    key_id,
    load_private_key,
    load_public_key,
    save_private_key,
    sign_card,
    verify_card,
    write_key_pair,
)

CLASSES = ("normal", "inner_race", "outer_race", "ball")


def metadata() -> ModelMetadata:
    return ModelMetadata(
        sample_rate_hz=12_000.0,
        window_samples=2048,
        channels=1,
        class_names=CLASSES,
        embedding_dim=64,
        provenance=Provenance(source="federated", run_id="run-1", server_round=1),
    )


def model_bytes(tag: int) -> bytes:
    return hashlib.sha256(str(tag).encode()).digest() * 64


def card(version: int = 3, **changes: object) -> ModelCard:
    data = model_bytes(version)
    fields: dict[str, object] = {
        "version": version,
        "created_at": "2026-11-28T09:00:00+00:00",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "run_id": "run-1",
        "server_round": version,
        "sites": ("site-a", "site-b"),
        "metadata": metadata(),
    }
    fields.update(changes)
    return ModelCard.model_validate(fields)


def version_dir(root: Path, version: int) -> Path:
    return root / "versions" / f"{version:06d}"


# --- keys ------------------------------------------------------------------------------------


def test_key_pair_is_written_private_to_its_owner_and_loads_back(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "keys"

    # Execute
    private_path, public_path = write_key_pair(out)
    private = load_private_key(private_path)
    public = load_public_key(public_path)

    # Assert
    assert (private_path.name, public_path.name) == (PRIVATE_KEY_FILE, PUBLIC_KEY_FILE)
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(public_path.stat().st_mode) == 0o644
    assert key_id(private.public_key()) == key_id(public)
    assert b"PRIVATE" not in public_path.read_bytes()
    verify_card(card(), sign_card(card(), private), public)  # the pair matches


def test_existing_keys_are_never_overwritten(tmp_path: Path) -> None:
    # Prepare
    private_path, public_path = write_key_pair(tmp_path)
    before = (private_path.read_bytes(), public_path.read_bytes())

    # Execute / Assert
    with pytest.raises(SigningKeyError, match="already exists"):
        write_key_pair(tmp_path)
    with pytest.raises(SigningKeyError, match="already exists"):
        save_private_key(generate_private_key(), private_path)
    assert (private_path.read_bytes(), public_path.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [PRIVATE_KEY_FILE, PUBLIC_KEY_FILE]


def test_overwrite_replaces_a_key_pair(tmp_path: Path) -> None:
    # Prepare
    private_path, _ = write_key_pair(tmp_path)
    old_id = key_id(load_private_key(private_path).public_key())

    # Execute
    _, public_path = write_key_pair(tmp_path, overwrite=True)

    # Assert
    assert key_id(load_public_key(public_path)) != old_id
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600


def _ec_private_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ec_public_pem() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _encrypted_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"", "not a PEM private key"),
        (b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n", "not a PEM"),
        (_ec_private_pem(), "not an Ed25519 key"),
        (_encrypted_pem(), "encrypted"),
        (b"A" * 70_000, "larger than"),
    ],
    ids=["missing", "empty", "garbage", "ec-key", "encrypted", "huge"],
)
def test_unusable_private_key_file_is_a_clear_error(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    # Prepare
    path = tmp_path / "signing.key"
    if content is not None:
        path.write_bytes(content)

    # Execute / Assert
    with pytest.raises(SigningKeyError, match=message):
        load_private_key(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"hello", "not a PEM public key"),
        (_ec_public_pem(), "not an Ed25519 key"),
    ],
    ids=["missing", "garbage", "ec-key"],
)
def test_unusable_public_key_file_is_a_clear_error(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    # Prepare
    path = tmp_path / "verify.pub"
    if content is not None:
        path.write_bytes(content)

    # Execute / Assert
    with pytest.raises(SigningKeyError, match=message):
        load_public_key(path)


def test_a_private_key_is_not_accepted_as_a_verification_key(tmp_path: Path) -> None:
    # Prepare
    private_path, _ = write_key_pair(tmp_path)

    # Execute / Assert
    with pytest.raises(SigningKeyError, match="not a PEM public key"):
        load_public_key(private_path)


# --- signatures ------------------------------------------------------------------------------


def test_signature_verifies_for_the_card_it_was_made_for() -> None:
    # Prepare
    key = generate_private_key()
    signed = card()

    # Execute
    signature = sign_card(signed, key)

    # Assert: no exception, and the file says which key signed
    verify_card(signed, signature, key.public_key())
    assert json.loads(signature)["key_id"] == key_id(key.public_key())


@pytest.mark.parametrize(
    "changes",
    [
        {"version": 8},  # the same model replayed as another version
        {"sha256": hashlib.sha256(b"another model").hexdigest()},
        {"size_bytes": 4097},
        {"server_round": 9},
        {"run_id": "run-2"},
        {"created_at": "2027-01-01T00:00:00+00:00"},
        {"sites": ("site-a",)},
    ],
    ids=["version", "sha256", "size", "round", "run", "created", "sites"],
)
def test_signature_does_not_verify_for_an_altered_card(changes: dict[str, object]) -> None:
    # Prepare
    key = generate_private_key()
    signature = sign_card(card(), key)
    altered = card(**changes)

    # Execute / Assert
    with pytest.raises(ModelSignatureError, match="does not match"):
        verify_card(altered, signature, key.public_key())


def test_metrics_are_not_part_of_what_is_signed() -> None:
    # Prepare: metrics are advisory; the model, version and provenance are what is signed
    key = generate_private_key()
    signature = sign_card(card(), key)

    # Execute / Assert
    verify_card(card(metrics={"accuracy": 0.1}), signature, key.public_key())


def _with_signature_field(signature: bytes, value: str) -> bytes:
    doc = json.loads(signature)
    doc["signature"] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("make_signature", "message"),
    [
        (lambda key, other: None, "not signed"),
        (lambda key, other: sign_card(card(), other), "signed by key"),
        (lambda key, other: b"{not json", "malformed"),
        (lambda key, other: b'{"format": "pgp", "key_id": "00", "signature": "x"}', "malformed"),
        (
            lambda key, other: _with_signature_field(sign_card(card(), key), "!!not base64!!"),
            "base64",
        ),
        (
            lambda key, other: _with_signature_field(
                sign_card(card(), key), base64.b64encode(bytes(64)).decode()
            ),
            "does not match",
        ),
        (lambda key, other: b" " * 5000, "larger than"),
    ],
    ids=["missing", "other-key", "not-json", "unknown-format", "bad-base64", "zeros", "huge"],
)
def test_missing_or_bad_signatures_are_refused(
    make_signature: Callable[[Ed25519PrivateKey, Ed25519PrivateKey], bytes | None], message: str
) -> None:
    # Prepare
    key, other = generate_private_key(), generate_private_key()
    signature = make_signature(key, other)

    # Execute / Assert
    with pytest.raises(ModelSignatureError, match=message):
        verify_card(card(), signature, key.public_key())


def test_signature_errors_are_integrity_errors() -> None:
    # Assert: callers that refuse tampered models refuse badly signed ones too
    assert issubclass(ModelSignatureError, IntegrityError)


# --- signed registry -------------------------------------------------------------------------


def test_signed_publish_writes_a_signature_that_load_verified_checks(tmp_path: Path) -> None:
    # Prepare
    key = generate_private_key()
    registry = FileRegistry(tmp_path / "registry")

    # Execute
    published = registry.publish(model_bytes(1), metadata(), run_id="run-1", signing_key=key)
    loaded_card, data = registry.load_verified(1, verify_key=key.public_key())

    # Assert
    assert (version_dir(registry.root, 1) / SIGNATURE_FILE).is_file()
    assert registry.signature(1) is not None
    assert loaded_card == published
    assert data == model_bytes(1)


def test_unsigned_and_replayed_versions_fail_verification_but_load_without_a_key(
    tmp_path: Path,
) -> None:
    # Prepare: v1 signed, v2 unsigned, v3 carries v1's signature (a replay)
    key = generate_private_key()
    registry = FileRegistry(tmp_path / "registry")
    registry.publish(model_bytes(1), metadata(), signing_key=key)
    registry.publish(model_bytes(2), metadata())
    registry.publish(model_bytes(1), metadata())
    (version_dir(registry.root, 3) / SIGNATURE_FILE).write_bytes(registry.signature(1) or b"")

    # Execute / Assert
    with pytest.raises(ModelSignatureError, match="not signed"):
        registry.load_verified(2, verify_key=key.public_key())
    with pytest.raises(ModelSignatureError, match="does not match"):
        registry.load_verified(3, verify_key=key.public_key())
    assert registry.latest_valid(verify_key=key.public_key())[0].version == 1
    assert registry.latest_valid()[0].version == 3  # without a key, sha256 only (as before)
    assert registry.signature(2) is None


def test_publish_keeps_an_index_of_versions(tmp_path: Path) -> None:
    # Prepare
    registry = FileRegistry(tmp_path / "registry")

    # Execute
    empty = registry.index()
    for tag in (1, 2, 3):
        registry.publish(model_bytes(tag), metadata())
    on_disk = json.loads((registry.root / "index.json").read_text())

    # Assert
    assert empty.versions == ()
    assert registry.index().versions == (1, 2, 3)
    assert registry.index().latest == 3
    assert on_disk["versions"] == [1, 2, 3]


def test_write_index_lists_versions_published_before_indexes_existed(tmp_path: Path) -> None:
    # Prepare: a registry whose index is gone (written by an older FedPM)
    registry = FileRegistry(tmp_path / "registry")
    registry.publish(model_bytes(1), metadata())
    registry.publish(model_bytes(2), metadata())
    (registry.root / "index.json").unlink()

    # Execute
    index = registry.write_index()

    # Assert
    assert index.versions == (1, 2)
    assert registry.index() == index


def test_a_corrupt_index_is_a_clear_error(tmp_path: Path) -> None:
    # Prepare
    registry = FileRegistry(tmp_path / "registry")
    registry.publish(model_bytes(1), metadata())
    (registry.root / "index.json").write_text('{"versions": [0, "x"]}')

    # Execute / Assert
    with pytest.raises(RegistryError, match=r"invalid index\.json"):
        registry.index()
    assert registry.load_verified(1)[1] == model_bytes(1)  # the versions themselves are intact


# --- the aggregator signs what it publishes --------------------------------------------------


@pytest.mark.integration
def test_round_publisher_signs_with_the_run_config_key(tmp_path: Path) -> None:
    # Prepare
    from flwr.app import ArrayRecord

    from aggregator.publish import RoundPublisher
    from models.fl_config import RunConfig
    from models.network import build_model

    private_path, public_path = write_key_pair(tmp_path / "keys")
    cfg = RunConfig.from_run_config({"signing-key": str(private_path), "window-samples": 2048})
    registry = FileRegistry(tmp_path / "registry")
    publisher = RoundPublisher(cfg, registry, "run-9", {})
    arrays = ArrayRecord(build_model(cfg.network, seed=0).state_dict())

    # Execute
    published = publisher.publish(1, arrays)
    loaded, _ = registry.load_verified(1, verify_key=load_public_key(public_path))

    # Assert
    assert cfg.signing_key == str(private_path)
    assert loaded == published
    assert loaded.run_id == "run-9"


def test_round_publisher_refuses_to_start_with_an_unusable_key(tmp_path: Path) -> None:
    # Prepare
    from aggregator.publish import RoundPublisher
    from models.fl_config import RunConfig

    cfg = RunConfig(signing_key=str(tmp_path / "missing.key"))

    # Execute / Assert
    with pytest.raises(SigningKeyError, match="cannot read"):
        RoundPublisher(cfg, FileRegistry(tmp_path / "registry"), "run-1", {})


# --- fedpm keys generate ---------------------------------------------------------------------


def _keys_command(argv: list[str]) -> int:
    import argparse

    from fedpm.commands import keys

    parser = argparse.ArgumentParser(prog="fedpm keys")
    keys.add_arguments(parser)
    return keys.run(parser.parse_args(argv))


def test_keys_generate_command_writes_a_usable_pair_and_keeps_existing_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    out = tmp_path / "keys"

    # Execute
    first = _keys_command(["generate", "--out", str(out)])
    printed = capsys.readouterr().out
    original = (out / PRIVATE_KEY_FILE).read_bytes()
    second = _keys_command(["generate", "--out", str(out)])
    refusal = capsys.readouterr().err
    forced = _keys_command(["generate", "--out", str(out), "--force"])

    # Assert
    assert (first, second, forced) == (0, 1, 0)
    private = load_private_key(out / PRIVATE_KEY_FILE)
    public = load_public_key(out / PUBLIC_KEY_FILE)
    assert key_id(private.public_key()) == key_id(public)
    assert key_id(public) in capsys.readouterr().out
    assert "key id:" in printed
    assert "already exists" in refusal
    assert (out / PRIVATE_KEY_FILE).read_bytes() != original
