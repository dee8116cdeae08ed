"""The interceptor on a real gRPC server over mutual TLS (in-process): an unexpected exception is INTERNAL
with a reference id, and the log line with that id carries the stack trace; request bytes that do not decode
are INVALID_ARGUMENT, with no traceback anywhere in the log."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
import structlog
from cryptography.hazmat.primitives import serialization

from labpki.smki import CertifiedKey
from labpki.tls import issue_client_certificate, issue_server_certificate, make_tls_ca
from server.observability import configure_logging
from server.rpc.interceptors import ErrorMappingInterceptor
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


@pytest.fixture
def service() -> Iterator[tuple[grpc.Channel, Out]]:
    out = Out()
    lines = configure_logging("info", out)  # type: ignore[arg-type]
    ca = make_tls_ca()
    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[ErrorMappingInterceptor()])
    handler = grpc.unary_unary_rpc_method_handler(
        get_trust_bundle,
        request_deserializer=pb.GetTrustBundleRequest.FromString,
        response_serializer=pb.TrustBundle.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {"GetTrustBundle": handler})]
    )
    server_key, server_cert = pem(issue_server_certificate(ca))
    ca_pem = ca.certificate.public_bytes(serialization.Encoding.PEM)
    credentials = grpc.ssl_server_credentials([(server_key, server_cert)], ca_pem, require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    client_key, client_cert = pem(issue_client_certificate(ca, "bench-07"))
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}",
        grpc.ssl_channel_credentials(ca_pem, client_key, client_cert),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )
    try:
        yield channel, out
    finally:
        channel.close()
        server.stop(None)
        lines.close()
        structlog.reset_defaults()


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
