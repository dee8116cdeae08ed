"""The gRPC edge in process: a real gRPC server on 127.0.0.1:0 over mutual TLS with the production interceptor
(server/rpc/interceptors.py) in front of servicers that raise what each test asks. Every error class maps to
its status with its safe message; callers are identified from their certificate's CN and role OU (missing,
doubled or unknown ones are UNAUTHENTICATED, the wrong role PERMISSION_DENIED, both audited); anything
unexpected is INTERNAL with a reference id and nothing else, and the log line with that reference has the
stack trace."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vdno import server
from vdno.labpki.smki import CertifiedKey, new_p256_key
from vdno.labpki.tls import OFFICER_ROLE, issue_client_certificate, issue_server_certificate, make_tls_ca
from vdno.server.config import ConfigError
from vdno.server.domain import errors as e
from vdno.server.port_claim import PortHeld
from vdno.server.rpc.interceptors import ErrorMappingInterceptor, bench_identity, officer_identity
from vdno.v1 import custodian_pb2 as pb
from vdno.v1 import custodian_pb2_grpc as pb_grpc
from vdno.v1 import custody_pb2 as custody_pb
from vdno.v1 import custody_pb2_grpc as custody_grpc

# Every error the service can raise, and the status a caller must see. Written out here, not derived from the
# interceptor's table: a new error class fails this test until someone decides its status.
EXPECTED: dict[type[e.VdnoError], grpc.StatusCode] = {
    e.InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    e.AuditDocumentInvalid: grpc.StatusCode.INVALID_ARGUMENT,
    e.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    e.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    e.BenchNotEnrolled: grpc.StatusCode.PERMISSION_DENIED,
    e.OfficerNotEnrolled: grpc.StatusCode.PERMISSION_DENIED,
    e.WrongRole: grpc.StatusCode.PERMISSION_DENIED,
    e.OperationNotAllowed: grpc.StatusCode.PERMISSION_DENIED,
    e.UnknownArea: grpc.StatusCode.NOT_FOUND,
    e.UnknownIssuance: grpc.StatusCode.NOT_FOUND,
    e.UnknownOrder: grpc.StatusCode.NOT_FOUND,
    e.UnknownDevice: grpc.StatusCode.NOT_FOUND,
    e.UnknownGeneration: grpc.StatusCode.NOT_FOUND,
    e.UnknownApprovalRequest: grpc.StatusCode.NOT_FOUND,
    e.PolicyRefused: grpc.StatusCode.FAILED_PRECONDITION,
    e.DeviceNotVanilla: grpc.StatusCode.FAILED_PRECONDITION,
    e.DeviceCertificateUntrusted: grpc.StatusCode.FAILED_PRECONDITION,
    e.OutcomeRejected: grpc.StatusCode.FAILED_PRECONDITION,
    e.UnknownNetworkOperator: grpc.StatusCode.FAILED_PRECONDITION,
    e.DeviceAlreadyVanilla: grpc.StatusCode.FAILED_PRECONDITION,
    e.NoActiveGeneration: grpc.StatusCode.FAILED_PRECONDITION,
    e.OutstandingCommand: grpc.StatusCode.FAILED_PRECONDITION,
    e.HandInCommandRefused: grpc.StatusCode.FAILED_PRECONDITION,
    e.ApprovalRefused: grpc.StatusCode.FAILED_PRECONDITION,
    e.CustodyConflict: grpc.StatusCode.FAILED_PRECONDITION,
    e.CertificateRefused: grpc.StatusCode.FAILED_PRECONDITION,
    e.KeyNotInCustody: grpc.StatusCode.FAILED_PRECONDITION,
    e.HsmLoginRefused: grpc.StatusCode.FAILED_PRECONDITION,
    e.AuditKeyNotConfigured: grpc.StatusCode.FAILED_PRECONDITION,
    e.AuditChainBroken: grpc.StatusCode.FAILED_PRECONDITION,
    e.RequestIdConflict: grpc.StatusCode.ALREADY_EXISTS,
    e.Unavailable: grpc.StatusCode.UNAVAILABLE,
    e.StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    e.HsmUnavailable: grpc.StatusCode.UNAVAILABLE,
    e.SignatureCheckFailed: grpc.StatusCode.INTERNAL,
    e.CommandCancelled: grpc.StatusCode.FAILED_PRECONDITION,
    # start-up errors (configuration, a port another server holds), raised by no servicer; imported above
    # so that the set of subclasses found does not depend on which test modules ran before in the same
    # process
    ConfigError: grpc.StatusCode.INTERNAL,
    PortHeld: grpc.StatusCode.INTERNAL,
}


def all_errors(root: type[e.VdnoError] = e.VdnoError) -> set[type[e.VdnoError]]:
    """Every subclass of `root` in the server package, whichever modules this process imported so far."""
    if root is e.VdnoError:
        for module in pkgutil.walk_packages(server.__path__, "vdno.server."):
            if ".migrations" not in module.name:
                importlib.import_module(module.name)
    found = set()
    for child in root.__subclasses__():
        found.add(child)
        found |= all_errors(child)
    return found


@dataclass
class Edge:
    """The running edge: what the servicers raise next, what was audited, where to connect."""

    port: int
    ca_pem: bytes
    ca: CertifiedKey
    raise_next: BaseException | None = None
    seen: list[tuple[str, str]] = field(default_factory=list)  # (service, caller) the servicer saw
    refusals: list[tuple[str, str]] = field(default_factory=list)  # what the interceptor audited

    def channel(self, client: CertifiedKey) -> grpc.Channel:
        key = client.signing_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        credentials = grpc.ssl_channel_credentials(
            self.ca_pem, key, client.certificate.public_bytes(serialization.Encoding.PEM)
        )
        return grpc.secure_channel(
            f"127.0.0.1:{self.port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
        )

    def bench_call(self, client: CertifiedKey) -> grpc.RpcError | pb.TrustBundle:
        with self.channel(client) as channel:
            try:
                return pb_grpc.BenchServiceStub(channel).GetTrustBundle(
                    pb.GetTrustBundleRequest(), timeout=10
                )
            except grpc.RpcError as error:
                return error

    def officer_call(self, client: CertifiedKey) -> grpc.RpcError | custody_pb.FleetSummary:
        with self.channel(client) as channel:
            try:
                stub = custody_grpc.CustodyServiceStub(channel)
                return stub.GetFleetSummary(custody_pb.FleetSummaryRequest(), timeout=10)
            except grpc.RpcError as error:
                return error


class _Bench(pb_grpc.BenchServiceServicer):
    def __init__(self, edge: Edge) -> None:
        self._edge = edge

    def GetTrustBundle(self, request: Any, context: grpc.ServicerContext) -> pb.TrustBundle:
        self._edge.seen.append(("bench", bench_identity()))
        if self._edge.raise_next is not None:
            raise self._edge.raise_next
        return pb.TrustBundle()


class _Custody(custody_grpc.CustodyServiceServicer):
    def __init__(self, edge: Edge) -> None:
        self._edge = edge

    def GetFleetSummary(self, request: Any, context: grpc.ServicerContext) -> custody_pb.FleetSummary:
        self._edge.seen.append(("custody", officer_identity()))
        return custody_pb.FleetSummary(devices=7)


@pytest.fixture(scope="module")
def edge() -> Iterator[Edge]:
    ca = make_tls_ca("EDGE-TEST-CA")
    server_cert = issue_server_certificate(ca)
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    key = server_cert.signing_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    running = Edge(0, pem(ca.certificate), ca)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[
            ErrorMappingInterceptor(on_refused_auth=lambda actor, why: running.refusals.append((actor, why)))
        ],
    )
    pb_grpc.add_BenchServiceServicer_to_server(_Bench(running), server)  # type: ignore[no-untyped-call]
    custody_grpc.add_CustodyServiceServicer_to_server(_Custody(running), server)  # type: ignore[no-untyped-call]
    credentials = grpc.ssl_server_credentials(
        [(key, pem(server_cert.certificate))], root_certificates=pem(ca.certificate), require_client_auth=True
    )
    running.port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield running
    finally:
        server.stop(None).wait()


def client_certificate(ca: CertifiedKey, attributes: list[tuple[x509.ObjectIdentifier, str]]) -> CertifiedKey:
    """A client certificate from `ca` with exactly these subject attributes (the profile's or not)."""
    key = new_p256_key()
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .serial_number(x509.random_serial_number())
        .issuer_name(ca.certificate.subject)
        .subject_name(x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes]))
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .public_key(key.public_key())
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.signing_key, hashes.SHA256())
    )
    return CertifiedKey(certificate, key)


def test_the_table_names_every_error_class() -> None:
    assert all_errors() == set(EXPECTED), "an error class without an expected status (or a stale entry)"


@pytest.mark.parametrize("error_class", sorted(EXPECTED, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_each_error_reaches_the_caller_with_its_status_and_safe_message(
    edge: Edge, error_class: type[e.VdnoError]
) -> None:
    bench = issue_client_certificate(edge.ca, "bench-01")
    message = f"{error_class.__name__} says what was wrong"
    edge.raise_next = error_class(message)
    try:
        error = edge.bench_call(bench)
    finally:
        edge.raise_next = None
    assert isinstance(error, grpc.RpcError)
    assert (error.code(), error.details()) == (EXPECTED[error_class], message)


def test_an_unexpected_exception_is_internal_with_a_reference_and_nothing_else(edge: Edge) -> None:
    bench = issue_client_certificate(edge.ca, "bench-01")
    edge.raise_next = RuntimeError("secret PIN 1234 and handle 0x42")
    try:
        with structlog.testing.capture_logs() as logs:
            error = edge.bench_call(bench)
    finally:
        edge.raise_next = None
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.INTERNAL
    details = error.details()
    assert (
        details.startswith("internal error (reference ") and "secret" not in details and "0x42" not in details
    )
    reference = details.removeprefix("internal error (reference ").removesuffix(")")
    [line] = [entry for entry in logs if entry.get("rpc_id") == reference]
    assert line["event"] == "rpc.internal_error" and line["caller"] == "bench:bench-01"
    assert line["log_level"] == "error" and line.get("exc_info") is True


def test_callers_are_named_by_their_certificate_and_role(edge: Edge) -> None:
    edge.seen.clear()
    assert isinstance(edge.bench_call(issue_client_certificate(edge.ca, "bench-09")), pb.TrustBundle)
    officer = issue_client_certificate(edge.ca, "officer-03", role=OFFICER_ROLE)
    assert edge.officer_call(officer).devices == 7  # type: ignore[union-attr]
    assert edge.seen == [("bench", "bench-09"), ("custody", "officer-03")]


@pytest.mark.parametrize(
    ("attributes", "named"),
    [
        ([(NameOID.ORGANIZATIONAL_UNIT_NAME, "vdno-bench")], "exactly one CN"),
        (
            [
                (NameOID.COMMON_NAME, "bench-01"),
                (NameOID.COMMON_NAME, "bench-02"),
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "vdno-bench"),
            ],
            "exactly one CN",
        ),
        ([(NameOID.COMMON_NAME, "bench-01")], "exactly one role OU"),
        (
            [(NameOID.COMMON_NAME, "bench-01"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "vdno-root")],
            "exactly one role OU",
        ),
        (
            [
                (NameOID.COMMON_NAME, "x"),
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "vdno-bench"),
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "vdno-officer"),
            ],
            "exactly one role OU",
        ),
    ],
    ids=["no-cn", "two-cns", "no-role", "unknown-role", "two-roles"],
)
def test_a_certificate_outside_the_profile_is_unauthenticated_and_audited(
    edge: Edge, attributes: list[tuple[x509.ObjectIdentifier, str]], named: str
) -> None:
    edge.seen.clear()
    before = len(edge.refusals)
    error = edge.bench_call(client_certificate(edge.ca, attributes))
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and named in error.details()
    assert edge.seen == []  # the servicer never ran
    assert edge.refusals[before:] == [("unknown", "Unauthenticated")]


def test_the_wrong_role_is_permission_denied_and_audited_under_its_name(edge: Edge) -> None:
    edge.seen.clear()
    before = len(edge.refusals)
    officer = issue_client_certificate(edge.ca, "officer-01", role=OFFICER_ROLE)
    bench = issue_client_certificate(edge.ca, "bench-01")
    as_bench = edge.bench_call(officer)
    as_officer = edge.officer_call(bench)
    for error, role in ((as_bench, "vdno-officer"), (as_officer, "vdno-bench")):
        assert isinstance(error, grpc.RpcError)
        assert (
            error.code() == grpc.StatusCode.PERMISSION_DENIED
            and f"a {role} certificate may not call" in error.details()
        )
    assert edge.seen == []
    assert edge.refusals[before:] == [("officer:officer-01", "WrongRole"), ("bench:bench-01", "WrongRole")]


def test_a_certificate_from_another_ca_never_reaches_the_service(edge: Edge) -> None:
    edge.seen.clear()
    stranger = issue_client_certificate(make_tls_ca("STRANGER"), "bench-01")
    error = edge.bench_call(stranger)
    assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNAVAILABLE
    assert edge.seen == []
