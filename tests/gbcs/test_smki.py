from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from vdno.gbcs import smki
from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL, KeyUsage, TrustAnchorCellIdentifier
from vdno.gbcs.errors import CertificateError

CLOCK = datetime(2020, 1, 1, tzinfo=UTC)
LATE = datetime(2026, 11, 23, tzinfo=UTC)
NO_DS_NEW = "90b3d51f30020000-ds-ski4238d306b6f725a2.pem"
NO_KA_NEW = "90b3d51f30020000-ka-ski483e0ad640c236c5.pem"


def _load(path: Path) -> smki.SmkiCertificate:
    return smki.load_certificate(path.read_bytes())


def test_org_cert_fields(keystore: Path) -> None:
    cert = _load(keystore / "90b3d51f30020000-ds.pem")
    assert cert.role == 3
    assert cert.key_usage == KeyUsage.DIGITAL_SIGNATURE
    assert cert.subject_key_identifier.hex() == "48cf97fa9f827fb5"
    assert cert.entity_id == bytes.fromhex("90b3d51f30020000")
    assert not cert.is_ca and not cert.is_device
    assert smki.load_certificate(cert.der) == cert  # DER input too
    ka = _load(keystore / "90b3d51f30020000-ka.pem")
    assert ka.key_usage == KeyUsage.KEY_AGREEMENT and ka.subject_key_identifier.hex() == "4bc9d38d1cb49f2a"


def test_ca_and_device_fields(keystore: Path) -> None:
    z1 = _load(keystore / "Z1-issuing-ca.pem")
    assert z1.is_ca and z1.key_usage is None and z1.entity_id == b"" and z1.role == 7
    assert z1.subject_key_identifier.hex() == "4f5688d7ec933be2"
    dev = _load(keystore / "00db1234567890a0-ds.pem")
    assert dev.is_device and dev.role is None and dev.entity_id == bytes.fromhex("00db1234567890a0")
    assert dev.key_usage == KeyUsage.DIGITAL_SIGNATURE


@pytest.mark.parametrize("folder", ["keystore", "keystore-after-replacement"])
def test_all_keystore_certs(vectors_dir: Path, folder: str) -> None:
    pems = sorted((vectors_dir / folder).glob("*.pem"))
    assert pems
    for pem in pems:
        cert = _load(pem)
        assert smki.subject_key_identifier_for(cert.public_key) == cert.subject_key_identifier, pem.name
        assert cert.public_key == cert.certificate.public_key(), pem.name
        if pem.name.startswith(("90b3", "00db")):
            assert cert.entity_id.hex() == pem.name[:16]
        if "-ski" in pem.name:
            assert cert.subject_key_identifier.hex() == pem.name.split("-ski")[1][:16]
        if pem.name.startswith("90b3"):
            expected = KeyUsage.KEY_AGREEMENT if "-ka" in pem.name else KeyUsage.DIGITAL_SIGNATURE
            assert cert.key_usage == expected


def test_load_garbage() -> None:
    for bad in (b"", b"\x30\x00", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"):
        with pytest.raises(CertificateError):
            smki.load_certificate(bad)


def test_path_validation(keystore: Path, keystore_after: Path) -> None:
    z1 = _load(keystore / "Z1-issuing-ca.pem")
    for name in (NO_DS_NEW, NO_KA_NEW):
        cert = _load(keystore_after / name)
        smki.verify_certification_path(cert, (z1,), z1, CLOCK)
        smki.verify_certification_path(cert, (), z1, CLOCK)
        smki.verify_certification_path(cert, (z1,), z1, datetime(2020, 1, 1))  # naive = UTC
        with pytest.raises(CertificateError) as exc:
            smki.verify_certification_path(cert, (z1,), z1, LATE)
        assert exc.value.status_code == 5 and "not valid" in str(exc.value)
        smki.verify_certification_path(cert, (z1,), z1, LATE, check_time=False)
        # wrong root: an org cert, or another end-entity
        wrong = _load(keystore / "90b3d51f30000001-ds.pem")
        with pytest.raises(CertificateError) as exc:
            smki.verify_certification_path(cert, (z1,), wrong, CLOCK)
        assert exc.value.status_code == 10


def test_path_rejects_non_ca_root_and_unrelated_path(keystore: Path, keystore_after: Path) -> None:
    z1 = _load(keystore / "Z1-issuing-ca.pem")
    cert = _load(keystore_after / NO_DS_NEW)
    # Z1 as a (non-root) path cert with an unrelated root: no chain
    other = _load(keystore / "90b3d51f30020000-ds.pem")
    with pytest.raises(CertificateError) as exc:
        smki.verify_certification_path(cert, (z1,), other, CLOCK, check_time=False)
    assert exc.value.status_code == 10
    # device certs are issued by CN=E357, not in RTDS: no chain to Z1
    dev = _load(keystore / "00db1234567890a0-ds.pem")
    with pytest.raises(CertificateError) as exc:
        smki.verify_certification_path(dev, (z1,), z1, CLOCK)
    assert exc.value.status_code == 10


def test_check_replacement_for_cell(keystore: Path, keystore_after: Path) -> None:
    ds = _load(keystore_after / NO_DS_NEW)
    ka = _load(keystore_after / NO_KA_NEW)
    smki.check_replacement_for_cell(ds, NO_DS_CELL)
    smki.check_replacement_for_cell(ka, NO_KA_CELL)
    rejects = [
        (ds, NO_KA_CELL),
        (ka, NO_DS_CELL),
        (ds, TrustAnchorCellIdentifier(2, KeyUsage.DIGITAL_SIGNATURE)),
        (ds, TrustAnchorCellIdentifier(2, KeyUsage.KEY_AGREEMENT)),
        (ds, TrustAnchorCellIdentifier(2, KeyUsage.KEY_AGREEMENT, 1)),
        (_load(keystore / "Z1-issuing-ca.pem"), TrustAnchorCellIdentifier(7, KeyUsage.KEY_CERT_SIGN)),
        (_load(keystore / "00db1234567890a0-ds.pem"), NO_DS_CELL),
        (_load(keystore / "90b3d51f30010000-ds.pem"), NO_DS_CELL),
    ]
    for cert, cell in rejects:
        with pytest.raises(CertificateError) as exc:
            smki.check_replacement_for_cell(cert, cell)
        assert exc.value.status_code == 5
