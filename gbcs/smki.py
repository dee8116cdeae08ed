"""SMKI certificate helpers (README §10): read entity id, role (OU), key usage, SKI; check a replacement
certificate against a target cell; certification-path validation with a caller-supplied clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gbcs.cells import KeyUsage, TrustAnchorCellIdentifier

X500_UNIQUE_IDENTIFIER = x509.ObjectIdentifier("2.5.4.45")
HARDWARE_MODULE_NAME = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.4")
SMKI_ORG_POLICY = x509.ObjectIdentifier("1.2.826.0.1.8641679.1.2.1.4")
SMKI_DEVICE_POLICY = x509.ObjectIdentifier("1.2.826.0.1.1800000.1.2.1.4")
SMKI_HW_TYPE = x509.ObjectIdentifier("1.2.826.0.1.8641679.1.2.2.1")


def subject_key_identifier_for(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """8 bytes: 0100 ‖ low 60 bits of SHA-1(subjectPublicKey) (RFC 5280 §4.2.1.2 method 2)."""
    raise NotImplementedError


@dataclass(frozen=True)
class SmkiCertificate:
    """A parsed SMKI organisation, CA or device certificate."""

    certificate: x509.Certificate
    der: bytes
    entity_id: bytes  # org: x500UniqueIdentifier; device: hwSerialNum; CA: b"" (none)
    role: int | None  # OU as hex role number (org and CA certs); None for device certs
    key_usage: KeyUsage | None  # the single usage of an end-entity cert; None for CAs
    subject_key_identifier: bytes
    is_ca: bool
    is_device: bool

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        raise NotImplementedError


def load_certificate(data: bytes) -> SmkiCertificate:
    """DER or PEM -> SmkiCertificate. CertificateError naming what is off (not P-256, no OU, ...)."""
    raise NotImplementedError


def check_replacement_for_cell(cert: SmkiCertificate, cell: TrustAnchorCellIdentifier) -> None:
    """README §9.5: OU (role) equals the cell's role, key usage equals the cell's, not a CA/device cert.
    CertificateError(status_code=5 badCertificate) otherwise."""
    raise NotImplementedError


def verify_certification_path(
    cert: SmkiCertificate,
    path: tuple[SmkiCertificate, ...],
    root: SmkiCertificate,
    at: datetime,
    check_time: bool = True,
) -> None:
    """Chain cert -> path certificates (issuing CAs) -> root (a trust anchor: its key verifies the last link;
    the root need not be self-signed, e.g. Z1 standing in for ZA). Issuer/subject names and
    AKI/SKI must link, every signature verifies, CA certs are CAs, the end-entity carries the SMKI
    policy; validity at `at` unless check_time is False.
    CertificateError(status_code=10 noTrustAnchor) when no chain reaches root; 5 for other failures."""
    raise NotImplementedError
