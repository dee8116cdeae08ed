"""Checking a meter's signed CS02b response (GBCS 13.3.5) to a command the custodian released: what a
hand-out and a hand-in both need before the records say what the meter's NO cells now hold."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from gbcs.cells import NO_DS_CELL, NO_KA_CELL, CredentialsReplacementMode, KeyUsage, StatusCode
from gbcs.cs02b import UpdateSecurityCredentialsResponse
from gbcs.errors import GbcsError
from gbcs.framing import Cra, MessageCode, decode_message
from gbcs.signature import verify_message_signature
from server.domain.errors import OutcomeRejected
from server.domain.values import CellState, IssuanceStatus


@dataclass(frozen=True)
class ExpectedCells:
    """The certificates a command installs in the NO cells: their entity id and key identifiers."""

    entity_id: bytes
    ds_key_identifier: bytes
    ka_key_identifier: bytes


@dataclass(frozen=True)
class MeterOutcome:
    """What a verified response says: APPLIED when both NO cells now hold the expected certificates,
    REJECTED when the meter refused (the cells then hold what they held)."""

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
    status = IssuanceStatus.APPLIED if applied else IssuanceStatus.REJECTED
    return MeterOutcome(status, tuple(cells), no_ds, no_ka)
