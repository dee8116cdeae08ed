"""Records stay true through crashes, through the real service (mTLS subprocess, SoftHSM token, SQLite): one
outstanding command per meter whichever bench asks, cancellation by an officer or the bench that asked, a
cancelled command applied after all, the meter's CS02a answer as an outcome (and a stale one refused), and
attempts a crash left RECORDED, failed on restart and finished by the retry within the bench's budget."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from integration_testlib import (
    Deployment,
    hand_out_request,
    record_mismatches,
    replacement_outcomes,
    request_command,
    rpc_error,
)
from sqlalchemy import insert, text
from typer.testing import CliRunner

from vdno.admin.api import CustodyCallFailed
from vdno.admin.cli import app as admin_app
from vdno.client.api import ATTEMPTS, BACKOFF
from vdno.client.cli import app as bench_app
from vdno.client.errors import ServiceError
from vdno.client.handout import ALREADY_APPLIED, APPLIED, hand_out, read_meter
from vdno.gbcs.cells import StatusCode
from vdno.server.domain.values import HandOutRequest
from vdno.server.store.schema import issuances
from vdno.v1 import custodian_pb2 as pb


def test_one_outstanding_command_per_meter_and_its_cancellation(deployment: Deployment) -> None:
    transport, [device_id] = deployment.meters(1)
    meter = transport.devices[device_id]
    first, _ = request_command(deployment, transport, device_id, 11, "bench-01", "held-1")
    channel, stub = deployment.stub("bench-02")
    with channel:
        # Another bench, another request for the same meter: refused, naming what holds it.
        held = rpc_error(
            lambda: stub.RequestHandOut(
                hand_out_request(read_meter(transport, device_id), device_id, 12, "other-1"), timeout=30
            )
        )
        # Only the bench that asked may cancel its request.
        not_its = rpc_error(
            lambda: stub.CancelRequest(pb.CancelRequestRequest(request_id="held-1", reason="x"))
        )
    assert held.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"request 'held-1' of bench bench-01 (hand-out, issuance {first.issuance_id}, signed)" in (
        held.details()
    )
    assert not_its.code() == grpc.StatusCode.NOT_FOUND

    with deployment.officer() as officer:
        with pytest.raises(CustodyCallFailed) as no_reason:
            officer.cancel_command(first.issuance_id, " ")
        cancelled = officer.cancel_command(first.issuance_id, "bench-01 was lost with its tray")
    assert no_reason.value.code == "INVALID_ARGUMENT"
    assert (cancelled["status"], cancelled["released"], cancelled["cancelled_by"]) == (
        "cancelled",
        True,
        "officer:officer-01",
    )
    [audited] = [
        e
        for e in deployment.audit_events("command.cancelled")
        if e.subject == f"issuance:{first.issuance_id}"
    ]
    assert audited.actor == "officer:officer-01" and "lost with its tray" in audited.details

    # The cancelled request is not handed out again; the meter is free for another request.
    with deployment.client("bench-01") as api, pytest.raises(ServiceError) as retried:
        api.request_hand_out(
            "held-1", device_id.hex(), 11, read_meter(transport, device_id).device_certificate,
            read_meter(transport, device_id).credentials_response,
        )  # fmt: skip
    assert retried.value.code_name == "FAILED_PRECONDITION" and "cancelled" in retried.value.message
    second, _ = request_command(deployment, transport, device_id, 12, "bench-02", "other-2")

    # bench-01 had kept the cancelled command's bytes, and the meter applies it after all. The next reading
    # that comes with a request for the meter proves it: the records follow the meter, not the cancellation.
    assert {o.status for o in replacement_outcomes(meter.process(deployment.mac(first.command)))} == {
        StatusCode.SUCCESS
    }
    with deployment.client("bench-02") as api, pytest.raises(ServiceError) as moved:
        reading = read_meter(transport, device_id)
        api.request_hand_out(
            "other-3", device_id.hex(), 13, reading.device_certificate, reading.credentials_response
        )
    assert moved.value.code_name == "FAILED_PRECONDITION"
    [row] = deployment.issuance_rows("bench-01", "held-1")
    assert row.status == "applied" and row.cancelled_by == "officer:officer-01"
    assert record_mismatches(deployment, {device_id: meter}) == []

    # The other command can no longer apply; its refusal is recorded on it and moves nothing.
    refusal = meter.process(deployment.mac(second.command, check=False))
    with deployment.client("bench-02") as api:
        assert api.report_outcome("other-2", refusal).status == "rejected"
    assert record_mismatches(deployment, {device_id: meter}) == []


def test_the_bench_that_asked_cancels_and_the_meter_is_free_again(deployment: Deployment) -> None:
    transport, [device_id] = deployment.meters(1)
    reply, _ = request_command(deployment, transport, device_id, 14, "bench-01", "mine-1")
    bench = [
        "--server", deployment.target, "--server-name", "localhost", "--ca", str(deployment.tls_ca),
        "--cert", str(deployment.bench_cert("bench-01")), "--key", str(deployment.bench_key("bench-01")),
    ]  # fmt: skip
    done = CliRunner().invoke(
        bench_app,
        ["cancel", "--request-id", "mine-1", "--reason", "the meter's seal is broken", "--json", *bench],
    )
    assert done.exit_code == 0, done.stderr
    cancelled = json.loads(done.stdout)
    assert (cancelled["status"], cancelled["cancelledBy"], cancelled["released"]) == (
        "cancelled",
        "bench:bench-01",
        True,
    )
    assert (cancelled["issuanceId"], cancelled["device"], cancelled["requestId"]) == (
        reply.issuance_id,
        device_id.hex().upper(),
        "mine-1",
    )
    unknown = CliRunner().invoke(bench_app, ["cancel", "--request-id", "none-such", "--reason", "x", *bench])
    assert unknown.exit_code == 1 and "NOT_FOUND" in unknown.stderr
    # An officer cancelling it again changes nothing; the answer says who cancelled it.
    officer = [
        "--config",
        str(deployment.state / "clients" / "officer-01.toml"),
        "--server",
        deployment.target,
    ]
    again = CliRunner().invoke(
        admin_app,
        [*officer, "--json", "commands", "cancel", "--issuance", str(reply.issuance_id), "--reason", "x"],
    )
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["cancelled_by"] == "bench:bench-01"
    with deployment.client("bench-02") as api:
        result = hand_out(api, transport, api.trust_bundle(), device_id, 15, gateway=deployment.dcc)
    assert result.status == APPLIED, result.reason
    assert record_mismatches(deployment, transport.devices) == []


def test_the_meters_cs02a_answer_is_the_outcome_and_a_stale_one_is_not(deployment: Deployment) -> None:
    transport, [device_id] = deployment.meters(1)
    meter = transport.devices[device_id]
    reply, before = request_command(deployment, transport, device_id, 16, "bench-01", "read-1")
    meter.process(deployment.mac(reply.command))  # applied; the bench crashed before it reported
    with deployment.client("bench-01") as api:
        with pytest.raises(ServiceError) as stale:
            api.report_outcome("read-1", credentials_answer=before.credentials_response)
        assert stale.value.code_name == "FAILED_PRECONDITION"
        assert "before the command existed" in stale.value.message
        # The rerun: same request id, same bytes; the meter holds them already and is not sent them again.
        bundle = api.trust_bundle()
        rerun = hand_out(api, transport, bundle, device_id, 16, request_id="read-1", gateway=deployment.dcc)
        assert (rerun.status, rerun.reason, rerun.command) == (APPLIED, ALREADY_APPLIED, reply.command)
        again = hand_out(api, transport, bundle, device_id, 16, request_id="read-1", gateway=deployment.dcc)
        assert again.status == APPLIED  # and again: the outcome is recorded once
    [row] = deployment.issuance_rows("bench-01", "read-1")
    assert row.status == "applied"
    [reported] = [
        e for e in deployment.audit_events("outcome.reported") if e.subject == f"issuance:{row.issuance_id}"
    ]
    assert json.loads(reported.details)["evidence"] == "credentials"
    assert record_mismatches(deployment, {device_id: meter}) == []


def left_recorded(
    deployment: Deployment, request_id: str, device: bytes, certificate: bytes, age: float
) -> int:
    """What a server killed between recording a hand-out (to area 17, for bench-01) and storing its signature
    leaves behind: the counter allocated and the issuance RECORDED, `age` seconds ago. Its counter."""
    allocate = "UPDATE counters SET last_value = last_value + 1 WHERE generation = 1 RETURNING last_value"
    fingerprint = HandOutRequest("bench-01", request_id, device, 17, b"", b"").fingerprint()
    with deployment.engine() as engine, engine.begin() as conn:
        counter = int(conn.execute(text(allocate)).scalar_one())
        conn.execute(
            insert(issuances).values(
                bench_id="bench-01",
                request_id=request_id,
                request_fingerprint=fingerprint,
                device_id=device,
                area_id=17,
                generation=1,
                counter=counter,
                device_certificate=certificate,
                status="recorded",
                created_at=datetime.now(UTC) - timedelta(seconds=age),
            )
        )
    return counter


def events_of(deployment: Deployment, event: str, issuance_id: int) -> list[str]:
    """The actors of `event` audit entries about the issuance."""
    return [e.actor for e in deployment.audit_events(event) if e.subject == f"issuance:{issuance_id}"]


def test_attempts_a_crash_left_recorded_are_failed_on_restart_and_finished_within_the_retry_budget(
    deployment: Deployment,
) -> None:
    transport, [old, young] = deployment.meters(2)
    readings = {d: read_meter(transport, d) for d in (old, young)}
    counter = left_recorded(deployment, "crash-old", old, readings[old].device_certificate, age=60)
    deployment.restart()
    [row] = deployment.issuance_rows("bench-01", "crash-old")
    assert row.status == "failed" and "abandoned" in row.failure
    assert events_of(deployment, "command.failed", row.issuance_id) == ["service"]

    # A younger one (a crash 4 s ago, or a live attempt of another process: the service cannot tell yet)
    # holds its meter: another bench is told to retry, not refused, and its retries, within the bench's
    # budget, outlast the attempt's abandonment (5 s): it gets its command.
    left_recorded(deployment, "crash-young", young, readings[young].device_certificate, age=4)
    started = time.monotonic()
    with deployment.client("bench-02", attempts=1) as api, pytest.raises(ServiceError) as busy:
        api.request_hand_out(
            "after-crash", young.hex(), 18, readings[young].device_certificate,
            readings[young].credentials_response,
        )  # fmt: skip
    assert busy.value.code_name == "UNAVAILABLE" and "'crash-young'" in busy.value.message
    with deployment.client("bench-02", attempts=ATTEMPTS) as api:
        other = api.request_hand_out(
            "after-crash", young.hex(), 18, readings[young].device_certificate,
            readings[young].credentials_response,
        )  # fmt: skip
    assert other.command and time.monotonic() - started < sum(BACKOFF * 2**i for i in range(ATTEMPTS - 1))
    [young_row] = deployment.issuance_rows("bench-01", "crash-young")
    assert young_row.status == "failed"

    # The old one's own retry finishes it under the counter it was recorded with: one signature, once.
    with deployment.client("bench-01") as api:
        finished = api.request_hand_out(
            "crash-old", old.hex(), 17, readings[old].device_certificate, readings[old].credentials_response
        )
    assert finished.originator_counter == counter
    [row] = deployment.issuance_rows("bench-01", "crash-old")
    assert row.status == "signed" and bytes(row.signed_command) == finished.command
    assert len(events_of(deployment, "command.issued", row.issuance_id)) == 1
