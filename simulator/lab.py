"""Build device profiles from a lab PKI (labpki): fresh device DS/KA keys and device certificates.

Example (the demo's tray of 20 devices whose NO cells hold the custodian's vanilla certificates):

    from labpki.hierarchy import LabHierarchy
    from simulator.lab import make_device_profile, write_tray
    from gbcs.cells import NO_DS_CELL, NO_KA_CELL
    from simulator.profile import ROOT_CELL, ACB_KA_CELL

    lab = LabHierarchy.load_or_create(folder)
    cells = {ROOT_CELL: lab.root.certificate, NO_DS_CELL: vanilla_ds_cert, NO_KA_CELL: vanilla_ka_cert,
             ACB_KA_CELL: acb_ka_cert}
    profiles = [make_device_profile(bytes.fromhex(f"00db0000000000{i:02x}"), lab.device_ca, cells,
                                    seq_numbers={3: 0}) for i in range(20)]
    write_tray(profiles, tray_folder)      # then: vdno-sim serve --profiles tray_folder
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL, TrustAnchorCellIdentifier
from vdno.labpki.smki import CertifiedKey, issue_device_certificate, new_p256_key
from vdno.labpki.store import export_keystore
from vdno.simulator.profile import ACB_KA_CELL, ROOT_CELL, DeviceKey, DeviceProfile, save_profile

Certificate = x509.Certificate | bytes


def _der(cert: Certificate) -> bytes:
    if isinstance(cert, x509.Certificate):
        return cert.public_bytes(serialization.Encoding.DER)
    return bytes(cert)


def make_device_profile(
    device_id: bytes,
    device_ca: CertifiedKey,
    cells: Mapping[TrustAnchorCellIdentifier, Certificate],
    seq_numbers: Mapping[int, int] | None = None,
    require_acb_mac: bool = True,
    allow_local_reads: bool = False,
    clock: datetime | None = None,
    now: datetime | None = None,
    originator_counters: Mapping[bytes, int] | None = None,
) -> DeviceProfile:
    """A device with new DS and KA keys certified by device_ca (notBefore = now), and the given cells.

    seq_numbers defaults to 0 for every role that has a cell."""
    ds_key, ka_key = new_p256_key(), new_p256_key()
    ds_cert = issue_device_certificate(device_ca, ds_key.public_key(), device_id, "ds", now=now)
    ka_cert = issue_device_certificate(device_ca, ka_key.public_key(), device_id, "ka", now=now)
    der_cells = {cell: _der(cert) for cell, cert in cells.items()}
    if seq_numbers is None:
        seq_numbers = {int(cell.role): 0 for cell in der_cells if cell.role != 0}
    return DeviceProfile(
        device_id=bytes(device_id),
        cells=der_cells,
        seq_numbers=dict(seq_numbers),
        device_ds=DeviceKey(ds_key, _der(ds_cert)),
        device_ka=DeviceKey(ka_key, _der(ka_cert)),
        require_acb_mac=require_acb_mac,
        allow_local_reads=allow_local_reads,
        clock=clock,
        originator_counters=dict(originator_counters or {}),
    )


def write_tray(profiles: Iterable[DeviceProfile], folder: Path | str) -> list[Path]:
    """Save each profile as `<folder>/<device id>.json` (serve them with `vdno-sim serve --profiles`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for profile in profiles:
        path = folder / f"{profile.device_id.hex()}.json"
        save_profile(profile, path)
        written.append(path)
    return written


# --- lab trays: meters as a triage facility receives them ----------------------------------------------

TRAY_DEVICE_PREFIX = bytes.fromhex("00db5eed")
COMMISSIONED_SEQ_NUMBER = 7  # a meter in service has seen a few of its DNO's commands


def tray_device_id(index: int) -> bytes:
    """The lab's device ids: 00DB5EED followed by the index as 4 bytes."""
    return TRAY_DEVICE_PREFIX + index.to_bytes(4, "big")


@dataclass(frozen=True)
class LabCredentialSet:
    """A remote party's DS and KA certificates as they sit in a meter's cells."""

    entity_id: bytes
    ds_certificate: Certificate
    ka_certificate: Certificate


def lab_meter_profile(
    device_id: bytes,
    device_ca: CertifiedKey,
    root: Certificate,
    network_operator: LabCredentialSet,
    acb_ka: Certificate | None,
    seq_number: int = 0,
    require_acb_mac: bool = True,
) -> DeviceProfile:
    """A lab meter on the triage bench's port (unsigned local reads answered) whose NO cells hold
    `network_operator` (an area DNO's set for a meter in service, a vanilla generation's for one in stock),
    with its NO seq number and that party's anti-replay counter at `seq_number`; ACB KA cell = `acb_ka`."""
    cells: dict[TrustAnchorCellIdentifier, Certificate] = {
        ROOT_CELL: root,
        NO_DS_CELL: network_operator.ds_certificate,
        NO_KA_CELL: network_operator.ka_certificate,
    }
    if acb_ka is not None:
        cells[ACB_KA_CELL] = acb_ka
    counters = {network_operator.entity_id: seq_number} if seq_number else {}
    return make_device_profile(
        device_id,
        device_ca,
        cells,
        seq_numbers={3: seq_number},
        require_acb_mac=require_acb_mac,
        allow_local_reads=True,
        originator_counters=counters,
    )


def export_device_credentials(profiles: Iterable[DeviceProfile], keystore: Path) -> int:
    """Every profile's device DS and KA certificates and keys into `keystore` (RTDS naming): the lab ACB and
    `vdno-bench inspect` look device certificates up there. Returns how many were written."""
    credentials = []
    for profile in profiles:
        for key in (profile.device_ds, profile.device_ka):
            if key.certificate is not None:
                credentials.append(
                    CertifiedKey(x509.load_der_x509_certificate(key.certificate), key.private_key)
                )
    export_keystore(keystore, credentials, include_keys=True)
    return len(credentials)
