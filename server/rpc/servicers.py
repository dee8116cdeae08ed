"""BenchService and CustodyService: convert, call the domain, convert back. No logic of their own."""

from __future__ import annotations

import json

import grpc

from vdno.server.domain.custody import CustodyService, GenerationView
from vdno.server.domain.fleet import FleetView
from vdno.server.domain.hand_in import HandInService
from vdno.server.domain.issuance import HandOutService
from vdno.server.domain.values import (
    ApprovalRequest,
    ApprovalStatus,
    BenchOperation,
    parse_entity_id,
    parse_record_id,
    parse_request_id,
)
from vdno.server.rpc import converters
from vdno.server.rpc.interceptors import bench_caller, note_call, officer_identity
from vdno.v1 import custodian_pb2 as pb
from vdno.v1 import custodian_pb2_grpc as pb_grpc
from vdno.v1 import custody_pb2 as custody_pb
from vdno.v1 import custody_pb2_grpc as custody_grpc


class BenchServicer(pb_grpc.BenchServiceServicer):
    def __init__(self, service: HandOutService, hand_in: HandInService) -> None:
        self._service = service
        self._hand_in = hand_in

    def _bench(self, operation: BenchOperation | None = None, fresh: bool = True) -> str:
        """The calling bench, once its enrolment (for `operation`) and certificate are checked: a caller may
        not learn the API's input rules before it is let in."""
        caller = bench_caller()
        self._service.require_bench(caller.name, operation, caller.certificate_sha256, fresh)
        return caller.name

    def _hand_in_bench(self) -> str:
        caller = bench_caller()
        self._hand_in.require_bench(caller.name, caller.certificate_sha256)
        return caller.name

    def GetTrustBundle(
        self, request: pb.GetTrustBundleRequest, context: grpc.ServicerContext
    ) -> pb.TrustBundle:
        self._bench()
        return converters.trust_bundle_to_pb(self._service.trust_bundle())

    def RequestHandOut(self, request: pb.HandOutRequest, context: grpc.ServicerContext) -> pb.HandOutResponse:
        # the cached check: the issuance's write checks the bench again, in its transaction
        bench = self._bench(BenchOperation.HAND_OUT, fresh=False)
        hand_out = converters.hand_out_request_from_pb(bench, request)
        note_call(
            device=hand_out.device_id.hex().upper(), area=hand_out.area_id, request_id=hand_out.request_id
        )
        return converters.hand_out_response_to_pb(self._service.hand_out(hand_out))

    def RequestRotation(
        self, request: pb.RotationRequest, context: grpc.ServicerContext
    ) -> pb.HandOutResponse:
        bench = self._bench(BenchOperation.ROTATION, fresh=False)
        rotation = converters.rotation_request_from_pb(bench, request)
        note_call(device=rotation.device_id.hex().upper(), request_id=rotation.request_id)
        command = self._service.rotate(rotation)
        note_call(target_generation=command.target_generation)
        return converters.hand_out_response_to_pb(command)

    def ReportOutcome(self, request: pb.OutcomeReport, context: grpc.ServicerContext) -> pb.OutcomeAck:
        report = converters.outcome_report_from_pb(self._bench(), request)
        note_call(request_id=report.request_id)
        return converters.outcome_ack_to_pb(self._service.report_outcome(report))

    def CancelRequest(
        self, request: pb.CancelRequestRequest, context: grpc.ServicerContext
    ) -> pb.CancelledCommand:
        bench = self._bench()
        record = self._service.cancel_request(bench, parse_request_id(request.request_id), request.reason)
        return converters.cancelled_command_to_pb(record)

    def RequestHandIn(self, request: pb.HandInRequest, context: grpc.ServicerContext) -> pb.HandInOrder:
        hand_in = converters.hand_in_request_from_pb(self._hand_in_bench(), request)
        note_call(device=hand_in.device_id.hex().upper(), request_id=hand_in.request_id)
        order = self._hand_in.order(hand_in)
        note_call(area=order.area_id, order=order.order_id)
        return converters.hand_in_order_to_pb(order)

    def FetchHandInCommands(
        self, request: pb.FetchHandInCommandsRequest, context: grpc.ServicerContext
    ) -> pb.HandInCommands:
        self._hand_in_bench()
        devices = converters.device_ids_from_pb(request.device_ids)
        return converters.hand_in_commands_to_pb(self._hand_in.authorised_commands(devices))

    def ReportHandInOutcome(
        self, request: pb.HandInOutcomeReport, context: grpc.ServicerContext
    ) -> pb.OutcomeAck:
        bench = self._hand_in_bench()
        order_id = parse_record_id(request.order_id, "order_id")
        note_call(order=order_id)
        outcome = self._hand_in.report_outcome(bench, order_id, request.response, request.credentials_answer)
        return converters.meter_outcome_to_pb(order_id, outcome)


class CustodyServicer(custody_grpc.CustodyServiceServicer):
    def __init__(
        self,
        hand_in: HandInService,
        fleet: FleetView,
        custody: CustodyService,
        hand_out: HandOutService,
    ) -> None:
        self._hand_in = hand_in
        self._fleet = fleet
        self._custody = custody
        self._hand_out = hand_out

    def _officer(self) -> str:
        """The calling officer, once enrolment is checked (before any input is read)."""
        officer = officer_identity()
        self._hand_in.require_officer(officer)
        return officer

    def ListHandInOrders(
        self, request: custody_pb.ListHandInOrdersRequest, context: grpc.ServicerContext
    ) -> custody_pb.HandInOrders:
        orders = self._hand_in.list_orders(
            self._officer(),
            converters.area_filter_from_pb(request.area_id),
            converters.hand_in_status_from_pb(request.status),
        )
        return custody_pb.HandInOrders(orders=[converters.hand_in_order_to_pb(o) for o in orders])

    def ExportHandInRequests(
        self, request: custody_pb.ExportHandInRequestsRequest, context: grpc.ServicerContext
    ) -> custody_pb.HandInExport:
        officer = self._officer()
        area = converters.area_filter_from_pb(request.area_id)
        return converters.hand_in_export_to_pb(self._hand_in.export(officer, area))

    def ImportHandInCommand(
        self, request: custody_pb.ImportHandInCommandRequest, context: grpc.ServicerContext
    ) -> pb.HandInOrder:
        return converters.hand_in_order_to_pb(self._hand_in.import_command(self._officer(), request.payload))

    def GetFleetSummary(
        self, request: custody_pb.FleetSummaryRequest, context: grpc.ServicerContext
    ) -> custody_pb.FleetSummary:
        return converters.fleet_summary_to_pb(self._fleet.summary(self._officer()))

    def GetDeviceHistory(
        self, request: custody_pb.DeviceHistoryRequest, context: grpc.ServicerContext
    ) -> custody_pb.DeviceHistory:
        officer = self._officer()
        device = parse_entity_id(request.device_id, "device_id")
        note_call(device=device.hex().upper())
        custody, events = self._fleet.history(officer, device)
        return converters.device_history_to_pb(custody, events)

    def ListDevicesHolding(
        self, request: custody_pb.DevicesHoldingRequest, context: grpc.ServicerContext
    ) -> custody_pb.DeviceList:
        officer = self._officer()
        generation = converters.generation_number_from_pb(request.generation)
        return converters.device_list_to_pb(self._fleet.holding(officer, generation))

    # -- generations
    def ListGenerations(
        self, request: custody_pb.ListGenerationsRequest, context: grpc.ServicerContext
    ) -> custody_pb.Generations:
        views = self._custody.generations(self._officer())
        return custody_pb.Generations(generations=[converters.generation_to_pb(v) for v in views])

    def CreateGeneration(
        self, request: custody_pb.CreateGenerationRequest, context: grpc.ServicerContext
    ) -> custody_pb.Generation:
        officer = self._officer()
        entity = parse_entity_id(request.entity_id, "entity_id")
        record = self._custody.create_generation(officer, entity)
        return converters.generation_to_pb(GenerationView(record, None))

    def GetCertificateRequest(
        self, request: custody_pb.CertificateRequestRequest, context: grpc.ServicerContext
    ) -> custody_pb.CertificateRequestReply:
        officer = self._officer()
        csr = self._custody.certificate_request(
            officer,
            converters.generation_number_from_pb(request.generation),
            converters.key_usage_from_pb(request.key_usage),
        )
        return custody_pb.CertificateRequestReply(csr=csr)

    def ImportGenerationCertificates(
        self, request: custody_pb.ImportGenerationCertificatesRequest, context: grpc.ServicerContext
    ) -> custody_pb.Generation:
        officer = self._officer()
        record = self._custody.import_certificates(
            officer,
            converters.generation_number_from_pb(request.generation),
            request.ds_certificate,
            request.ka_certificate,
        )
        return converters.generation_to_pb(GenerationView(record, None))

    def MarkGenerationCompromised(
        self, request: custody_pb.MarkCompromisedRequest, context: grpc.ServicerContext
    ) -> custody_pb.CompromisedReply:
        officer = self._officer()
        record, devices = self._custody.mark_compromised(
            officer, converters.generation_number_from_pb(request.generation), request.reason
        )
        return custody_pb.CompromisedReply(
            generation=converters.generation_to_pb(GenerationView(record, None)),
            devices_holding=[d.hex().upper() for d in devices],
        )

    def DestroyDueGenerations(
        self, request: custody_pb.DestroyDueRequest, context: grpc.ServicerContext
    ) -> custody_pb.DestroyDueReply:
        officer = self._officer()
        return custody_pb.DestroyDueReply(destroyed=self._custody.destroy_due(f"officer:{officer}"))

    # -- two-person control
    def _approval(
        self, request: ApprovalRequest, status: ApprovalStatus | None = None
    ) -> custody_pb.ApprovalRequestInfo:
        return converters.approval_to_pb(
            request,
            status or request.status,
            self._custody.describe(request),
            self._custody.settings.approvals_required,
        )

    def RequestGenerationChange(
        self, request: custody_pb.GenerationChangeRequest, context: grpc.ServicerContext
    ) -> custody_pb.ApprovalRequestInfo:
        officer = self._officer()
        created = self._custody.request_generation_change(
            officer,
            converters.approval_operation_from_pb(request.operation),
            converters.generation_number_from_pb(request.generation),
            request.reason,
        )
        return self._approval(created)

    def RequestAreaReplacement(
        self, request: custody_pb.AreaReplacementRequest, context: grpc.ServicerContext
    ) -> custody_pb.ApprovalRequestInfo:
        officer = self._officer()
        created = self._custody.request_area_replacement(
            officer, request.area_id, request.ds_certificate, request.ka_certificate, request.reason
        )
        return self._approval(created)

    def RequestBenchEnrolment(
        self, request: custody_pb.BenchEnrolmentRequest, context: grpc.ServicerContext
    ) -> custody_pb.ApprovalRequestInfo:
        officer = self._officer()
        created = self._custody.request_bench_enrolment(
            officer,
            request.bench_id,
            converters.certificate_request_from_pb(request.csr),
            request.facility,
            converters.bench_operations_from_pb(request.operations),
            request.reason,
        )
        return self._approval(created)

    def ListApprovalRequests(
        self, request: custody_pb.ListApprovalRequestsRequest, context: grpc.ServicerContext
    ) -> custody_pb.ApprovalRequests:
        listed = self._custody.approvals(self._officer(), request.include_closed)
        return custody_pb.ApprovalRequests(requests=[self._approval(r, s) for r, s in listed])

    def Approve(
        self, request: custody_pb.ApprovalDecision, context: grpc.ServicerContext
    ) -> custody_pb.ApprovalRequestInfo:
        officer = self._officer()
        return self._approval(
            self._custody.approve(officer, parse_record_id(request.request_id, "request_id"))
        )

    def Reject(
        self, request: custody_pb.ApprovalDecision, context: grpc.ServicerContext
    ) -> custody_pb.ApprovalRequestInfo:
        officer = self._officer()
        request_id = parse_record_id(request.request_id, "request_id")
        return self._approval(self._custody.reject(officer, request_id, request.reason))

    def Execute(
        self, request: custody_pb.ExecuteRequest, context: grpc.ServicerContext
    ) -> custody_pb.ExecutionResult:
        officer = self._officer()
        executed = self._custody.execute(officer, parse_record_id(request.request_id, "request_id"))
        return custody_pb.ExecutionResult(
            request=self._approval(executed.request, ApprovalStatus.EXECUTED),
            outcome_json=json.dumps(executed.outcome, sort_keys=True),
        )

    # -- areas and benches
    def ListAreas(
        self, request: custody_pb.ListAreasRequest, context: grpc.ServicerContext
    ) -> custody_pb.Areas:
        records = self._custody.areas(self._officer())
        return custody_pb.Areas(
            areas=[
                custody_pb.AreaRecord(
                    current=converters.area_set_to_pb(area),
                    history=[converters.area_set_to_pb(old, at, by) for old, at, by in history],
                )
                for area, history in records
            ]
        )

    def ListBenches(
        self, request: custody_pb.ListBenchesRequest, context: grpc.ServicerContext
    ) -> custody_pb.Benches:
        return custody_pb.Benches(
            benches=[converters.bench_to_pb(b) for b in self._custody.benches(self._officer())]
        )

    def RevokeBench(
        self, request: custody_pb.RevokeBenchRequest, context: grpc.ServicerContext
    ) -> custody_pb.BenchInfo:
        officer = self._officer()
        self._custody.revoke_bench(officer, request.bench_id, request.reason)
        bench = next(b for b in self._custody.benches(officer) if b.bench_id == request.bench_id)
        return converters.bench_to_pb(bench)

    # -- commands
    def CancelCommand(
        self, request: custody_pb.CancelCommandRequest, context: grpc.ServicerContext
    ) -> pb.CancelledCommand:
        officer = self._officer()
        issuance_id = parse_record_id(request.issuance_id, "issuance_id")
        record = self._hand_out.cancel_issuance(officer, issuance_id, request.reason)
        return converters.cancelled_command_to_pb(record)
