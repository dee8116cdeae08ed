"""A test SMKI hierarchy following the profile of the RTDS certificates (gbcs/README.md §10).

Organisation certificates: root (OU=00) -> issuing CA (OU=07) -> end entity with OU = role as two upper-case
hex digits (UTF8String), x500UniqueIdentifier = BIT STRING holding the 8-byte entity id, exactly one key
usage, the SMKI organisation policy. Device certificates: device CA -> empty subject with a critical SAN
hardwareModuleName carrying the 8-byte device id, the SMKI device policy, notAfter 9999-12-31 23:59:59.

The extension order of each certificate kind is that of the RTDS certificates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from vdno.gbcs.smki import (
    HARDWARE_MODULE_NAME,
    SMKI_DEVICE_POLICY,
    SMKI_ORG_POLICY,
    X500_UNIQUE_IDENTIFIER,
)
from vdno.gbcs.smki import subject_key_identifier_for as subject_key_identifier
from vdno.labpki.errors import LabPkiError

KeyUsageName = Literal["ds", "ka"]

ROOT_ROLE = 0x00
ISSUING_CA_ROLE = 0x07
DEVICE_NOT_AFTER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


@dataclass(frozen=True)
class CertifiedKey:
    """A certificate and, when we hold it, its private key."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey | None

    @property
    def signing_key(self) -> ec.EllipticCurvePrivateKey:
        """The private key, for a CA that is to sign; LabPkiError when it is not held."""
        if self.private_key is None:
            raise LabPkiError(f"no private key held for {self.certificate.subject.rfc4514_string()!r}")
        return self.private_key


def new_p256_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def random_serial() -> int:
    """16 random bytes as a positive DER INTEGER of exactly 16 content octets (first octet 0x01..0x7F)."""
    raw = bytearray(os.urandom(16))
    raw[0] = (raw[0] & 0x7F) or 0x01
    return int.from_bytes(raw, "big")


def utc_now(now: datetime | None) -> datetime:
    """`now` (naive means UTC; None means the current time) in UTC, whole seconds: a notBefore value."""
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.astimezone(UTC).replace(microsecond=0)


def _add_years(when: datetime, years: int) -> datetime:
    try:
        return when.replace(year=when.year + years)
    except ValueError:  # 29 February
        return when.replace(year=when.year + years, day=28)


def _validity(now: datetime | None, years: int) -> tuple[datetime, datetime]:
    """Like RTDS: notAfter = notBefore + years - 1 s (2015-10-30 00:00:00 -> 2025-10-29 23:59:59)."""
    start = utc_now(now)
    return start, _add_years(start, years) - timedelta(seconds=1)


def key_usage_extension(usage: KeyUsageName | None) -> x509.KeyUsage:
    """keyUsage with exactly digitalSignature ("ds") or keyAgreement ("ka"); None: keyCertSign + cRLSign."""
    if usage not in ("ds", "ka", None):
        raise LabPkiError(f"key usage must be 'ds' or 'ka', not {usage!r}")
    return x509.KeyUsage(
        digital_signature=usage == "ds",
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=usage == "ka",
        key_cert_sign=usage is None,
        crl_sign=usage is None,
        encipher_only=False,
        decipher_only=False,
    )


def _policies(oid: x509.ObjectIdentifier) -> x509.CertificatePolicies:
    return x509.CertificatePolicies([x509.PolicyInformation(oid, None)])


def authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """keyIdentifier only, copied from the issuer's SKI extension (computed when it has none)."""
    try:
        key_id = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        key_id = subject_key_identifier(_ec_public_key(issuer.public_key()))
    return x509.AuthorityKeyIdentifier(key_id, None, None)


def _ec_public_key(key: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise LabPkiError("SMKI keys must be EC P-256 (prime256v1)")
    return key


def _ca_name(role: int | None, name: str) -> x509.Name:
    """`OU=<role>, CN=<name>` as PrintableStrings (RTDS Z1/ZA), or just CN when role is None (RTDS E357)."""
    rdns = []
    if role is not None:
        rdns.append(
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(
                        NameOID.ORGANIZATIONAL_UNIT_NAME, f"{role:02X}", _ASN1Type.PrintableString
                    )
                ]
            )
        )
    rdns.append(
        x509.RelativeDistinguishedName(
            [x509.NameAttribute(NameOID.COMMON_NAME, name, _ASN1Type.PrintableString)]
        )
    )
    return x509.Name(rdns)


def organisation_name(entity_id: bytes, role: int, common_name: str | None = None) -> x509.Name:
    """[CN (UTF8String)], OU = role as 2 upper-case hex digits (UTF8String), x500UniqueIdentifier.

    The x500UniqueIdentifier is a BIT STRING whose DER is 03 09 00 ‖ entity id: the 00 is the unused-bits
    octet. cryptography's NameAttribute value for a BitString is the raw content, so it is b"\\x00" + id."""
    _check_id(entity_id, "entity id")
    if not 0 <= role <= 0xFF:
        raise LabPkiError(f"role must be 0..255, not {role}")
    rdns = []
    if common_name is not None:
        rdns.append(
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.COMMON_NAME, common_name, _ASN1Type.UTF8String)]
            )
        )
    rdns.append(
        x509.RelativeDistinguishedName(
            [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"{role:02X}", _ASN1Type.UTF8String)]
        )
    )
    rdns.append(
        x509.RelativeDistinguishedName(
            [x509.NameAttribute(X500_UNIQUE_IDENTIFIER, b"\x00" + entity_id, _ASN1Type.BitString)]
        )
    )
    return x509.Name(rdns)


def _check_id(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != 8:
        raise LabPkiError(f"{what} must be 8 bytes, not {value!r}")


def _sign(builder: x509.CertificateBuilder, issuer_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return builder.sign(issuer_key, hashes.SHA256())


def make_root_ca(name: str = "VDNO-LAB-ROOT", now: datetime | None = None, years: int = 25) -> CertifiedKey:
    """Self-signed root `OU=00, CN=<name>`: KU keyCertSign+cRLSign, BC CA:TRUE (all critical), policy, SKI."""
    key = new_p256_key()
    subject = _ca_name(ROOT_ROLE, name)
    not_before, not_after = _validity(now, years)
    builder = (
        x509.CertificateBuilder()
        .serial_number(random_serial())
        .issuer_name(subject)
        .subject_name(subject)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .public_key(key.public_key())
        .add_extension(key_usage_extension(None), critical=True)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_policies(SMKI_ORG_POLICY), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(subject_key_identifier(key.public_key())), critical=False)
    )
    return CertifiedKey(_sign(builder, key), key)


def make_issuing_ca(
    root: CertifiedKey, name: str = "VDNO-LAB-Z1", now: datetime | None = None, years: int = 25
) -> CertifiedKey:
    """`OU=07, CN=<name>` under root, like RTDS Z1: KU, BC CA:TRUE pathlen 0, policy (critical), SKI, AKI."""
    key = new_p256_key()
    not_before, not_after = _validity(now, years)
    builder = (
        x509.CertificateBuilder()
        .serial_number(random_serial())
        .issuer_name(root.certificate.subject)
        .subject_name(_ca_name(ISSUING_CA_ROLE, name))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .public_key(key.public_key())
        .add_extension(key_usage_extension(None), critical=True)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_policies(SMKI_ORG_POLICY), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(subject_key_identifier(key.public_key())), critical=False)
        .add_extension(authority_key_identifier(root.certificate), critical=False)
    )
    return CertifiedKey(_sign(builder, root.signing_key), key)


def issue_organisation_certificate(
    issuer: CertifiedKey,
    public_key: ec.EllipticCurvePublicKey,
    entity_id: bytes,
    role: int,
    key_usage: KeyUsageName,
    now: datetime | None = None,
    years: int = 10,
    common_name: str | None = None,
) -> x509.Certificate:
    """An RTDS-profile organisation certificate: KU (critical, one usage), SKI, policy (critical), AKI."""
    public_key = _ec_public_key(public_key)
    not_before, not_after = _validity(now, years)
    builder = (
        x509.CertificateBuilder()
        .serial_number(random_serial())
        .issuer_name(issuer.certificate.subject)
        .subject_name(organisation_name(entity_id, role, common_name))
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .public_key(public_key)
        .add_extension(key_usage_extension(key_usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(subject_key_identifier(public_key)), critical=False)
        .add_extension(_policies(SMKI_ORG_POLICY), critical=True)
        .add_extension(authority_key_identifier(issuer.certificate), critical=False)
    )
    return _sign(builder, issuer.signing_key)


def public_key_from_csr(csr_der: bytes) -> ec.EllipticCurvePublicKey:
    """The P-256 public key of a DER (or PEM) PKCS#10 request whose self-signature verifies."""
    try:
        if csr_der.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(csr_der)
        else:
            csr = x509.load_der_x509_csr(csr_der)
    except ValueError as exc:
        raise LabPkiError(f"CSR does not parse: {exc}") from exc
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise LabPkiError(f"CSR public key is not usable: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise LabPkiError(f"CSR key must be EC P-256, not {type(key).__name__}")
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise LabPkiError(f"CSR signature cannot be checked: {exc}") from exc
    if not valid:
        raise LabPkiError("CSR signature does not verify")
    return key


def issue_from_csr(
    issuer: CertifiedKey,
    csr_der: bytes,
    entity_id: bytes,
    role: int,
    key_usage: KeyUsageName,
    now: datetime | None = None,
    years: int = 10,
    common_name: str | None = None,
) -> x509.Certificate:
    """Check the CSR (signature, P-256) and certify its key under the SMKI profile; its subject is ignored."""
    public_key = public_key_from_csr(csr_der)
    return issue_organisation_certificate(
        issuer, public_key, entity_id, role, key_usage, now=now, years=years, common_name=common_name
    )


def make_device_ca(
    root: CertifiedKey | None = None,
    name: str = "VDNO-LAB-DEVICE-CA",
    now: datetime | None = None,
    years: int = 25,
) -> CertifiedKey:
    """Device CA `CN=<name>` (PrintableString, like RTDS E357), under root or self-signed when root is None.

    RTDS holds no device CA certificate; this one is KU keyCertSign+cRLSign, BC CA:TRUE pathlen 0,
    the device policy, SKI and (under a root) AKI."""
    key = new_p256_key()
    subject = _ca_name(None, name)
    not_before, not_after = _validity(now, years)
    builder = (
        x509.CertificateBuilder()
        .serial_number(random_serial())
        .issuer_name(subject if root is None else root.certificate.subject)
        .subject_name(subject)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .public_key(key.public_key())
        .add_extension(key_usage_extension(None), critical=True)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_policies(SMKI_DEVICE_POLICY), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(subject_key_identifier(key.public_key())), critical=False)
    )
    if root is not None:
        builder = builder.add_extension(authority_key_identifier(root.certificate), critical=False)
    return CertifiedKey(_sign(builder, key if root is None else root.signing_key), key)


def hardware_module_name(device_id: bytes) -> bytes:
    """DER of HardwareModuleName ::= SEQUENCE { hwType OID 1.2.826.0.1.8641679.1.2.2.1, hwSerialNum OCTET
    STRING device id } (RFC 4108); the SAN otherName wraps it in [0] EXPLICIT."""
    _check_id(device_id, "device id")
    oid = bytes.fromhex("060D2A863A0001848FB90F01020201")  # 1.2.826.0.1.8641679.1.2.2.1
    body = oid + b"\x04\x08" + device_id
    return b"\x30" + bytes([len(body)]) + body


def issue_device_certificate(
    device_ca: CertifiedKey,
    public_key: ec.EllipticCurvePublicKey,
    device_id: bytes,
    key_usage: KeyUsageName,
    now: datetime | None = None,
) -> x509.Certificate:
    """RTDS-profile device certificate: empty subject; KU (critical), SKI, SAN hardwareModuleName (critical),
    device policy (critical), AKI; notBefore now, notAfter 9999-12-31 23:59:59 (GeneralizedTime)."""
    public_key = _ec_public_key(public_key)
    san = x509.SubjectAlternativeName([x509.OtherName(HARDWARE_MODULE_NAME, hardware_module_name(device_id))])
    builder = (
        x509.CertificateBuilder()
        .serial_number(random_serial())
        .issuer_name(device_ca.certificate.subject)
        .subject_name(x509.Name([]))
        .not_valid_before(utc_now(now))
        .not_valid_after(DEVICE_NOT_AFTER)
        .public_key(public_key)
        .add_extension(key_usage_extension(key_usage), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(subject_key_identifier(public_key)), critical=False)
        .add_extension(san, critical=True)
        .add_extension(_policies(SMKI_DEVICE_POLICY), critical=True)
        .add_extension(authority_key_identifier(device_ca.certificate), critical=False)
    )
    return _sign(builder, device_ca.signing_key)
