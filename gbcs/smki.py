"""SMKI certificate helpers (gbcs/README.md §10): read entity id, role (OU), key usage, SKI; check a
replacement certificate against a target cell; certification-path validation with a caller-supplied clock."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID

from vdno.gbcs import ber
from vdno.gbcs.cells import KeyUsage, StatusCode, TrustAnchorCellIdentifier
from vdno.gbcs.errors import CertificateError, DecodeError

X500_UNIQUE_IDENTIFIER = x509.ObjectIdentifier("2.5.4.45")
HARDWARE_MODULE_NAME = x509.ObjectIdentifier("1.3.6.1.5.5.7.8.4")
SMKI_ORG_POLICY = x509.ObjectIdentifier("1.2.826.0.1.8641679.1.2.1.4")
SMKI_DEVICE_POLICY = x509.ObjectIdentifier("1.2.826.0.1.1800000.1.2.1.4")


def subject_key_identifier_for(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """8 bytes: 0100 ‖ low 60 bits of SHA-1(subjectPublicKey) (RFC 5280 §4.2.1.2 method 2)."""
    point = public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    digest = hashlib.sha1(point).digest()  # noqa: S324 - RFC 5280 key identifier, not a security hash
    low60 = int.from_bytes(digest[-8:], "big") & ((1 << 60) - 1)
    return ((0x4 << 60) | low60).to_bytes(8, "big")


@dataclass(frozen=True)
class SmkiCertificate:
    """A parsed SMKI organisation, CA or device certificate."""

    certificate: x509.Certificate
    public_key: ec.EllipticCurvePublicKey = field(compare=False)  # P-256: load_certificate checks
    der: bytes
    entity_id: bytes  # org: x500UniqueIdentifier; device: hwSerialNum; CA: b"" (none)
    role: int | None  # OU as hex role number (org and CA certs); None for device certs
    key_usage: KeyUsage | None  # the single usage of an end-entity cert; None for CAs
    subject_key_identifier: bytes
    is_ca: bool
    is_device: bool


# What cryptography parses only when it is first read, each with the name a refusal gives it. load_certificate
# reads every one, so a malformed field is refused there, by name, and never raises later from whatever code
# reads it first.
_LAZY_FIELDS: tuple[tuple[str, Callable[[x509.Certificate], object]], ...] = (
    ("version", lambda c: c.version),
    ("serialNumber", lambda c: c.serial_number),
    ("signature algorithm", lambda c: (c.signature_algorithm_oid, c.signature_algorithm_parameters)),
    ("signature hash algorithm", lambda c: c.signature_hash_algorithm),
    ("issuer", lambda c: c.issuer.rfc4514_string()),
    ("subject", lambda c: c.subject.rfc4514_string()),
    ("validity", lambda c: (c.not_valid_before_utc, c.not_valid_after_utc)),
    ("subjectPublicKeyInfo", lambda c: (c.public_key_algorithm_oid, c.public_key())),
    ("extensions", lambda c: [(e.oid, e.critical, e.value) for e in c.extensions]),
    ("signature", lambda c: c.signature),
    ("tbsCertificate", lambda c: c.tbs_certificate_bytes),
)
_DETAIL = 160  # characters of the parser's own words a refusal repeats


def _detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _DETAIL else text[: _DETAIL - 3] + "..."


def read_x509_certificate(data: bytes) -> x509.Certificate:
    """DER or PEM -> x509.Certificate with every field parsed (see _LAZY_FIELDS). CertificateError naming
    the field that does not parse."""
    data = bytes(data)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except x509.InvalidVersion as exc:
        raise CertificateError(f"certificate version does not parse: {_detail(exc)}") from exc
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"not a parseable X.509 certificate: {_detail(exc)}") from exc
    for name, read in _LAZY_FIELDS:
        try:
            read(cert)
        # cryptography reports a malformed field as ValueError, TypeError, InvalidVersion,
        # UnsupportedAlgorithm, DuplicateExtension, UnsupportedGeneralNameType, ...: on bytes from outside,
        # each of them is the certificate's fault.
        except Exception as exc:
            raise CertificateError(f"certificate {name} does not parse: {_detail(exc)}") from exc
    if cert.serial_number <= 0:
        raise CertificateError("certificate serialNumber is not a positive integer (RFC 5280 4.1.2.2)")
    return cert


def load_certificate(data: bytes) -> SmkiCertificate:
    """DER or PEM -> SmkiCertificate, every field parsed. CertificateError naming what is off (a field that
    does not parse, not P-256, no OU, ...)."""
    cert = read_x509_certificate(data)
    der = cert.public_bytes(serialization.Encoding.DER)
    key = cert.public_key()
    extensions = cert.extensions
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CertificateError("certificate key is not EC P-256 (prime256v1)")

    is_ca = False
    try:
        bc = extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
        assert isinstance(bc, x509.BasicConstraints)
        is_ca = bc.ca
    except x509.ExtensionNotFound:
        pass

    try:
        ski_ext = extensions.get_extension_for_oid(ExtensionOID.SUBJECT_KEY_IDENTIFIER).value
        assert isinstance(ski_ext, x509.SubjectKeyIdentifier)
        ski = ski_ext.digest
    except x509.ExtensionNotFound as exc:
        raise CertificateError("certificate lacks the subjectKeyIdentifier extension") from exc

    device_id = _hw_serial_num(extensions)
    is_device = device_id is not None
    # Device CAs (RTDS CN=E357) carry no OU; SMKI organisation and root/issuing CAs do.
    no_ou = not cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    role = None if is_device or (is_ca and no_ou) else _role(cert)

    key_usage: KeyUsage | None = None
    if not is_ca:
        key_usage = _single_key_usage(extensions)

    if is_ca:
        entity_id = b""
    elif device_id is not None:
        entity_id = device_id
    else:
        entity_id = _x500_unique_identifier(cert)
    return SmkiCertificate(
        certificate=cert,
        public_key=key,
        der=der,
        entity_id=entity_id,
        role=role,
        key_usage=key_usage,
        subject_key_identifier=ski,
        is_ca=is_ca,
        is_device=is_device,
    )


def _role(cert: x509.Certificate) -> int:
    attrs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if len(attrs) != 1:
        raise CertificateError(f"subject must carry exactly one OU (role), found {len(attrs)}")
    value = attrs[0].value
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    try:
        role = int(text, 16)
    except ValueError as exc:
        raise CertificateError(f"subject OU {text!r} is not a hex role number") from exc
    if not 0 <= role <= 0xFF:
        raise CertificateError(f"subject OU {text!r} is not a one-byte role")
    return role


def _x500_unique_identifier(cert: x509.Certificate) -> bytes:
    attrs = cert.subject.get_attributes_for_oid(X500_UNIQUE_IDENTIFIER)
    if len(attrs) != 1:
        raise CertificateError(f"subject must carry exactly one x500UniqueIdentifier, found {len(attrs)}")
    value = attrs[0].value
    raw = value if isinstance(value, bytes) else value.encode("latin-1")
    # cryptography gives the BIT STRING value: unused-bits byte (00) then the bits; accept a full TLV too
    if len(raw) == 11 and raw[0] == ber.TAG_BIT_STRING and raw[1] == 9:
        raw = raw[2:]
    if len(raw) == 9 and raw[0] == 0:
        raw = raw[1:]
    if len(raw) != 8:
        raise CertificateError(f"x500UniqueIdentifier is not an 8-byte EUI-64 ({raw.hex()})")
    return raw


def _hw_serial_num(extensions: x509.Extensions) -> bytes | None:
    try:
        san = extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        return None
    assert isinstance(san, x509.SubjectAlternativeName)
    for name in san.get_values_for_type(x509.OtherName):
        if name.type_id != HARDWARE_MODULE_NAME:
            continue
        try:
            item = ber.read_single(name.value, "hardwareModuleName")
            reader = ber.SeqReader(item, "hardwareModuleName")
            reader.next(ber.TAG_OID, "hwType")
            serial = reader.next(ber.TAG_OCTET_STRING, "hwSerialNum").content
            reader.done()
        except DecodeError as exc:
            raise CertificateError(f"malformed hardwareModuleName SAN: {exc}") from exc
        if len(serial) != 8:
            raise CertificateError(f"hwSerialNum is not an 8-byte EUI-64 ({serial.hex()})")
        return serial
    return None


def _single_key_usage(extensions: x509.Extensions) -> KeyUsage:
    try:
        ku = extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    except x509.ExtensionNotFound as exc:
        raise CertificateError("end-entity certificate lacks keyUsage") from exc
    assert isinstance(ku, x509.KeyUsage)
    if ku.digital_signature and not ku.key_agreement:
        return KeyUsage.DIGITAL_SIGNATURE
    if ku.key_agreement and not ku.digital_signature:
        return KeyUsage.KEY_AGREEMENT
    raise CertificateError("end-entity keyUsage must be exactly one of digitalSignature or keyAgreement")


def check_replacement_for_cell(cert: SmkiCertificate, cell: TrustAnchorCellIdentifier) -> None:
    """gbcs/README.md §9.5: OU (role) equals the cell's role, key usage equals the cell's, not a CA/device
    cert. CertificateError(status_code=5 badCertificate) otherwise."""
    if cert.is_ca:
        raise CertificateError("replacement certificate is a CA certificate", StatusCode.BAD_CERTIFICATE)
    if cert.is_device:
        raise CertificateError("replacement certificate is a device certificate", StatusCode.BAD_CERTIFICATE)
    if cert.role != cell.role:
        raise CertificateError(
            f"replacement certificate OU role {cert.role} does not match the cell role {cell.role}",
            StatusCode.BAD_CERTIFICATE,
        )
    if cert.key_usage != cell.key_usage:
        got = "none" if cert.key_usage is None else cert.key_usage.name
        raise CertificateError(
            f"replacement certificate key usage {got} does not match the cell's "
            f"{KeyUsage(cell.key_usage).name}",
            StatusCode.BAD_CERTIFICATE,
        )


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
    chain = [cert]  # cert, intermediates..., then root appended
    unused = list(path)
    current = cert
    while True:
        if _issued_by(current, root):
            break
        parent = next((p for p in unused if _issued_by(current, p)), None)
        if parent is None:
            raise CertificateError(
                f"no chain from {current.certificate.subject.rfc4514_string() or 'device cert'} "
                f"(issuer {current.certificate.issuer.rfc4514_string()}) to the trust anchor "
                f"{root.certificate.subject.rfc4514_string()}",
                StatusCode.NO_TRUST_ANCHOR,
            )
        unused.remove(parent)
        chain.append(parent)
        current = parent
    chain.append(root)

    # CA checks on every issuer (intermediates and root), incl. pathLenConstraint
    for depth, issuer in enumerate(chain[1:]):
        name = issuer.certificate.subject.rfc4514_string()
        if not issuer.is_ca:
            raise CertificateError(
                f"issuer {name} is not a CA (basicConstraints)", StatusCode.BAD_CERTIFICATE
            )
        bc = issuer.certificate.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value
        assert isinstance(bc, x509.BasicConstraints)
        if bc.path_length is not None and depth > bc.path_length:
            raise CertificateError(f"issuer {name} pathLenConstraint exceeded", StatusCode.BAD_CERTIFICATE)
        try:
            ku = issuer.certificate.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
            assert isinstance(ku, x509.KeyUsage)
            if not ku.key_cert_sign:
                raise CertificateError(f"issuer {name} lacks keyCertSign", StatusCode.BAD_CERTIFICATE)
        except x509.ExtensionNotFound:
            pass

    policy = SMKI_DEVICE_POLICY if cert.is_device else SMKI_ORG_POLICY
    if policy not in _policies(cert.certificate):
        raise CertificateError(
            f"certificate lacks the SMKI policy {policy.dotted_string}", StatusCode.BAD_CERTIFICATE
        )

    if check_time:
        when = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        for item in chain:
            c = item.certificate
            if not c.not_valid_before_utc <= when <= c.not_valid_after_utc:
                raise CertificateError(
                    f"certificate {c.subject.rfc4514_string() or 'device cert'} (serial {c.serial_number:x}) "
                    f"not valid at {when.isoformat()} (valid {c.not_valid_before_utc.isoformat()} .. "
                    f"{c.not_valid_after_utc.isoformat()})",
                    StatusCode.BAD_CERTIFICATE,
                )


def _issued_by(child: SmkiCertificate, issuer: SmkiCertificate) -> bool:
    """Names match, AKI (if present) equals the issuer's SKI, and the issuer's key verifies the signature."""
    if child.certificate.issuer != issuer.certificate.subject:
        return False
    try:
        aki = child.certificate.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_KEY_IDENTIFIER).value
        assert isinstance(aki, x509.AuthorityKeyIdentifier)
        if aki.key_identifier is not None and aki.key_identifier != issuer.subject_key_identifier:
            return False
    except x509.ExtensionNotFound:
        pass
    try:
        child.certificate.verify_directly_issued_by(issuer.certificate)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _policies(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.CERTIFICATE_POLICIES).value
    except x509.ExtensionNotFound:
        return set()
    assert isinstance(ext, x509.CertificatePolicies)
    return {p.policy_identifier for p in ext}
