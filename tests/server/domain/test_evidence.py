"""What the service takes as a meter's outcome (server/domain/outcomes.py): the evidence rule for a CS02a
answer, and a CS02b refusal by a meter that already holds what the command installs. Answers are signed by a
software device key whose certificate comes from a lab device CA; every check is made to fail once."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from lab_testlib import der, org

from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL, StatusCode
from vdno.gbcs.cs02a import ProvideSecurityCredentialsResponse, RoleCredentials, TrustAnchorCellDetails
from vdno.gbcs.cs02b import ExecutionOutcome, ReplacementOutcome, UpdateSecurityCredentialsResponse
from vdno.gbcs.framing import Cra, GeneralSigningApdu, GroupingHeader, MessageCode
from vdno.gbcs.signature import sign_apdu
from vdno.gbcs.smki import SmkiCertificate, load_certificate
from vdno.labpki.smki import (
    issue_device_certificate,
    make_device_ca,
    make_issuing_ca,
    make_root_ca,
    new_p256_key,
)
from vdno.server.domain.errors import OutcomeRejected
from vdno.server.domain.outcomes import (
    READ_COUNTER_AHEAD,
    ExpectedCells,
    check_credentials_answer,
    check_meter_response,
)
from vdno.server.domain.values import CellState, IssuanceStatus

DEVICE = bytes.fromhex("00DB00000000E001")
OTHER_DEVICE = bytes.fromhex("00DB00000000E002")
VANILLA = bytes.fromhex("564E4F0000000001")
AREA = bytes.fromhex("0D00000000000014")
COMMAND_COUNTER = 1_764_000_000_000_000  # the command's originator counter (microseconds, as the service's)
NOW = COMMAND_COUNTER + 60_000_000


@dataclass(frozen=True)
class World:
    device_key: ec.EllipticCurvePrivateKey
    device: SmkiCertificate
    area: tuple[SmkiCertificate, SmkiCertificate]
    vanilla: tuple[SmkiCertificate, SmkiCertificate]

    @property
    def expected(self) -> ExpectedCells:
        ds, ka = self.area
        return ExpectedCells(AREA, ds.subject_key_identifier, ka.subject_key_identifier)

    def cells(self, holder: tuple[SmkiCertificate, SmkiCertificate]) -> tuple[CellState, CellState]:
        return tuple(CellState(c.entity_id, c.subject_key_identifier) for c in holder)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def world() -> World:
    root = make_root_ca()
    issuing = make_issuing_ca(root)
    key = new_p256_key()
    device = load_certificate(
        der(issue_device_certificate(make_device_ca(root), key.public_key(), DEVICE, "ds"))
    )

    def pair(entity: bytes) -> tuple[SmkiCertificate, SmkiCertificate]:
        return (
            load_certificate(der(org(issuing, entity, 3, "ds").certificate)),
            load_certificate(der(org(issuing, entity, 3, "ka").certificate)),
        )

    return World(key, device, pair(AREA), pair(VANILLA))


def _signed(world: World, code: int, counter: int, content: bytes, sender: bytes = DEVICE) -> bytes:
    header = GroupingHeader(
        cra=Cra.RESPONSE,
        originator_counter=counter,
        business_originator_id=sender,
        business_target_id=bytes(8),
        message_code=code,
    )
    return sign_apdu(GeneralSigningApdu(header, content), world.device_key).encode()


def answer(
    world: World,
    holder: tuple[SmkiCertificate, SmkiCertificate] | None = None,
    seq_number: int = 0,
    read_counter: int = COMMAND_COUNTER + 1_000_000,
    sender: bytes = DEVICE,
) -> bytes:
    """The meter's signed CS02a answer: its NO cells holding `holder` (default: the area's set)."""
    ds, ka = holder or world.area
    cells = (
        TrustAnchorCellDetails(0, 0, ds.entity_id, ds.subject_key_identifier),
        TrustAnchorCellDetails(4, 0, ka.entity_id, ka.subject_key_identifier),
    )
    content = ProvideSecurityCredentialsResponse((RoleCredentials(3, 0, seq_number, cells),)).encode()
    return _signed(world, MessageCode.CS02A_PROVIDE_SECURITY_CREDENTIALS, read_counter, content, sender)


def check(world: World, data: bytes, device_id: bytes = DEVICE) -> IssuanceStatus:
    return check_credentials_answer(
        data,
        device_id=device_id,
        device_certificate=world.device.certificate,
        expected=world.expected,
        floor_seq_number=0,
        read_after=COMMAND_COUNTER,
        now=NOW,
    ).status


def test_a_fresh_signed_answer_holding_the_target_with_the_floor_proves_the_command_applied(
    world: World,
) -> None:
    outcome = check_credentials_answer(
        answer(world),
        device_id=DEVICE,
        device_certificate=world.device.certificate,
        expected=world.expected,
        floor_seq_number=0,
        read_after=COMMAND_COUNTER,
        now=NOW,
    )
    assert outcome.status is IssuanceStatus.APPLIED
    assert (outcome.no_ds, outcome.no_ka) == world.cells(world.area)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"read_counter": COMMAND_COUNTER}, "before the command existed"),
        ({"read_counter": COMMAND_COUNTER - 5_000_000}, "before the command existed"),
        ({"read_counter": NOW + READ_COUNTER_AHEAD + 1}, "ahead of the service's clock"),
        ({"seq_number": 7}, "NO seq number is 7"),
        ({"holder": "vanilla"}, "do not hold what the command installs"),
        ({"holder": "mixed"}, "do not hold what the command installs"),
        ({"sender": OTHER_DEVICE}, "not sent by the command's device"),
    ],
)
def test_each_part_of_the_rule_is_checked(world: World, change: dict[str, object], needle: str) -> None:
    holder = {"vanilla": world.vanilla, "mixed": (world.area[0], world.vanilla[1])}.get(
        str(change.get("holder"))
    )
    kwargs = {k: v for k, v in change.items() if k != "holder"}
    with pytest.raises(OutcomeRejected, match=needle):
        check(world, answer(world, holder, **kwargs))  # type: ignore[arg-type]


def test_an_answer_that_is_not_the_devices_own_cs02a_is_refused(world: World) -> None:
    tampered = bytearray(answer(world))
    tampered[-1] ^= 0x01
    with pytest.raises(OutcomeRejected, match="does not verify"):
        check(world, bytes(tampered))
    cs02e = _signed(world, MessageCode.CS02E_PROVIDE_DEVICE_CERTIFICATE, COMMAND_COUNTER + 1, b"\x00")
    with pytest.raises(OutcomeRejected, match="not a CS02a response"):
        check(world, cs02e)
    with pytest.raises(OutcomeRejected, match="not sent by the command's device"):
        check(world, answer(world), device_id=OTHER_DEVICE)


def _response(world: World, holder: tuple[SmkiCertificate, SmkiCertificate], status: int) -> bytes:
    """The meter's signed CS02b response to the command with COMMAND_COUNTER: every cell `status`, both
    cells reported holding `holder` (a refusal reports existing == replacing)."""
    outcomes = tuple(
        ReplacementOutcome(
            cell, status, c.entity_id, c.subject_key_identifier, c.entity_id, c.subject_key_identifier
        )
        for cell, c in zip((NO_DS_CELL, NO_KA_CELL), holder, strict=True)
    )
    content = UpdateSecurityCredentialsResponse(ExecutionOutcome(COMMAND_COUNTER, 3, (), outcomes)).encode()
    header = GroupingHeader(
        cra=Cra.RESPONSE,
        originator_counter=COMMAND_COUNTER,
        business_originator_id=DEVICE,
        business_target_id=VANILLA,
        message_code=MessageCode.CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR,
        date_time=b"\x07\xea\x01\x01\xff\x00\x00\x00\x00\x80\x00\xff",
    )
    return sign_apdu(GeneralSigningApdu(header, content), world.device_key).encode()


def test_a_refusal_by_a_meter_holding_the_new_certificates_is_applied_never_rejected(world: World) -> None:
    def status(holder: tuple[SmkiCertificate, SmkiCertificate], code: int) -> IssuanceStatus:
        return check_meter_response(
            _response(world, holder, code),
            device_id=DEVICE,
            device_certificate=world.device.certificate,
            command_originator=VANILLA,
            counter=COMMAND_COUNTER,
            expected=world.expected,
        ).status

    # the command sent again after it applied: the new holder sits in the authorising cell
    assert status(world.area, StatusCode.INSUFFICIENT_PERMISSION) is IssuanceStatus.APPLIED
    assert status(world.area, StatusCode.BAD_SEQUENCE_NUMBER) is IssuanceStatus.APPLIED
    # a true refusal: the meter still holds the vanilla generation
    assert status(world.vanilla, StatusCode.BAD_SIGNATURE) is IssuanceStatus.REJECTED
    assert status((world.area[0], world.vanilla[1]), StatusCode.BAD_CERTIFICATE) is IssuanceStatus.REJECTED
