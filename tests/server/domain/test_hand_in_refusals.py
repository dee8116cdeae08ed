"""Hand-in import checks (server/domain/hand_in.py check_hand_in_command) refuse every forged command by name,
and HandInService's own refusals (import, outcome, order, export) are reached in process against a real
SQLite store. Commands and readings come from forge_testlib: real lab keys, one defect each."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from forge_testlib import (
    AREA_ENTITY,
    AREA_ID,
    COMMAND_DEFECTS,
    DEVICE_ID,
    OTHER_AREA_ID,
    OTHER_DEVICE_ID,
    RESPONSE_DEFECTS,
    STRANGER_ID,
    VANILLA_ID,
    ForgeWorld,
    Party,
)

from vdno.gbcs.cells import NO_KA_CELL
from vdno.gbcs.cs02b import TrustAnchorReplacement
from vdno.gbcs.smki import load_certificate
from vdno.server.domain.errors import (
    HandInCommandRefused,
    InvalidRequest,
    OfficerNotEnrolled,
    OutcomeRejected,
    RequestIdConflict,
    UnknownOrder,
)
from vdno.server.domain.hand_in import MAX_COMMAND_BYTES, HandInService, check_hand_in_command
from vdno.server.domain.policy import TrustAnchors
from vdno.server.domain.values import (
    Area,
    GenerationStatus,
    HandInOrder,
    HandInRequest,
    HandInStatus,
    IssuanceStatus,
    OfficerStatus,
    VanillaGeneration,
)
from vdno.server.store.sql import SqlCustodyStore, open_store

STORED_SEQ = 7
OFFICER = "officer-01"


def generation(party: Party, number: int, status: GenerationStatus) -> VanillaGeneration:
    return VanillaGeneration(
        number, party.entity_id, f"pkcs11:object=g{number}-ds", f"pkcs11:object=g{number}-ka",
        party.ds_der, party.ka_der, status,
    )  # fmt: skip


def area(party: Party, area_id: int) -> Area:
    return Area(area_id, f"area {area_id}", party.entity_id, party.ds_der, party.ka_der)


def an_order(world: ForgeWorld) -> HandInOrder:
    return HandInOrder(
        1, "bench-01", "req-1", "fingerprint", DEVICE_ID, AREA_ID, AREA_ENTITY, STORED_SEQ, 2,
        world.device.ds_der, HandInStatus.AWAITING, datetime.now(UTC),
    )  # fmt: skip


def check(world: ForgeWorld, command: bytes) -> object:
    return check_hand_in_command(
        command,
        an_order(world),
        area(world.area, AREA_ID),
        generation(world.vanilla, 2, GenerationStatus.ACTIVE),
        world.issuing_der,
        load_certificate,
    )


PREFIX = f"command for order 1 (device {DEVICE_ID.hex()}) refused: "
REFUSALS: dict[str, str] = {
    "not-a-command": "CRA flag 3 is not 1 (command)",
    "message-code-0102": "message code 0x0102 is not 0x0103 (CS02b mode 3)",
    "mode-8-consistent": "message code 0x0108 is not 0x0103 (CS02b mode 3)",
    "mode-2": "credentialsReplacementMode 2 is not 3 (networkOperatorByNetworkOperator)",
    "other-recipient": f"it is addressed to {OTHER_DEVICE_ID.hex()}, not to the ordered device",
    "other-originator": f"it comes from {STRANGER_ID.hex()}, not from area 14's DNO {AREA_ENTITY.hex()}",
    "ka-cell-authorises": "the authorising trust-anchor cell",
    "supplier-cell-authorises": "the authorising trust-anchor cell",
    "no-authorising-cell": "the authorising trust-anchor cell None is not the NO digital-signing cell",
    "unsigned": "it carries no KRP signature",
    "null-signature": "it carries no KRP signature",
    "signature-flipped": "its KRP signature does not verify with area 14's registered DS certificate",
    "signed-by-stranger": "its KRP signature does not verify with area 14's registered DS certificate",
    "extra-replacement": "it must replace exactly the NO DS and NO KA cells",
    "duplicate-replacement": "it must replace exactly the NO DS and NO KA cells",
    "ds-replaced-twice": "it must replace exactly the NO DS and NO KA cells",
    "missing-replacement": "it must replace exactly the NO DS and NO KA cells",
    "replaces-supplier-cell": "it must replace exactly the NO DS and NO KA cells",
    "certificates-swapped": "its NO DS replacement is not vanilla generation 2's DS certificate",
    "other-area-certificates": "its NO DS replacement is not vanilla generation 2's DS certificate",
    "no-path": "its certification path is not exactly the SMKI issuing CA certificate",
    "root-as-path": "its certification path is not exactly the SMKI issuing CA certificate",
    "seq-number-stale": "authorisingRemotePartySeqNumber 7 is not above the meter's stored NO seq number 7",
    "seq-number-not-counter": "authorisingRemotePartySeqNumber ",
    "other-floor": "newRemotePartyFloorSeqNumber 5 is not 0",
    "disapplies-time-checks": "it disapplies the time-based certificate path checks",
    "plaintext-key": "it carries fields a hand-in does not ask for",
    "other-role-seq-change": "it carries fields a hand-in does not ask for",
    "specialist-floor": "it carries fields a hand-in does not ask for",
    "future-dated": "it is future-dated; a hand-in executes at once",
    "not-mac-framed": "it is not MAC-framed: the meter requires DCC's ACB-SMD MAC",
}


def test_the_good_hand_in_command_is_authorised(forge_world: ForgeWorld) -> None:
    command = forge_world.hand_in().encode()
    authorised = check(forge_world, command)
    assert authorised.command == command and authorised.counter == forge_world.hand_in().counter  # type: ignore[attr-defined]
    assert authorised.mac_present is True  # type: ignore[attr-defined]


@pytest.mark.parametrize(("defect", "reason"), REFUSALS.items(), ids=list(REFUSALS))
def test_forged_commands_are_refused_by_name(forge_world: ForgeWorld, defect: str, reason: str) -> None:
    command = COMMAND_DEFECTS[defect](forge_world, forge_world.hand_in()).encode()
    with pytest.raises(HandInCommandRefused) as refused:
        check(forge_world, command)
    assert str(refused.value).startswith(PREFIX + reason), str(refused.value)


def test_another_ka_certificate_is_named(forge_world: ForgeWorld) -> None:
    form = forge_world.hand_in()
    other_ka = TrustAnchorReplacement(forge_world.other_area.ka_der, NO_KA_CELL)
    with pytest.raises(HandInCommandRefused) as refused:
        check(forge_world, replace(form, replacements=(form.replacements[0], other_ka)).encode())
    assert str(refused.value) == PREFIX + "its NO KA replacement is not vanilla generation 2's KA certificate"


@pytest.mark.parametrize("defect", ["unknown-control-field", "extra-payload-element"])
def test_commands_with_unknown_elements_do_not_decode(forge_world: ForgeWorld, defect: str) -> None:
    command = COMMAND_DEFECTS[defect](forge_world, forge_world.hand_in()).encode()
    with pytest.raises(InvalidRequest) as refused:
        check(forge_world, command)
    assert str(refused.value).startswith("command does not decode as a GBCS CS02b command: ")


def test_an_oversized_command_is_refused_before_decoding(forge_world: ForgeWorld) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check(forge_world, bytes(MAX_COMMAND_BYTES + 1))
    assert str(refused.value) == f"command is {MAX_COMMAND_BYTES + 1} bytes; a CS02b command is at most 16384"


def test_what_the_import_leaves_to_the_meter(forge_world: ForgeWorld) -> None:
    """The ACB MAC needs the device's key: the import takes a command whose MAC is wrong
    (tests/simulator/test_sim_forged.py shows the meter's answer)."""
    for defect in ("mac-flipped",):
        command = COMMAND_DEFECTS[defect](forge_world, forge_world.hand_in()).encode()
        assert check(forge_world, command).command == command  # type: ignore[attr-defined]


# --- HandInService, in process, on a real SQLite store ----------------------------------------------------


@pytest.fixture
def store(tmp_path: Path, forge_world: ForgeWorld) -> Iterator[SqlCustodyStore]:
    s = open_store(f"sqlite:///{tmp_path / 'vdno.db'}")
    s.add_generation(generation(forge_world.old_vanilla, 1, GenerationStatus.SIGNING_ONLY), "test")
    s.add_generation(generation(forge_world.vanilla, 2, GenerationStatus.ACTIVE), "test")
    s.upsert_area(area(forge_world.area, AREA_ID), "test")
    s.upsert_area(area(forge_world.other_area, OTHER_AREA_ID), "test")
    s.set_officer(OFFICER, OfficerStatus.ENROLLED, "test")
    s.enroll_bench("bench-01", "test")
    yield s
    s.close()


@pytest.fixture
def service(store: SqlCustodyStore, forge_world: ForgeWorld) -> HandInService:
    anchors = TrustAnchors(forge_world.root_der, forge_world.issuing_der, forge_world.device_ca_der)
    return HandInService(store, anchors, lambda: datetime.now(UTC))


def ordered(world: ForgeWorld, service: HandInService, request_id: str = "req-1") -> HandInOrder:
    reading = world.reading(world.area, STORED_SEQ)
    return service.order(HandInRequest("bench-01", request_id, DEVICE_ID, world.device.ds_der, reading))


def test_an_order_is_found_again_by_its_request_id_and_not_reused(
    forge_world: ForgeWorld, service: HandInService
) -> None:
    first = ordered(forge_world, service)
    assert (first.area_id, first.area_entity_id, first.seq_number, first.generation) == (
        AREA_ID, AREA_ENTITY, STORED_SEQ, 2,
    )  # fmt: skip
    assert ordered(forge_world, service) == first
    other = HandInRequest(
        "bench-01", "req-1", OTHER_DEVICE_ID, forge_world.other_device.ds_der,
        forge_world.reading(forge_world.area, STORED_SEQ, forge_world.other_device),
    )  # fmt: skip
    with pytest.raises(RequestIdConflict) as refused:
        service.order(other)
    assert str(refused.value) == "request id 'req-1' was already used for another device"


def test_import_authorises_once_and_refuses_what_does_not_fit(
    forge_world: ForgeWorld, service: HandInService, store: SqlCustodyStore
) -> None:
    order = ordered(forge_world, service)
    # refused forgeries change nothing
    forged = COMMAND_DEFECTS["other-area-certificates"](forge_world, forge_world.hand_in()).encode()
    with pytest.raises(HandInCommandRefused):
        service.import_command(OFFICER, forged)
    assert store.get_hand_in_order(order.order_id).status is HandInStatus.AWAITING  # type: ignore[union-attr]
    # undecodable bytes, a command for a meter without an order, an officer who is not enrolled
    with pytest.raises(InvalidRequest) as invalid:
        service.import_command(OFFICER, b"\xdf\x09\x01")
    assert str(invalid.value).startswith("command does not decode as GBCS: ")
    elsewhere = replace(forge_world.hand_in(), target=OTHER_DEVICE_ID).encode()
    with pytest.raises(UnknownOrder) as unknown:
        service.import_command(OFFICER, elsewhere)
    assert str(unknown.value) == f"no hand-in order awaiting authorisation for device {OTHER_DEVICE_ID.hex()}"
    with pytest.raises(OfficerNotEnrolled):
        service.import_command("officer-99", forge_world.hand_in().encode())

    command = forge_world.hand_in().encode()
    authorised = service.import_command(OFFICER, command.hex().encode())  # as hex text
    assert (authorised.status, authorised.command) == (HandInStatus.AUTHORISED, command)
    assert service.import_command(OFFICER, command) == authorised  # the same command again: no change
    second = forge_world.hand_in(counter=forge_world.hand_in().counter + 1).encode()
    with pytest.raises(HandInCommandRefused) as refused:
        service.import_command(OFFICER, second)
    assert str(refused.value) == (
        f"hand-in order {order.order_id} for device {DEVICE_ID.hex()} is already authorised with another "
        f"command (originator counter {forge_world.hand_in().counter})"
    )
    assert [o.order_id for o in service.authorised_commands([DEVICE_ID, DEVICE_ID])] == [order.order_id]
    with pytest.raises(InvalidRequest):
        service.authorised_commands([DEVICE_ID] * 1001)


def test_outcomes_are_checked_against_the_authorised_command_and_recorded_once(
    forge_world: ForgeWorld, service: HandInService, store: SqlCustodyStore
) -> None:
    order = ordered(forge_world, service)
    response = forge_world.response(forge_world.hand_in())
    with pytest.raises(OutcomeRejected) as early:
        service.report_outcome("bench-01", order.order_id, response.encode())
    assert str(early.value) == f"hand-in order {order.order_id} has no authorised command to report on"
    service.import_command(OFFICER, forge_world.hand_in().encode())

    with pytest.raises(InvalidRequest):
        service.report_outcome("bench-01", order.order_id, b"")
    with pytest.raises(UnknownOrder):
        service.report_outcome("bench-01", order.order_id + 1, response.encode())
    forged = RESPONSE_DEFECTS["reports-other-certificates"](forge_world, response).encode()
    with pytest.raises(OutcomeRejected) as other:
        service.report_outcome("bench-01", order.order_id, forged)
    assert str(other.value) == "response reports certificates other than the command's"
    assert store.get_hand_in_order(order.order_id).status is HandInStatus.AUTHORISED  # type: ignore[union-attr]

    genuine = response.encode()
    outcome = service.report_outcome("bench-01", order.order_id, genuine)
    assert outcome.status is IssuanceStatus.APPLIED
    assert (outcome.no_ds.entity_id, outcome.no_ka.entity_id) == (VANILLA_ID, VANILLA_ID)  # type: ignore[union-attr]
    assert service.report_outcome("bench-02", order.order_id, genuine) == outcome  # the same report again
    again = forge_world.response(forge_world.hand_in()).encode()  # signed anew: other bytes, same outcome
    assert service.report_outcome("bench-01", order.order_id, again) == outcome
    refusal = forge_world.response(forge_world.hand_in(), (5, 5)).encode()  # another outcome
    with pytest.raises(OutcomeRejected) as twice:
        service.report_outcome("bench-01", order.order_id, refusal)
    assert str(twice.value) == f"an outcome (applied) was already recorded for hand-in order {order.order_id}"
    assert store.get_hand_in_order(order.order_id).status is HandInStatus.APPLIED  # type: ignore[union-attr]


def test_export_lists_awaiting_orders_for_enrolled_officers(
    forge_world: ForgeWorld, service: HandInService
) -> None:
    order = ordered(forge_world, service)
    [exported] = service.export(OFFICER, AREA_ID)
    assert exported.order.order_id == order.order_id
    assert exported.manifest_record["originator"] == AREA_ENTITY.hex()
    assert exported.manifest_record["minimumSeqNumber"] == STORED_SEQ + 1
    assert service.export(OFFICER, OTHER_AREA_ID) == []
    assert [o.order_id for o in service.list_orders(OFFICER, None, HandInStatus.AWAITING)] == [order.order_id]
    with pytest.raises(OfficerNotEnrolled):
        service.list_orders("officer-99", None, None)
