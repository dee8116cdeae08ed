"""Hand-outs through the real service (mTLS subprocess, SoftHSM token) against SQLite and PostgreSQL:
one meter end to end, idempotent retries, tampering and replay seen by the bench and the meter,
200 concurrent requests, and a restart between two hand-outs."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from cryptography import x509
from integration_testlib import (
    BENCHES,
    VANILLA_G1_ENTITY,
    Deployment,
    area_entity_id,
    hand_in_command,
    hand_out_request,
    microseconds_now,
    new_request_id,
    no_cells,
    replacement_outcomes,
    request_command,
    rpc_error,
    ski_of,
)

from vdno.client.checks import check_command
from vdno.client.errors import CommandRefused
from vdno.client.handout import APPLIED, FAILED, hand_out, read_meter
from vdno.gbcs.cells import StatusCode
from vdno.gbcs.cs02b import UpdateSecurityCredentialsCommand
from vdno.gbcs.framing import decode_message
from vdno.gbcs.signature import verify_signature


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def statuses(response: bytes) -> set[int]:
    return {int(o.status) for o in replacement_outcomes(response)}


def test_one_meter_is_handed_out_end_to_end(deployment: Deployment) -> None:
    transport, [device_id] = deployment.meters(1)
    meter = transport.devices[device_id]
    area, request_id = 12, new_request_id()
    with deployment.client() as api:
        result = hand_out(
            api, transport, api.trust_bundle(), device_id, area, request_id=request_id, gateway=deployment.dcc
        )

    assert result.status == APPLIED, result.reason
    # The meter's NO cells now hold exactly the area DNO's certificates, and it saw the counter.
    area_ds, area_ka = deployment.area_certificates(area)
    assert no_cells(meter) == (area_ds, area_ka)
    assert meter.originator_counters[VANILLA_G1_ENTITY] == result.counter

    # The service's record agrees: one issuance, applied, with the released bytes; the device's cells.
    [row] = deployment.issuance_rows("bench-01", request_id)
    assert (row.status, row.area_id, bytes(row.device_id)) == ("applied", area, device_id)
    assert (row.counter, bytes(row.signed_command)) == (result.counter, result.command)
    with deployment.store() as store:
        ds_cell, ka_cell = store.device_cells(device_id)
    assert ds_cell is not None and ka_cell is not None
    assert (ds_cell.entity_id, ds_cell.subject_key_identifier) == (area_entity_id(area), ski_of(area_ds))
    assert (ka_cell.entity_id, ka_cell.subject_key_identifier) == (area_entity_id(area), ski_of(area_ka))
    # ... and the audit chain shows the write-ahead order for it.
    subject = f"issuance:{row.issuance_id}"
    events = [e.event for e in deployment.audit_events() if e.subject == subject]
    assert events == ["command.recorded", "command.issued", "outcome.reported"]


def test_same_request_id_twice_returns_identical_bytes_and_one_issuance(deployment: Deployment) -> None:
    transport, [device_id, other_device] = deployment.meters(2)
    request_id = new_request_id()
    channel, stub = deployment.stub("bench-01")
    other_channel, other_stub = deployment.stub("bench-02")
    with channel, other_channel:
        first = stub.RequestHandOut(
            hand_out_request(read_meter(transport, device_id), device_id, 16, request_id), timeout=30
        )
        # A retry re-reads the meter (new CS02a bytes) but keeps the request id: the same signed bytes.
        retry = stub.RequestHandOut(
            hand_out_request(read_meter(transport, device_id), device_id, 16, request_id), timeout=30
        )
        # Request ids belong to a bench: the same id from another bench is another request. For the same
        # meter it is refused while the first command is outstanding; for another meter it is signed.
        held = rpc_error(
            lambda: other_stub.RequestHandOut(
                hand_out_request(read_meter(transport, device_id), device_id, 16, request_id), timeout=30
            )
        )
        elsewhere = other_stub.RequestHandOut(
            hand_out_request(read_meter(transport, other_device), other_device, 16, request_id), timeout=30
        )

    assert retry.command == first.command
    assert (retry.issuance_id, retry.originator_counter) == (first.issuance_id, first.originator_counter)
    [row] = deployment.issuance_rows("bench-01", request_id)
    assert bytes(row.signed_command) == first.command
    subject = f"issuance:{row.issuance_id}"
    signed = [e for e in deployment.audit_events("command.issued") if e.subject == subject]
    assert len(signed) == 1, "a retry must never produce a second signature"

    assert held.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"request {request_id!r} of bench bench-01" in held.details()
    assert elsewhere.issuance_id != first.issuance_id
    assert elsewhere.originator_counter > first.originator_counter
    assert len(deployment.issuance_rows("bench-02", request_id)) == 1


def test_retry_after_the_meter_applied_its_command_still_gets_the_same_bytes(deployment: Deployment) -> None:
    transport, [device_id] = deployment.meters(1)
    meter = transport.devices[device_id]
    request_id = new_request_id()
    channel, stub = deployment.stub()
    with channel:
        first = stub.RequestHandOut(
            hand_out_request(read_meter(transport, device_id), device_id, 18, request_id), timeout=30
        )
        assert statuses(meter.process(deployment.mac(first.command))) == {StatusCode.SUCCESS}
        # The bench lost the reply and retries with a fresh reading. The NO cell now holds the area, so a
        # new request is refused; the recorded one still returns its bytes.
        retry = stub.RequestHandOut(
            hand_out_request(read_meter(transport, device_id), device_id, 18, request_id), timeout=30
        )
        fresh = rpc_error(
            lambda: stub.RequestHandOut(
                hand_out_request(read_meter(transport, device_id), device_id, 18, new_request_id()),
                timeout=30,
            )
        )
    assert retry.command == first.command and retry.issuance_id == first.issuance_id
    assert fresh.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert fresh.details() == (
        f"device {device_id.hex()} is not in vanilla custody: "
        "already handed out to area 18 (Southern Scotland)"
    )


def test_request_id_reused_for_another_device_is_already_exists(deployment: Deployment) -> None:
    transport, [first_device, second_device] = deployment.meters(2)
    request_id = new_request_id()
    channel, stub = deployment.stub()
    with channel:
        stub.RequestHandOut(
            hand_out_request(read_meter(transport, first_device), first_device, 17, request_id), timeout=30
        )
        error = rpc_error(
            lambda: stub.RequestHandOut(
                hand_out_request(read_meter(transport, second_device), second_device, 17, request_id),
                timeout=30,
            )
        )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert request_id in error.details() and "another device" in error.details()
    [row] = deployment.issuance_rows("bench-01", request_id)
    assert bytes(row.device_id) == first_device


@pytest.mark.parametrize("where", ["payload", "signature"])
def test_tampered_command_is_refused_by_the_bench_and_by_the_meter(
    deployment: Deployment, where: str
) -> None:
    area = 13
    transport, [device_id] = deployment.meters(1)
    meter = transport.devices[device_id]
    vanilla = no_cells(meter)
    reply, _ = request_command(deployment, transport, device_id, area)
    command = bytes(reply.command)
    with deployment.client() as api:
        bundle = api.trust_bundle()
    check_command(command, device_id, area, bundle)  # the genuine command passes

    area_ds, _ = deployment.area_certificates(area)
    # payload: the last byte of the area DS certificate, inside the signed range; or the signature's.
    offset = command.index(area_ds) + len(area_ds) - 1 if where == "payload" else len(command) - 1
    tampered = bytearray(command)
    tampered[offset] ^= 0x01
    tampered_bytes = bytes(tampered)

    with pytest.raises(CommandRefused) as refused:
        check_command(tampered_bytes, device_id, area, bundle)
    assert refused.value.reason == "bad-signature"

    # Forced onto the meter anyway (MAC-framed without the ACB's checks): a signed refusal
    # (badSignature on every cell), nothing changed.
    response = meter.process(deployment.mac(tampered_bytes, check=False))
    assert statuses(response) == {StatusCode.BAD_SIGNATURE}
    assert no_cells(meter) == vanilla
    assert VANILLA_G1_ENTITY not in meter.originator_counters

    # The tampered copy consumed nothing: the genuine command still applies.
    assert statuses(meter.process(deployment.mac(command))) == {StatusCode.SUCCESS}
    assert no_cells(meter) == deployment.area_certificates(area)


def test_replayed_command_is_refused_by_the_meter(deployment: Deployment) -> None:
    transport, [device_id] = deployment.meters(1)
    meter = transport.devices[device_id]
    with deployment.client() as api:
        bundle = api.trust_bundle()
        handed_out = hand_out(api, transport, bundle, device_id, 14, gateway=deployment.dcc)
    assert handed_out.status == APPLIED, handed_out.reason
    assert handed_out.applied_command is not None
    area_cells = deployment.area_certificates(14)

    # Replayed at once: the vanilla key no longer sits in the NO cell, so it authorises nothing.
    assert StatusCode.SUCCESS not in statuses(meter.process(handed_out.applied_command))
    assert no_cells(meter) == area_cells

    # The area DNO hands the meter back in (vanilla again); the old hand-out is still a replay.
    hand_in = deployment.mac(hand_in_command(deployment.state, 14, device_id, microseconds_now()))
    assert statuses(meter.process(hand_in)) == {StatusCode.SUCCESS}
    vanilla = deployment.vanilla_certificates()
    assert no_cells(meter) == vanilla
    assert statuses(meter.process(handed_out.applied_command)) == {StatusCode.BAD_SEQUENCE_NUMBER}
    assert no_cells(meter) == vanilla

    # That hand-in went round the custodian, whose records still show the meter in area 14: a new hand-out
    # is refused on them, however fresh the reading (a hand-in through the custodian is test_journey's).
    with deployment.client() as api:
        again = hand_out(api, transport, bundle, device_id, 15, gateway=deployment.dcc)
    assert again.status == FAILED
    assert "FAILED_PRECONDITION" in again.reason and "records show device" in again.reason
    assert "already handed out to area 14 (West Midlands)" in again.reason
    assert no_cells(meter) == vanilla


def test_200_concurrent_requests_never_reuse_a_counter(deployment: Deployment) -> None:
    total = 200
    transport, device_ids = deployment.meters(total)
    # (bench, request): two benches, every area, a distinct request id and meter each.
    jobs = [
        (
            BENCHES[i % len(BENCHES)],
            hand_out_request(read_meter(transport, device_id), device_id, 10 + i % 14, new_request_id()),
        )
        for i, device_id in enumerate(device_ids)
    ]
    channels = {bench: deployment.stub(bench) for bench in BENCHES}
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            replies = list(
                pool.map(lambda job: channels[job[0]][1].RequestHandOut(job[1], timeout=120), jobs)
            )
    finally:
        for channel, _ in channels.values():
            channel.close()

    counters = [int(r.originator_counter) for r in replies]
    assert len(set(counters)) == total, "a counter was used twice"

    # In issuance order, the counters of the vanilla key strictly increase (all rows, not only ours).
    rows = deployment.issuance_rows()
    ordered = [r.counter for r in rows if r.generation == 1]
    assert all(a < b for a, b in itertools.pairwise(ordered)), "counters not increasing"
    by_request = {(r.bench_id, r.request_id): r for r in rows}

    vanilla_ds = x509.load_der_x509_certificate(deployment.vanilla_certificates()[0])
    for (bench, request), reply in zip(jobs, replies, strict=True):
        device_id = bytes.fromhex(request.device_id)
        row = by_request[(bench, request.request_id)]
        assert (row.status, row.counter, bytes(row.signed_command)) == (
            "signed",
            reply.originator_counter,
            reply.command,
        )
        assert (bytes(row.device_id), row.area_id) == (device_id, request.area_id)
        message = decode_message(reply.command)
        # Verified with the vanilla DS certificate's public key by `cryptography`.
        verify_signature(message.signed_range, message.apdu.signature, vanilla_ds)
        header = message.apdu.header
        assert (header.business_originator_id, header.business_target_id) == (VANILLA_G1_ENTITY, device_id)
        assert header.originator_counter == reply.originator_counter
        control = UpdateSecurityCredentialsCommand.decode(message.apdu.content).control
        assert control.seq_number == header.originator_counter


def test_restart_keeps_counters_increasing_and_records_intact(deployment: Deployment) -> None:
    transport, [first, second] = deployment.meters(2)
    with deployment.client() as api:
        bundle = api.trust_bundle()
        before_restart = hand_out(api, transport, bundle, first, 18, gateway=deployment.dcc)
    assert before_restart.status == APPLIED, before_restart.reason
    rows_before = [tuple(r) for r in deployment.issuance_rows()]

    deployment.restart()

    with deployment.client() as api:
        after_restart = hand_out(api, transport, bundle, second, 19, gateway=deployment.dcc)
        # The first hand-out's request id still answers with its recorded bytes.
        reading = read_meter(transport, first)
        retried = api.request_hand_out(
            before_restart.request_id,
            first.hex(),
            18,
            reading.device_certificate,
            reading.credentials_response,
        )
    assert after_restart.status == APPLIED, after_restart.reason
    assert after_restart.counter is not None and before_restart.counter is not None
    assert after_restart.counter > before_restart.counter
    assert bytes(retried.command) == before_restart.command

    rows_after = [tuple(r) for r in deployment.issuance_rows()]
    assert rows_after[: len(rows_before)] == rows_before, "earlier issuance records changed"
    [new_row] = rows_after[len(rows_before) :]
    assert new_row[0] > rows_before[-1][0]

    verified = deployment.verify_audit()
    assert verified.returncode == 0, verified.stderr
    assert "audit log intact" in verified.stdout
