"""check_meter_response (server/domain/outcomes.py) refuses every forged response by name, and reads a
genuine one (status per cell, what the NO cells now hold): each response is made by forge_testlib with one
defect and the device's real key, so only that defect is wrong."""

from __future__ import annotations

from dataclasses import replace

import pytest
from forge_testlib import (
    AREA_ENTITY,
    DEVICE_ID,
    RESPONSE_DEFECTS,
    VANILLA_ID,
    ForgeWorld,
    ResponseForm,
)

from vdno.gbcs.cells import NO_KA_CELL
from vdno.gbcs.cs02b import TrustAnchorReplacement
from vdno.server.domain.errors import OutcomeRejected
from vdno.server.domain.outcomes import ExpectedCells, MeterOutcome, check_meter_response
from vdno.server.domain.values import CellState, IssuanceStatus


def check(world: ForgeWorld, response: bytes, counter: int | None = None) -> MeterOutcome:
    command = world.hand_out()
    return check_meter_response(
        response,
        device_id=DEVICE_ID,
        device_certificate=world.device.ds.certificate,
        command_originator=VANILLA_ID,
        counter=command.counter if counter is None else counter,
        expected=ExpectedCells(AREA_ENTITY, world.area.ds_ski, world.area.ka_ski),
    )


def good(world: ForgeWorld, statuses: tuple[int, ...] = (0, 0)) -> ResponseForm:
    return world.response(world.hand_out(), statuses)


def test_a_genuine_response_is_applied_with_the_area_in_both_cells(forge_world: ForgeWorld) -> None:
    outcome = check(forge_world, good(forge_world).encode())
    assert outcome.status is IssuanceStatus.APPLIED
    assert outcome.cell_statuses == ((3, 0, 0), (3, 4, 0))
    assert outcome.no_ds == CellState(AREA_ENTITY, forge_world.area.ds_ski)
    assert outcome.no_ka == CellState(AREA_ENTITY, forge_world.area.ka_ski)


VERIFY = "response does not verify as the device's CS02b response: "
REFUSALS = {
    "is-a-command": "response is not a GBCS response (CRA flag)",
    "message-code-0102": "response is not a CS02b network-operator response",
    "from-other-device": "response was not sent by the command's device",
    "to-someone-else": "response is not addressed to the command's originator",
    "counter-not-echoed": "response does not echo the command's originator counter",
    "signature-flipped": VERIFY + "signature does not verify",
    "signed-with-device-ka-key": VERIFY + "signature does not verify",
    "signed-by-other-device": VERIFY + "signature does not verify",
    "unsigned": VERIFY + "signature absent",
    "extra-payload-element": VERIFY + "CS02b ResponsePayload",
    "no-execution-outcome": "response carries no execution outcome",
    "outcome-seq-number": "response's execution outcome is not for the command's seq number",
    "outcome-mode-8": "response's execution outcome is not for a mode-3 command",
    "reports-other-certificates": "response reports certificates other than the command's",
    "reports-other-key": "response reports certificates other than the command's",
}


@pytest.mark.parametrize(("defect", "message"), REFUSALS.items(), ids=list(REFUSALS))
def test_forged_responses_are_refused_by_name(forge_world: ForgeWorld, defect: str, message: str) -> None:
    response = RESPONSE_DEFECTS[defect](forge_world, good(forge_world)).encode()
    with pytest.raises(OutcomeRejected) as refused:
        check(forge_world, response)
    assert str(refused.value).startswith(message), str(refused.value)


def test_bytes_that_are_no_gbcs_message_are_refused(forge_world: ForgeWorld) -> None:
    with pytest.raises(OutcomeRejected) as refused:
        check(forge_world, b"\xdf\x09\x02\x00")
    assert str(refused.value).startswith(VERIFY + "transaction-id: truncated"), str(refused.value)


def test_a_response_to_another_command_of_the_same_meter_is_refused(forge_world: ForgeWorld) -> None:
    response = good(forge_world).encode()
    with pytest.raises(OutcomeRejected) as refused:
        check(forge_world, response, counter=forge_world.hand_out().counter - 1)
    assert str(refused.value) == "response does not echo the command's originator counter"


def test_a_refusal_by_the_meter_is_rejected_and_keeps_what_the_cell_held(forge_world: ForgeWorld) -> None:
    outcome = check(forge_world, good(forge_world, (0, 10)).encode())
    assert outcome.status is IssuanceStatus.REJECTED
    assert outcome.cell_statuses == ((3, 0, 0), (3, 4, 10))
    assert outcome.no_ds == CellState(AREA_ENTITY, forge_world.area.ds_ski)
    assert outcome.no_ka == CellState(VANILLA_ID, forge_world.vanilla.ka_ski)  # unchanged: still vanilla


@pytest.mark.parametrize("defect", ["no-cell-outcomes", "ka-cell-not-reported"])
def test_a_response_missing_a_cell_is_not_applied(forge_world: ForgeWorld, defect: str) -> None:
    outcome = check(forge_world, RESPONSE_DEFECTS[defect](forge_world, good(forge_world)).encode())
    assert outcome.status is IssuanceStatus.REJECTED
    assert outcome.no_ka is None
    assert (outcome.no_ds is None) == (defect == "no-cell-outcomes")


def test_outcomes_for_other_cells_are_reported_but_place_nothing(forge_world: ForgeWorld) -> None:
    """A cell outcome for neither NO cell (here the NO prepayment KA cell, which a meter does not have:
    status 25) is listed, and both NO cells are still read from their own outcomes: both hold what the
    command installs, so the command is applied (the records follow the cells)."""
    form = forge_world.hand_out()
    prepayment = TrustAnchorReplacement(forge_world.area.ka_der, replace(NO_KA_CELL, cell_usage=1))
    response = forge_world.response(replace(form, replacements=(*form.replacements, prepayment)), (0, 0, 25))
    outcome = check(forge_world, response.encode())
    assert outcome.cell_statuses == ((3, 0, 0), (3, 4, 0), (3, 4, 25))
    assert outcome.status is IssuanceStatus.APPLIED
    assert outcome.no_ds == CellState(AREA_ENTITY, forge_world.area.ds_ski)
    assert outcome.no_ka == CellState(AREA_ENTITY, forge_world.area.ka_ski)
