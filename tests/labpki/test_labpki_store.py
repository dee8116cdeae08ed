"""labpki.store: PEM files, key modes, RTDS keystore layout."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vdno.labpki.errors import LabPkiError
from vdno.labpki.smki import (
    CertifiedKey,
    issue_device_certificate,
    issue_organisation_certificate,
    make_device_ca,
    make_issuing_ca,
    make_root_ca,
    new_p256_key,
)
from vdno.labpki.store import export_keystore, keystore_stem, read_certified_key, write_certified_key


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_round_trip_and_key_mode(tmp_path: Path) -> None:
    root = make_root_ca()
    write_certified_key(tmp_path / "pki", "root", root)
    assert mode(tmp_path / "pki" / "root.key") == 0o600
    assert b"BEGIN PRIVATE KEY" in (tmp_path / "pki" / "root.key").read_bytes()
    loaded = read_certified_key(tmp_path / "pki", "root")
    assert loaded.certificate == root.certificate
    assert loaded.private_key is not None and root.private_key is not None
    assert loaded.private_key.private_numbers() == root.private_key.private_numbers()
    assert sorted(p.name for p in (tmp_path / "pki").iterdir()) == ["root.key", "root.pem"]  # no temp files
    # Overwrite keeps the mode.
    write_certified_key(tmp_path / "pki", "root", make_root_ca())
    assert mode(tmp_path / "pki" / "root.key") == 0o600


def test_certificate_only_and_mismatch(tmp_path: Path) -> None:
    root = make_root_ca()
    write_certified_key(tmp_path, "cert-only", CertifiedKey(root.certificate, None))
    assert not (tmp_path / "cert-only.key").exists()
    with pytest.raises(LabPkiError, match="missing"):
        read_certified_key(tmp_path, "cert-only")
    assert read_certified_key(tmp_path, "cert-only", require_key=False).private_key is None
    write_certified_key(tmp_path, "mixed", root)
    other = make_root_ca()
    assert other.private_key is not None
    (tmp_path / "mixed.key").write_bytes(
        other.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(LabPkiError, match="does not match"):
        read_certified_key(tmp_path, "mixed")


def test_export_reproduces_rtds_keystore_layout(vectors_dir: Path, tmp_path: Path) -> None:
    source = vectors_dir / "keystore"
    paths = [p for p in sorted(source.glob("*.pem")) if "-pp-" not in p.name and not p.name.startswith("Z1")]
    certs = [x509.load_pem_x509_certificate(p.read_bytes()) for p in paths]
    written = export_keystore(tmp_path, certs)
    assert sorted(p.name for p in written) == [p.name for p in paths]
    for path in paths:
        assert x509.load_pem_x509_certificate((tmp_path / path.name).read_bytes()) == (
            x509.load_pem_x509_certificate(path.read_bytes())
        )


def test_export_with_keys(tmp_path: Path) -> None:
    root = make_root_ca()
    issuing = make_issuing_ca(root)
    device_ca = make_device_ca(root)
    org_key, device_key = new_p256_key(), new_p256_key()
    org = issue_organisation_certificate(
        issuing, org_key.public_key(), bytes.fromhex("90B3D51F30AB0000"), 3, "ka"
    )
    device = issue_device_certificate(
        device_ca, device_key.public_key(), bytes.fromhex("00DB0000000000A9"), "ds"
    )
    written = export_keystore(tmp_path, [CertifiedKey(org, org_key), CertifiedKey(device, device_key)])
    assert sorted(p.name for p in written) == [
        "00db0000000000a9-ds.key",
        "00db0000000000a9-ds.pem",
        "90b3d51f30ab0000-ka.key",
        "90b3d51f30ab0000-ka.pem",
    ]
    assert mode(tmp_path / "90b3d51f30ab0000-ka.key") == 0o600
    assert read_certified_key(tmp_path, "90b3d51f30ab0000-ka").certificate == org
    no_keys = export_keystore(tmp_path / "nokeys", [CertifiedKey(org, org_key)], include_keys=False)
    assert [p.name for p in no_keys] == ["90b3d51f30ab0000-ka.pem"]
    with pytest.raises(LabPkiError, match="both"):
        export_keystore(tmp_path / "dup", [org, org])


def test_keystore_stem_refuses_ca_certificates() -> None:
    root = make_root_ca()
    for ca in (root, make_issuing_ca(root), make_device_ca(root)):
        with pytest.raises(LabPkiError, match="no keystore name"):
            keystore_stem(ca.certificate)
