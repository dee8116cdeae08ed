"""The lab DNO + ACB answer a 6.15.1 request with a command a simulated meter accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xmlschema
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from duis_testlib import assert_valid_duis
from lab_testlib import der
from labdcc_testlib import OTHER_AREA, VANILLA_ID, LabSetup, make_lab

from vdno.duis.ids import RequestId
from vdno.duis.messages import decode_local_command_response
from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL, StatusCode
from vdno.gbcs.cs02b import UpdateSecurityCredentialsCommand, UpdateSecurityCredentialsResponse
from vdno.gbcs.framing import MessageCode, decode_message
from vdno.gbcs.mac import verify_mac
from vdno.gbcs.signature import raw_to_der
from vdno.labdcc.counters import OriginatorCounters
from vdno.labdcc.dcc import LabDcc
from vdno.labdcc.errors import RequestRefused
from vdno.simulator.device import SimulatedDevice
from vdno.simulator.profile import ACB_KA_CELL

DEVICE = bytes.fromhex("00db0000000000a1")
REPLAY_DEVICE = bytes.fromhex("00db0000000000a2")
OTHER_DEVICE = bytes.fromhex("00db0000000000a3")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> LabSetup:
    return make_lab(tmp_path_factory.mktemp("labdcc-dcc"))


@pytest.fixture(scope="module")
def dcc(lab: LabSetup) -> LabDcc:
    return LabDcc(lab.state)


def _command(
    dcc: LabDcc, request: bytes, schema: xmlschema.XMLSchema | None = None
) -> tuple[RequestId, bytes]:
    answer = dcc.answer_request(request)
    if schema is not None:
        assert_valid_duis(schema, answer)
    response = decode_local_command_response(answer)
    assert response.request_id is not None
    return response.request_id, response.gbcs_payload


def _statuses(device: SimulatedDevice, command: bytes) -> list[int]:
    reply = decode_message(device.process(command))
    outcome = UpdateSecurityCredentialsResponse.decode(reply.apdu.content).execution_outcome
    assert outcome is not None
    return [o.status for o in outcome.replacement_outcomes]


def test_device_accepts_the_answer_and_holds_the_vanilla_certificates(
    lab: LabSetup, dcc: LabDcc, duis_schema: xmlschema.XMLSchema
) -> None:
    device = lab.device(DEVICE)
    assert device.require_acb_mac
    dno = lab.dno()
    rid, command = _command(dcc, lab.krp_request(DEVICE), duis_schema)
    assert (rid.originator, rid.target) == (dno.entity_id, DEVICE)
    assert rid.counter == dcc.counters.last(dno.entity_id)

    message = decode_message(command)
    header = message.apdu.header
    assert message.mac_framed
    assert (header.business_originator_id, header.business_target_id) == (dno.entity_id, DEVICE)
    assert header.originator_counter == rid.counter
    assert header.message_code == MessageCode.CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR
    payload = UpdateSecurityCredentialsCommand.decode(message.apdu.content)
    control = payload.control
    assert (control.mode, control.seq_number, control.ta_cell) == (3, rid.counter, NO_DS_CELL)
    assert control.floor_seq_number == 0 and control.apply_time_based_cpv_checks is None
    assert [r.target for r in payload.replacements] == [NO_DS_CELL, NO_KA_CELL]
    assert payload.certification_path_certificates == (lab.issuing_ca_der,)

    # KRP signature with cryptography directly; ACB MAC from the device's side
    assert message.apdu.signature is not None
    dno_key = dno.ds.certificate.public_key()
    assert isinstance(dno_key, ec.EllipticCurvePublicKey)
    dno_key.verify(raw_to_der(message.apdu.signature), message.signed_range, ec.ECDSA(hashes.SHA256()))
    assert device.device_ka.private_key is not None
    assert device.cells[ACB_KA_CELL] == der(lab.parties.acb.ka.certificate)
    verify_mac(message, device.device_ka.private_key, lab.parties.acb.ka.certificate)

    assert _statuses(device, command) == [StatusCode.SUCCESS, StatusCode.SUCCESS]
    assert device.cells[NO_DS_CELL] == der(lab.vanilla.ds.certificate)
    assert device.cells[NO_KA_CELL] == der(lab.vanilla.ka.certificate)
    assert device.seq_numbers[3] == 0  # the requested floor


def test_flipped_mac_and_replays_are_refused(lab: LabSetup, dcc: LabDcc) -> None:
    device = lab.device(REPLAY_DEVICE)
    original = dict(device.cells)
    _, move = _command(dcc, lab.krp_request(REPLAY_DEVICE))
    flipped = move[:-1] + bytes([move[-1] ^ 0x01])
    assert _statuses(device, flipped) == [StatusCode.BAD_SIGNATURE] * 2
    assert device.cells == original

    # a renewal keeps the DNO in the NO cells, so a replay reaches the counter check
    dno = lab.dno()
    renewal = lab.krp_request(REPLAY_DEVICE, ds=der(dno.ds.certificate), ka=der(dno.ka.certificate))
    _, renew = _command(dcc, renewal)
    assert _statuses(device, renew) == [StatusCode.SUCCESS] * 2
    assert _statuses(device, renew) == [StatusCode.BAD_SEQUENCE_NUMBER] * 2
    assert _statuses(device, move) == [StatusCode.BAD_SEQUENCE_NUMBER] * 2  # older counter
    assert device.cells == original


def test_disapplied_time_checks_and_no_floor(lab: LabSetup, dcc: LabDcc) -> None:
    lab.device(OTHER_DEVICE, OTHER_AREA)
    request = lab.krp_request(OTHER_DEVICE, OTHER_AREA, floor=None, apply_time_based_cpv_checks=False)
    rid, command = _command(dcc, request)
    assert rid.originator == lab.dno(OTHER_AREA).entity_id
    control = UpdateSecurityCredentialsCommand.decode(decode_message(command).apdu.content).control
    assert control.apply_time_based_cpv_checks == 1 and control.floor_seq_number is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"originator": VANILLA_ID}, "originator 56444e4f00000001 is not one of the lab area DNOs"),
        ({"command_variant": 4}, "sr:CommandVariant 4 is not 6"),
        ({"role": "Supplier"}, "sr:RemotePartyRole Supplier is not NetworkOperator"),
        ({"without_ka": True}, r"lacks sr:KeyAgreementCertificate \(both NO cells"),
        ({"ka": "ds"}, "sr:KeyAgreementCertificate is not fit for the Network Operator cell"),
    ],
)
def test_refused_requests(lab: LabSetup, dcc: LabDcc, changes: dict[str, object], message: str) -> None:
    if changes.get("ka") == "ds":
        changes = {"ka": der(lab.vanilla.ds.certificate)}
    before = dcc.counters.last(lab.dno().entity_id)
    with pytest.raises(RequestRefused, match=message):
        dcc.answer_request(lab.krp_request(DEVICE, **changes))  # type: ignore[arg-type]
    assert dcc.counters.last(lab.dno().entity_id) == before  # no counter spent


def test_unknown_device_and_malformed_requests_are_refused(lab: LabSetup, dcc: LabDcc) -> None:
    with pytest.raises(
        RequestRefused, match=r"not in the lab SMKI inventory: .*00db00000000ffff-ka\.pem is missing"
    ):
        dcc.answer_request(lab.krp_request(bytes.fromhex("00db00000000ffff")))
    with pytest.raises(RequestRefused, match=r"DUIS request does not decode: .*lacks sr:Header"):
        dcc.answer_request(
            b'<sr:Request xmlns:sr="http://www.dccinterface.co.uk/ServiceUserGateway" schemaVersion="5.4"/>'
        )


def test_counters_persist_and_increase_across_instances(lab: LabSetup) -> None:
    first_rid, _ = _command(LabDcc(lab.state), lab.krp_request(DEVICE))
    second_rid, _ = _command(LabDcc(lab.state), lab.krp_request(DEVICE))
    assert second_rid.counter > first_rid.counter
    stored = json.loads((lab.state / "labdcc" / "counters.json").read_text())
    assert stored[lab.dno().entity_id.hex()] == second_rid.counter


def test_counter_is_the_larger_of_last_plus_one_and_the_clock(tmp_path: Path) -> None:
    path = tmp_path / "counters.json"
    entity = bytes(8)
    assert [OriginatorCounters(path, lambda: 100).next(entity) for _ in range(3)] == [100, 101, 102]
    assert OriginatorCounters(path, lambda: 50).next(entity) == 103
    assert OriginatorCounters(path, lambda: 5000).next(entity) == 5000
    assert OriginatorCounters(path, lambda: 1).next(b"\x01" * 8) == 1
    assert OriginatorCounters(path).last(entity) == 5000
    path.write_text('{"x": 1}')
    with pytest.raises(Exception, match="is not entity id -> 64-bit counter"):
        OriginatorCounters(path).next(entity)
