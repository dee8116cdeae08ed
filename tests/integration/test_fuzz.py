"""Bad input gets a clear answer, never INTERNAL: a fuzz campaign (scripts/fuzz.py; `make fuzz` runs a longer
one) against the real service over mTLS, over every field of every RPC, then a valid hand-out. On both
databases: PostgreSQL refuses what SQLite stores (a NUL in text, a number past 32 bits in an INTEGER)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import grpc
import pytest
from integration_testlib import BENCHES, Deployment, log_events, rpc_error

from scripts.fuzz import (
    CaseMaker,
    Guard,
    Target,
    all_methods,
    build_seeds,
    log_problems,
    run_cases,
    valid_hand_out,
)
from vdno.gbcs.framing import decode_message

CASES = 8_000
SECONDS = 60.0  # per database: the campaign stops here even if CASES are not all sent (a busy machine)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def target(deployment: Deployment) -> Iterator[Target]:
    target = Target(deployment.state, deployment.server.port)
    yield target
    target.close()


def test_undecodable_request_is_invalid_argument_without_a_traceback(
    deployment: Deployment, target: Target
) -> None:
    call = target.channels["bench"].unary_unary("/vdno.v1.BenchService/RequestHandOut")
    error = rpc_error(lambda: call(b"\x0a\xff\xff\xff", timeout=10))  # field 1: a length past the end
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("the request message does not decode")
    log = deployment.log_text()
    assert "Exception deserializing" not in log and "Traceback" not in log
    [refused] = [e for e in log_events(log) if e.get("reason", "").startswith("the request message")]
    assert refused["event"] == "rpc.refused" and refused["caller"] == "bench:bench-01"


def test_fuzzed_requests_get_clear_answers_and_a_valid_hand_out_succeeds_afterwards(
    deployment: Deployment, target: Target
) -> None:
    seed = int(os.environ.get("VDNO_FUZZ_SEED", random.randrange(2**32)))
    seeds, next_meter = build_seeds(deployment.state, target)
    maker = CaseMaker(seed, seeds, Guard(set(BENCHES), {1}))
    assert deployment.server.proc is not None
    report = run_cases(
        target, maker.cases(), CASES, seconds=SECONDS, alive=lambda: deployment.server.proc.poll() is None
    )
    print(f"seed {seed}: {report.summary()}")
    assert report.failed == 0, f"seed {seed}: {report.summary()}; {report.failures}"
    assert report.cases >= 2000, f"only {report.cases} cases in {SECONDS} s"
    methods = {m.path for m in all_methods()}
    assert set(report.by_method) == methods, "some RPC was never called"
    fields = {f.full_name for m in all_methods() for f in m.request.DESCRIPTOR.fields}
    assert fields <= set(maker.mutator.touched), f"fields never fuzzed: {fields - set(maker.mutator.touched)}"
    assert {"INVALID_ARGUMENT", "OK", "FAILED_PRECONDITION", "NOT_FOUND", "PERMISSION_DENIED"} <= set(
        report.by_status
    )

    assert deployment.server.proc.poll() is None, "the server stopped"
    reply = valid_hand_out(deployment.state, target, next_meter)
    header = decode_message(reply.command).apdu.header
    assert header.business_target_id == bytes.fromhex(reply.device_id)
    assert not log_problems(deployment.log_text()), f"seed {seed}"
