"""Helpers for the simulator tests: the RTDS 6.15.1 pre-state, a lab PKI world, command builders."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from forge_testlib import CommandForm, ForgeWorld
from lab_testlib import cs02b_command, der, org

from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL, KeyUsage, TrustAnchorCellIdentifier
from vdno.gbcs.cs02a import ProvideSecurityCredentialsCommand
from vdno.gbcs.cs02b import (
    RemotePartySeqNumberChange,
    ReplacementOutcome,
    TrustAnchorReplacement,
    UpdateSecurityCredentialsResponse,
)
from vdno.gbcs.cs02e import ProvideDeviceCertificateCommand
from vdno.gbcs.framing import Cra, GeneralSigningApdu, GroupingHeader, decode_message
from vdno.gbcs.mac import add_mac
from vdno.gbcs.signature import verify_message_signature
from vdno.labpki.smki import (
    CertifiedKey,
    make_device_ca,
    make_issuing_ca,
    make_root_ca,
)
from vdno.simulator.device import SimulatedDevice
from vdno.simulator.lab import make_device_profile
from vdno.simulator.profile import (
    ACB_DS_CELL,
    ACB_KA_CELL,
    RECOVERY_CELL,
    ROOT_CELL,
    SUPPLIER_DS_CELL,
    SUPPLIER_KA_CELL,
    SUPPLIER_PP_KA_CELL,
    TRANS_COS_DS_CELL,
    WAN_PROVIDER_DS_CELL,
    DeviceKey,
    DeviceProfile,
)

RTDS_DEVICE = bytes.fromhex("00db1234567890a0")
RTDS_NO = bytes.fromhex("90b3d51f30020000")
RTDS_SUPPLIER = bytes.fromhex("90b3d51f30010000")
RTDS_CLOCK = datetime(2020, 1, 1, tzinfo=UTC)  # inside every RTDS certificate's validity
NOBYNO = "6.15.1_CS02bNOByNO/CS02bNOByNO_6.15.1_SUCCESS_{}_GBCS.HEX"


def pem_to_der(path: Path) -> bytes:
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(serialization.Encoding.DER)


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


RTDS_CELL_FILES = {
    ROOT_CELL: "Z1-issuing-ca.pem",  # RTDS does not publish the ZA root: Z1 stands in as trust anchor
    RECOVERY_CELL: "90b3d51f30000001-ds.pem",
    SUPPLIER_DS_CELL: "90b3d51f30010000-ds.pem",
    SUPPLIER_KA_CELL: "90b3d51f30010000-ka.pem",
    SUPPLIER_PP_KA_CELL: "90b3d51f30010000-pp-ka.pem",
    NO_DS_CELL: "90b3d51f30020000-ds.pem",
    NO_KA_CELL: "90b3d51f30020000-ka.pem",
    ACB_DS_CELL: "90b3d51f30000002-ds.pem",
    ACB_KA_CELL: "90b3d51f30000002-ka.pem",
    TRANS_COS_DS_CELL: "90b3d51f30000004-ds.pem",
    WAN_PROVIDER_DS_CELL: "90b3d51f30000007-ds.pem",
}


def rtds_profile(vectors_dir: Path, require_acb_mac: bool = False, **kw: object) -> DeviceProfile:
    """RTDS 6.15.1 pre-state of ESME 00db1234567890a0 (seq numbers as its RTDS CS02a response shows)."""
    keystore = vectors_dir / "keystore"
    cells = {cell: pem_to_der(keystore / name) for cell, name in RTDS_CELL_FILES.items()}
    args: dict[str, object] = {
        "device_id": RTDS_DEVICE,
        "cells": cells,
        "seq_numbers": {2: 0, 3: 1},
        "device_ds": DeviceKey(None, pem_to_der(keystore / "00db1234567890a0-ds.pem")),
        "device_ka": DeviceKey(None, pem_to_der(keystore / "00db1234567890a0-ka.pem")),
        "require_acb_mac": require_acb_mac,
        "clock": RTDS_CLOCK,
    }
    args.update(kw)
    return DeviceProfile(**args)  # type: ignore[arg-type]


HELD_SEQ = 10  # the forge meter's stored NO seq number and the vanilla generation's last counter


def meter(world: ForgeWorld) -> SimulatedDevice:
    """The forge world's meter, its NO cells holding the vanilla generation at seq number HELD_SEQ."""
    return world.meter(world.vanilla, seq_number=HELD_SEQ)


def good(world: ForgeWorld) -> CommandForm:
    """The custodian's hand-out as the meter receives it: MAC-framed by the ACB."""
    return replace(world.hand_out(), mac=world.acb_mac())


def response_payload(response: bytes, device: SimulatedDevice) -> UpdateSecurityCredentialsResponse:
    msg = decode_message(response)
    verify_message_signature(msg, device.ds_public_key)
    payload = UpdateSecurityCredentialsResponse.decode(msg.apdu.content)
    return payload


def outcomes(response: bytes, device: SimulatedDevice) -> tuple[ReplacementOutcome, ...]:
    payload = response_payload(response, device)
    assert payload.execution_outcome is not None
    return payload.execution_outcome.replacement_outcomes


def statuses(response: bytes, device: SimulatedDevice) -> list[int]:
    return [o.status for o in outcomes(response, device)]


def assert_unchanged_outcomes(response: bytes, device: SimulatedDevice, status: int) -> None:
    found = outcomes(response, device)
    assert found, "expected one outcome per target cell"
    for o in found:
        assert o.status == status, o
        assert o.existing_subject_unique_id == o.replacing_subject_unique_id
        assert o.existing_subject_key_identifier == o.replacing_subject_key_identifier


@dataclass
class State:
    cells: dict[TrustAnchorCellIdentifier, bytes]
    seq_numbers: dict[int, int]
    counters: dict[bytes, int]


def snapshot(device: SimulatedDevice) -> State:
    return State(dict(device.cells), dict(device.seq_numbers), dict(device.originator_counters))


# --- lab PKI world ----------------------------------------------------------------------------------


NO_A = bytes.fromhex("90b3d51f3002aaaa")
NO_B = bytes.fromhex("90b3d51f3002bbbb")
ACB = bytes.fromhex("90b3d51f30000002")
RECOVERY = bytes.fromhex("90b3d51f30000001")
SUPPLIER = bytes.fromhex("90b3d51f30010000")
LAB_DEVICE = bytes.fromhex("00db00000000a001")


@dataclass
class World:
    now: datetime
    root: CertifiedKey
    issuing: CertifiedKey
    device_ca: CertifiedKey
    no_a_ds: CertifiedKey
    no_a_ka: CertifiedKey
    no_b_ds: CertifiedKey
    no_b_ka: CertifiedKey
    acb_ds: CertifiedKey
    acb_ka: CertifiedKey
    recovery: CertifiedKey
    supplier_ds: CertifiedKey
    foreign_no_ds: CertifiedKey  # a NO DS certificate from an unrelated CA

    def der(self, ck: CertifiedKey) -> bytes:
        return der(ck.certificate)


def make_world() -> World:
    now = datetime.now(UTC) - timedelta(days=1)
    root = make_root_ca(now=now)
    issuing = make_issuing_ca(root, now=now)
    device_ca = make_device_ca(root, now=now)
    other_root = make_root_ca(name="OTHER-ROOT", now=now)
    other_issuing = make_issuing_ca(other_root, name="OTHER-Z1", now=now)
    return World(
        now=now,
        root=root,
        issuing=issuing,
        device_ca=device_ca,
        no_a_ds=org(issuing, NO_A, 3, "ds", now),
        no_a_ka=org(issuing, NO_A, 3, "ka", now),
        no_b_ds=org(issuing, NO_B, 3, "ds", now),
        no_b_ka=org(issuing, NO_B, 3, "ka", now),
        acb_ds=org(issuing, ACB, 4, "ds", now),
        acb_ka=org(issuing, ACB, 4, "ka", now),
        recovery=org(issuing, RECOVERY, 1, "ds", now),
        supplier_ds=org(issuing, SUPPLIER, 2, "ds", now),
        foreign_no_ds=org(other_issuing, NO_B, 3, "ds", now),
    )


def lab_device(world: World, device_id: bytes = LAB_DEVICE, **kw: object) -> SimulatedDevice:
    cells = {
        ROOT_CELL: world.root.certificate,
        RECOVERY_CELL: world.recovery.certificate,
        SUPPLIER_DS_CELL: world.supplier_ds.certificate,
        NO_DS_CELL: world.no_a_ds.certificate,
        NO_KA_CELL: world.no_a_ka.certificate,
        ACB_DS_CELL: world.acb_ds.certificate,
        ACB_KA_CELL: world.acb_ka.certificate,
    }
    profile = make_device_profile(device_id, world.device_ca, cells, now=world.now, **kw)  # type: ignore[arg-type]
    return SimulatedDevice(profile)


def cs02b(
    signer: CertifiedKey,
    originator: bytes,
    device_id: bytes,
    counter: int,
    replacements: list[tuple[CertifiedKey | bytes, TrustAnchorCellIdentifier]],
    path: list[CertifiedKey],
    mode: int = 3,
    ta_cell: TrustAnchorCellIdentifier | None = NO_DS_CELL,
    seq: int | None = None,
    floor: int | None = 0,
    other_changes: tuple[RemotePartySeqNumberChange, ...] | None = None,
    disapply_time: bool = False,
) -> GeneralSigningApdu:
    """A signed CS02b command (GS-only), message code 0x0100 + mode."""
    return cs02b_command(
        signer.signing_key,
        originator,
        device_id,
        counter,
        [
            TrustAnchorReplacement(c if isinstance(c, bytes) else der(c.certificate), cell)
            for c, cell in replacements
        ],
        [der(p.certificate) for p in path],
        mode=mode,
        ta_cell=ta_cell,
        seq=seq,
        floor=floor,
        other_changes=other_changes,
        disapply_time=disapply_time,
    )


def with_mac(apdu: GeneralSigningApdu, acb_ka: ec.EllipticCurvePrivateKey, device_ka_cert: bytes) -> bytes:
    """Play the ACB: MAC-frame the APDU with the ACB KA key and the device KA certificate."""
    return add_mac(apdu.encode(), apdu.header, acb_ka, x509.load_der_x509_certificate(device_ka_cert))


def cs02a(
    originator: bytes,
    device_id: bytes,
    counter: int,
    roles: tuple[int, ...],
    ta_cell: TrustAnchorCellIdentifier,
) -> GeneralSigningApdu:
    header = GroupingHeader(Cra.COMMAND, counter, originator, device_id, 0x0008)
    return GeneralSigningApdu(header, ProvideSecurityCredentialsCommand(ta_cell, roles).encode(), b"")


def cs02e(originator: bytes, device_id: bytes, counter: int, usage: KeyUsage) -> GeneralSigningApdu:
    header = GroupingHeader(Cra.COMMAND, counter, originator, device_id, 0x000C)
    return GeneralSigningApdu(header, ProvideDeviceCertificateCommand(usage).encode(), b"")
