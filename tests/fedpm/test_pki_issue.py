"""One dev CA issuing server and client certificates: a real mutual-TLS handshake over loopback."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedpm.pki import issue_cert, write_ca


def _usages(path: Path) -> list[x509.ObjectIdentifier]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_one_ca_signs_a_server_and_a_client_that_complete_mutual_tls(tmp_path: Path) -> None:
    # Prepare: a CA, a broker certificate for 127.0.0.1 and a site's client certificate
    ca = write_ca(tmp_path / "ca")
    server_crt, server_key = issue_cert(ca, tmp_path, "broker", hosts=["127.0.0.1", "mosquitto"])
    client_crt, client_key = issue_cert(ca, tmp_path, "site-a", client=True)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server_crt, server_key)
    server_ctx.load_verify_locations(ca.cert)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(ca.cert))
    client_ctx.load_cert_chain(client_crt, client_key)
    listener = socket.create_server(("127.0.0.1", 0))
    seen: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            seen["peer"] = tls.getpeercert()
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve)
    thread.start()

    # Execute: the client checks the broker's name, the broker checks the client's certificate
    with (
        socket.create_connection(listener.getsockname()) as raw,
        client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        reply = tls.recv(2)
    thread.join(5)
    listener.close()

    # Assert
    assert reply == b"ok"
    subject = dict(x[0] for x in seen["peer"]["subject"])  # type: ignore[index]
    assert subject["commonName"] == "site-a"
    assert _usages(server_crt) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _usages(client_crt) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for key in (ca.key, server_key, client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_issue_refuses_what_it_cannot_make(tmp_path: Path) -> None:
    ca = write_ca(tmp_path)
    with pytest.raises(ValueError, match="hosts"):
        issue_cert(ca, tmp_path, "nobody")
    with pytest.raises(ValueError, match="letters"):
        issue_cert(ca, tmp_path, "../up", client=True)
    with pytest.raises(ValueError, match="valid_days"):
        write_ca(tmp_path / "x", valid_days=0)
