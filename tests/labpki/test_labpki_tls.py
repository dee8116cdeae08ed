"""labpki.tls: mutual TLS between a server and a bench client on 127.0.0.1."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from vdno.labpki.smki import CertifiedKey
from vdno.labpki.store import write_certified_key
from vdno.labpki.tls import (
    client_common_name,
    issue_client_certificate,
    issue_server_certificate,
    make_tls_ca,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tls")
    ca = make_tls_ca("VDNO-TEST-TLS-CA")
    write_certified_key(folder, "ca", ca)
    write_certified_key(folder, "server", issue_server_certificate(ca))
    write_certified_key(folder, "client", issue_client_certificate(ca, "bench-07"))
    other = make_tls_ca("SOMEONE-ELSE")
    write_certified_key(folder, "stranger", issue_client_certificate(other, "bench-99"))
    return folder


def eku(ck: CertifiedKey) -> list[x509.ObjectIdentifier]:
    return list(ck.certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_certificate_contents() -> None:
    ca = make_tls_ca("CA")
    server = issue_server_certificate(ca, hostnames=["localhost", "vdno"], ips=["127.0.0.1", "::1"])
    client = issue_client_certificate(ca, "bench-01")
    assert eku(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert eku(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = server.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "vdno"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert client_common_name(client.certificate) == "bench-01"
    ca_ku = ca.certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert ca_ku.critical and ca_ku.value.key_cert_sign and ca_ku.value.crl_sign
    assert not ca_ku.value.digital_signature
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    for ck in (server, client):
        ck.certificate.verify_directly_issued_by(ca.certificate)
        ku = ck.certificate.extensions.get_extension_for_class(x509.KeyUsage)
        assert ku.critical and ku.value.digital_signature
        assert not (ku.value.key_agreement or ku.value.key_cert_sign or ku.value.crl_sign)
        aki = ck.certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ca_ski and aki.authority_cert_issuer is None


def server_context(pki: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")
    context.load_verify_locations(pki / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(pki: Path, stem: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki / "ca.pem")
    if stem is not None:
        context.load_cert_chain(pki / f"{stem}.pem", pki / f"{stem}.key")
    return context


def run_server(pki: Path) -> tuple[int, threading.Thread, dict[str, object]]:
    """Accept one connection, complete the handshake, echo back the peer's CN (or record the error)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    result: dict[str, object] = {}
    context = server_context(pki)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            conn.settimeout(10)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    peer = tls.getpeercert(binary_form=True)
                    assert peer is not None
                    bench_id = client_common_name(x509.load_der_x509_certificate(peer))
                    result["cn"] = bench_id
                    tls.sendall(bench_id.encode())
            except (ssl.SSLError, OSError) as exc:
                result["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread, result


def test_mutual_tls_handshake(pki: Path) -> None:
    port, thread, result = run_server(pki)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client_context(pki, "client").wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.recv(100) == b"bench-07"
    thread.join(10)
    assert result.get("cn") == "bench-07", result


def test_ip_address_hostname_verifies(pki: Path) -> None:
    port, thread, result = run_server(pki)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client_context(pki, "client").wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.recv(100) == b"bench-07"
    thread.join(10)
    assert "error" not in result, result


@pytest.mark.parametrize("stem", [None, "stranger"])
def test_client_without_trusted_certificate_is_refused(pki: Path, stem: str | None) -> None:
    port, thread, result = run_server(pki)
    with (
        pytest.raises((ssl.SSLError, ConnectionError)),
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        client_context(pki, stem).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        if not tls.recv(100):
            raise ConnectionError("server closed the connection")
    thread.join(10)
    assert isinstance(result.get("error"), ssl.SSLError), result
