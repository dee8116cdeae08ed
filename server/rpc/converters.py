"""The only place protobuf types meet domain types."""

from __future__ import annotations

from gbcs.cells import KeyUsage
from server.domain.policy import TrustBundle
from server.domain.values import (
    HandOutRequest,
    OutcomeReport,
    RecordedOutcome,
    SignedCommand,
)
from vdno.v1 import custodian_pb2 as pb


def hand_out_request(bench_id: str, msg: pb.HandOutRequest) -> HandOutRequest:
    return HandOutRequest.create(
        bench_id=bench_id,
        request_id=msg.request_id,
        device_id=msg.device_id,
        area_id=msg.area_id,
        device_certificate=msg.device_certificate,
        credentials_response=msg.credentials_response,
    )


def hand_out_response(command: SignedCommand) -> pb.HandOutResponse:
    return pb.HandOutResponse(
        issuance_id=command.issuance_id,
        device_id=command.device_id.hex().upper(),
        area_id=command.area_id,
        generation=command.generation,
        originator_counter=command.counter,
        command=command.command,
    )


def outcome_report(bench_id: str, msg: pb.OutcomeReport) -> OutcomeReport:
    return OutcomeReport.create(bench_id, msg.request_id, msg.response)


_USAGE_NAMES = {KeyUsage.DIGITAL_SIGNATURE: "digitalSignature", KeyUsage.KEY_AGREEMENT: "keyAgreement"}


def outcome_ack(outcome: RecordedOutcome) -> pb.OutcomeAck:
    return pb.OutcomeAck(
        issuance_id=outcome.issuance_id,
        status=outcome.status.value,
        cells=[
            pb.CellOutcome(
                role=role, key_usage=_USAGE_NAMES.get(KeyUsage(usage), str(usage)), status_code=status
            )
            for role, usage, status in outcome.cell_statuses
        ],
    )


def trust_bundle(bundle: TrustBundle) -> pb.TrustBundle:
    return pb.TrustBundle(
        generations=[
            pb.VanillaGeneration(
                generation=g.generation,
                entity_id=g.entity_id.hex().upper(),
                ds_certificate=g.ds_certificate,
                ka_certificate=g.ka_certificate,
                status=g.status.value,
            )
            for g in bundle.generations
        ],
        areas=[
            pb.AreaCredentials(
                area_id=a.area_id,
                name=a.name,
                entity_id=a.entity_id.hex().upper(),
                ds_certificate=a.ds_certificate,
                ka_certificate=a.ka_certificate,
            )
            for a in bundle.areas
        ],
        root_ca_certificate=bundle.anchors.root_ca,
        issuing_ca_certificate=bundle.anchors.issuing_ca,
        device_ca_certificate=bundle.anchors.device_ca,
    )
