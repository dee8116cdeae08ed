"""The only place protobuf types meet domain types."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from vdno.gbcs.cells import KeyUsage
from vdno.server.domain.custody import GenerationView
from vdno.server.domain.errors import InvalidRequest
from vdno.server.domain.outcomes import MeterOutcome
from vdno.server.domain.policy import TrustBundle
from vdno.server.domain.values import (
    ApprovalOperation,
    ApprovalRequest,
    ApprovalStatus,
    Area,
    Bench,
    BenchOperation,
    DeviceCustody,
    DeviceEvent,
    ExportedHandIn,
    FleetSummary,
    HandInOrder,
    HandInRequest,
    HandInStatus,
    HandOutRequest,
    IssuanceRecord,
    OutcomeReport,
    RecordedOutcome,
    RotationRequest,
    SignedCommand,
    parse_area_id,
    parse_entity_id,
    parse_record_id,
)
from vdno.v1 import custodian_pb2 as pb
from vdno.v1 import custody_pb2 as custody_pb


def hand_out_request_from_pb(bench_id: str, msg: pb.HandOutRequest) -> HandOutRequest:
    return HandOutRequest.create(
        bench_id=bench_id,
        request_id=msg.request_id,
        device_id=msg.device_id,
        area_id=msg.area_id,
        device_certificate=msg.device_certificate,
        credentials_response=msg.credentials_response,
    )


def hand_out_response_to_pb(command: SignedCommand) -> pb.HandOutResponse:
    return pb.HandOutResponse(
        issuance_id=command.issuance_id,
        device_id=command.device_id.hex().upper(),
        area_id=command.area_id or 0,
        generation=command.generation,
        originator_counter=command.counter,
        command=command.command,
        target_generation=command.target_generation or 0,
    )


def rotation_request_from_pb(bench_id: str, msg: pb.RotationRequest) -> RotationRequest:
    return RotationRequest.create(
        bench_id=bench_id,
        request_id=msg.request_id,
        device_id=msg.device_id,
        device_certificate=msg.device_certificate,
        credentials_response=msg.credentials_response,
    )


def outcome_report_from_pb(bench_id: str, msg: pb.OutcomeReport) -> OutcomeReport:
    return OutcomeReport.create(bench_id, msg.request_id, msg.response, msg.credentials_answer)


def cancelled_command_to_pb(record: IssuanceRecord) -> pb.CancelledCommand:
    return pb.CancelledCommand(
        issuance_id=record.issuance_id,
        device_id=record.device_id.hex().upper(),
        bench_id=record.bench_id,
        request_id=record.request_id,
        status=record.status.value,
        released=record.signed_command is not None,
        cancelled_by=record.cancelled_by or "",
        reason=record.cancel_reason or "",
    )


_USAGE_NAMES = {KeyUsage.DIGITAL_SIGNATURE: "digitalSignature", KeyUsage.KEY_AGREEMENT: "keyAgreement"}


def outcome_ack_to_pb(outcome: RecordedOutcome) -> pb.OutcomeAck:
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


def trust_bundle_to_pb(bundle: TrustBundle) -> pb.TrustBundle:
    return pb.TrustBundle(
        generations=[
            pb.VanillaGeneration(
                generation=g.generation,
                entity_id=g.entity_id.hex().upper(),
                ds_certificate=g.ds_certificate,
                ka_certificate=g.ka_certificate,
                status=g.status.value,
                compromised=g.compromised,
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


# -- hand-in and fleet (the direction is in the name: *_from_pb builds a domain value, *_to_pb a message)


def hand_in_request_from_pb(bench_id: str, msg: pb.HandInRequest) -> HandInRequest:
    return HandInRequest.create(
        bench_id=bench_id,
        request_id=msg.request_id,
        device_id=msg.device_id,
        device_certificate=msg.device_certificate,
        credentials_response=msg.credentials_response,
    )


def device_ids_from_pb(values: Iterable[str]) -> list[bytes]:
    return [parse_entity_id(value, f"device_ids[{i}]") for i, value in enumerate(values)]


def hand_in_order_to_pb(order: HandInOrder) -> pb.HandInOrder:
    return pb.HandInOrder(
        order_id=order.order_id,
        device_id=order.device_id.hex().upper(),
        area_id=order.area_id,
        area_entity_id=order.area_entity_id.hex().upper(),
        generation=order.generation,
        status=order.status.value,
        seq_number=order.seq_number,
        request_id=order.request_id,
        bench_id=order.bench_id,
        created_at=order.created_at.isoformat(),
        originator_counter=order.counter or 0,
        mac_present=order.mac_present,
    )


def hand_in_commands_to_pb(orders: Iterable[HandInOrder]) -> pb.HandInCommands:
    return pb.HandInCommands(
        commands=[
            pb.AuthorisedHandIn(
                order_id=o.order_id,
                device_id=o.device_id.hex().upper(),
                area_id=o.area_id,
                generation=o.generation,
                originator_counter=o.counter or 0,
                command=o.command or b"",
            )
            for o in orders
        ]
    )


def meter_outcome_to_pb(order_id: int, outcome: MeterOutcome) -> pb.OutcomeAck:
    return outcome_ack_to_pb(
        RecordedOutcome(order_id, outcome.status, outcome.cell_statuses, outcome.no_ds, outcome.no_ka)
    )


def area_filter_from_pb(area_id: int) -> int | None:
    return None if area_id == 0 else parse_area_id(area_id)


def hand_in_status_from_pb(status: str) -> HandInStatus | None:
    if not status:
        return None
    try:
        return HandInStatus(status)
    except ValueError:
        allowed = ", ".join(s.value for s in HandInStatus)
        raise InvalidRequest(f"status must be one of {allowed}, got {status!r:.40}") from None


def hand_in_export_to_pb(exported: Iterable[ExportedHandIn]) -> custody_pb.HandInExport:
    return custody_pb.HandInExport(
        requests=[
            custody_pb.ExportedHandInRequest(
                order_id=x.order.order_id,
                area_id=x.order.area_id,
                device_id=x.order.device_id.hex().upper(),
                duis_request=x.duis_request,
                manifest_record=json.dumps(x.manifest_record, sort_keys=True),
            )
            for x in exported
        ]
    )


def fleet_summary_to_pb(summary: FleetSummary) -> custody_pb.FleetSummary:
    return custody_pb.FleetSummary(
        counts=[
            custody_pb.FleetCount(
                state=c.state.value, generation=c.generation or 0, area_id=c.area_id or 0, count=c.count
            )
            for c in summary.counts
        ],
        devices=summary.devices,
        hand_outs_outstanding=summary.hand_outs_outstanding,
    )


def device_history_to_pb(custody: DeviceCustody, events: Iterable[DeviceEvent]) -> custody_pb.DeviceHistory:
    return custody_pb.DeviceHistory(
        device_id=custody.device_id.hex().upper(),
        state=custody.state.value,
        area_id=custody.area_id or 0,
        generation=custody.generation or 0,
        events=[
            custody_pb.DeviceEvent(
                at=ev.at.isoformat(),
                event=ev.event,
                state=ev.state.value,
                area_id=ev.area_id or 0,
                generation=ev.generation or 0,
                reference=ev.reference,
                actor=ev.actor,
            )
            for ev in events
        ],
    )


def device_list_to_pb(device_ids: Iterable[bytes]) -> custody_pb.DeviceList:
    return custody_pb.DeviceList(device_ids=[d.hex().upper() for d in device_ids])


# -- key custody


def generation_to_pb(view: GenerationView) -> custody_pb.Generation:
    record = view.record
    return custody_pb.Generation(
        generation=record.generation,
        entity_id=record.entity_id.hex().upper(),
        status=record.status.value,
        compromised=record.compromised,
        created_at=record.created_at.isoformat(),
        ds_certificate=record.ds_certificate or b"",
        ka_certificate=record.ka_certificate or b"",
        not_after="" if record.not_after is None else record.not_after.isoformat(),
        days_to_expiry=view.days_to_expiry or 0,
        destroy_after="" if record.destroy_after is None else record.destroy_after.isoformat(),
        ds_key_uri=record.ds_key_uri,
        ka_key_uri=record.ka_key_uri,
    )


def key_usage_from_pb(value: str) -> KeyUsage:
    usages = {"ds": KeyUsage.DIGITAL_SIGNATURE, "ka": KeyUsage.KEY_AGREEMENT}
    if value not in usages:
        raise InvalidRequest(f"key_usage must be ds or ka, got {value!r:.20}")
    return usages[value]


def generation_number_from_pb(value: int) -> int:
    if value < 1:
        raise InvalidRequest("generation is required (1 or more)")
    return parse_record_id(value, "generation")


def approval_operation_from_pb(value: str) -> ApprovalOperation:
    try:
        return ApprovalOperation(value)
    except ValueError:
        allowed = ", ".join(o.value for o in ApprovalOperation)
        raise InvalidRequest(f"operation must be one of {allowed}, got {value!r:.40}") from None


def bench_operations_from_pb(values: Iterable[str]) -> list[BenchOperation]:
    out = []
    for value in values:
        try:
            out.append(BenchOperation(value))
        except ValueError:
            raise InvalidRequest(f"operations: {value!r:.30} is not hand-in, hand-out or rotation") from None
    return out


def approval_to_pb(
    request: ApprovalRequest, status: ApprovalStatus, details: dict[str, object], required: int
) -> custody_pb.ApprovalRequestInfo:
    return custody_pb.ApprovalRequestInfo(
        request_id=request.request_id,
        operation=request.operation.value,
        subject=request.subject,
        details_json=json.dumps(details, sort_keys=True),
        reason=request.reason,
        requested_by=request.requested_by,
        requested_at=request.requested_at.isoformat(),
        expires_at=request.expires_at.isoformat(),
        status=status.value,
        approvals=list(request.approvals),
        approvals_required=required,
        execute_by="" if request.execute_by is None else request.execute_by.isoformat(),
        closed_by=request.closed_by or "",
    )


def area_set_to_pb(
    area: Area, replaced_at: datetime | None = None, replaced_by: str = ""
) -> custody_pb.AreaSet:
    return custody_pb.AreaSet(
        area_id=area.area_id,
        name=area.name,
        entity_id=area.entity_id.hex().upper(),
        ds_certificate=area.ds_certificate,
        ka_certificate=area.ka_certificate,
        replaced_at="" if replaced_at is None else replaced_at.isoformat(),
        replaced_by=replaced_by,
    )


def bench_to_pb(bench: Bench) -> custody_pb.BenchInfo:
    return custody_pb.BenchInfo(
        bench_id=bench.bench_id,
        status=bench.status.value,
        facility=bench.facility or "",
        operations=sorted(o.value for o in bench.operations),
        certificate_sha256=bench.certificate_sha256 or "",
    )


# What cryptography parses of a PKCS#10 request only when it is first read (see gbcs.smki._LAZY_FIELDS).
_CSR_FIELDS: tuple[tuple[str, Callable[[x509.CertificateSigningRequest], object]], ...] = (
    ("subject", lambda r: r.subject.rfc4514_string()),
    ("signature algorithm", lambda r: (r.signature_algorithm_oid, r.signature_hash_algorithm)),
    ("subjectPublicKeyInfo", lambda r: r.public_key()),
    ("extensions", lambda r: [(e.oid, e.critical, e.value) for e in r.extensions]),
    ("attributes", lambda r: [(a.oid, a.value) for a in r.attributes]),
    ("signature", lambda r: r.is_signature_valid),
)


def certificate_request_from_pb(data: bytes) -> bytes:
    """A PKCS#10 request as DER (PEM accepted), every field parsed. InvalidRequest naming the field that
    does not parse."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except (ValueError, x509.InvalidVersion) as exc:
        raise InvalidRequest(f"csr is not a PKCS#10 certificate request: {_detail(exc)}") from None
    for name, read in _CSR_FIELDS:
        try:
            read(csr)
        except Exception as exc:  # cryptography's several exception types: each is the request's fault here
            raise InvalidRequest(f"csr {name} does not parse: {_detail(exc)}") from None
    return csr.public_bytes(Encoding.DER)


def _detail(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
