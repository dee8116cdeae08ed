"""The interceptor on a real gRPC server over mutual TLS (in-process): an unexpected exception is INTERNAL
with a reference id, and the log line with that id carries the stack trace; request bytes that do not decode
are INVALID_ARGUMENT, with no traceback anywhere in the log; a call's log line carries what the servicer
noted of the request, and the metrics count answered hand-outs' latency and refusals by reason."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from vdno.labpki.smki import CertifiedKey
from vdno.labpki.tls import (
    BENCH_ROLE,
    OFFICER_ROLE,
    issue_client_certificate,
    issue_server_certificate,
    make_tls_ca,
)
from vdno.server.domain.errors import ERROR_CODE_KEY, Unauthenticated, UnknownArea
from vdno.server.metrics import ServerMetrics
from vdno.server.observability import configure_logging
from vdno.server.rpc.interceptors import (
    ErrorMappingInterceptor,
    UndecodableRequest,
    bench_caller,
    bench_identity,
    note_call,
    officer_identity,
    tolerant_deserializer,
)
from vdno.v1 import custodian_pb2 as pb

SERVICE = "vdno.v1.BenchService"


class Out:
    """A binary stream that keeps what is written."""

    def __init__(self) -> None:
        self.data = b""
        self._lock = threading.Lock()

    def write(self, data: bytes) -> int:
        with self._lock:
            self.data += bytes(data)
        return len(data)

    def flush(self) -> None:
        pass

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(line) for line in self.data.splitlines()]


def pem(ck: CertifiedKey) -> tuple[bytes, bytes]:
    key = ck.signing_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key, ck.certificate.public_bytes(serialization.Encoding.PEM)


def get_trust_bundle(request: pb.GetTrustBundleRequest, context: grpc.ServicerContext) -> pb.TrustBundle:
    raise RuntimeError("a defect deep in the service")


@contextlib.contextmanager
def serving(
    handlers: dict[str, tuple[Callable[..., Any], Any, Any]],
    metrics: ServerMetrics | None = None,
    *,
    role: str | None = BENCH_ROLE,
    client_certificate: bool = True,
    on_refused_auth: Callable[[str, str], None] | None = None,
) -> Iterator[tuple[grpc.Channel, Out]]:
    """A real server with the interceptor (and `metrics` as its observer) over mTLS; handlers: method ->
    (function, request deserializer, response serializer). The client is bench-07 with `role` in its
    certificate; client_certificate=False: the server does not ask for one and the client presents none."""
    out = Out()
    lines = configure_logging("info", out)  # type: ignore[arg-type]
    ca = make_tls_ca()
    server = grpc.server(
        futures.ThreadPoolExecutor(2),
        interceptors=[ErrorMappingInterceptor(on_refused_auth=on_refused_auth, observer=metrics)],
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    name: grpc.unary_unary_rpc_method_handler(
                        function, request_deserializer=read, response_serializer=write
                    )
                    for name, (function, read, write) in handlers.items()
                },
            )
        ]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server_key, server_cert = pem(issue_server_certificate(ca))
    ca_pem = ca.certificate.public_bytes(serialization.Encoding.PEM)
    credentials = grpc.ssl_server_credentials(
        [(server_key, server_cert)], ca_pem, require_client_auth=client_certificate
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    if client_certificate:
        client_key, client_cert = pem(issue_client_certificate(ca, "bench-07", role=role))
        channel_credentials = grpc.ssl_channel_credentials(ca_pem, client_key, client_cert)
    else:
        channel_credentials = grpc.ssl_channel_credentials(ca_pem)
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}", channel_credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )
    try:
        yield channel, out
    finally:
        channel.close()
        server.stop(None)
        lines.close()
        structlog.reset_defaults()


@pytest.fixture
def service() -> Iterator[tuple[grpc.Channel, Out]]:
    trust_bundle = (get_trust_bundle, pb.GetTrustBundleRequest.FromString, pb.TrustBundle.SerializeToString)
    with serving({"GetTrustBundle": trust_bundle}) as served:
        yield served


def call(channel: grpc.Channel, data: bytes) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(f"/{SERVICE}/GetTrustBundle")(data, timeout=10)
    return caught.value


def test_internal_error_reference_finds_the_stack_trace_in_the_log(service: tuple[grpc.Channel, Out]) -> None:
    channel, out = service
    error = call(channel, b"")
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "Traceback" not in error.details() and "defect" not in error.details()
    reference = error.details().removeprefix("internal error (reference ").removesuffix(")")
    [logged] = [e for e in out.events() if e.get("rpc_id") == reference]
    assert logged["event"] == "rpc.internal_error" and logged["caller"] == "bench:bench-07"
    assert logged["exception"].startswith("Traceback (most recent call last):")
    assert "in get_trust_bundle" in logged["exception"]
    assert logged["exception"].rstrip().endswith("RuntimeError: a defect deep in the service")


def test_undecodable_request_is_invalid_argument_and_leaves_no_traceback(
    service: tuple[grpc.Channel, Out],
) -> None:
    channel, out = service
    error = call(channel, b"\x0a\x05abc")  # field 1, length 5, 3 bytes left
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("the request message does not decode: ")
    [refused] = out.events()
    assert refused["event"] == "rpc.refused" and refused["code"] == "INVALID_ARGUMENT"
    assert "exception" not in refused and b"Traceback" not in out.data


def request_hand_out(request: pb.HandOutRequest, context: grpc.ServicerContext) -> pb.HandOutResponse:
    note_call(device=request.device_id, area=request.area_id, request_id=request.request_id)
    if request.area_id == 99:
        raise UnknownArea("area 99 is not registered with this custodian")
    return pb.HandOutResponse(issuance_id=1)


def test_a_call_log_line_carries_the_noted_request_and_metrics_count_latency_and_refusals() -> None:
    metrics = ServerMetrics(CollectorRegistry())
    handlers = {
        "RequestHandOut": (
            request_hand_out,
            pb.HandOutRequest.FromString,
            pb.HandOutResponse.SerializeToString,
        ),
        "GetTrustBundle": (
            get_trust_bundle,
            pb.GetTrustBundleRequest.FromString,
            pb.TrustBundle.SerializeToString,
        ),
    }
    with serving(handlers, metrics) as (channel, out):
        hand_out = channel.unary_unary(
            f"/{SERVICE}/RequestHandOut",
            request_serializer=pb.HandOutRequest.SerializeToString,
            response_deserializer=pb.HandOutResponse.FromString,
        )
        hand_out(
            pb.HandOutRequest(request_id="tray-7:00DB", device_id="00DB1234567890A0", area_id=14), timeout=10
        )
        with pytest.raises(grpc.RpcError) as refused:
            hand_out(pb.HandOutRequest(request_id="tray-7:00DC", device_id="00DC", area_id=99), timeout=10)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        call(channel, b"")  # INTERNAL
        call(channel, b"\x0a\x05abc")  # INVALID_ARGUMENT before the servicer runs: nothing noted
    events = out.events()  # every line is written once the server's logging is closed
    [ok] = [e for e in events if e["event"] == "rpc.ok"]
    assert ok["method"] == f"/{SERVICE}/RequestHandOut" and ok["caller"] == "bench:bench-07"
    assert (ok["device"], ok["area"], ok["request_id"]) == ("00DB1234567890A0", 14, "tray-7:00DB")
    assert ok["rpc_id"] and ok["ms"] >= 0
    refusals = [e for e in events if e["event"] == "rpc.refused"]
    assert [(e["code"], e.get("device"), e.get("area")) for e in refusals] == [
        ("NOT_FOUND", "00DC", 99),
        ("INVALID_ARGUMENT", None, None),
    ]
    value = metrics.registry.get_sample_value
    assert value("vdno_hand_out_seconds_count", {"kind": "hand-out"}) == 1  # answered OK only
    assert 0 < value("vdno_hand_out_seconds_sum", {"kind": "hand-out"}) <= ok["ms"] / 1000 + 0.001
    assert value("vdno_refused_calls_total", {"reason": "UnknownArea", "code": "NOT_FOUND"}) == 1
    assert value("vdno_refused_calls_total", {"reason": "unexpected", "code": "INTERNAL"}) == 1
    assert value("vdno_refused_calls_total", {"reason": "InvalidRequest", "code": "INVALID_ARGUMENT"}) == 1


def whoami(request: pb.GetTrustBundleRequest, context: grpc.ServicerContext) -> pb.TrustBundle:
    """Answers with the calling bench's name and certificate fingerprint, in trailing metadata (the servicer
    gets the call's own context)."""
    caller = bench_caller()
    context.set_trailing_metadata((("x-caller", caller.name), ("x-sha256", caller.certificate_sha256 or "")))
    return pb.TrustBundle()


WHOAMI = {"GetTrustBundle": (whoami, pb.GetTrustBundleRequest.FromString, pb.TrustBundle.SerializeToString)}


def test_request_ids_are_a_random_prefix_then_a_count_from_one() -> None:
    with serving(WHOAMI) as (channel, out):
        method = channel.unary_unary(f"/{SERVICE}/GetTrustBundle")
        _, call_ = method.with_call(b"", timeout=10)
        method(b"", timeout=10)
        call(channel, b"\x0a\x05abc")
    trailing = dict(call_.trailing_metadata())
    assert trailing["x-caller"] == "bench-07" and len(trailing["x-sha256"]) == 64
    ids = [e["rpc_id"] for e in out.events() if e["event"] in ("rpc.ok", "rpc.refused")]
    assert len(ids) == 3 and all(len(i) == 22 and int(i, 16) >= 0 for i in ids)
    assert len({i[:12] for i in ids}) == 1
    assert [i[12:] for i in ids] == ["0000000001", "0000000002", "0000000003"]
    ok = [e for e in out.events() if e["event"] == "rpc.ok"]
    assert all(0 <= e["ms"] < 60_000 for e in ok)


def test_a_caller_without_a_certificate_is_unauthenticated_and_audited() -> None:
    audited: list[tuple[str, str]] = []
    with serving(WHOAMI, client_certificate=False, on_refused_auth=lambda *a: audited.append(a)) as (ch, out):
        error = call(ch, b"")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "a client certificate naming the caller is required"
    assert audited == [("unknown", "Unauthenticated")]
    [refused] = out.events()
    assert refused["caller"] == "unknown" and refused["error"] == "Unauthenticated"


def test_a_caller_of_the_wrong_role_is_refused_naming_its_role_and_the_method() -> None:
    audited: list[tuple[str, str]] = []
    with serving(WHOAMI, role=OFFICER_ROLE, on_refused_auth=lambda *a: audited.append(a)) as (ch, _):
        error = call(ch, b"")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == f"a vdno-officer certificate may not call /{SERVICE}/GetTrustBundle"
    assert audited == [("officer:bench-07", "WrongRole")]


def test_other_refusals_are_not_audited_as_authentication_failures() -> None:
    audited: list[tuple[str, str]] = []
    handlers = {
        "RequestHandOut": (
            request_hand_out,
            pb.HandOutRequest.FromString,
            pb.HandOutResponse.SerializeToString,
        )
    }
    with (
        serving(handlers, on_refused_auth=lambda *a: audited.append(a)) as (channel, _),
        pytest.raises(grpc.RpcError) as refused,
    ):
        channel.unary_unary(
            f"/{SERVICE}/RequestHandOut", request_serializer=pb.HandOutRequest.SerializeToString
        )(pb.HandOutRequest(request_id="r", device_id="00DC", area_id=99), timeout=10)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert audited == []


def test_undecodable_bytes_are_described_on_one_line_of_at_most_160_characters() -> None:
    assert tolerant_deserializer(None) is None

    def failing(message: str) -> Callable[[bytes], Any]:
        def read(data: bytes) -> Any:
            raise ValueError(message)

        return read

    read = tolerant_deserializer(failing("bad\n   field   7 " + "x" * 300))
    assert read is not None
    reason = read(b"")
    assert isinstance(reason, UndecodableRequest)
    assert reason.reason == ("bad field 7 " + "x" * 300)[:160]
    empty = tolerant_deserializer(failing(""))
    assert empty is not None and empty(b"").reason == "ValueError"
    fine = tolerant_deserializer(lambda data: data[::-1])
    assert fine is not None and fine(b"ab") == b"ba"


def slow_hand_out(request: pb.HandOutRequest, context: grpc.ServicerContext) -> pb.HandOutResponse:
    note_call(device=request.device_id, request_id=request.request_id)
    if request.area_id == 99:
        raise UnknownArea("area 99 is not registered with this custodian")
    if request.area_id == 98:
        raise RuntimeError("a defect after noting the request")
    time.sleep(0.03)
    return pb.HandOutResponse(issuance_id=1)


class CountingObserver:
    """A CallObserver that counts how often it is asked for each method's latency sink."""

    def __init__(self) -> None:
        self.asked: dict[str, int] = {}
        self.seconds: list[float] = []

    def latency(self, method: str) -> Callable[[float], None] | None:
        self.asked[method] = self.asked.get(method, 0) + 1
        return self.seconds.append

    def refused(self, reason: str, code: str) -> None:
        pass


def test_each_log_line_names_the_method_caller_outcome_and_noted_request_exactly() -> None:
    handlers = {
        "RequestHandOut": (slow_hand_out, pb.HandOutRequest.FromString, pb.HandOutResponse.SerializeToString)
    }
    observer = CountingObserver()
    with serving(handlers, observer) as (channel, out):  # type: ignore[arg-type]
        hand_out = channel.unary_unary(
            f"/{SERVICE}/RequestHandOut", request_serializer=pb.HandOutRequest.SerializeToString
        )
        hand_out(pb.HandOutRequest(request_id="r-1", device_id="00DB", area_id=14), timeout=10)
        hand_out(pb.HandOutRequest(request_id="r-2", device_id="00DB", area_id=14), timeout=10)
        for area in (99, 98):
            with pytest.raises(grpc.RpcError) as refused:
                hand_out(
                    pb.HandOutRequest(request_id=f"r-{area}", device_id="00DD", area_id=area), timeout=10
                )
            assert refused.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL)
    method = f"/{SERVICE}/RequestHandOut"
    assert observer.asked == {method: 1}  # a method is wrapped once, and its latency sink asked for once
    events = {e["request_id"]: e for e in out.events() if "request_id" in e}
    for ok in (events["r-1"], events["r-2"]):
        assert (ok["event"], ok["method"], ok["caller"], ok["device"]) == (
            "rpc.ok",
            method,
            "bench:bench-07",
            "00DB",
        )
        assert isinstance(ok["ms"], float) and ok["ms"] == round(ok["ms"], 2)
        assert 30 <= ok["ms"] < 60_000  # milliseconds: the servicer slept 30 ms
    assert len(observer.seconds) == 2 and all(0.03 <= s < 60 for s in observer.seconds)
    refused = events["r-99"]
    assert {k: refused[k] for k in ("event", "method", "caller", "code", "error", "reason", "device")} == {
        "event": "rpc.refused",
        "method": method,
        "caller": "bench:bench-07",
        "code": "NOT_FOUND",
        "error": "UnknownArea",
        "reason": "area 99 is not registered with this custodian",
        "device": "00DD",
    }
    internal = events["r-98"]
    assert (internal["event"], internal["method"], internal["caller"], internal["device"]) == (
        "rpc.internal_error",
        method,
        "bench:bench-07",
        "00DD",
    )


def test_a_refusal_carries_the_error_code_in_trailing_metadata() -> None:
    handlers = {
        "RequestHandOut": (slow_hand_out, pb.HandOutRequest.FromString, pb.HandOutResponse.SerializeToString)
    }
    with serving(handlers) as (channel, _), pytest.raises(grpc.RpcError) as refused:
        channel.unary_unary(
            f"/{SERVICE}/RequestHandOut", request_serializer=pb.HandOutRequest.SerializeToString
        )(pb.HandOutRequest(request_id="r", device_id="00DC", area_id=99), timeout=10)
    trailing = dict(refused.value.trailing_metadata())
    assert trailing[ERROR_CODE_KEY] == UnknownArea("x").error_code == "UNKNOWN_AREA"


def test_an_unknown_method_is_unimplemented_and_health_is_not_wrapped() -> None:
    with serving(WHOAMI) as (channel, out):
        with pytest.raises(grpc.RpcError) as unknown:
            channel.unary_unary(f"/{SERVICE}/NoSuchMethod")(b"", timeout=10)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # grpc.health.v1 answers any caller (a load balancer's probe has no bench role): not ours to wrap
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert out.events() == []


def test_outside_a_call_there_is_no_caller() -> None:
    for who in (bench_identity, officer_identity, bench_caller):
        with pytest.raises(Unauthenticated) as refused:
            who()
        assert str(refused.value) == "a client certificate naming the caller and its role is required"
