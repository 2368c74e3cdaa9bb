"""Key material for the federation: what Flower and a TLS client accept, what they refuse."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.cli.supernode.register import try_load_public_key
from flwr.common.config import parse_config_args

from fedpm.federation import config_arg, flag_value, toml_value
from fedpm.pki import write_node_key, write_server_tls


def test_server_certificate_names_the_hosts_and_chains_to_the_ca(tmp_path: Path) -> None:
    # Execute
    tls = write_server_tls(tmp_path / "tls", ["127.0.0.1", "localhost", "link.example.org"])

    # Assert: the subject alternative names are what clients check
    cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "link.example.org"]
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # Python's TLS stack (what Flower's clients use) loads the chain and the key
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tls.cert, tls.key)
    client = ssl.create_default_context(cafile=str(tls.ca_cert))
    assert client.verify_mode == ssl.CERT_REQUIRED
    assert stat.S_IMODE(tls.key.stat().st_mode) == 0o600


def test_node_key_pair_is_what_flower_loads(tmp_path: Path) -> None:
    # Execute
    node = write_node_key(tmp_path / "keys", "plant-north")

    # Assert: the SuperNode's loader takes the private key, `flwr supernode register` the public
    private = serialization.load_ssh_private_key(node.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    registered = try_load_public_key(node.public_key)
    assert registered == private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert stat.S_IMODE(node.private_key.stat().st_mode) == 0o600
    # a second key pair is a different identity
    other = write_node_key(tmp_path / "keys", "plant-south")
    assert try_load_public_key(other.public_key) != registered


@pytest.mark.parametrize("name", ["", "../escape", "a/b", "-flag", "x" * 65, "plant north"])
def test_node_key_names_that_are_not_plain_file_stems_are_refused(
    name: str, tmp_path: Path
) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="node key name"):
        write_node_key(tmp_path, name)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("hosts", "valid_days", "match"),
    [([], 365, "at least one host"), (["not a host"], 365, "not an IP"), (["ok"], 0, "days")],
)
def test_bad_tls_requests_are_refused_before_writing(
    hosts: list[str], valid_days: int, match: str, tmp_path: Path
) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        write_server_tls(tmp_path / "tls", hosts, valid_days=valid_days)
    assert not (tmp_path / "tls").exists()


@pytest.mark.parametrize(
    "value",
    ["/var/it's/store.db", 'back\\slash "q".db', "tab\there", "ünïcode", "", "a b", "x\\y"],
)
def test_config_flags_carry_strings_to_flower_unchanged(value: str) -> None:
    # Execute
    rendered = config_arg({"store-path": value, "rounds": 3, "lr": 0.5, "on": True})

    # Assert: Flower's own parser reads back what we meant
    parsed = parse_config_args([rendered])
    assert parsed == {"store-path": value, "rounds": 3, "lr": 0.5, "on": True}


def test_values_flower_flags_cannot_carry_are_refused() -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match="cannot carry"):
        flag_value("""it's "quoted" """)
    assert toml_value("it's") == '"it\'s"'
    assert toml_value(False) == "false"
