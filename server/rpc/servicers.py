"""BenchService: converts, calls the domain, converts back. No logic of its own."""

from __future__ import annotations

import grpc

from server.domain.issuance import HandOutService
from server.rpc import converters
from server.rpc.interceptors import bench_identity
from vdno.v1 import custodian_pb2 as pb
from vdno.v1 import custodian_pb2_grpc as pb_grpc


class BenchServicer(pb_grpc.BenchServiceServicer):
    def __init__(self, service: HandOutService) -> None:
        self._service = service

    def GetTrustBundle(
        self, request: pb.GetTrustBundleRequest, context: grpc.ServicerContext
    ) -> pb.TrustBundle:
        return converters.trust_bundle(self._service.trust_bundle(bench_identity()))

    def RequestHandOut(self, request: pb.HandOutRequest, context: grpc.ServicerContext) -> pb.HandOutResponse:
        command = self._service.hand_out(converters.hand_out_request(bench_identity(), request))
        return converters.hand_out_response(command)

    def ReportOutcome(self, request: pb.OutcomeReport, context: grpc.ServicerContext) -> pb.OutcomeAck:
        outcome = self._service.report_outcome(converters.outcome_report(bench_identity(), request))
        return converters.outcome_ack(outcome)
