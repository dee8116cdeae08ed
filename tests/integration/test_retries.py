"""Retries end to end through the real service (mTLS subprocess, SoftHSM token) on SQLite and PostgreSQL,
with real faults: an attempt that failed because the token was gone, finished by the bench's retry; attempts
left recorded but never signed by a server killed with SIGKILL, finished by retries once stale; and twin
calls with one request id in flight at once, signed once. Each time the counts are checked: one issuance per
(bench, request id), its recorded counter kept, the generation's counter not advanced by a retry, one
`command.issued` audit entry per issuance, every released command verified with `cryptography`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from integration_testlib import (
    Deployment,
    hand_out_request,
    new_request_id,
    rpc_error,
    set_config,
    wait_for_health,
)
from sqlalchemy import select

from vdno.client.checks import check_command
from vdno.client.handout import MeterReading, read_meter
from vdno.gbcs.framing import decode_message
from vdno.server.domain.issuance import STALE_ATTEMPT
from vdno.server.store.schema import counters, issuances

RECONNECT_MAX = 0.5  # [hsm] reconnect_max: the token back -> the signer reconnected within about this


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def prepare_database(deployment: Deployment) -> None:
    """Run by the deployment fixture before the server starts."""
    set_config(deployment.state, "hsm", "reconnect_max", str(RECONNECT_MAX))


@contextmanager
def token_away(deployment: Deployment) -> Iterator[None]:
    """The SoftHSM token's directory moved out of the token dir (the HSM loses the token), then back."""
    [directory] = [p for p in (deployment.state / "tokens").iterdir() if p.is_dir()]
    away = deployment.state / f"away-{directory.name}"
    shutil.move(directory, away)
    try:
        yield
    finally:
        shutil.move(away, directory)


def verify_with_cryptography(deployment: Deployment, command: bytes) -> None:
    """The KRP signature over GBCS's signed range, checked with `cryptography` and vanilla g1's DS key."""
    message = decode_message(command)
    assert message.apdu.signature is not None and len(message.apdu.signature) == 64
    r, s = (int.from_bytes(message.apdu.signature[i : i + 32], "big") for i in (0, 32))
    certificate = x509.load_der_x509_certificate(deployment.vanilla_certificates(1)[0])
    public_key = certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(encode_dss_signature(r, s), message.signed_range, ec.ECDSA(hashes.SHA256()))


def last_counter(deployment: Deployment) -> int:
    with deployment.engine() as engine, engine.connect() as conn:
        return int(conn.execute(select(counters.c.last_value).where(counters.c.generation == 1)).scalar_one())


def history(deployment: Deployment, issuance_id: int) -> list[tuple[str, dict[str, Any]]]:
    subject = f"issuance:{issuance_id}"
    return [(e.event, json.loads(e.details)) for e in deployment.audit_events() if e.subject == subject]


def signed_once(deployment: Deployment, bench: str, request_id: str, command: bytes) -> Any:
    """The one issuance of (bench, request id): signed with `command`, one recorded and one issued audit
    entry under its counter, the command verified with `cryptography`. Returns its row."""
    [row] = deployment.issuance_rows(bench, request_id)
    assert (row.status, bytes(row.signed_command)) == ("signed", command)
    events = history(deployment, row.issuance_id)
    recorded = [d for name, d in events if name == "command.recorded"]
    issued = [d for name, d in events if name == "command.issued"]
    assert len(recorded) == 1 and len(issued) == 1, events  # one signature, however many attempts
    assert recorded[0]["counter"] == issued[0]["counter"] == row.counter
    assert decode_message(command).apdu.header.originator_counter == row.counter
    verify_with_cryptography(deployment, command)
    return row


def twin_calls(deployment: Deployment, reading: MeterReading, device_id: bytes, request_id: str) -> list[Any]:
    """TWINS calls of one hand-out with one request id, each on its own channel, released at once."""
    barrier = threading.Barrier(TWINS)

    def call(_: int) -> Any:
        channel, stub = deployment.stub("bench-01")
        with channel:
            barrier.wait(timeout=10)
            return stub.RequestHandOut(hand_out_request(reading, device_id, 16, request_id), timeout=30)

    with ThreadPoolExecutor(TWINS) as pool:
        return list(pool.map(call, range(TWINS)))


TWINS = 4


def test_twin_calls_in_flight_are_signed_once_and_get_the_same_bytes(deployment: Deployment) -> None:
    transport, devices = deployment.meters(4)
    for device_id in devices:
        request_id = new_request_id()
        before = last_counter(deployment)
        replies = twin_calls(deployment, read_meter(transport, device_id), device_id, request_id)
        assert len({r.command for r in replies}) == 1, "every twin gets the same signed bytes"
        assert len({(r.issuance_id, r.originator_counter) for r in replies}) == 1
        row = signed_once(deployment, "bench-01", request_id, replies[0].command)
        assert last_counter(deployment) == row.counter > before  # one counter allocated for the twins
    with deployment.client() as api:
        bundle = api.trust_bundle()
    for row in deployment.issuance_rows("bench-01"):
        if bytes(row.device_id) in devices:
            check_command(bytes(row.signed_command), bytes(row.device_id), 16, bundle)


def test_an_attempt_that_failed_with_the_token_gone_is_finished_by_the_retry(deployment: Deployment) -> None:
    transport, [device_id] = deployment.meters(1)
    reading = read_meter(transport, device_id)
    request_id = new_request_id()
    channel, stub = deployment.stub("bench-01")
    with channel:
        with token_away(deployment):
            error = rpc_error(
                lambda: stub.RequestHandOut(hand_out_request(reading, device_id, 12, request_id), timeout=30)
            )
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            [failed] = deployment.issuance_rows("bench-01", request_id)
            assert (failed.status, failed.signed_command) == ("failed", None)
            allocated = last_counter(deployment)
            assert allocated == failed.counter  # the write-ahead record took the counter
        wait_for_health(deployment.server.health_port, "SERVING", within=RECONNECT_MAX + 5)
        # the bench retries with the same request id and a fresh reading of the meter
        retry = stub.RequestHandOut(
            hand_out_request(read_meter(transport, device_id), device_id, 12, request_id), timeout=30
        )
        again = stub.RequestHandOut(hand_out_request(reading, device_id, 12, request_id), timeout=30)

    row = signed_once(deployment, "bench-01", request_id, retry.command)
    assert (
        (row.issuance_id, row.counter)
        == (failed.issuance_id, failed.counter)
        == (
            retry.issuance_id,
            retry.originator_counter,
        )
    )
    assert again.command == retry.command  # and a later retry is answered from the records
    assert last_counter(deployment) == allocated  # the retry allocated no counter
    names = [name for name, _ in history(deployment, row.issuance_id)]
    assert names == ["command.recorded", "command.failed", "command.issued"]


class Load:
    """Benches handing out fresh meters back to back, each call one attempt with a new request id, until the
    server stops answering. `asked` keeps what each request was made of (for retries)."""

    def __init__(self, deployment: Deployment, threads: int = 4, meters: int = 8) -> None:
        self.deployment = deployment
        self.asked: dict[str, tuple[str, bytes, MeterReading]] = {}
        self.answered: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(
                target=self._bench, args=(("bench-01", "bench-02")[i % 2], *deployment.meters(meters))
            )
            for i in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for thread in self._threads:
            thread.join(30)

    def wait_answered(self, count: int, within: float = 10.0) -> None:
        """Until `count` calls were answered (the benches are then in full flow)."""
        deadline = time.monotonic() + within
        while len(self.answered) < count:
            assert time.monotonic() < deadline, f"only {len(self.answered)} answers in {within} s"
            time.sleep(0.005)

    def _bench(self, bench: str, transport: Any, device_ids: list[bytes]) -> None:
        channel, stub = self.deployment.stub(bench)
        with channel:
            for device_id in device_ids:
                reading = read_meter(transport, device_id)
                request_id = new_request_id()
                with self._lock:
                    self.asked[request_id] = (bench, device_id, reading)
                try:
                    reply = stub.RequestHandOut(
                        hand_out_request(reading, device_id, 19, request_id), timeout=10
                    )
                except grpc.RpcError:
                    return  # the server is gone
                with self._lock:
                    self.answered[request_id] = reply.command


def freeze_while_an_attempt_is_recorded(deployment: Deployment, within: float = 5.0) -> None:
    """SIGSTOP the server as soon as the database shows an issuance recorded and not yet signed (a step
    between its record and its store), so that a kill right after leaves it recorded; after `within`
    seconds without one, stops it wherever it is."""
    assert deployment.server.proc is not None
    query = select(issuances.c.issuance_id).where(issuances.c.status == "recorded").limit(1)
    deadline = time.monotonic() + within
    with deployment.engine() as engine, engine.connect() as conn:
        while time.monotonic() < deadline and conn.execute(query).first() is None:
            conn.rollback()
    os.kill(deployment.server.proc.pid, signal.SIGSTOP)


def test_attempts_recorded_but_never_signed_by_a_killed_server_are_finished_once_stale(
    deployment: Deployment,
) -> None:
    stranded: list[Any] = []
    for _ in range(10):  # the kill may still land after a step's store (a busy machine): try again if so
        with Load(deployment) as load:
            load.wait_answered(6)
            assert deployment.server.proc is not None
            freeze_while_an_attempt_is_recorded(deployment)
            deployment.server.proc.kill()
            deployment.server.proc.wait()
        rows = [r for r in deployment.issuance_rows() if r.request_id in load.asked]
        stranded = [r for r in rows if r.status == "recorded"]
        if stranded:  # dated ahead: a restart slower than STALE_ATTEMPT must not find them stale yet
            deployment.execute(
                "UPDATE issuances SET created_at = :at WHERE status = 'recorded'",
                at=datetime.now(UTC) + timedelta(seconds=60),
            )
        deployment.server.start()
        if stranded:
            break
    assert stranded, "no attempt was caught between its record and its signature in 10 kills"
    assert all(r.signed_command is None for r in stranded)
    # What the benches were answered before the kill is stored exactly as released.
    for request_id, command in load.answered.items():
        bench = load.asked[request_id][0]
        signed_once(deployment, bench, request_id, command)
    allocated = last_counter(deployment)

    channel_1, stub_1 = deployment.stub("bench-01")
    channel_2, stub_2 = deployment.stub("bench-02")
    stubs = {"bench-01": stub_1, "bench-02": stub_2}
    with channel_1, channel_2:

        def retry(row: Any) -> Any:
            bench, device_id, reading = load.asked[row.request_id]
            request = hand_out_request(reading, device_id, 19, row.request_id)
            return stubs[bench].RequestHandOut(request, timeout=30)

        # A recorded attempt younger than STALE_ATTEMPT may still be signing somewhere: not signed again.
        young = rpc_error(lambda: retry(stranded[0]))
        assert young.code() == grpc.StatusCode.UNAVAILABLE
        assert young.details() == "this request is still being signed; retry with the same request id"
        # Once stale (the server's clock is not ours to move: the records are dated back), it is finished.
        deployment.execute(
            "UPDATE issuances SET created_at = :at WHERE status = 'recorded'",
            at=datetime.now(UTC) - STALE_ATTEMPT - timedelta(seconds=5),
        )
        finished = {row.request_id: retry(row) for row in stranded}

    for row in stranded:
        reply = finished[row.request_id]
        again = signed_once(deployment, row.bench_id, row.request_id, reply.command)
        assert (
            (again.issuance_id, again.counter)
            == (row.issuance_id, row.counter)
            == (
                reply.issuance_id,
                reply.originator_counter,
            )
        )
    assert last_counter(deployment) == allocated  # the retries allocated no counter
    rows = [r for r in deployment.issuance_rows() if r.request_id in load.asked]
    assert Counter(r.status for r in rows if r.request_id in finished) == {"signed": len(stranded)}
    counters_used = [(r.generation, r.counter) for r in deployment.issuance_rows()]
    assert len(set(counters_used)) == len(counters_used)
    verified = deployment.verify_audit()  # the whole log of this deployment, every test of the module
    assert verified.returncode == 0, verified.stdout + verified.stderr
