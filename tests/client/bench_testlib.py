"""Helpers for the bench-client tests: a lab SMKI world, signed NO-by-NO commands, a software meter."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from lab_testlib import cs02b_command, der, org

from vdno.client.bundle import AreaCredentials, TrustBundle, VanillaGeneration
from vdno.client.messages import IssuedCommand, OutcomeAck
from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL
from vdno.gbcs.cs02a import (
    ProvideSecurityCredentialsCommand,
    ProvideSecurityCredentialsResponse,
    RoleCredentials,
    TrustAnchorCellDetails,
)
from vdno.gbcs.cs02b import (
    ExecutionOutcome,
    RemotePartySeqNumberChange,
    ReplacementOutcome,
    TrustAnchorReplacement,
    UpdateSecurityCredentialsCommand,
    UpdateSecurityCredentialsResponse,
)
from vdno.gbcs.cs02e import DeviceCertificateResponse
from vdno.gbcs.framing import Cra, GeneralSigningApdu, GroupingHeader, MessageCode, decode_message
from vdno.gbcs.signature import sign_apdu
from vdno.gbcs.smki import load_certificate
from vdno.labpki.smki import (
    CertifiedKey,
    issue_device_certificate,
    make_device_ca,
    make_issuing_ca,
    make_root_ca,
    new_p256_key,
)

VANILLA_ID = bytes.fromhex("7a11a0000000d001")
OTHER_VANILLA_ID = bytes.fromhex("7a11a0000000d002")
DEVICE_ID = bytes.fromhex("00db1234567890ff")
OTHER_DEVICE_ID = bytes.fromhex("00db1234567890fe")
AREA_ID = 14
OTHER_AREA_ID = 15
TIME = b"\x07\xe9\x01\x01\xff\x00\x00\x00\x00\x80\x00\xff"


@dataclass
class OrgKeys:
    entity_id: bytes
    ds_key: ec.EllipticCurvePrivateKey
    ds_cert: bytes
    ka_key: ec.EllipticCurvePrivateKey
    ka_cert: bytes


@dataclass
class LabWorld:
    root: CertifiedKey
    issuing: CertifiedKey
    device_ca: CertifiedKey
    vanilla: OrgKeys
    other_vanilla: OrgKeys  # a retired generation
    areas: dict[int, OrgKeys]
    device_key: ec.EllipticCurvePrivateKey
    device_cert: bytes
    device_ka_cert: bytes
    bundle: TrustBundle = field(init=False)

    def __post_init__(self) -> None:
        self.bundle = TrustBundle(
            generations=(
                VanillaGeneration(
                    1,
                    self.other_vanilla.entity_id,
                    self.other_vanilla.ds_cert,
                    self.other_vanilla.ka_cert,
                    "retired",
                ),
                VanillaGeneration(
                    2, self.vanilla.entity_id, self.vanilla.ds_cert, self.vanilla.ka_cert, "active"
                ),
            ),
            areas=tuple(
                AreaCredentials(area_id, f"area {area_id}", keys.entity_id, keys.ds_cert, keys.ka_cert)
                for area_id, keys in self.areas.items()
            ),
            issuing_ca_certificate=der(self.issuing.certificate),
            root_ca_certificate=der(self.root.certificate),
            device_ca_certificate=der(self.device_ca.certificate),
        )


def _org(issuing: CertifiedKey, entity_id: bytes) -> OrgKeys:
    ds, ka = org(issuing, entity_id, 3, "ds"), org(issuing, entity_id, 3, "ka")
    return OrgKeys(entity_id, ds.signing_key, der(ds.certificate), ka.signing_key, der(ka.certificate))


def make_world() -> LabWorld:
    root = make_root_ca()
    issuing = make_issuing_ca(root)
    device_ca = make_device_ca(root)
    device_key = new_p256_key()
    device_cert = der(issue_device_certificate(device_ca, device_key.public_key(), DEVICE_ID, "ds"))
    device_ka = der(issue_device_certificate(device_ca, new_p256_key().public_key(), DEVICE_ID, "ka"))
    areas = {
        AREA_ID: _org(issuing, bytes.fromhex("0d00000000000014")),
        OTHER_AREA_ID: _org(issuing, bytes.fromhex("0d00000000000015")),
    }
    return LabWorld(
        root,
        issuing,
        device_ca,
        _org(issuing, VANILLA_ID),
        _org(issuing, OTHER_VANILLA_ID),
        areas,
        device_key,
        device_cert,
        device_ka,
    )


def build_command(
    world: LabWorld,
    *,
    counter: int = 5000,
    device_id: bytes = DEVICE_ID,
    area_id: int = AREA_ID,
    signer: OrgKeys | None = None,
    originator: bytes | None = None,
    mode: int = 3,
    replacements: tuple[TrustAnchorReplacement, ...] | None = None,
    path: tuple[bytes, ...] | None = None,
    seq_number: int | None = None,
) -> bytes:
    """A GS-only, KRP-signed CS02b NO-by-NO command, as the custodian would return it. The message code
    stays 0x0103 whatever `mode` says."""
    signer = signer or world.vanilla
    area = world.areas[area_id]
    if replacements is None:
        replacements = (
            TrustAnchorReplacement(area.ds_cert, NO_DS_CELL),
            TrustAnchorReplacement(area.ka_cert, NO_KA_CELL),
        )
    return cs02b_command(
        signer.ds_key,
        originator or signer.entity_id,
        device_id,
        counter,
        replacements,
        path if path is not None else (der(world.issuing.certificate),),
        mode=mode,
        message_code=MessageCode.CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR,
        seq=seq_number,
    ).encode()


def device_response(
    world: LabWorld, command: bytes, statuses: tuple[int, int] = (0, 0), counter: int | None = None
) -> bytes:
    """The meter's signed CS02b response to `command`."""
    sent = decode_message(command).apdu
    payload = UpdateSecurityCredentialsCommand.decode(sent.content)
    header = sent.header
    outcomes = tuple(
        ReplacementOutcome(
            r.target,
            status,
            header.business_originator_id,
            b"\x01" * 8,
            load_certificate(r.certificate).entity_id,
            load_certificate(r.certificate).subject_key_identifier,
        )
        for r, status in zip(payload.replacements, statuses, strict=False)
    )
    outcome = ExecutionOutcome(header.originator_counter, 3, (RemotePartySeqNumberChange(3, 0),), outcomes)
    return _respond(world, header, UpdateSecurityCredentialsResponse(outcome).encode(), counter)


def _respond(world: LabWorld, header: GroupingHeader, content: bytes, counter: int | None = None) -> bytes:
    reply = GroupingHeader(
        cra=Cra.RESPONSE,
        originator_counter=header.originator_counter if counter is None else counter,
        business_originator_id=header.business_target_id,
        business_target_id=header.business_originator_id,
        message_code=header.message_code,
        date_time=TIME,
    )
    return sign_apdu(GeneralSigningApdu(reply, content), world.device_key).encode()


class FakeMeter:
    """A DeviceTransport answering CS02e, CS02a and CS02b like a vanilla meter would."""

    def __init__(self, world: LabWorld, statuses: tuple[int, int] = (0, 0)) -> None:
        self.world = world
        self.statuses = statuses
        self.sent: list[bytes] = []

    def list_devices(self) -> list[bytes]:
        return [DEVICE_ID]

    def send(self, device_id: bytes, message: bytes) -> bytes:
        self.sent.append(message)
        apdu = decode_message(message).apdu
        header = apdu.header
        if header.message_code == MessageCode.CS02E_PROVIDE_DEVICE_CERTIFICATE:
            content = DeviceCertificateResponse(certificate=self.world.device_cert).encode()
            return _respond(self.world, header, content)
        if header.message_code == MessageCode.CS02A_PROVIDE_SECURITY_CREDENTIALS:
            ProvideSecurityCredentialsCommand.decode(apdu.content)
            cells = (
                TrustAnchorCellDetails(0, 0, VANILLA_ID, b"\x01" * 8),
                TrustAnchorCellDetails(4, 0, VANILLA_ID, b"\x02" * 8),
            )
            content = ProvideSecurityCredentialsResponse((RoleCredentials(3, 0, 17, cells),)).encode()
            return _respond(self.world, header, content)
        return device_response(self.world, message, self.statuses)


class FakeCustodian:
    """CustodianApi returning a command built by `make` and recording reports."""

    def __init__(self, world: LabWorld, **command_kwargs: Any) -> None:
        self.world = world
        self.kwargs = command_kwargs
        self.requests: list[tuple[Any, ...]] = []
        self.reports: list[tuple[str, bytes]] = []
        self.ack = OutcomeAck(1, "applied")

    def request_hand_out(
        self,
        request_id: str,
        device_id: str,
        area_id: int,
        device_certificate: bytes,
        credentials_response: bytes,
    ) -> IssuedCommand:
        self.requests.append((request_id, device_id, area_id, device_certificate, credentials_response))
        kwargs = {"area_id": area_id, **self.kwargs}
        counter = int(kwargs.pop("counter", 5000))
        command = build_command(self.world, counter=counter, **kwargs)
        return IssuedCommand(1, bytes.fromhex(device_id), area_id, 2, counter, command, None)

    def report_outcome(
        self, request_id: str, response: bytes = b"", credentials_answer: bytes = b""
    ) -> OutcomeAck:
        self.reports.append((request_id, response or credentials_answer))
        return self.ack


def with_status(bundle: TrustBundle, status: str) -> TrustBundle:
    return replace(bundle, generations=tuple(replace(g, status=status) for g in bundle.generations))
