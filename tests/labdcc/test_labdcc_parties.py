from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from vdno.dno_areas import DNO_AREAS
from vdno.gbcs.cells import KeyUsage
from vdno.gbcs.smki import load_certificate
from vdno.labdcc.errors import LabDccError
from vdno.labdcc.parties import ensure_lab_parties, load_lab_parties
from vdno.labpki.hierarchy import LabHierarchy


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("labdcc-parties")
    first = ensure_lab_parties(folder)
    assert any("hierarchy" in change for change in first.created)
    assert any("keystore" in change for change in first.created)
    return folder


def test_second_run_changes_nothing(state: Path) -> None:
    before = _snapshot(state)
    again = ensure_lab_parties(state)
    assert again.created == ()
    assert _snapshot(state) == before
    assert len(before) == 8 + 14 * 4 + 4 + 15 * 4  # pki, areas, acb, keystore


def test_area_dnos_are_made_like_the_server_bootstrap(state: Path) -> None:
    parties = load_lab_parties(state)
    issuing = LabHierarchy.load(state / "pki").issuing_ca.certificate
    assert sorted(parties.dnos) == list(range(10, 24)) == sorted(DNO_AREAS)
    dno = parties.dno(14)
    assert dno.entity_id == b"LAB\x00\x00\x03\x00\x0e"
    assert parties.dno_by_entity_id(bytes.fromhex("4c4142000003000e")) == dno
    assert parties.area_of(dno.entity_id) == 14
    for usage, key_usage in (("ds", KeyUsage.DIGITAL_SIGNATURE), ("ka", KeyUsage.KEY_AGREEMENT)):
        credential = dno.ds if usage == "ds" else dno.ka
        parsed = load_certificate(credential.certificate.public_bytes(Encoding.DER))
        assert (parsed.entity_id, parsed.role, parsed.key_usage) == (dno.entity_id, 3, key_usage)
        assert credential.certificate.subject.rfc4514_string().endswith(",OU=03,CN=LAB DNO WEST MIDLANDS")
        credential.certificate.verify_directly_issued_by(issuing)
        assert (state / "areas" / f"area-14-{usage}.pem").read_bytes() == (
            state / "keystore" / f"4c4142000003000e-{usage}.pem"
        ).read_bytes()
        assert (state / "keystore" / f"4c4142000003000e-{usage}.key").is_file()
    with pytest.raises(LabDccError, match="area 9 is not a GB DNO area"):
        parties.dno(9)


def test_the_acb(state: Path) -> None:
    acb = load_lab_parties(state).acb
    assert acb.entity_id == bytes.fromhex("4C41420000040001")
    for credential, key_usage in ((acb.ds, KeyUsage.DIGITAL_SIGNATURE), (acb.ka, KeyUsage.KEY_AGREEMENT)):
        parsed = load_certificate(credential.certificate.public_bytes(Encoding.DER))
        assert (parsed.entity_id, parsed.role, parsed.key_usage) == (acb.entity_id, 4, key_usage)
    for name in ("acb/acb-ds.pem", "acb/acb-ka.key", "keystore/4c41420000040001-ka.pem"):
        assert (state / name).is_file()


def test_existing_credentials_are_loaded_and_the_keystore_re_exported(tmp_path: Path, state: Path) -> None:
    copy = tmp_path / "state"
    shutil.copytree(state, copy)
    area_pem = (copy / "areas" / "area-12-ka.pem").read_bytes()
    shutil.rmtree(copy / "keystore")
    again = ensure_lab_parties(copy)
    assert again.created == ("exported 30 certificates and their keys to keystore/",)
    assert (copy / "areas" / "area-12-ka.pem").read_bytes() == area_pem
    assert (copy / "keystore" / "4c4142000003000c-ka.pem").read_bytes() == area_pem


def test_inconsistent_or_missing_state_is_refused(tmp_path: Path, state: Path) -> None:
    with pytest.raises(LabDccError, match="run `vdno-labdcc init --state"):
        load_lab_parties(tmp_path / "nothing")
    copy = tmp_path / "state"
    shutil.copytree(state, copy)
    (copy / "acb" / "acb-ds.key").unlink()
    with pytest.raises(LabDccError, match=r"acb-ds\.key is missing"):
        ensure_lab_parties(copy)
    shutil.copy(copy / "areas" / "area-10-ds.pem", copy / "acb" / "acb-ka.pem")
    shutil.copy(copy / "areas" / "area-10-ds.key", copy / "acb" / "acb-ka.key")
    shutil.copy(state / "acb" / "acb-ds.key", copy / "acb" / "acb-ds.key")
    with pytest.raises(LabDccError, match=r"acb-ka\.pem certifies entity 4c4142000003000a role 3"):
        load_lab_parties(copy)
    (copy / "acb").rename(copy / "acb-gone")
    with pytest.raises(LabDccError, match=r"acb-ds\.pem is missing: run `vdno-labdcc init"):
        load_lab_parties(copy)
