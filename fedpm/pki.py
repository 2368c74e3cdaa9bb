"""Key material for a Flower federation: a TLS CA and server certificate, SuperNode key pairs.

Flower 1.42 wants two kinds of keys:

* **TLS** for the SuperLink (``--ssl-ca-certfile``, ``--ssl-certfile``, ``--ssl-keyfile``); the
  SuperNodes and ``flwr`` trust the CA (``--root-certificates`` and ``root-certificates`` in
  ``$FLWR_HOME/config.toml``). :func:`write_server_tls` makes a CA and a server certificate whose
  subject alternative names cover the addresses the SuperLink is reached at.
* **SuperNode authentication**: an ECDSA key pair on a NIST curve per SuperNode, the private key
  in OpenSSH format (``flower-supernode --auth-supernode-private-key``) and the public key in
  OpenSSH format (``flwr supernode register <public key>``). :func:`write_node_key` makes one.

A pilot that runs everything under one dev CA (Mosquitto, the SuperLink, InfluxDB, MQTT
client certificates: ``docker/scripts/make-dev-certs.sh``) uses :func:`write_ca` once and
:func:`issue_cert` for each server or client.

Private keys are written unencrypted with mode 0600; keep them on the machine that uses them.
This module is for the demo, the tests and small deployments; a real deployment may take its
certificates from its own CA instead (see ``docs/federated-security.md``).

Examples
--------
>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     tls = write_server_tls(Path(d) / "tls")
...     node = write_node_key(Path(d) / "nodes", "plant-north")
...     node.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
True
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ServerTls:
    """PEM files for a SuperLink's TLS: the CA certificate, the server certificate and key."""

    ca_cert: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class NodeKey:
    """OpenSSH files of one SuperNode's authentication key pair."""

    private_key: Path
    public_key: Path


def _check_days(valid_days: int) -> None:
    if valid_days < 1:
        raise ValueError(f"valid_days must be 1 or more, got {valid_days}")


def _san(host: str) -> x509.GeneralName:
    """A subject alternative name for ``host``: an IP address or a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})", host):
        raise ValueError(f"not an IP address or a DNS name: {host!r}")
    return x509.DNSName(host)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only (created 0600, never widened)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, valid_days: int
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
    )


def write_server_tls(
    directory: Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    valid_days: int = 365,
    common_name: str = "FedPM federation CA",
) -> ServerTls:
    """Write a new CA and a SuperLink certificate signed by it into ``directory``.

    Parameters
    ----------
    directory : Path
        Folder for ``ca.crt``, ``server.crt`` and ``server.key`` (created if missing; existing
        files of those names are replaced).
    hosts : Sequence[str]
        IP addresses and DNS names the SuperLink is reached at; they become the certificate's
        subject alternative names, which is what clients check.
    valid_days : int
        Validity of both certificates, in days.
    common_name : str
        The CA's common name.

    Returns
    -------
    ServerTls
        Paths of the written files.

    Raises
    ------
    ValueError
        No host, a host that is neither an IP address nor a DNS name, or ``valid_days < 1``.
    """
    if not hosts:
        raise ValueError("the server certificate needs at least one host name or address")
    names = [_san(h) for h in hosts]
    _check_days(valid_days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ca_cert = _ca_certificate(ca_key, ca_name, valid_days)
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    server_cert = (
        _builder(server_name, ca_name, server_key.public_key(), valid_days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    directory.mkdir(parents=True, exist_ok=True)
    tls = ServerTls(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    tls.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(tls.key, _pem_key(server_key))
    return tls


def write_node_key(directory: Path, name: str) -> NodeKey:
    """Write a new SuperNode authentication key pair (ECDSA P-384, OpenSSH format).

    Parameters
    ----------
    directory : Path
        Folder for ``<name>`` (private key, mode 0600) and ``<name>.pub`` (created if missing).
    name : str
        File stem, usually the site id: letters, digits, ``.``, ``_`` and ``-``, at most 64.

    Returns
    -------
    NodeKey
        Paths of the private and public key files.

    Raises
    ------
    ValueError
        ``name`` is not a plain file stem.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"node key name must be letters, digits, '.', '_' or '-' (at most 64), got {name!r}"
        )
    key = ec.generate_private_key(ec.SECP384R1())
    node = NodeKey(directory / name, directory / f"{name}.pub")
    _write_private(
        node.private_key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    node.public_key.write_bytes(public + f" fedpm-{name}\n".encode())
    return node


@dataclass(frozen=True)
class CertificateAuthority:
    """PEM files of a CA that :func:`issue_cert` signs with: its certificate and private key."""

    cert: Path
    key: Path


def _ca_certificate(
    key: ec.EllipticCurvePrivateKey, name: x509.Name, valid_days: int
) -> x509.Certificate:
    """A self-signed CA certificate for ``key`` that may sign leaf certificates only."""
    return (
        _builder(name, name, key.public_key(), valid_days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA384())
    )


def write_ca(
    directory: Path, *, valid_days: int = 365, common_name: str = "FedPM dev CA"
) -> CertificateAuthority:
    """Write a new CA (``ca.crt``, ``ca.key``) into ``directory`` that can issue certificates.

    Unlike :func:`write_server_tls`, the CA key is kept, so one CA can sign every server and
    client of a deployment; keep ``ca.key`` away from the machines that only need to trust it.

    Raises
    ------
    ValueError
        ``valid_days < 1``.
    """
    _check_days(valid_days)
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = _ca_certificate(key, name, valid_days)
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority(directory / "ca.crt", directory / "ca.key")
    ca.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(ca.key, _pem_key(key))
    return ca


def issue_cert(
    ca: CertificateAuthority,
    directory: Path,
    name: str,
    *,
    hosts: Sequence[str] = (),
    client: bool = False,
    valid_days: int = 365,
) -> tuple[Path, Path]:
    """Write ``<name>.crt`` and ``<name>.key`` (0600) into ``directory``, signed by ``ca``.

    Parameters
    ----------
    ca : CertificateAuthority
        From :func:`write_ca`.
    directory : Path
        Where the two files go (created if missing).
    name : str
        File stem and the certificate's common name (an MQTT client's identity): letters,
        digits, ``.``, ``_`` and ``-``.
    hosts : Sequence[str]
        Addresses and DNS names a server is reached at (subject alternative names); with
        hosts the certificate is for ``serverAuth``.
    client : bool
        Also (or only, without hosts) for ``clientAuth``: a TLS client certificate.
    valid_days : int
        Validity in days.

    Returns
    -------
    tuple[Path, Path]
        The certificate and key paths.

    Raises
    ------
    ValueError
        Neither ``hosts`` nor ``client``, a bad ``name`` or host, or ``valid_days < 1``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     ca = write_ca(Path(d))
    ...     crt, key = issue_cert(ca, Path(d), "broker", hosts=["mosquitto", "127.0.0.1"])
    ...     cert = x509.load_pem_x509_certificate(crt.read_bytes())
    ...     cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert.read_bytes()))
    ...     cert.subject.rfc4514_string()
    'CN=broker'
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"certificate name must be letters, digits, '.', '_' or '-', got {name!r}")
    if not hosts and not client:
        raise ValueError("a certificate needs hosts (a server), client=True, or both")
    names = [_san(h) for h in hosts]
    _check_days(valid_days)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca.key} is not an EC private key")
    key = ec.generate_private_key(ec.SECP384R1())
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if hosts else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    builder = (
        _builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
            ca_cert.subject,
            key.public_key(),
            valid_days,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA384())
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(key_path, _pem_key(key))
    return cert_path, key_path
