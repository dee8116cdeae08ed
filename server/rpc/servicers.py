"""BenchService and CustodyService: convert, call the domain, convert back. No logic of their own."""

from __future__ import annotations

import grpc

from server.domain.errors import InvalidRequest
from server.domain.fleet import FleetView
from server.domain.hand_in import HandInService
from server.domain.issuance import HandOutService
from server.domain.values import parse_entity_id
from server.rpc import converters
from server.rpc.interceptors import bench_identity, officer_identity
from vdno.v1 import custodian_pb2 as pb
from vdno.v1 import custodian_pb2_grpc as pb_grpc
from vdno.v1 import custody_pb2 as custody_pb
from vdno.v1 import custody_pb2_grpc as custody_grpc


class BenchServicer(pb_grpc.BenchServiceServicer):
    def __init__(self, service: HandOutService, hand_in: HandInService) -> None:
        self._service = service
        self._hand_in = hand_in

    def GetTrustBundle(
        self, request: pb.GetTrustBundleRequest, context: grpc.ServicerContext
    ) -> pb.TrustBundle:
        return converters.trust_bundle(self._service.trust_bundle(bench_identity()))

    def _bench(self) -> str:
        """The calling bench, once its enrolment is checked: a caller may not learn the API's input rules
        before it is let in."""
        bench = bench_identity()
        self._service.require_bench(bench)
        return bench

    def RequestHandOut(self, request: pb.HandOutRequest, context: grpc.ServicerContext) -> pb.HandOutResponse:
        command = self._service.hand_out(converters.hand_out_request(self._bench(), request))
        return converters.hand_out_response(command)

    def ReportOutcome(self, request: pb.OutcomeReport, context: grpc.ServicerContext) -> pb.OutcomeAck:
        outcome = self._service.report_outcome(converters.outcome_report(self._bench(), request))
        return converters.outcome_ack(outcome)

    def RequestHandIn(self, request: pb.HandInRequest, context: grpc.ServicerContext) -> pb.HandInOrder:
        order = self._hand_in.order(converters.hand_in_request_from_pb(self._bench(), request))
        return converters.hand_in_order_to_pb(order)

    def FetchHandInCommands(
        self, request: pb.FetchHandInCommandsRequest, context: grpc.ServicerContext
    ) -> pb.HandInCommands:
        bench = self._bench()
        devices = converters.device_ids_from_pb(request.device_ids)
        return converters.hand_in_commands_to_pb(self._hand_in.authorised_commands(bench, devices))

    def ReportHandInOutcome(
        self, request: pb.HandInOutcomeReport, context: grpc.ServicerContext
    ) -> pb.OutcomeAck:
        outcome = self._hand_in.report_outcome(self._bench(), request.order_id, request.response)
        return converters.meter_outcome_to_pb(request.order_id, outcome)


class CustodyServicer(custody_grpc.CustodyServiceServicer):
    def __init__(self, hand_in: HandInService, fleet: FleetView) -> None:
        self._hand_in = hand_in
        self._fleet = fleet

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
        custody, events = self._fleet.history(officer, device)
        return converters.device_history_to_pb(custody, events)

    def ListDevicesHolding(
        self, request: custody_pb.DevicesHoldingRequest, context: grpc.ServicerContext
    ) -> custody_pb.DeviceList:
        officer = self._officer()
        if request.generation == 0:
            raise InvalidRequest("generation is required (1 or more)")
        return converters.device_list_to_pb(self._fleet.holding(officer, request.generation))
