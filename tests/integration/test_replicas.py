"""Three replicas (`vdno-server serve` processes) on one PostgreSQL database under concurrent hand-outs,
some request ids sent to two replicas at the same moment: every request is answered, no (generation,
counter) is used twice, twins get the same bytes, and every stored command verifies with the vanilla DS
certificate. Nothing is injected: a bench retries only the answer a twin gets while its request id is
being signed by another replica ("still being signed"), as the service asks it to."""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from cryptography import x509
from harness import ServerProcess
from integration_testlib import BENCHES, Deployment, new_request_id
from sqlalchemy import text

from vdno.client.api import BenchClient
from vdno.client.errors import ServiceError
from vdno.client.handout import MeterReading, read_meter
from vdno.gbcs.cs02b import UpdateSecurityCredentialsCommand
from vdno.gbcs.framing import decode_message
from vdno.gbcs.signature import verify_signature

REPLICAS = 3
REQUESTS = 3000  # distinct request ids
# one meter per request id: a meter has at most one outstanding command (docs/architecture.md §2), and no
# outcome is reported here, so a second request id for the same meter would rightly be refused
METERS = REQUESTS
TWIN_EVERY = 4  # every 4th request id also goes to a second replica at the same moment
CONCURRENCY = 48
STILL_SIGNING = "this request is still being signed; retry with the same request id"
ATTEMPTS = 20


@pytest.fixture(scope="module")
def backend() -> str:
    return "postgres"


@pytest.fixture(scope="module")
def replicas(deployment: Deployment) -> Iterator[list[ServerProcess]]:
    """The deployment's server and two more on its state folder and database, each on a port of its own
    (as behind a load balancer)."""
    others = [ServerProcess(deployment.state, extra_env=deployment.server_env) for _ in range(REPLICAS - 1)]
    for i, server in enumerate(others, start=2):
        server.log_path = deployment.state / f"replica-{i}.log"
    try:
        for server in others:
            server.start()
        yield [deployment.server, *others]
    finally:
        for server in others:
            server.stop()


@dataclass(frozen=True)
class Job:
    replica: int
    bench: str
    request_id: str
    device_id: bytes
    area: int


@dataclass(frozen=True)
class Answer:
    job: Job
    counter: int
    command: bytes
    retries: tuple[str, ...]  # what each answer the bench retried said


class Benches:
    """One BenchClient per (replica, bench). hand_out() retries UNAVAILABLE as a bench would and says why
    it retried; any other error, or UNAVAILABLE after ATTEMPTS, is raised."""

    def __init__(self, deployment: Deployment, replicas: list[ServerProcess]) -> None:
        self._clients = {
            (r, bench): BenchClient(
                f"127.0.0.1:{server.port}",
                deployment.tls_ca.read_bytes(),
                deployment.bench_cert(bench).read_bytes(),
                deployment.bench_key(bench).read_bytes(),
                server_name_override="localhost",
                timeout=60,
                attempts=1,
            )
            for r, server in enumerate(replicas)
            for bench in BENCHES
        }

    def hand_out(self, job: Job, reading: MeterReading) -> Answer:
        client = self._clients[(job.replica, job.bench)]
        retries: list[str] = []
        while True:
            try:
                reply = client.request_hand_out(
                    job.request_id,
                    job.device_id.hex(),
                    job.area,
                    reading.device_certificate,
                    reading.credentials_response,
                )
            except ServiceError as exc:
                if exc.code_name != "UNAVAILABLE" or len(retries) + 1 >= ATTEMPTS:
                    raise
                retries.append(exc.message)
                time.sleep(0.05 * len(retries))
                continue
            return Answer(job, int(reply.originator_counter), bytes(reply.command), tuple(retries))

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def test_three_replicas_hand_out_concurrently_with_twin_request_ids(
    deployment: Deployment, replicas: list[ServerProcess]
) -> None:
    transport, device_ids = deployment.meters(METERS)
    readings = {device_id: read_meter(transport, device_id) for device_id in device_ids}
    jobs: list[Job] = []
    for i in range(REQUESTS):
        job = Job(i % REPLICAS, BENCHES[i % len(BENCHES)], new_request_id(), device_ids[i], 10 + i % 14)
        jobs.append(job)
        if i % TWIN_EVERY == 0:  # its twin, queued right behind it, to the next replica
            jobs.append(Job((job.replica + 1) % REPLICAS, job.bench, job.request_id, job.device_id, job.area))
    benches = Benches(deployment, replicas)
    errors: list[str] = []
    answers: list[Answer] = []
    lock = threading.Lock()

    def run(job: Job) -> None:
        try:
            answer = benches.hand_out(job, readings[job.device_id])
        except ServiceError as exc:
            with lock:
                errors.append(f"{exc.code_name}: {exc}")
            return
        with lock:
            answers.append(answer)

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            list(pool.map(run, jobs))
    finally:
        benches.close()
    took = time.monotonic() - started

    retried = collections.Counter(reason for a in answers for reason in a.retries)
    twins = len(jobs) - REQUESTS
    print(
        f"\n{REPLICAS} replicas: {len(jobs)} hand-out calls ({REQUESTS} request ids, {twins} sent twice at "
        f"once) in {took:.1f} s ({len(jobs) / took:.0f}/s); failed: {len(errors)}; retried: {dict(retried)}"
    )
    assert errors == []  # no UNAVAILABLE (nor anything else) left after the bench's retries
    assert set(retried) <= {STILL_SIGNING}  # the only UNAVAILABLE: a twin's request id still being signed
    by_request: dict[tuple[str, str], list[Answer]] = collections.defaultdict(list)
    for answer in answers:
        by_request[(answer.job.bench, answer.job.request_id)].append(answer)
    assert len(by_request) == REQUESTS
    for pair in by_request.values():  # a twin gets the same counter and bytes from the other replica
        assert len({(a.counter, a.command) for a in pair}) == 1

    with deployment.engine() as engine, engine.connect() as conn:
        repeated = conn.execute(
            text("SELECT generation, counter FROM issuances GROUP BY generation, counter HAVING count(*) > 1")
        ).all()
        rows = conn.execute(
            text("SELECT bench_id, request_id, generation, counter, status, signed_command FROM issuances")
        ).all()
    assert repeated == []
    stored = {(r.bench_id, r.request_id): r for r in rows}
    vanilla_ds = x509.load_der_x509_certificate(deployment.vanilla_certificates()[0])
    for key, pair in by_request.items():
        row = stored[key]
        expected = ("signed", pair[0].counter, pair[0].command)
        assert (row.status, row.counter, bytes(row.signed_command)) == expected
    for row in rows:  # every stored command, verified with the certificate's public key by `cryptography`
        message = decode_message(bytes(row.signed_command))
        verify_signature(message.signed_range, message.apdu.signature, vanilla_ds)
        payload = UpdateSecurityCredentialsCommand.decode(message.apdu.content)
        assert message.apdu.header.originator_counter == payload.control.seq_number == row.counter
    counters = sorted(r.counter for r in rows if r.generation == 1)
    assert all(a < b for a, b in itertools.pairwise(counters))
    assert deployment.verify_audit().returncode == 0  # the replicas appended to one linear chain
