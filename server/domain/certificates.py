"""Checks of SMKI organisation certificates an officer imports (a generation's, an area DNO's): each
failure is refused with the reason."""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtensionOID

from vdno.gbcs.cells import KeyUsage, RemotePartyRole
from vdno.gbcs.errors import GbcsError
from vdno.gbcs.smki import SMKI_ORG_POLICY, SmkiCertificate, load_certificate, verify_certification_path
from vdno.server.domain.errors import CertificateRefused, InvalidRequest


def subject_public_key_info(cert: SmkiCertificate) -> bytes:
    """The certificate's SubjectPublicKeyInfo, DER."""
    return cert.public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _policies(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    try:
        extension = cert.extensions.get_extension_for_oid(ExtensionOID.CERTIFICATE_POLICIES).value
    except x509.ExtensionNotFound:
        return set()
    assert isinstance(extension, x509.CertificatePolicies)
    return {p.policy_identifier for p in extension}


def check_organisation_certificate(
    der: bytes,
    *,
    what: str,
    usage: KeyUsage,
    issuing_ca: SmkiCertificate,
    root: SmkiCertificate,
    now: datetime,
    entity_id: bytes | None = None,
    public_key: bytes | None = None,
) -> SmkiCertificate:
    """The certificate, if it is a network-operator (OU 03) organisation certificate with exactly the key
    usage `usage`, the SMKI organisation policy, `entity_id` (when given) as its x500UniqueIdentifier, the
    public key `public_key` (SubjectPublicKeyInfo DER, when given), a chain through `issuing_ca` to `root`,
    and valid at `now`. InvalidRequest when it does not parse; CertificateRefused naming the failed check
    otherwise."""
    if not der:
        raise InvalidRequest(f"{what} is required (DER or PEM)")
    try:
        cert = load_certificate(der)
    except GbcsError as exc:
        raise InvalidRequest(f"{what} is not a usable certificate: {exc}") from exc
    if public_key is not None and subject_public_key_info(cert) != public_key:
        raise CertificateRefused(f"{what} does not certify the key held in the token for it")
    if cert.is_ca or cert.is_device or cert.role != RemotePartyRole.NETWORK_OPERATOR:
        raise CertificateRefused(f"{what} is not a network-operator (OU 03) organisation certificate")
    if cert.key_usage is not usage:
        got = "none" if cert.key_usage is None else cert.key_usage.name
        raise CertificateRefused(f"{what} has key usage {got}, not {usage.name}")
    if SMKI_ORG_POLICY not in _policies(cert.certificate):
        raise CertificateRefused(f"{what} lacks the SMKI organisation policy {SMKI_ORG_POLICY.dotted_string}")
    if entity_id is not None and cert.entity_id != entity_id:
        raise CertificateRefused(f"{what} names entity {cert.entity_id.hex()}, not {entity_id.hex()}")
    try:
        verify_certification_path(cert, (issuing_ca,), root, now, check_time=False)
    except GbcsError as exc:
        raise CertificateRefused(
            f"{what} does not chain to the configured issuing CA and root: {exc}"
        ) from exc
    c = cert.certificate
    if not c.not_valid_before_utc <= now <= c.not_valid_after_utc:
        raise CertificateRefused(
            f"{what} is not valid now (valid {c.not_valid_before_utc.date()} "
            f"to {c.not_valid_after_utc.date()})"
        )
    return cert
