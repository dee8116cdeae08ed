"""The custody API (vdno.v1.CustodyService) over mutual TLS with an officer's certificate. Replies come back
as plain dicts (field names as in proto/vdno/v1/custody.proto), ready for tables and --json."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from vdno.v1 import audit_pb2, audit_pb2_grpc, custody_pb2, custody_pb2_grpc

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


class CustodyCallFailed(Exception):
    """A custody RPC failed; `code` is the gRPC status code name, `error_code` the custodian's name for the
    refusal (e.g. APPROVAL_REFUSED), else SERVER_UNAVAILABLE or CUSTODIAN_REFUSED."""

    def __init__(self, code: str, message: str, error_code: str = "") -> None:
        self.code = code
        self.message = message
        unreachable = code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        self.error_code = error_code or ("SERVER_UNAVAILABLE" if unreachable else "CUSTODIAN_REFUSED")
        super().__init__(f"{code}: {message}")


def _as_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


class CustodyClient:
    def __init__(
        self,
        target: str,
        ca_pem: bytes,
        cert_pem: bytes,
        key_pem: bytes,
        server_name_override: str | None = None,
        *,
        timeout: float = 30.0,
        attempts: int = 3,
        backoff: float = 0.25,
    ) -> None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
        )
        options: list[tuple[str, Any]] = []
        if server_name_override:
            options.append(("grpc.ssl_target_name_override", server_name_override))
        self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = custody_pb2_grpc.CustodyServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._audit_stub = audit_pb2_grpc.AuditServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._backoff = backoff

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CustodyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def list_hand_in_orders(self, area_id: int, status: str) -> list[dict[str, Any]]:
        reply = self._call(
            self._stub.ListHandInOrders, custody_pb2.ListHandInOrdersRequest(area_id=area_id, status=status)
        )
        return [_as_dict(o) for o in reply.orders]

    def export_hand_in_requests(self, area_id: int) -> list[tuple[dict[str, Any], bytes]]:
        """(request record without the XML, the DUIS XML) per order awaiting authorisation."""
        reply = self._call(
            self._stub.ExportHandInRequests, custody_pb2.ExportHandInRequestsRequest(area_id=area_id)
        )
        out = []
        for item in reply.requests:
            record = {
                "order_id": int(item.order_id),
                "area_id": int(item.area_id),
                "device_id": item.device_id,
                "manifest_record": item.manifest_record,
            }
            out.append((record, bytes(item.duis_request)))
        return out

    def import_hand_in_command(self, payload: bytes) -> dict[str, Any]:
        reply = self._call(
            self._stub.ImportHandInCommand, custody_pb2.ImportHandInCommandRequest(payload=payload)
        )
        return _as_dict(reply)

    def fleet_summary(self) -> dict[str, Any]:
        return _as_dict(self._call(self._stub.GetFleetSummary, custody_pb2.FleetSummaryRequest()))

    def device_history(self, device_id: str) -> dict[str, Any]:
        return _as_dict(
            self._call(self._stub.GetDeviceHistory, custody_pb2.DeviceHistoryRequest(device_id=device_id))
        )

    def devices_holding(self, generation: int) -> list[str]:
        reply = self._call(
            self._stub.ListDevicesHolding, custody_pb2.DevicesHoldingRequest(generation=generation)
        )
        return list(reply.device_ids)

    # -- generations
    def list_generations(self) -> list[dict[str, Any]]:
        reply = self._call(self._stub.ListGenerations, custody_pb2.ListGenerationsRequest())
        return [_as_dict(g) for g in reply.generations]

    def create_generation(self, entity_id: str) -> dict[str, Any]:
        return _as_dict(
            self._call(self._stub.CreateGeneration, custody_pb2.CreateGenerationRequest(entity_id=entity_id))
        )

    def certificate_request(self, generation: int, usage: str) -> bytes:
        reply = self._call(
            self._stub.GetCertificateRequest,
            custody_pb2.CertificateRequestRequest(generation=generation, key_usage=usage),
        )
        return bytes(reply.csr)

    def import_certificates(self, generation: int, ds: bytes, ka: bytes) -> dict[str, Any]:
        request = custody_pb2.ImportGenerationCertificatesRequest(
            generation=generation, ds_certificate=ds, ka_certificate=ka
        )
        return _as_dict(self._call(self._stub.ImportGenerationCertificates, request))

    def mark_compromised(self, generation: int, reason: str) -> dict[str, Any]:
        request = custody_pb2.MarkCompromisedRequest(generation=generation, reason=reason)
        return _as_dict(self._call(self._stub.MarkGenerationCompromised, request))

    def destroy_due(self) -> list[int]:
        return list(self._call(self._stub.DestroyDueGenerations, custody_pb2.DestroyDueRequest()).destroyed)

    # -- two-person control
    def request_generation_change(self, generation: int, operation: str, reason: str) -> dict[str, Any]:
        request = custody_pb2.GenerationChangeRequest(
            generation=generation, operation=operation, reason=reason
        )
        return _as_dict(self._call(self._stub.RequestGenerationChange, request))

    def request_area_replacement(self, area_id: int, ds: bytes, ka: bytes, reason: str) -> dict[str, Any]:
        request = custody_pb2.AreaReplacementRequest(
            area_id=area_id, ds_certificate=ds, ka_certificate=ka, reason=reason
        )
        return _as_dict(self._call(self._stub.RequestAreaReplacement, request))

    def request_bench_enrolment(
        self, bench_id: str, csr: bytes, facility: str, operations: list[str], reason: str
    ) -> dict[str, Any]:
        request = custody_pb2.BenchEnrolmentRequest(
            bench_id=bench_id, csr=csr, facility=facility, operations=operations, reason=reason
        )
        return _as_dict(self._call(self._stub.RequestBenchEnrolment, request))

    def approval_requests(self, include_closed: bool) -> list[dict[str, Any]]:
        reply = self._call(
            self._stub.ListApprovalRequests,
            custody_pb2.ListApprovalRequestsRequest(include_closed=include_closed),
        )
        return [_as_dict(r) for r in reply.requests]

    def approve(self, request_id: int) -> dict[str, Any]:
        return _as_dict(self._call(self._stub.Approve, custody_pb2.ApprovalDecision(request_id=request_id)))

    def reject(self, request_id: int, reason: str) -> dict[str, Any]:
        decision = custody_pb2.ApprovalDecision(request_id=request_id, reason=reason)
        return _as_dict(self._call(self._stub.Reject, decision))

    def execute(self, request_id: int) -> dict[str, Any]:
        return _as_dict(self._call(self._stub.Execute, custody_pb2.ExecuteRequest(request_id=request_id)))

    # -- areas and benches
    def list_areas(self) -> list[dict[str, Any]]:
        return [_as_dict(a) for a in self._call(self._stub.ListAreas, custody_pb2.ListAreasRequest()).areas]

    def list_benches(self) -> list[dict[str, Any]]:
        return [
            _as_dict(b) for b in self._call(self._stub.ListBenches, custody_pb2.ListBenchesRequest()).benches
        ]

    def revoke_bench(self, bench_id: str, reason: str) -> dict[str, Any]:
        request = custody_pb2.RevokeBenchRequest(bench_id=bench_id, reason=reason)
        return _as_dict(self._call(self._stub.RevokeBench, request))

    def cancel_command(self, issuance_id: int, reason: str) -> dict[str, Any]:
        """Withdraw a hand-out or rotation command that has no outcome (vdno.v1.CancelledCommand)."""
        request = custody_pb2.CancelCommandRequest(issuance_id=issuance_id, reason=reason)
        return _as_dict(self._call(self._stub.CancelCommand, request))

    def create_checkpoint(self) -> dict[str, Any]:
        """A signed checkpoint of the audit log (vdno.v1.AuditService): document (JSON text), seq, head_hash,
        at, key_id."""
        reply = self._call(self._audit_stub.CreateCheckpoint, audit_pb2.CreateCheckpointRequest())
        return {
            "document": reply.document,
            "seq": int(reply.seq),
            "head_hash": reply.head_hash,
            "at": reply.at,
            "key_id": reply.key_id,
        }

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        delay = self._backoff
        for attempt in range(1, self._attempts + 1):
            try:
                return method(request, timeout=self._timeout)
            except grpc.RpcError as exc:
                code = exc.code() if callable(getattr(exc, "code", None)) else None
                if code in RETRYABLE and attempt < self._attempts:
                    time.sleep(delay)
                    delay *= 2
                    continue
                details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
                trailing = (
                    exc.trailing_metadata() if callable(getattr(exc, "trailing_metadata", None)) else ()
                )
                error_code = next((str(v) for k, v in trailing or () if k == "vdno-error"), "")
                raise CustodyCallFailed(
                    code.name if code is not None else "UNKNOWN", str(details), error_code
                ) from None
        raise CustodyCallFailed("UNAVAILABLE", "retries exhausted")  # pragma: no cover
