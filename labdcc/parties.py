"""The lab parties: the SMKI hierarchy, a DNO credential set per GB area (10-23) and the ACB.

State folder layout (shared with `vdno-server init`, which makes the same hierarchy and reads the area
certificates; whichever runs first creates, the other loads):
  pki/                      root-ca, issuing-ca, device-ca, tls-ca (.pem + .key)
  areas/area-<id>-ds|ka     the area DNO's organisation certificates and keys (.pem + .key)
  acb/acb-ds|ka             the lab ACB's (.pem + .key)
  keystore/<eui>-ds|ka      all of the above in the RTDS keystore naming (.pem + .key)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from vdno.dno_areas import DNO_AREAS
from vdno.gbcs.cells import KeyUsage, RemotePartyRole
from vdno.gbcs.errors import CertificateError
from vdno.gbcs.smki import load_certificate
from vdno.labdcc.errors import LabDccError
from vdno.labpki.errors import LabPkiError
from vdno.labpki.hierarchy import LabHierarchy
from vdno.labpki.smki import CertifiedKey, KeyUsageName, issue_organisation_certificate, new_p256_key
from vdno.labpki.store import (
    certificate_pem,
    export_keystore,
    keystore_stem,
    private_key_pem,
    read_certified_key,
    write_certified_key,
)

ACB_ENTITY_ID = b"LAB\x00\x00\x04\x00\x01"
ACB_COMMON_NAME = "LAB ACB"
_USAGES: dict[KeyUsageName, KeyUsage] = {"ds": KeyUsage.DIGITAL_SIGNATURE, "ka": KeyUsage.KEY_AGREEMENT}


def area_entity_id(area_id: int) -> bytes:
    """Lab entity id of the DNO of an area: 'LAB' 00 00 03 00 <area> (as the server's bootstrap)."""
    return b"LAB\x00\x00\x03" + area_id.to_bytes(2, "big")


def area_common_name(area_id: int) -> str:
    return f"LAB DNO {DNO_AREAS[area_id].upper()}"[:64]


@dataclass(frozen=True)
class LabParty:
    """An organisation the lab stands in for: entity id, SMKI role, DS and KA certificates with their keys."""

    entity_id: bytes
    role: int
    common_name: str
    ds: CertifiedKey
    ka: CertifiedKey


@dataclass(frozen=True)
class LabParties:
    hierarchy: LabHierarchy
    dnos: Mapping[int, LabParty]  # area id -> the area's DNO
    acb: LabParty
    created: tuple[str, ...] = field(default=(), compare=False)  # what ensure_lab_parties made

    def dno(self, area_id: int) -> LabParty:
        try:
            return self.dnos[area_id]
        except KeyError:
            raise LabDccError(f"area {area_id} is not a GB DNO area (10-23)") from None

    def dno_by_entity_id(self, entity_id: bytes) -> LabParty | None:
        return next((dno for dno in self.dnos.values() if dno.entity_id == entity_id), None)

    def area_of(self, entity_id: bytes) -> int | None:
        return next((area for area, dno in self.dnos.items() if dno.entity_id == entity_id), None)


def ensure_lab_parties(state: Path) -> LabParties:
    """Idempotent: load what the state folder holds, create what it lacks, export all to keystore/.
    A second run changes no file. LabDccError when the folder is inconsistent (e.g. a partial hierarchy,
    a certificate without its key, credentials not issued by the lab issuing CA)."""
    return _lab_parties(Path(state), create=True)


def load_lab_parties(state: Path) -> LabParties:
    """Load the lab parties; LabDccError naming what is missing when `vdno-labdcc init` has not run."""
    return _lab_parties(Path(state), create=False)


def _lab_parties(state: Path, create: bool) -> LabParties:
    created: list[str] = []
    pki_folder = state / "pki"
    if not create and not LabHierarchy.exists(pki_folder):
        raise LabDccError(f"{pki_folder} holds no lab hierarchy: run `vdno-labdcc init --state {state}`")
    existed = LabHierarchy.exists(pki_folder)
    try:
        hierarchy = LabHierarchy.load_or_create(pki_folder)
    except LabPkiError as exc:
        raise LabDccError(f"lab hierarchy: {exc}") from exc
    if not existed:
        created.append("created the lab SMKI hierarchy (root, issuing CA, device CA, TLS CA) in pki/")
    dnos = {
        area_id: _party(
            state / "areas",
            f"area-{area_id}",
            hierarchy,
            area_entity_id(area_id),
            RemotePartyRole.NETWORK_OPERATOR,
            area_common_name(area_id),
            created if create else None,
        )
        for area_id in DNO_AREAS
    }
    acb = _party(
        state / "acb",
        "acb",
        hierarchy,
        ACB_ENTITY_ID,
        RemotePartyRole.ACCESS_CONTROL_BROKER,
        ACB_COMMON_NAME,
        created if create else None,
    )
    if create:
        credentials = [c for party in (*dnos.values(), acb) for c in (party.ds, party.ka)]
        _export_keystore(state / "keystore", credentials, created)
    return LabParties(hierarchy, MappingProxyType(dnos), acb, tuple(created))


def _party(
    folder: Path,
    prefix: str,
    hierarchy: LabHierarchy,
    entity_id: bytes,
    role: int,
    common_name: str,
    created: list[str] | None,
) -> LabParty:
    usages: tuple[KeyUsageName, KeyUsageName] = ("ds", "ka")
    ds, ka = (
        _credential(folder, f"{prefix}-{usage}", hierarchy, entity_id, role, usage, common_name, created)
        for usage in usages
    )
    return LabParty(entity_id, role, common_name, ds, ka)


def _credential(
    folder: Path,
    stem: str,
    hierarchy: LabHierarchy,
    entity_id: bytes,
    role: int,
    usage: KeyUsageName,
    common_name: str,
    created: list[str] | None,
) -> CertifiedKey:
    path = folder / f"{stem}.pem"
    if path.exists():
        try:
            credential = read_certified_key(folder, stem)
        except LabPkiError as exc:
            raise LabDccError(str(exc)) from exc
        _check_credential(credential, path, hierarchy, entity_id, role, usage)
        return credential
    if created is None:
        raise LabDccError(f"{path} is missing: run `vdno-labdcc init --state {folder.parent}`")
    key = new_p256_key()
    certificate = issue_organisation_certificate(
        hierarchy.issuing_ca, key.public_key(), entity_id, role, usage, common_name=common_name
    )
    credential = CertifiedKey(certificate, key)
    write_certified_key(folder, stem, credential)
    created.append(f"issued {common_name} {usage.upper()} credentials ({folder.name}/{stem}.pem, .key)")
    return credential


def _check_credential(
    credential: CertifiedKey,
    path: Path,
    hierarchy: LabHierarchy,
    entity_id: bytes,
    role: int,
    usage: KeyUsageName,
) -> None:
    try:
        parsed = load_certificate(credential.certificate.public_bytes(Encoding.DER))
    except CertificateError as exc:
        raise LabDccError(f"{path}: not an SMKI organisation certificate: {exc}") from exc
    if parsed.entity_id != entity_id or parsed.role != role or parsed.key_usage != _USAGES[usage]:
        raise LabDccError(
            f"{path} certifies entity {parsed.entity_id.hex()} role {parsed.role} {parsed.key_usage}, "
            f"expected {entity_id.hex()} role {role} {usage.upper()}"
        )
    try:
        credential.certificate.verify_directly_issued_by(hierarchy.issuing_ca.certificate)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise LabDccError(f"{path} is not issued by the lab issuing CA in pki/: {exc}") from exc


def _export_keystore(folder: Path, credentials: list[CertifiedKey], created: list[str]) -> None:
    """Export (RTDS naming) unless every file already holds exactly what would be written."""
    expected: dict[Path, bytes] = {}
    for credential in credentials:
        stem = keystore_stem(credential.certificate)
        expected[folder / f"{stem}.pem"] = certificate_pem(credential.certificate)
        if credential.private_key is not None:
            expected[folder / f"{stem}.key"] = private_key_pem(credential.private_key)
    if all(path.is_file() and path.read_bytes() == data for path, data in expected.items()):
        return
    try:
        export_keystore(folder, credentials, include_keys=True)
    except LabPkiError as exc:
        raise LabDccError(f"keystore export: {exc}") from exc
    created.append(f"exported {len(credentials)} certificates and their keys to keystore/")
