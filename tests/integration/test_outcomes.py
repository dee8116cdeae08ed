"""ReportOutcome through the real service: the meter's signed response is checked against the hand-out it
answers before anything is recorded, and a hand-out takes one outcome."""

from __future__ import annotations

import grpc
from integration_testlib import (
    Deployment,
    hand_out_request,
    new_request_id,
    replacement_outcomes,
    rpc_error,
)

from vdno.client.handout import read_meter
from vdno.gbcs.cells import StatusCode
from vdno.gbcs.framing import decode_message
from vdno.v1 import custodian_pb2 as pb


def test_outcomes_are_checked_against_their_hand_out_and_recorded_once(deployment: Deployment) -> None:
    transport, [first, second] = deployment.meters(2)
    first_id, second_id = new_request_id(), new_request_id()
    channel, stub = deployment.stub()
    with channel:
        commands = {
            request_id: stub.RequestHandOut(
                hand_out_request(read_meter(transport, device), device, 11, request_id), timeout=30
            ).command
            for request_id, device in ((first_id, first), (second_id, second))
        }
        first_response = transport.devices[first].process(deployment.mac(commands[first_id]))
        second_response = transport.devices[second].process(deployment.mac(commands[second_id]))

        def report(request_id: str, response: bytes) -> pb.OutcomeAck:
            return stub.ReportOutcome(pb.OutcomeReport(request_id=request_id, response=response), timeout=30)

        unknown = rpc_error(lambda: report(new_request_id(), first_response))
        other_device = rpc_error(lambda: report(first_id, second_response))
        tampered = bytearray(first_response)
        tampered[-1] ^= 0x01
        bad_signature = rpc_error(lambda: report(first_id, bytes(tampered)))
        # Nothing was recorded by the refusals: the true response is still taken, and taken again as is.
        ack = report(first_id, first_response)
        again = report(first_id, first_response)
        # The meter answers a replay of the command with another signed response to the same counter.
        replay_response = transport.devices[first].process(deployment.mac(commands[first_id]))
        assert decode_message(replay_response).apdu.header.originator_counter == (
            decode_message(first_response).apdu.header.originator_counter
        )
        # Its refusal shows both NO cells holding what the command installs (as a rerun after a crash would
        # see it): the same outcome, never "rejected", and recorded once.
        replayed = report(first_id, replay_response)

    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert "no signed command" in unknown.details()
    assert other_device.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not sent by the command's device" in other_device.details()
    assert bad_signature.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "does not verify" in bad_signature.details()

    assert ack.status == "applied"
    assert {c.status_code for c in ack.cells} == {StatusCode.SUCCESS}
    assert again == ack
    assert {c.status for c in replacement_outcomes(replay_response)} != {StatusCode.SUCCESS}
    assert replayed == ack

    [row] = deployment.issuance_rows("bench-01", first_id)
    assert row.status == "applied"
    assert bytes(row.outcome_response) == first_response
    reported = [
        e for e in deployment.audit_events("outcome.reported") if e.subject == f"issuance:{row.issuance_id}"
    ]
    assert len(reported) == 1
