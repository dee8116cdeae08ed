"""Checking what a meter says about a command the custodian released, before the records say what its NO
cells now hold: its signed CS02b response to the command (GBCS 13.3.5), or, when the bench found the meter
already holding what the command installs and did not send it again, its signed CS02a answer (GBCS 13.3.4).
Used by hand-outs, rotations and hand-ins alike."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from vdno.gbcs.cells import (
    NO_DS_CELL,
    NO_KA_CELL,
    CredentialsReplacementMode,
    KeyUsage,
    RemotePartyRole,
    StatusCode,
)
from vdno.gbcs.cs02a import ProvideSecurityCredentialsResponse
from vdno.gbcs.cs02b import UpdateSecurityCredentialsResponse
from vdno.gbcs.errors import GbcsError
from vdno.gbcs.framing import Cra, MessageCode, decode_message
from vdno.gbcs.signature import verify_message_signature
from vdno.server.domain.errors import OutcomeRejected
from vdno.server.domain.values import CellState, IssuanceStatus


@dataclass(frozen=True)
class ExpectedCells:
    """The certificates a command installs in the NO cells: their entity id and key identifiers."""

    entity_id: bytes
    ds_key_identifier: bytes
    ka_key_identifier: bytes


@dataclass(frozen=True)
class MeterOutcome:
    """What a verified answer says: APPLIED when both NO cells now hold the expected certificates (replaced
    by the command, or already held when the meter refused it), REJECTED when the meter refused and holds
    something else (the cells then hold what they held)."""

    status: IssuanceStatus
    cell_statuses: tuple[tuple[int, int, int], ...]  # (role, key usage bit, status code)
    no_ds: CellState | None
    no_ka: CellState | None


def check_meter_response(
    response: bytes,
    *,
    device_id: bytes,
    device_certificate: x509.Certificate,
    command_originator: bytes,
    counter: int,
    expected: ExpectedCells,
) -> MeterOutcome:
    """Verify the device's signed CS02b (mode 3) response to the command with `counter` from
    `command_originator`. OutcomeRejected naming what does not hold."""
    try:
        message = decode_message(response)
        header = message.apdu.header
        if header.cra is not Cra.RESPONSE:
            raise OutcomeRejected("response is not a GBCS response (CRA flag)")
        if header.message_code != MessageCode.CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR:
            raise OutcomeRejected("response is not a CS02b network-operator response")
        if header.business_originator_id != device_id:
            raise OutcomeRejected("response was not sent by the command's device")
        if header.business_target_id != command_originator:
            raise OutcomeRejected("response is not addressed to the command's originator")
        if header.originator_counter != counter:
            raise OutcomeRejected("response does not echo the command's originator counter")
        verify_message_signature(message, device_certificate)
        payload = UpdateSecurityCredentialsResponse.decode(message.apdu.content)
    except GbcsError as exc:
        raise OutcomeRejected(f"response does not verify as the device's CS02b response: {exc}") from exc
    result = payload.execution_outcome
    if result is None:
        raise OutcomeRejected("response carries no execution outcome")
    if result.seq_number != counter:
        raise OutcomeRejected("response's execution outcome is not for the command's seq number")
    if result.mode != CredentialsReplacementMode.NETWORK_OPERATOR_BY_NETWORK_OPERATOR:
        raise OutcomeRejected("response's execution outcome is not for a mode-3 command")
    expected_key = {
        KeyUsage.DIGITAL_SIGNATURE: expected.ds_key_identifier,
        KeyUsage.KEY_AGREEMENT: expected.ka_key_identifier,
    }
    cells: list[tuple[int, int, int]] = []
    no_ds: CellState | None = None
    no_ka: CellState | None = None
    applied = True
    for item in result.replacement_outcomes:
        cells.append((item.cell.role, int(item.cell.key_usage), item.status))
        ok = item.status == StatusCode.SUCCESS
        if ok and (
            item.replacing_subject_unique_id != expected.entity_id
            or expected_key.get(item.cell.key_usage) != item.replacing_subject_key_identifier
        ):
            raise OutcomeRejected("response reports certificates other than the command's")
        state = (
            CellState(item.replacing_subject_unique_id, item.replacing_subject_key_identifier)
            if ok
            else CellState(item.existing_subject_unique_id, item.existing_subject_key_identifier)
        )
        applied = applied and ok
        if item.cell == NO_DS_CELL:
            no_ds = state
        elif item.cell == NO_KA_CELL:
            no_ka = state
    if no_ds is None or no_ka is None:
        applied = False
    elif not applied and _holds(no_ds, no_ka, expected):
        # A refusal that reports both NO cells already holding what the command installs (e.g. the command
        # sent again after a crash: the meter refuses it, the new holder now sits in the authorising cell).
        # The answer is signed by the device and echoes this command's counter, so it was made after the
        # command existed: the meter holds the new certificates, and the records must say so, never
        # "rejected".
        applied = True
    status = IssuanceStatus.APPLIED if applied else IssuanceStatus.REJECTED
    return MeterOutcome(status, tuple(cells), no_ds, no_ka)


def _holds(no_ds: CellState, no_ka: CellState | None, expected: ExpectedCells) -> bool:
    return (
        no_ka is not None
        and no_ds == CellState(expected.entity_id, expected.ds_key_identifier)
        and no_ka == CellState(expected.entity_id, expected.ka_key_identifier)
    )


# How far ahead of the service's clock a bench's read counter may be (microseconds): beyond that it is not a
# reading of now.
READ_COUNTER_AHEAD = 300 * 1_000_000


def check_credentials_answer(
    answer: bytes,
    *,
    device_id: bytes,
    device_certificate: x509.Certificate,
    expected: ExpectedCells,
    floor_seq_number: int,
    read_after: int,
    now: int,
) -> MeterOutcome:
    """APPLIED when the meter's CS02a answer proves that a command installing `expected` was applied;
    OutcomeRejected naming the first thing that does not hold. The evidence rule:

    1. The answer is the device's own: a CS02a response (CRA response, message code 0x0008) from
       `device_id`, its signature verifying with the device certificate the command was issued for. A bench
       can neither make nor alter one.
    2. It is fresh: the grouping header echoes the originator counter of the read command, which a bench
       sets from its clock (microseconds since the epoch, strictly increasing). It must be above
       `read_after` (the command's originator counter, which the service also takes from its clock, or the
       time a hand-in command was authorised): the meter was read after the command existed, so a reading
       kept from before (when the meter may have held the same certificates on an earlier visit to that
       area) does not count. It must not be ahead of `now` by more than READ_COUNTER_AHEAD.
    3. Both NO cells (role 3: digitalSignature and keyAgreement) hold exactly the command's target
       certificates, by entity id and subject key identifier: what the command installs, nothing less.
    4. The NO role's stored seq number is the command's newRemotePartyFloorSeqNumber: what applying it
       leaves (GBCS 13.3.5: the authorising role's seq number becomes the command's, then, once a cell was
       replaced, the floor). The command's own counter does not survive its application (the custodian's
       commands carry floor 0, so that a DNO's small counters are not locked out), and a seq number other
       than the floor means the new holder has since sent commands of its own: the meter is no longer as
       the command left it, and the bench sends the command instead (its refusal, a CS02b response echoing
       the command's counter, then proves the same).

    One outstanding command per meter, and the records' refusal to issue for a meter they no longer show
    on the command's source, mean no other released command of the custodian's can have put these
    certificates there since."""
    try:
        message = decode_message(answer)
        header = message.apdu.header
        if header.cra is not Cra.RESPONSE:
            raise OutcomeRejected("credentials answer is not a GBCS response (CRA flag)")
        if header.message_code != MessageCode.CS02A_PROVIDE_SECURITY_CREDENTIALS:
            raise OutcomeRejected("credentials answer is not a CS02a response")
        if header.business_originator_id != device_id:
            raise OutcomeRejected("credentials answer was not sent by the command's device")
        verify_message_signature(message, device_certificate)
        payload = ProvideSecurityCredentialsResponse.decode_roles_of(
            message.apdu.content, RemotePartyRole.NETWORK_OPERATOR
        )
    except GbcsError as exc:
        raise OutcomeRejected(
            f"credentials answer does not verify as the device's CS02a answer: {exc}"
        ) from exc
    if header.originator_counter <= read_after:
        raise OutcomeRejected(
            f"credentials answer was read (counter {header.originator_counter}) before the command existed "
            f"(counter {read_after}): read the meter again"
        )
    if header.originator_counter > now + READ_COUNTER_AHEAD:
        raise OutcomeRejected(
            f"credentials answer's read counter {header.originator_counter} is ahead of the service's clock"
        )
    no_ds: CellState | None = None
    no_ka: CellState | None = None
    seq_number: int | None = None
    for role in payload.roles:  # the network operator's entries only
        seq_number = role.current_seq_number if seq_number is None else seq_number
        for cell in role.cells or ():
            state = CellState(cell.subject_unique_id, cell.subject_key_identifier)
            if cell.key_usage == KeyUsage.DIGITAL_SIGNATURE and no_ds is None:
                no_ds = state
            elif cell.key_usage == KeyUsage.KEY_AGREEMENT and no_ka is None:
                no_ka = state
    if no_ds is None or not _holds(no_ds, no_ka, expected):
        raise OutcomeRejected("the meter's NO cells do not hold what the command installs")
    if seq_number != floor_seq_number:
        raise OutcomeRejected(
            f"the meter's NO seq number is {seq_number}, not the command's floor {floor_seq_number}: the new "
            "holder has sent commands since; send the command and report the meter's response"
        )
    return MeterOutcome(IssuanceStatus.APPLIED, (), no_ds, no_ka)
