"""The client side of mutual TLS, checked before a call so that a mistake names the file at fault at once
instead of surfacing as UNAVAILABLE after the call's retries: the files (`load_client_tls`) and the
handshake with the server (`check_handshake`)."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from vdno.client.errors import BenchError

HANDSHAKE_TIMEOUT = 3.0  # seconds for the probe's connection, handshake and the server's first frame
# HTTP/2 client connection preface and an empty SETTINGS frame (RFC 9113 §3.4, §6.5): a gRPC server that
# accepted the client certificate answers with its own SETTINGS frame.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
# TLS alerts by which a server says it refused the client certificate
REFUSED_CERTIFICATE = ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_REQUIRED", "CERTIFICATE_UNKNOWN")
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class TlsSetupError(BenchError):
    """A TLS file is unusable, or the handshake failed; the message names the file and the side at fault."""


@dataclass(frozen=True)
class ClientTls:
    """The PEM files of a client's mutual TLS, checked: CA certificates, client certificate, its key."""

    ca: Path
    cert: Path
    key: Path
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def _read(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except IsADirectoryError:
        raise TlsSetupError(f"{flag} {path} is a folder, not a file") from None
    except OSError as exc:
        raise TlsSetupError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None


def load_client_tls(ca: Path, cert: Path, key: Path) -> ClientTls:
    """Read the three files and check them: the CA file holds PEM certificates, the client certificate
    parses, the key parses (unencrypted) and is the certificate's. TlsSetupError naming the file."""
    ca_pem, cert_pem, key_pem = _read("--ca", ca), _read("--cert", cert), _read("--key", key)
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise TlsSetupError(f"--ca {ca} holds no PEM certificate") from None
    try:
        certificate = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        raise TlsSetupError(f"--cert {cert} holds no PEM certificate") from None
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsSetupError(f"--key {key} is encrypted; the client needs it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsSetupError(f"--key {key} holds no PEM private key") from None
    if certificate.public_key().public_bytes(*_SPKI) != private_key.public_key().public_bytes(*_SPKI):
        raise TlsSetupError(f"--key {key} is not the key of --cert {cert}")
    return ClientTls(ca, cert, key, ca_pem, cert_pem, key_pem)


def check_handshake(
    tls: ClientTls, host: str, port: int, server_name: str | None, timeout: float = HANDSHAKE_TIMEOUT
) -> None:
    """Shake hands with the server as the gRPC channel will (same CA, client certificate, server name, ALPN
    h2) and wait for its first HTTP/2 frame, which it sends only once it accepted the client certificate.
    TlsSetupError saying which side failed: the server's certificate is not trusted by --ca or does not
    name the server, or the server refused --cert, or it does not speak TLS. A server that cannot be
    reached is left to the call (and its retries)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=tls.ca_pem.decode("ascii", errors="replace"))
        context.load_cert_chain(str(tls.cert), str(tls.key))
    except (ssl.SSLError, ValueError) as exc:  # checked by load_client_tls; OpenSSL may still refuse them
        raise TlsSetupError(f"--ca {tls.ca}, --cert {tls.cert} or --key {tls.key}: {exc}") from None
    context.set_alpn_protocols(["h2"])
    where = f"{host}:{port}"
    name = server_name or host
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=name) as channel,
        ):
            channel.sendall(HTTP2_PREFACE)
            first = channel.recv(9)
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
            raise TlsSetupError(
                f"the server certificate at {where} does not name {name!r} ({exc.verify_message}): set "
                "server_name (--server-name) to a name it holds"
            ) from None
        raise TlsSetupError(
            f"the server certificate at {where} is not trusted by --ca {tls.ca}: {exc.verify_message}"
        ) from None
    except ssl.SSLError as exc:
        reason = exc.reason or ""
        if any(alert in reason for alert in REFUSED_CERTIFICATE):
            raise _refused(tls, where, reason) from None
        if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER" in reason or "PACKET_LENGTH" in reason:
            raise TlsSetupError(f"{where} does not speak TLS (is it the plaintext health port?)") from None
        raise TlsSetupError(f"TLS with {where} failed: {reason or exc}") from None
    except (ConnectionResetError, BrokenPipeError):
        raise _refused(tls, where, "the connection was reset") from None
    except OSError:  # not reachable (yet): the call reports it, after its retries
        return
    if not first:
        raise _refused(tls, where, "it closed the connection after the handshake")


def _refused(tls: ClientTls, where: str, how: str) -> TlsSetupError:
    return TlsSetupError(
        f"the server at {where} refused the client certificate --cert {tls.cert} ({how}): it is not issued "
        "by the CA the server trusts for clients, or has expired"
    )
