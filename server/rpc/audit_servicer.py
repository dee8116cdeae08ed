"""AuditService: officers have the audit log's chain head signed. Converts, calls the domain, converts
back."""

from __future__ import annotations

import grpc

from vdno.server.domain.checkpoint import AuditCheckpoint, AuditCheckpoints
from vdno.server.rpc.interceptors import officer_identity
from vdno.v1 import audit_pb2 as pb
from vdno.v1 import audit_pb2_grpc as pb_grpc

AUDIT_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AuditService"].full_name


def checkpoint_to_pb(checkpoint: AuditCheckpoint) -> pb.AuditCheckpoint:
    return pb.AuditCheckpoint(
        document=checkpoint.to_document(),
        seq=checkpoint.head.seq,
        head_hash=checkpoint.head.hash,
        at=checkpoint.at,
        key_id=checkpoint.key_id,
    )


class AuditServicer(pb_grpc.AuditServiceServicer):
    def __init__(self, checkpoints: AuditCheckpoints) -> None:
        self._checkpoints = checkpoints

    def CreateCheckpoint(
        self, request: pb.CreateCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.AuditCheckpoint:
        return checkpoint_to_pb(self._checkpoints.create(officer_identity()))


def add_audit_service(server: grpc.Server, checkpoints: AuditCheckpoints) -> str:
    """Register AuditService on `server`; its full name (for reflection)."""
    pb_grpc.add_AuditServiceServicer_to_server(AuditServicer(checkpoints), server)  # type: ignore[no-untyped-call]
    return str(AUDIT_SERVICE_NAME)
