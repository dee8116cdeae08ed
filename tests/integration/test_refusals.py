"""What the real service refuses, with the exact gRPC status and a message naming the problem, and
without recording an issuance. This deployment's database lacks area 23 and has bench-02 revoked (both
changed before the server starts)."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from integration_testlib import (
    Deployment,
    hand_out_request,
    log_events,
    new_request_id,
    rpc_error,
)

from scripts.lab_tray import InProcessTransport, tray_device_id
from vdno.client.handout import read_meter
from vdno.labpki.hierarchy import LabHierarchy
from vdno.labpki.smki import CertifiedKey
from vdno.labpki.store import read_certificate, read_certified_key
from vdno.labpki.tls import issue_client_certificate, make_tls_ca
from vdno.simulator.lab import make_device_profile
from vdno.simulator.profile import NO_DS_CELL, NO_KA_CELL, ROOT_CELL
from vdno.v1 import custodian_pb2 as pb
from vdno.v1 import custodian_pb2_grpc as pb_grpc

UNREGISTERED_AREA = 23
REVOKED_BENCH = "bench-02"


def prepare_database(deployment: Deployment) -> None:
    """Run by the `deployment` fixture after `init`, before the server starts."""
    deployment.execute("DELETE FROM areas WHERE area_id = :area", area=UNREGISTERED_AREA)
    deployment.execute("UPDATE benches SET status = 'revoked' WHERE bench_id = :bench", bench=REVOKED_BENCH)


def pem_pair(credentials: CertifiedKey) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) of a TLS client credential."""
    key = credentials.signing_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key, credentials.certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def meters(deployment: Deployment) -> InProcessTransport:
    transport, _ = deployment.meters(1)
    return transport


@pytest.fixture
def no_new_issuance(deployment: Deployment) -> Iterator[None]:
    """Every refusal leaves the issuances table as it was."""
    before = [tuple(r) for r in deployment.issuance_rows()]
    yield
    assert [tuple(r) for r in deployment.issuance_rows()] == before


def valid_request(transport: InProcessTransport, **changes: object) -> pb.HandOutRequest:
    device_id = next(iter(transport.devices))
    request = hand_out_request(read_meter(transport, device_id), device_id, 12, new_request_id())
    for name, value in changes.items():
        setattr(request, name, value)
    return request


def refused(
    deployment: Deployment,
    request: pb.HandOutRequest,
    bench: str = "bench-01",
    client_cert: tuple[bytes, bytes] | None = None,
) -> grpc.RpcError:
    channel, stub = deployment.stub(bench, client_cert)
    with channel:
        return rpc_error(lambda: stub.RequestHandOut(request, timeout=30))


# -- who may call -------------------------------------------------------------------------------------


def _call_without_reaching_a_servicer(
    deployment: Deployment, channel: grpc.Channel
) -> tuple[grpc.RpcError, str]:
    """Call through `channel`, then once as bench-01; the call's error and the log written meanwhile."""
    log_offset = len(deployment.log_text())
    refused_before = len(deployment.audit_events("auth.refused"))
    with channel:
        stub = pb_grpc.BenchServiceStub(channel)
        error = rpc_error(lambda: stub.GetTrustBundle(pb.GetTrustBundleRequest(), timeout=10))
    # A call that does get through, so the log surely holds whatever the refused call caused.
    ok_channel, ok_stub = deployment.stub("bench-01")
    with ok_channel:
        ok_stub.GetTrustBundle(pb.GetTrustBundleRequest(), timeout=10)
    log = deployment.log_text()[log_offset:]
    rpc_lines = [e for e in log_events(log) if str(e.get("event", "")).startswith("rpc.")]
    assert [(e["event"], e["caller"], e["method"]) for e in rpc_lines] == [
        ("rpc.ok", "bench:bench-01", "/vdno.v1.BenchService/GetTrustBundle")
    ], "the refused call reached a servicer"
    assert len(deployment.audit_events("auth.refused")) == refused_before
    return error, log


def test_no_client_certificate_fails_the_tls_handshake(deployment: Deployment) -> None:
    credentials = grpc.ssl_channel_credentials(deployment.tls_ca.read_bytes())
    channel = grpc.secure_channel(
        deployment.target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )
    error, log = _call_without_reaching_a_servicer(deployment, channel)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in log


def test_client_certificate_from_another_ca_fails_the_tls_handshake(deployment: Deployment) -> None:
    # Even with the CN of an enrolled bench: only the configured TLS CA vouches for benches.
    impostor = issue_client_certificate(make_tls_ca("IMPOSTOR-TLS-CA"), "bench-01")
    channel = deployment.server.channel(client_cert=pem_pair(impostor))
    error, log = _call_without_reaching_a_servicer(deployment, channel)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "CERTIFICATE_VERIFY_FAILED" in log


def client_certificate(
    ca: CertifiedKey, subject: list[tuple[x509.ObjectIdentifier, str]]
) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) of a client certificate from `ca` with exactly the subject given (labpki.tls
    issues only vdno's profile: one CN, one OU)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = datetime.now(UTC) - timedelta(minutes=5)
    certificate = (
        x509.CertificateBuilder()
        .serial_number(x509.random_serial_number())
        .issuer_name(ca.certificate.subject)
        .subject_name(x509.Name([x509.NameAttribute(oid, value) for oid, value in subject]))
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=1))
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.signing_key, hashes.SHA256())
    )
    return pem_pair(CertifiedKey(certificate, key))


@pytest.mark.parametrize(
    ("subject", "why"),
    [
        (
            [(NameOID.ORGANIZATIONAL_UNIT_NAME, "vdno-bench")],
            "exactly one CN (the bench or officer id), not 0",
        ),
        (
            [
                (NameOID.COMMON_NAME, "bench-01"),
                (NameOID.COMMON_NAME, "bench-02"),
                (NameOID.ORGANIZATIONAL_UNIT_NAME, "vdno-bench"),
            ],
            "exactly one CN (the bench or officer id), not 2",
        ),
        ([(NameOID.COMMON_NAME, "bench-01")], "exactly one role OU"),
    ],
    ids=["no-cn", "two-cns", "no-role"],
)
@pytest.mark.usefixtures("no_new_issuance")
def test_client_certificate_without_one_cn_and_one_role_is_unauthenticated(
    deployment: Deployment,
    meters: InProcessTransport,
    subject: list[tuple[x509.ObjectIdentifier, str]],
    why: str,
) -> None:
    """The TLS CA vouches for the certificate; the service still refuses a subject outside its profile."""
    tls_ca = read_certified_key(deployment.state / "pki", "tls-ca")
    error = refused(deployment, valid_request(meters), client_cert=client_certificate(tls_ca, subject))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert why in error.details()
    # audited (the first such refusal at once; repeats within the interval as one counted entry)
    events = deployment.audit_events("auth.refused")
    assert ("unknown", "Unauthenticated") in [(e.actor, json.loads(e.details)["reason"]) for e in events]


@pytest.mark.usefixtures("no_new_issuance")
def test_bench_not_enrolled_is_permission_denied_and_audited(
    deployment: Deployment, meters: InProcessTransport
) -> None:
    tls_ca = read_certified_key(deployment.state / "pki", "tls-ca")
    stranger = pem_pair(issue_client_certificate(tls_ca, "bench-99"))
    error = refused(deployment, valid_request(meters), client_cert=stranger)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'bench-99' is not enrolled" in error.details()
    [event] = [e for e in deployment.audit_events("auth.refused") if e.actor == "bench:bench-99"]
    assert "BenchNotEnrolled" in event.details


@pytest.mark.usefixtures("no_new_issuance")
def test_revoked_bench_is_permission_denied(deployment: Deployment, meters: InProcessTransport) -> None:
    error = refused(deployment, valid_request(meters), bench=REVOKED_BENCH)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"{REVOKED_BENCH!r} is not enrolled or has been revoked" in error.details()
    assert [e for e in deployment.audit_events("auth.refused") if e.actor == f"bench:{REVOKED_BENCH}"]


def test_revoked_bench_gets_no_trust_bundle(deployment: Deployment) -> None:
    with deployment.server.channel(REVOKED_BENCH) as channel, pytest.raises(grpc.RpcError) as caught:
        pb_grpc.BenchServiceStub(channel).GetTrustBundle(pb.GetTrustBundleRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


# -- what may be asked --------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_new_issuance")
def test_area_outside_the_gb_dno_areas_is_invalid_argument(
    deployment: Deployment, meters: InProcessTransport
) -> None:
    error = refused(deployment, valid_request(meters, area_id=9))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "area id must be a GB DNO area 10-23, got 9"


@pytest.mark.usefixtures("no_new_issuance")
def test_area_not_registered_with_the_custodian_is_not_found(
    deployment: Deployment, meters: InProcessTransport
) -> None:
    error = refused(deployment, valid_request(meters, area_id=UNREGISTERED_AREA))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == f"area {UNREGISTERED_AREA} is not registered with this custodian"


@pytest.mark.usefixtures("no_new_issuance")
@pytest.mark.parametrize("device_id", ["00DB5EED0000000", "00DB5EED000000ZZ", ""])
def test_malformed_device_id_is_invalid_argument(
    deployment: Deployment, meters: InProcessTransport, device_id: str
) -> None:
    error = refused(deployment, valid_request(meters, device_id=device_id))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("device_id must be an EUI-64 of 16 hex digits")


@pytest.mark.usefixtures("no_new_issuance")
def test_device_id_not_matching_the_meter_read_is_refused(
    deployment: Deployment, meters: InProcessTransport
) -> None:
    error = refused(deployment, valid_request(meters, device_id=tray_device_id(9999).hex()))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is not the certificate of device" in error.details()


@pytest.mark.usefixtures("no_new_issuance")
def test_device_holding_an_area_dno_certificate_is_failed_precondition(deployment: Deployment) -> None:
    """A meter that was never handed in: its NO cells hold area 11's DNO, not a vanilla generation."""
    pki = LabHierarchy.load(deployment.state / "pki")
    areas = deployment.state / "areas"
    device_id = tray_device_id(5001)
    profile = make_device_profile(
        device_id,
        pki.device_ca,
        {
            ROOT_CELL: pki.root.certificate,
            NO_DS_CELL: read_certificate(areas / "area-11-ds.pem"),
            NO_KA_CELL: read_certificate(areas / "area-11-ka.pem"),
        },
        seq_numbers={3: 0},
        require_acb_mac=False,
        allow_local_reads=True,
    )
    transport = InProcessTransport([profile])
    error = refused(deployment, valid_request(transport))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        f"device {device_id.hex()} is not in vanilla custody: already handed out to area 11 (East Midlands)"
    )
    assert ("vdno-error", "DEVICE_NOT_VANILLA") in tuple(error.trailing_metadata())


@pytest.mark.usefixtures("no_new_issuance")
def test_device_certificate_from_another_device_ca_is_failed_precondition(deployment: Deployment) -> None:
    """A vanilla meter whose device certificate comes from a device CA the custodian does not trust."""
    foreign = LabHierarchy.create()
    device_id = tray_device_id(5002)
    pki = deployment.state / "pki"
    profile = make_device_profile(
        device_id,
        foreign.device_ca,
        {
            ROOT_CELL: read_certificate(pki / "root-ca.pem"),
            NO_DS_CELL: read_certificate(pki / "vanilla-g1-ds.pem"),
            NO_KA_CELL: read_certificate(pki / "vanilla-g1-ka.pem"),
        },
        seq_numbers={3: 0},
        require_acb_mac=False,
        allow_local_reads=True,
    )
    transport = InProcessTransport([profile])
    error = refused(deployment, valid_request(transport))  # read without the bundle's device CA check
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == (
        f"device_certificate of {device_id.hex()} does not chain to the configured device CA"
    )


@pytest.mark.usefixtures("no_new_issuance")
def test_credentials_response_not_signed_by_the_device_is_invalid_argument(
    deployment: Deployment, meters: InProcessTransport
) -> None:
    request = valid_request(meters)
    forged = bytearray(request.credentials_response)
    forged[-1] ^= 0x01  # the device's signature over its CS02a response
    request.credentials_response = bytes(forged)
    error = refused(deployment, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("credentials_response is not a valid signed CS02a response")


def test_refusals_leave_no_secrets_in_the_log(deployment: Deployment) -> None:
    log = deployment.log_text()
    assert "rpc.refused" in log
    pin = (deployment.state / "secrets" / "user.pin").read_text().strip()
    so_pin = (deployment.state / "secrets" / "so.pin").read_text().strip()
    assert pin not in log and so_pin not in log
    assert "CKR" not in log
    assert "Traceback" not in log


def test_repeated_refusals_of_one_identity_are_audited_as_one_entry_with_a_count(
    deployment: Deployment, meters: InProcessTransport
) -> None:
    """The first refusal is audited at once; the rest of the interval (60 s) becomes one entry with their
    count, written when the interval ends or, as here, when the service stops."""
    tls_ca = read_certified_key(deployment.state / "pki", "tls-ca")
    flooder = pem_pair(issue_client_certificate(tls_ca, "bench-97"))
    channel, stub = deployment.stub(client_cert=flooder)
    with channel:
        for _ in range(25):
            error = rpc_error(lambda: stub.GetTrustBundle(pb.GetTrustBundleRequest(), timeout=10))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    def audited() -> list[dict[str, object]]:
        events = deployment.audit_events("auth.refused")
        return [json.loads(e.details) for e in events if e.actor == "bench:bench-97"]

    assert audited() == [{"reason": "BenchNotEnrolled", "count": 1}]
    deployment.restart()  # a graceful stop records the counts still open
    first, rest = audited()
    assert first["count"] == 1 and rest["count"] == 24 and rest["reason"] == "BenchNotEnrolled"
    assert rest["interval_seconds"] == 60.0 and rest["since"] <= rest["last"]
    assert deployment.verify_audit().returncode == 0


def test_state_files_holding_records_are_readable_by_the_service_user_only(deployment: Deployment) -> None:
    database = deployment.state / "vdno.db"
    with deployment.client() as api:  # the server's connections are open: the WAL and its index exist
        api.trust_bundle()
    files = [database, database.with_name("vdno.db-wal"), database.with_name("vdno.db-shm")]
    files.append(deployment.server.log_path)
    time.sleep(0.2)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
