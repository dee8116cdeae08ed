"""labpki.hierarchy: create once, save, reload; and labpki's import hygiene."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from vdno.labpki.errors import LabPkiError
from vdno.labpki.hierarchy import STEMS, LabHierarchy


def test_create_save_load(tmp_path: Path) -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    hierarchy = LabHierarchy.create(now)
    hierarchy.issuing_ca.certificate.verify_directly_issued_by(hierarchy.root.certificate)
    hierarchy.device_ca.certificate.verify_directly_issued_by(hierarchy.root.certificate)
    hierarchy.tls_ca.certificate.verify_directly_issued_by(hierarchy.tls_ca.certificate)
    assert hierarchy.root.certificate.not_valid_before_utc == now
    hierarchy.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{stem}.{ext}" for stem in STEMS for ext in ("pem", "key")
    )
    loaded = LabHierarchy.load(tmp_path)
    for a, b in zip(loaded._parts(), hierarchy._parts(), strict=True):
        assert a.certificate == b.certificate
        assert a.private_key is not None and b.private_key is not None
        assert a.private_key.private_numbers() == b.private_key.private_numbers()


def test_load_or_create_is_idempotent(tmp_path: Path) -> None:
    folder = tmp_path / "lab"
    first = LabHierarchy.load_or_create(folder)
    second = LabHierarchy.load_or_create(folder)
    assert first.root.certificate == second.root.certificate
    assert first.tls_ca.certificate == second.tls_ca.certificate
    (folder / "device-ca.pem").unlink()
    with pytest.raises(LabPkiError, match="partial"):
        LabHierarchy.load_or_create(folder)


def test_load_rejects_foreign_issuer(tmp_path: Path) -> None:
    a, b = LabHierarchy.create(), LabHierarchy.create()
    LabHierarchy(a.root, b.issuing_ca, a.device_ca, a.tls_ca).save(tmp_path)
    with pytest.raises(LabPkiError, match="not issued"):
        LabHierarchy.load(tmp_path)


def test_labpki_imports_neither_grpc_nor_pkcs11() -> None:
    code = (
        "import sys, vdno.labpki.smki, vdno.labpki.tls, vdno.labpki.store\n"
        "import vdno.labpki.hierarchy, vdno.labpki.errors\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'pkcs11')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
