"""Bench certificates issued from the certificate request a bench made (its private key never leaves it), by
the client CA whose key the [enrolment] settings name. vdno's client profile: CN = bench id, OU = vdno-bench,
EKU clientAuth."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vdno.server.config import ConfigError
from vdno.server.domain.errors import InvalidRequest

BENCH_ROLE = "vdno-bench"
VALIDITY = timedelta(days=825)
CLOCK_SKEW = timedelta(minutes=5)


class CaFileBenchIssuer:
    """The BenchCertificateIssuer port over a CA certificate and key in PEM files (read at each issue, so a
    rotated CA key file is used at once)."""

    def __init__(self, ca_certificate: Path, ca_key: Path) -> None:
        self._ca_certificate = ca_certificate
        self._ca_key = ca_key

    def issue(self, csr_der: bytes, bench_id: str) -> bytes:
        try:
            csr = x509.load_der_x509_csr(csr_der)
            valid = csr.is_signature_valid
            public_key = csr.public_key()
        except (ValueError, UnsupportedAlgorithm, InvalidSignature) as exc:
            raise InvalidRequest(f"csr is not a usable PKCS#10 request: {exc}") from exc
        if not valid:
            raise InvalidRequest("csr: its signature does not verify")
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            raise InvalidRequest("csr: the bench key must be EC P-256")
        ca_cert, ca_key = self._ca()
        start = datetime.now(UTC) - CLOCK_SKEW
        spki = public_key.public_bytes(Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        certificate = (
            x509.CertificateBuilder()
            .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
            .issuer_name(ca_cert.subject)
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, bench_id),
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, BENCH_ROLE),
                    ]
                )
            )
            .not_valid_before(start)
            .not_valid_after(start + VALIDITY)
            .public_key(public_key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier(hashlib.sha1(spki).digest()[:20]), critical=False)  # noqa: S324 (RFC 5280 method 1)
            .add_extension(_authority_key_identifier(ca_cert), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return certificate.public_bytes(Encoding.DER)

    def _ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        try:
            cert = x509.load_pem_x509_certificate(self._ca_certificate.read_bytes())
            key = serialization.load_pem_private_key(self._ca_key.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"[enrolment] the client CA certificate or key cannot be read: {type(exc).__name__}"
            ) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError("[enrolment] client_ca_key is not an EC private key")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise ConfigError("[enrolment] client_ca_key is not the key of tls.client_ca")
        return cert, key


def _authority_key_identifier(ca: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The CA's own subject key identifier (whatever method made it): chain building matches on it."""
    try:
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
