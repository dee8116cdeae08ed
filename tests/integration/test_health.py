"""Health tells the truth (real server subprocess, mTLS, SoftHSM): the plaintext health listener for load
balancers; a stopped process holding the database's write lock, with two server processes whose health
the parent combines; a PIN refused at start-up, tried once and never again."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from harness import PYTHON, ServerProcess
from integration_testlib import (
    Deployment,
    HealthTimeline,
    hand_out_request,
    health_of,
    log_events,
    new_request_id,
    rpc_error,
    set_config,
    wait_for_health,
)

from scripts.lab_service import free_port, serving_status
from vdno.client.handout import read_meter
from vdno.v1 import custodian_pb2 as pb
from vdno.v1 import custodian_pb2_grpc as pb_grpc

WRITE_LOCK_WAIT = 0.5  # [database] write_lock_wait of this deployment (default 5 s)
COMPONENTS = ("", "vdno.v1.BenchService", "vdno.hsm", "vdno.database")
_HOLD = """
import fcntl, sys
lock = open(sys.argv[1], "a+b")
fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def prepare_database(deployment: Deployment) -> None:
    """Run by the deployment fixture before the server starts."""
    set_config(deployment.state, "database", "write_lock_wait", str(WRITE_LOCK_WAIT))


@contextlib.contextmanager
def lock_held_by_a_stopped_process(lock_path: Path) -> Iterator[None]:
    """Another process (a replica, say) takes the SQLite write lock and is stopped while holding it; it
    is killed when the block ends, which releases the lock."""
    args = [sys.executable, "-c", _HOLD, str(lock_path)]
    holder = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)
        yield
    finally:
        holder.kill()
        holder.wait()


@contextlib.contextmanager
def restarted(
    server: ServerProcess, env: dict[str, str], launcher: list[str] | None = None, wait_serving: bool = True
) -> Iterator[ServerProcess]:
    """The deployment's server restarted with more environment (and another launcher), then restarted as
    it was when the block ends."""
    saved_env, saved_launcher = dict(server.extra_env), server.launcher
    server.stop()
    server.extra_env.update(env)
    server.launcher = launcher or saved_launcher
    try:
        server.start(wait_serving=wait_serving)
        yield server
    finally:
        server.stop()
        server.extra_env, server.launcher = saved_env, saved_launcher
        server.start()


def test_the_health_listener_answers_health_and_nothing_else_without_a_client_certificate(
    deployment: Deployment,
) -> None:
    port = deployment.server.health_port
    assert port and port != deployment.server.port
    for service in COMPONENTS:
        assert health_of(port, service) == "SERVING"
    assert health_of(port, "vdno.v1.NoSuchService") == "NOT_FOUND"
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        bench = pb_grpc.BenchServiceStub(channel)
        assert rpc_error(lambda: bench.GetTrustBundle(pb.GetTrustBundleRequest(), timeout=5)).code() == (
            grpc.StatusCode.UNIMPLEMENTED
        )
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        error = rpc_error(lambda: list(reflect.ServerReflectionInfo(iter([listing]), timeout=5)))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    # The mTLS port answers health too (to enrolled benches), with the same statuses.
    assert serving_status(deployment.state, deployment.server.port) == "SERVING"


def test_a_stopped_process_holding_the_write_lock_makes_writes_unavailable_and_health_not_serving(
    deployment: Deployment,
) -> None:
    """With two server processes: each answers UNAVAILABLE within the wait, and the parent's health
    listener, which combines them, says NOT_SERVING until the lock is free again."""
    transport, [device_id] = deployment.meters(1)
    request = hand_out_request(read_meter(transport, device_id), device_id, 15, new_request_id())
    two_processes = {"VDNO_PROCESSES": "2", "VDNO_LISTEN": f"127.0.0.1:{free_port()}"}
    with restarted(deployment.server, two_processes) as two:
        wait_for_health(two.health_port, "SERVING", within=10)
        channel, stub = deployment.stub()
        with channel, HealthTimeline(two.health_port) as timeline:
            with lock_held_by_a_stopped_process(deployment.state / "vdno.db.writelock"):
                held = time.monotonic()
                for _ in range(3):  # the port is shared: the calls reach either process
                    started = time.monotonic()
                    error = rpc_error(lambda: stub.RequestHandOut(request, timeout=10))
                    assert error.code() == grpc.StatusCode.UNAVAILABLE
                    assert "write lock was not free within 0.5 s" in (error.details() or "")
                    assert time.monotonic() - started < WRITE_LOCK_WAIT + 1.0
                wait_for_health(two.health_port, "NOT_SERVING", within=WRITE_LOCK_WAIT + 3)
                assert health_of(two.health_port, "vdno.database") == "NOT_SERVING"
                assert health_of(two.health_port, "vdno.hsm") == "SERVING"
                assert deployment.issuance_rows(request_id=request.request_id) == []  # nothing recorded
            serving_in = wait_for_health(two.health_port, "SERVING", within=4)  # once the holder is gone
            reply = stub.RequestHandOut(request, timeout=10)  # the same request id, now signed
    not_serving = timeline.first("NOT_SERVING", after=held)
    assert not_serving is not None
    print(f"\nlock held: NOT_SERVING {not_serving - held:.2f} s later; freed: SERVING {serving_in:.2f} s")
    assert not_serving - held < WRITE_LOCK_WAIT + 3
    [row] = deployment.issuance_rows(request_id=request.request_id)
    assert (row.status, bytes(row.signed_command)) == ("signed", reply.command)


def test_a_pin_refused_at_start_up_is_tried_once_and_health_says_not_serving(
    deployment: Deployment, tmp_path: Path
) -> None:
    pin = "wrong-pin-4242"
    logins = tmp_path / "logins.txt"
    log_start = deployment.server.log_path.stat().st_size
    transport, device_ids = deployment.meters(3)
    requests = [hand_out_request(read_meter(transport, d), d, 20, new_request_id()) for d in device_ids]
    counted = [PYTHON, str(Path(__file__).with_name("counted_login_server.py"))]
    env = {"VDNO_HSM_PIN": pin, "VDNO_TEST_LOGIN_LOG": str(logins)}
    with restarted(deployment.server, env, launcher=counted, wait_serving=False) as refused:
        port = refused.health_port
        assert [health_of(port, s) for s in COMPONENTS] == ["NOT_SERVING"] * 3 + ["SERVING"]
        assert serving_status(deployment.state, refused.port) == "NOT_SERVING"
        channel, stub = deployment.stub()
        with channel:
            for request in requests * 2:
                error = rpc_error(lambda request=request: stub.RequestHandOut(request, timeout=10))
                assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
                details = error.details() or ""
                assert "refused the configured PIN" in details and "restart" in details
                assert pin not in details and "CKR" not in details
        time.sleep(2.1)  # health probes every second meanwhile
        assert health_of(port) == "NOT_SERVING"
        refused.stop()  # its log lines are all written
        log_text = refused.log_path.read_text(errors="replace")[log_start:]
    assert logins.read_text().count("C_Login") == 1  # at start-up, never again
    events = log_events(log_text)
    refusals = [e for e in events if e["event"] == "hsm.pin_refused"]
    assert len(refusals) == 1 and refusals[0]["level"] == "error" and "restart" in refusals[0]["action"]
    assert pin not in log_text
    # With the right PIN (the server as it was), the requests refused meanwhile are finished on retry.
    channel, stub = deployment.stub()
    with channel:
        for request in requests:
            reply = stub.RequestHandOut(request, timeout=10)
            [row] = deployment.issuance_rows(request_id=request.request_id)
            assert (row.status, bytes(row.signed_command)) == ("signed", reply.command)
