"""Reaching the server of a `vdno-server init` state folder as one of its benches, over mTLS.
Used by the demo, the benchmark and the integration tests."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def open_private_log(path: Path, mode: str = "a") -> IO[str]:
    """A log file for a service's stderr, created readable by this user only (mode "a" or "w"); line
    buffered. A log holds records: request ids, callers, devices."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    return os.fdopen(os.open(path, flags, 0o600), mode, buffering=1)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerNotServing(RuntimeError):
    """The server exited, or did not report SERVING in time; the message says which and why."""


def bench_channel(
    state: Path, port: int, bench: str = "bench-01", client_cert: tuple[bytes, bytes] | None = None
) -> grpc.Channel:
    """A channel to 127.0.0.1:port with the bench's certificate (or client_cert = (key PEM, cert PEM))."""
    if client_cert is None:
        client_cert = (
            (state / "tls" / f"{bench}.key").read_bytes(),
            (state / "tls" / f"{bench}.pem").read_bytes(),
        )
    key, cert = client_cert
    credentials = grpc.ssl_channel_credentials((state / "pki" / "tls-ca.pem").read_bytes(), key, cert)
    return grpc.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", "localhost")]
    )


def serving_status(state: Path, port: int) -> str:
    """'SERVING', another health status name, or the reason the check failed."""
    try:
        with bench_channel(state, port) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}"


def wait_until_serving(
    state: Path, port: int, exit_code: Callable[[], int | None], timeout: float, poll: float = 0.2
) -> None:
    """Poll health until SERVING. exit_code() returns the server process's exit code once it has ended."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        code = exit_code()
        if code is not None:
            raise ServerNotServing(f"vdno-server exited with {code} while starting")
        last = serving_status(state, port)
        if last == "SERVING":
            return
        time.sleep(poll)
    raise ServerNotServing(f"vdno-server not serving after {timeout:.0f} s ({last})")
