"""labpki.smki against the RTDS SMKI certificates (gbcs/README.md §10)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from vdno.gbcs.cells import KeyUsage
from vdno.gbcs.smki import SmkiCertificate, load_certificate
from vdno.labpki.errors import LabPkiError
from vdno.labpki.smki import (
    DEVICE_NOT_AFTER,
    SMKI_DEVICE_POLICY,
    SMKI_ORG_POLICY,
    CertifiedKey,
    hardware_module_name,
    issue_device_certificate,
    issue_from_csr,
    issue_organisation_certificate,
    make_device_ca,
    make_issuing_ca,
    make_root_ca,
    new_p256_key,
)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
NO_ID = bytes.fromhex("90b3d51f30020000")
DEVICE_ID = bytes.fromhex("00db1234567890a0")


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def parsed(cert: x509.Certificate) -> SmkiCertificate:
    return load_certificate(cert.public_bytes(serialization.Encoding.DER))


USAGE = {"ds": KeyUsage.DIGITAL_SIGNATURE, "ka": KeyUsage.KEY_AGREEMENT}


def keystore_certs(vectors_dir: Path) -> list[Path]:
    paths = sorted(vectors_dir.glob("keystore*/*.pem"))
    assert len(paths) >= 30
    return paths


def extension_shape(cert: x509.Certificate) -> list[tuple[str, bool]]:
    return [(ext.oid.dotted_string, ext.critical) for ext in cert.extensions]


def name_shape(name: x509.Name) -> list[tuple[str, _ASN1Type]]:
    shape = []
    for rdn in name.rdns:
        assert len(rdn) == 1
        (attribute,) = list(rdn)
        shape.append((attribute.oid.dotted_string, attribute._type))
    return shape


@pytest.fixture(scope="module")
def root() -> CertifiedKey:
    return make_root_ca(now=NOW)


@pytest.fixture(scope="module")
def issuing(root: CertifiedKey) -> CertifiedKey:
    return make_issuing_ca(root, now=NOW)


@pytest.fixture(scope="module")
def device_ca(root: CertifiedKey) -> CertifiedKey:
    return make_device_ca(root, now=NOW)


def test_entity_id_and_usage_of_rtds_certificates(vectors_dir: Path) -> None:
    for path in keystore_certs(vectors_dir):
        if path.name.startswith("Z1"):
            continue
        cert = load(path)
        assert parsed(cert).entity_id.hex() == path.name[:16]
        assert parsed(cert).key_usage == USAGE["ds" if "-ds" in path.name else "ka"]


def test_organisation_certificate_matches_rtds_profile(vectors_dir: Path, issuing: CertifiedKey) -> None:
    keystore = vectors_dir / "keystore"
    for usage in ("ds", "ka"):
        rtds = load(keystore / f"90b3d51f30020000-{usage}.pem")
        ours = issue_organisation_certificate(
            issuing, new_p256_key().public_key(), NO_ID, 0x03, usage, now=NOW
        )
        assert ours.version == x509.Version.v3
        assert ours.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
        assert extension_shape(ours) == extension_shape(rtds)
        assert name_shape(ours.subject) == name_shape(rtds.subject)
        assert name_shape(ours.issuer) == name_shape(rtds.issuer)
        assert ours.issuer == issuing.certificate.subject
        # OU = role as two hex digits, UTF8String; x500UniqueIdentifier = BIT STRING 00 || entity id.
        assert ours.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "03"
        uid_der = bytes.fromhex("0603 55042D 0309 00") + NO_ID
        assert uid_der in rtds.subject.public_bytes()
        assert uid_der in ours.subject.public_bytes()
        assert ours.subject.public_bytes() == rtds.subject.public_bytes()
        # Key usage, policy and AKI encodings.
        for cls in (x509.KeyUsage, x509.CertificatePolicies):
            assert (
                ours.extensions.get_extension_for_class(cls).value.public_bytes()
                == rtds.extensions.get_extension_for_class(cls).value.public_bytes()
            )
        aki = ours.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        issuer_ski = issuing.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        assert aki.key_identifier == issuer_ski.value.digest
        assert aki.authority_cert_issuer is None and aki.authority_cert_serial_number is None
        assert parsed(ours).key_usage == USAGE[usage]
        assert parsed(ours).entity_id == NO_ID
        assert parsed(ours).role == 0x03
        # 16-byte positive serial, UTCTime validity (two 17 0D), 10 years less a second.
        assert 0 < ours.serial_number < 1 << 127 and ours.serial_number.bit_length() > 120
        assert ours.tbs_certificate_bytes.count(b"\x17\x0d") == 2
        assert ours.not_valid_before_utc == NOW
        assert ours.not_valid_after_utc == datetime(2036, 1, 1, 11, 59, 59, tzinfo=UTC)
        with pytest.raises(x509.ExtensionNotFound):
            ours.extensions.get_extension_for_class(x509.BasicConstraints)


def test_organisation_certificate_with_common_name(vectors_dir: Path, issuing: CertifiedKey) -> None:
    rtds = load(vectors_dir / "keystore" / "90b3d51f30010000-ds.pem")
    ours = issue_organisation_certificate(
        issuing,
        new_p256_key().public_key(),
        bytes.fromhex("90b3d51f30010000"),
        0x02,
        "ds",
        now=NOW,
        common_name="GITTESTSUPPLIER",
    )
    assert ours.subject.public_bytes() == rtds.subject.public_bytes()


def test_validity_like_rtds() -> None:
    root = make_root_ca(now=datetime(2015, 10, 29, tzinfo=UTC))
    issuing = make_issuing_ca(root, now=datetime(2015, 10, 29, tzinfo=UTC))
    cert = issue_organisation_certificate(
        issuing, new_p256_key().public_key(), NO_ID, 3, "ds", now=datetime(2015, 10, 30, tzinfo=UTC)
    )
    assert cert.not_valid_after_utc == datetime(2025, 10, 29, 23, 59, 59, tzinfo=UTC)


def test_issuing_ca_matches_z1_profile(vectors_dir: Path, root: CertifiedKey, issuing: CertifiedKey) -> None:
    z1 = load(vectors_dir / "keystore" / "Z1-issuing-ca.pem")
    ours = issuing.certificate
    assert extension_shape(ours) == extension_shape(z1)
    assert name_shape(ours.subject) == name_shape(z1.subject)
    assert name_shape(ours.issuer) == name_shape(z1.issuer)
    assert ours.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "07"
    assert root.certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "00"
    for cls in (x509.KeyUsage, x509.BasicConstraints, x509.CertificatePolicies):
        assert (
            ours.extensions.get_extension_for_class(cls).value.public_bytes()
            == z1.extensions.get_extension_for_class(cls).value.public_bytes()
        )


def test_root_profile(root: CertifiedKey) -> None:
    cert = root.certificate
    assert cert.subject == cert.issuer
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies)
    assert policies.critical and policies.value[0].policy_identifier == SMKI_ORG_POLICY
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 25 * 365
    assert name_shape(cert.subject) == [
        ("2.5.4.11", _ASN1Type.PrintableString),
        ("2.5.4.3", _ASN1Type.PrintableString),
    ]


def test_device_certificate_matches_rtds(vectors_dir: Path, device_ca: CertifiedKey) -> None:
    for usage in ("ds", "ka"):
        rtds = load(vectors_dir / "keystore" / f"00db1234567890a0-{usage}.pem")
        ours = issue_device_certificate(device_ca, new_p256_key().public_key(), DEVICE_ID, usage, now=NOW)
        assert extension_shape(ours) == extension_shape(rtds)
        assert len(ours.subject) == 0 and len(rtds.subject) == 0
        assert name_shape(ours.issuer) == name_shape(rtds.issuer)
        for cls in (x509.SubjectAlternativeName, x509.KeyUsage):
            assert (
                ours.extensions.get_extension_for_class(cls).value.public_bytes()
                == rtds.extensions.get_extension_for_class(cls).value.public_bytes()
            )
        policies = ours.extensions.get_extension_for_class(x509.CertificatePolicies).value
        assert [p.policy_identifier for p in policies] == [SMKI_DEVICE_POLICY]
        assert policies.public_bytes() == (
            rtds.extensions.get_extension_for_class(x509.CertificatePolicies).value.public_bytes()
        )
        assert ours.not_valid_before_utc == NOW
        assert ours.not_valid_after_utc == DEVICE_NOT_AFTER == rtds.not_valid_after_utc
        assert b"\x18\x0f99991231235959Z" in ours.tbs_certificate_bytes
        assert parsed(ours).entity_id == DEVICE_ID
        assert parsed(ours).key_usage == USAGE[usage]
        assert parsed(ours).is_device
    assert hardware_module_name(DEVICE_ID).hex().upper().endswith("040800DB1234567890A0")


def test_chains_verify(root: CertifiedKey, issuing: CertifiedKey, device_ca: CertifiedKey) -> None:
    org = issue_organisation_certificate(issuing, new_p256_key().public_key(), NO_ID, 3, "ds", now=NOW)
    device = issue_device_certificate(device_ca, new_p256_key().public_key(), DEVICE_ID, "ka", now=NOW)
    root.certificate.verify_directly_issued_by(root.certificate)
    issuing.certificate.verify_directly_issued_by(root.certificate)
    device_ca.certificate.verify_directly_issued_by(root.certificate)
    org.verify_directly_issued_by(issuing.certificate)
    device.verify_directly_issued_by(device_ca.certificate)
    with pytest.raises(ValueError):
        org.verify_directly_issued_by(root.certificate)


def test_standalone_device_ca() -> None:
    ca = make_device_ca(None, name="E357", now=NOW)
    ca.certificate.verify_directly_issued_by(ca.certificate)
    device = issue_device_certificate(ca, new_p256_key().public_key(), DEVICE_ID, "ds", now=NOW)
    device.verify_directly_issued_by(ca.certificate)


def test_same_key_gives_rtds_ski(vectors_dir: Path, issuing: CertifiedKey) -> None:
    key = serialization.load_pem_private_key(
        (vectors_dir / "keystore" / "90b3d51f30020000-ds.key").read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    rtds = load(vectors_dir / "keystore" / "90b3d51f30020000-ds.pem")
    ours = issue_organisation_certificate(issuing, key.public_key(), NO_ID, 3, "ds", now=NOW)
    assert (
        ours.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        == rtds.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    )


def make_csr(key: ec.EllipticCurvePrivateKey, cn: str = "ignored") -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def test_issue_from_csr(issuing: CertifiedKey) -> None:
    key = new_p256_key()
    cert = issue_from_csr(issuing, make_csr(key), NO_ID, 0x03, "ka", now=NOW)
    assert cert.public_key() == key.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    assert parsed(cert).entity_id == NO_ID and parsed(cert).key_usage == KeyUsage.KEY_AGREEMENT
    cert.verify_directly_issued_by(issuing.certificate)


def test_issue_from_csr_rejects_broken_signature(issuing: CertifiedKey) -> None:
    der = make_csr(new_p256_key(), cn="AAAAAAAA")
    tampered = der.replace(b"AAAAAAAA", b"AAAAAAAB")
    assert tampered != der
    with pytest.raises(LabPkiError, match="signature"):
        issue_from_csr(issuing, tampered, NO_ID, 3, "ds", now=NOW)


def test_issue_from_csr_rejects_non_p256(issuing: CertifiedKey) -> None:
    der = make_csr(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(LabPkiError, match="P-256"):
        issue_from_csr(issuing, der, NO_ID, 3, "ds", now=NOW)


def test_issue_from_csr_rejects_garbage(issuing: CertifiedKey) -> None:
    with pytest.raises(LabPkiError):
        issue_from_csr(issuing, b"\x30\x03\x02\x01\x00", NO_ID, 3, "ds", now=NOW)


def test_bad_arguments(issuing: CertifiedKey) -> None:
    public_key = new_p256_key().public_key()
    with pytest.raises(LabPkiError):
        issue_organisation_certificate(issuing, public_key, b"\x01" * 7, 3, "ds", now=NOW)
    with pytest.raises(LabPkiError):
        issue_organisation_certificate(issuing, public_key, NO_ID, 3, "xx", now=NOW)  # type: ignore[arg-type]
    with pytest.raises(LabPkiError):
        issue_organisation_certificate(
            issuing, ec.generate_private_key(ec.SECP384R1()).public_key(), NO_ID, 3, "ds", now=NOW
        )
    with pytest.raises(LabPkiError, match="private key"):
        issue_organisation_certificate(
            CertifiedKey(issuing.certificate, None), public_key, NO_ID, 3, "ds", now=NOW
        )
