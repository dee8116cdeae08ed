"""The custodian's BenchService over mutual TLS, with retries that reuse the request id."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from vdno.client.bundle import TrustBundle
from vdno.client.errors import ServiceError
from vdno.client.messages import AuthorisedHandIn, CancelledCommand, HandInOrder, IssuedCommand, OutcomeAck
from vdno.v1 import custodian_pb2, custodian_pb2_grpc

T = TypeVar("T")

ERROR_CODE_KEY = "vdno-error"  # trailing metadata naming a refusal (server/domain/errors.py ERROR_CODE_KEY)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})


# The retry budget: UNAVAILABLE (a dropped connection, a restarting server, a request still being signed) is
# retried with the same request id ATTEMPTS times, waiting BACKOFF s, then twice as long each time:
# 0.25 + 0.5 + 1 + 2 + 4 = 7.75 s in all. The service abandons an attempt that died with its process after
# 5 s (server/domain/issuance.py STALE_ATTEMPT), inside this budget, so a retry finishes it.
ATTEMPTS = 6
BACKOFF = 0.25


class BenchClient:
    """BenchService client. Every call retries UNAVAILABLE (incl. dropped connections) `attempts` times
    with exponential backoff, resending the same request (the server is idempotent on (bench, request id)).
    Failures raise ServiceError(code_name, message)."""

    def __init__(
        self,
        target: str,
        ca_pem: bytes,
        cert_pem: bytes,
        key_pem: bytes,
        server_name_override: str | None = None,
        *,
        timeout: float = 30.0,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
        )
        options: list[tuple[str, Any]] = []
        if server_name_override:
            options.append(("grpc.ssl_target_name_override", server_name_override))
        self.target = target
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self._sleep = sleep
        self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = custodian_pb2_grpc.BenchServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> BenchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- RPCs ---------------------------------------------------------------------------------------

    def trust_bundle(self) -> TrustBundle:
        """GetTrustBundle -> client.bundle.TrustBundle (BundleError if malformed)."""
        return TrustBundle.from_proto(
            self._call(self._stub.GetTrustBundle, custodian_pb2.GetTrustBundleRequest())
        )

    def request_hand_out(
        self,
        request_id: str,
        device_id: str,
        area_id: int,
        device_certificate: bytes,
        credentials_response: bytes,
    ) -> IssuedCommand:
        """RequestHandOut: the signed command for this meter and area (the same one on a retry)."""
        request = custodian_pb2.HandOutRequest(
            request_id=request_id,
            device_id=device_id,
            area_id=area_id,
            device_certificate=device_certificate,
            credentials_response=credentials_response,
        )
        return IssuedCommand.from_proto(self._call(self._stub.RequestHandOut, request))

    def request_rotation(
        self, request_id: str, device_id: str, device_certificate: bytes, credentials_response: bytes
    ) -> IssuedCommand:
        """RequestRotation: the signed command moving a meter in stock onto the active generation."""
        request = custodian_pb2.RotationRequest(
            request_id=request_id,
            device_id=device_id,
            device_certificate=device_certificate,
            credentials_response=credentials_response,
        )
        return IssuedCommand.from_proto(self._call(self._stub.RequestRotation, request))

    def report_outcome(
        self, request_id: str, response: bytes = b"", credentials_answer: bytes = b""
    ) -> OutcomeAck:
        """ReportOutcome (status applied | rejected): the meter's CS02b response, or its CS02a answer when
        it already held what the command installs."""
        report = custodian_pb2.OutcomeReport(
            request_id=request_id, response=response, credentials_answer=credentials_answer
        )
        return OutcomeAck.from_proto(self._call(self._stub.ReportOutcome, report))

    def cancel_request(self, request_id: str, reason: str) -> CancelledCommand:
        """CancelRequest: withdraw this bench's command for the request."""
        request = custodian_pb2.CancelRequestRequest(request_id=request_id, reason=reason)
        return CancelledCommand.from_proto(self._call(self._stub.CancelRequest, request))

    def request_hand_in(
        self, request_id: str, device_id: str, device_certificate: bytes, credentials_response: bytes
    ) -> HandInOrder:
        """RequestHandIn: record (or find again, on a retry) the order for the meter read."""
        request = custodian_pb2.HandInRequest(
            request_id=request_id,
            device_id=device_id,
            device_certificate=device_certificate,
            credentials_response=credentials_response,
        )
        return HandInOrder.from_proto(self._call(self._stub.RequestHandIn, request))

    def fetch_hand_in_commands(self, device_ids: list[str]) -> list[AuthorisedHandIn]:
        """FetchHandInCommands: the authorised hand-in commands for these meters."""
        reply = self._call(
            self._stub.FetchHandInCommands, custodian_pb2.FetchHandInCommandsRequest(device_ids=device_ids)
        )
        return [AuthorisedHandIn.from_proto(item) for item in reply.commands]

    def report_hand_in_outcome(
        self, order_id: int, response: bytes = b"", credentials_answer: bytes = b""
    ) -> OutcomeAck:
        """ReportHandInOutcome: the meter's signed response to an applied hand-in command, or its CS02a
        answer when it already held the vanilla generation the command installs."""
        reply = self._call(
            self._stub.ReportHandInOutcome,
            custodian_pb2.HandInOutcomeReport(
                order_id=order_id, response=response, credentials_answer=credentials_answer
            ),
        )
        return OutcomeAck.from_proto(reply)

    # -- internals ----------------------------------------------------------------------------------

    def _call(self, method: Callable[..., T], request: Any) -> T:
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                code = _code(exc)
                if code in RETRYABLE and attempt < self.attempts:
                    self._sleep(delay)
                    delay *= 2
                    continue
                raise ServiceError(
                    code.name if code is not None else "UNKNOWN", _details(exc), _error_code(exc)
                ) from None
        raise ServiceError("UNAVAILABLE", "retries exhausted")  # pragma: no cover


def _code(exc: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    if callable(code):
        value = code()
        if isinstance(value, grpc.StatusCode):
            return value
    return None


def _error_code(exc: grpc.RpcError) -> str:
    """The custodian's error code, sent as trailing metadata `vdno-error` with a refusal ("" if none)."""
    trailing = getattr(exc, "trailing_metadata", None)
    if callable(trailing):
        for key, value in trailing() or ():
            if key == ERROR_CODE_KEY and isinstance(value, str):
                return value
    return ""


def _details(exc: grpc.RpcError) -> str:
    details = getattr(exc, "details", None)
    if callable(details):
        text = details()
        if text:
            return str(text)
    return str(exc) or type(exc).__name__
