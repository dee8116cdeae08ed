"""Hand-in refusals through the real service (mTLS subprocess, SoftHSM token, SQLite): orders the service
must not take, imported commands it must not authorise (each refused with its reason, nothing changed),
meters refusing forged or replayed commands, and who may call what."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import xmlschema
from duis_testlib import validation_errors
from integration_testlib import (
    Deployment,
    hand_in_command,
    microseconds_now,
    new_request_id,
    record_mismatches,
    replacement_outcomes,
    rpc_error,
)
from sqlalchemy import select

from scripts.lab_tray import InProcessTransport
from vdno.admin.api import CustodyCallFailed
from vdno.client.errors import ServiceError
from vdno.client.hand_in import APPLIED, ORDERED, apply_hand_ins, order_hand_in
from vdno.client.handout import ALREADY_APPLIED, read_meter
from vdno.gbcs.cells import NO_DS_CELL, StatusCode
from vdno.gbcs.framing import MessageCode, decode_message
from vdno.labpki.hierarchy import LabHierarchy
from vdno.labpki.smki import issue_organisation_certificate, new_p256_key
from vdno.labpki.tls import OFFICER_ROLE, issue_client_certificate
from vdno.server.store.schema import hand_in_orders
from vdno.simulator.lab import LabCredentialSet, lab_meter_profile, tray_device_id
from vdno.v1 import custodian_pb2 as pb
from vdno.v1 import custody_pb2, custody_pb2_grpc


@dataclass
class Ordered:
    transport: InProcessTransport
    device_id: bytes
    area: int
    order_id: int


def order(deployment: Deployment, area: int) -> Ordered:
    """A fresh meter in service in `area`, with its hand-in ordered."""
    transport, [device_id] = deployment.commissioned_meters([area])
    with deployment.client() as api:
        result = order_hand_in(api, transport, api.trust_bundle(), device_id)
    assert result.status == ORDERED, result.reason
    assert result.order_id is not None
    return Ordered(transport, device_id, area, result.order_id)


def import_error(deployment: Deployment, payload: bytes) -> CustodyCallFailed:
    with deployment.officer() as officer, pytest.raises(CustodyCallFailed) as refused:
        officer.import_hand_in_command(payload)
    return refused.value


def order_row(deployment: Deployment, order_id: int) -> Any:
    with deployment.engine() as engine, engine.connect() as conn:
        return conn.execute(select(hand_in_orders).where(hand_in_orders.c.order_id == order_id)).one()


def statuses(response: bytes) -> set[int]:
    return {int(o.status) for o in replacement_outcomes(response)}


# -- import refusals: each named, nothing changed --------------------------------------------------------

Forge = Callable[[Deployment, Ordered], bytes]


def _other_area(deployment: Deployment, o: Ordered) -> bytes:
    other = 11 if o.area != 11 else 12
    return deployment.mac(
        hand_in_command(deployment.state, other, o.device_id, microseconds_now()), check=False
    )


def _not_the_generation(deployment: Deployment, o: Ordered) -> bytes:
    forged = deployment.area_certificates(20)  # a real NO set, but not vanilla generation 1's
    return deployment.mac(
        hand_in_command(deployment.state, o.area, o.device_id, microseconds_now(), replacements=forged)
    )


def _another_mode(deployment: Deployment, o: Ordered) -> bytes:
    return deployment.mac(
        hand_in_command(
            deployment.state, o.area, o.device_id, microseconds_now(), mode=2, message_code=0x0102
        ),
        check=False,
    )


def _stale_seq_number(deployment: Deployment, o: Ordered) -> bytes:
    return deployment.mac(
        hand_in_command(deployment.state, o.area, o.device_id, microseconds_now(), seq_number=7)
    )


def _tampered_signature(deployment: Deployment, o: Ordered) -> bytes:
    command = bytearray(hand_in_command(deployment.state, o.area, o.device_id, microseconds_now()))
    command[-1] ^= 0x01
    return deployment.mac(bytes(command), check=False)


def _no_mac(deployment: Deployment, o: Ordered) -> bytes:
    return hand_in_command(deployment.state, o.area, o.device_id, microseconds_now())


def _future_dated(deployment: Deployment, o: Ordered) -> bytes:
    later = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    return deployment.mac(
        hand_in_command(deployment.state, o.area, o.device_id, microseconds_now(), execution=later)
    )


def _other_floor(deployment: Deployment, o: Ordered) -> bytes:
    return deployment.mac(hand_in_command(deployment.state, o.area, o.device_id, microseconds_now(), floor=5))


@pytest.mark.parametrize(
    ("forge", "code", "reason"),
    [
        (_other_area, "FAILED_PRECONDITION", "not from area"),
        (_not_the_generation, "FAILED_PRECONDITION", "is not vanilla generation 1's DS certificate"),
        (_another_mode, "FAILED_PRECONDITION", "is not 0x0103"),
        (_stale_seq_number, "FAILED_PRECONDITION", "is not above the meter's stored NO seq number 7"),
        (_tampered_signature, "FAILED_PRECONDITION", "KRP signature does not verify"),
        (_no_mac, "FAILED_PRECONDITION", "not MAC-framed"),
        (_future_dated, "FAILED_PRECONDITION", "future-dated"),
        (_other_floor, "FAILED_PRECONDITION", "newRemotePartyFloorSeqNumber 5"),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_import_refuses_a_command_that_is_not_what_was_ordered(
    deployment: Deployment, forge: Forge, code: str, reason: str
) -> None:
    ordered = order(deployment, 14)
    authorised_before = len(deployment.audit_events("hand-in.authorised"))
    error = import_error(deployment, forge(deployment, ordered))
    assert (error.code, reason in error.message) == (code, True), error.message
    row = order_row(deployment, ordered.order_id)
    assert (row.status, row.command, row.counter) == ("awaiting-authorisation", None, None)
    assert len(deployment.audit_events("hand-in.authorised")) == authorised_before
    with deployment.store() as store:
        custody = store.device_custody(ordered.device_id)
    assert custody is not None and custody.state.value == "hand-in-ordered"


def test_a_command_for_a_meter_without_an_order_or_for_another_meter_is_refused(
    deployment: Deployment,
) -> None:
    ordered = order(deployment, 15)
    _, [stranger] = deployment.commissioned_meters([15])  # same area, never ordered
    unordered = deployment.mac(hand_in_command(deployment.state, 15, stranger, microseconds_now()))
    error = import_error(deployment, unordered)
    assert error.code == "NOT_FOUND" and "no hand-in order awaiting authorisation" in error.message
    # A command for another ordered meter (its DNO differs) is checked against that meter's order.
    other = order(deployment, 16)
    crossed = deployment.mac(
        hand_in_command(deployment.state, 15, other.device_id, microseconds_now()), check=False
    )
    error = import_error(deployment, crossed)
    assert error.code == "FAILED_PRECONDITION" and "not from area 16's DNO" in error.message, error.message
    for o in (ordered, other):
        assert order_row(deployment, o.order_id).status == "awaiting-authorisation"


def test_importing_the_same_command_twice_changes_nothing(deployment: Deployment) -> None:
    ordered = order(deployment, 18)
    command = deployment.mac(hand_in_command(deployment.state, 18, ordered.device_id, microseconds_now()))
    with deployment.officer() as officer:
        first = officer.import_hand_in_command(command)
        audit = len(deployment.audit_events())
        again = officer.import_hand_in_command(command.hex().encode())  # as hex text this time
        other = deployment.mac(hand_in_command(deployment.state, 18, ordered.device_id, microseconds_now()))
        with pytest.raises(CustodyCallFailed) as second:
            officer.import_hand_in_command(other)
    assert first == again and first["status"] == "authorised"
    assert len(deployment.audit_events()) == audit
    assert second.value.code == "FAILED_PRECONDITION" and "already authorised" in second.value.message
    assert bytes(order_row(deployment, ordered.order_id).command) == command


def test_malformed_imports_are_invalid_argument(deployment: Deployment) -> None:
    for payload, what in (
        (b"", "payload is empty"),
        (b"<sr:Response/>", "not a usable DUIS LocalCommand response"),
        (b"zz not hex", "neither DUIS XML"),
        (b"\xdf\x09\x01", "does not decode"),
    ):
        error = import_error(deployment, payload)
        assert error.code == "INVALID_ARGUMENT" and what in error.message, (payload, error.message)


# -- the meter refuses what it must --------------------------------------------------------------------


def test_the_meter_refuses_a_tampered_mac_and_a_replay_of_an_applied_command(deployment: Deployment) -> None:
    ordered = order(deployment, 19)
    meter = ordered.transport.devices[ordered.device_id]
    area_cells = dict(meter.cells)
    with deployment.officer() as officer:
        [(_, xml)] = [
            (rec, xml)
            for rec, xml in officer.export_hand_in_requests(19)
            if bytes.fromhex(rec["device_id"]) == ordered.device_id
        ]
        officer.import_hand_in_command(deployment.dcc.answer_request(xml))
    with deployment.client() as api:
        [authorised] = api.fetch_hand_in_commands([ordered.device_id.hex()])
    tampered = bytearray(authorised.command)
    tampered[-1] ^= 0x01
    assert statuses(meter.process(bytes(tampered))) == {StatusCode.BAD_SIGNATURE}
    assert meter.cells == area_cells

    with deployment.client("bench-02") as api:
        [result] = apply_hand_ins(api, ordered.transport, api.trust_bundle(), [ordered.device_id])
    assert result.status == APPLIED, result.reason
    vanilla_cells = dict(meter.cells)
    assert vanilla_cells[NO_DS_CELL] == deployment.vanilla_certificates()[0]
    replayed = meter.process(authorised.command)
    assert StatusCode.SUCCESS not in statuses(replayed)
    assert meter.cells == vanilla_cells
    # The replay's refusal shows the NO cells on the vanilla generation the command installs (as a rerun
    # after a crash would find them): it answers "applied" again, never "rejected", and the order keeps the
    # outcome it had.
    first = order_row(deployment, ordered.order_id).outcome_response
    with deployment.client() as api:
        again = api.report_hand_in_outcome(authorised.order_id, replayed)
    assert again.status == "applied"
    row = order_row(deployment, ordered.order_id)
    assert row.status == "applied" and row.outcome_response == first


def test_a_hand_in_applied_before_a_crash_is_reported_with_the_meters_cs02a_answer(
    deployment: Deployment,
) -> None:
    ordered = order(deployment, 20)
    meter = ordered.transport.devices[ordered.device_id]
    with deployment.officer() as officer:
        [xml] = [
            xml
            for rec, xml in officer.export_hand_in_requests(20)
            if bytes.fromhex(rec["device_id"]) == ordered.device_id
        ]
        officer.import_hand_in_command(deployment.dcc.answer_request(xml))
    with deployment.client() as api:
        [authorised] = api.fetch_hand_in_commands([ordered.device_id.hex()])
        stale = read_meter(ordered.transport, ordered.device_id)  # before the command applied
    assert statuses(meter.process(authorised.command)) == {StatusCode.SUCCESS}  # the bench died here
    with deployment.client("bench-02") as api, pytest.raises(ServiceError) as refused:
        api.report_hand_in_outcome(ordered.order_id, credentials_answer=stale.credentials_response)
    assert refused.value.code_name == "FAILED_PRECONDITION"
    assert "do not hold what the command installs" in refused.value.message
    assert order_row(deployment, ordered.order_id).status == "authorised"

    # The rerun finds the meter on the vanilla generation: it reports its CS02a answer, not the command.
    with deployment.client("bench-02") as api:
        [result] = apply_hand_ins(api, ordered.transport, api.trust_bundle(), [ordered.device_id])
    assert (result.status, result.reason) == (APPLIED, ALREADY_APPLIED)
    row = order_row(deployment, ordered.order_id)
    assert row.status == "applied"
    assert decode_message(bytes(row.outcome_response)).apdu.header.message_code == (
        MessageCode.CS02A_PROVIDE_SECURITY_CREDENTIALS
    )
    assert record_mismatches(deployment, ordered.transport.devices) == []


# -- orders the service does not take -------------------------------------------------------------------


def test_an_order_for_a_meter_already_on_vanilla_names_the_generation(deployment: Deployment) -> None:
    transport, [device_id] = deployment.meters(1)
    reading = read_meter(transport, device_id)
    with deployment.client() as api, pytest.raises(ServiceError) as refused:
        api.request_hand_in(
            new_request_id(), device_id.hex(), reading.device_certificate, reading.credentials_response
        )
    assert refused.value.code_name == "FAILED_PRECONDITION"
    assert "already holds vanilla generation 1" in str(refused.value)


def test_an_order_for_a_meter_held_by_an_unknown_entity_names_it(deployment: Deployment) -> None:
    pki = LabHierarchy.load(deployment.state / "pki")
    stranger = bytes.fromhex("5354524e47520003")
    ds, ka = (
        issue_organisation_certificate(pki.issuing_ca, new_p256_key().public_key(), stranger, 3, usage)
        for usage in ("ds", "ka")
    )
    profile = lab_meter_profile(
        tray_device_id(90001),
        pki.device_ca,
        pki.root.certificate,
        LabCredentialSet(stranger, ds, ka),
        None,
        3,
    )
    transport = InProcessTransport([profile])
    reading = read_meter(transport, profile.device_id)
    with deployment.client() as api, pytest.raises(ServiceError) as refused:
        api.request_hand_in(
            new_request_id(),
            profile.device_id.hex(),
            reading.device_certificate,
            reading.credentials_response,
        )
    assert refused.value.code_name == "FAILED_PRECONDITION"
    assert f"holds entity {stranger.hex()}" in str(refused.value)


def test_orders_are_idempotent_and_one_per_meter(deployment: Deployment) -> None:
    transport, [device_id] = deployment.commissioned_meters([21])
    reading = read_meter(transport, device_id)
    request_id = new_request_id()
    args = (device_id.hex(), reading.device_certificate, reading.credentials_response)
    with deployment.client() as api:
        first = api.request_hand_in(request_id, *args)
        again = api.request_hand_in(request_id, *args)
    with deployment.client("bench-02") as api, pytest.raises(ServiceError) as second:
        api.request_hand_in(new_request_id(), *args)
    assert first == again
    assert second.value.code_name == "FAILED_PRECONDITION"
    assert f"already has hand-in order {first.order_id}" in str(second.value)
    ordered = [
        e for e in deployment.audit_events("hand-in.ordered") if e.subject == f"order:{first.order_id}"
    ]
    assert len(ordered) == 1


def test_exported_requests_validate_and_a_broken_one_does_not(
    deployment: Deployment, duis_schema: xmlschema.XMLSchema
) -> None:
    order(deployment, 22)
    with deployment.officer() as officer:
        exported = officer.export_hand_in_requests(22)
    assert exported
    for _, xml in exported:
        assert validation_errors(duis_schema, xml) == []
    _, xml = exported[0]
    broken = xml.replace(b"<sr:RemotePartyRole>NetworkOperator</sr:RemotePartyRole>", b"")
    assert broken != xml
    assert validation_errors(duis_schema, broken)


# -- who may call what ---------------------------------------------------------------------------------


def test_unenrolled_revoked_and_wrong_role_callers_are_refused(deployment: Deployment) -> None:
    tls_ca = LabHierarchy.load(deployment.state / "pki").tls_ca

    def pem(ck: Any) -> tuple[bytes, bytes]:
        from cryptography.hazmat.primitives import serialization

        key = ck.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return key, ck.certificate.public_bytes(serialization.Encoding.PEM)

    bench_calls: dict[str, Callable[[Any], Any]] = {
        "RequestHandIn": lambda s: s.RequestHandIn(
            pb.HandInRequest(request_id="x", device_id="00"), timeout=30
        ),
        "FetchHandInCommands": lambda s: s.FetchHandInCommands(pb.FetchHandInCommandsRequest(), timeout=30),
        "ReportHandInOutcome": lambda s: s.ReportHandInOutcome(
            pb.HandInOutcomeReport(order_id=1, response=b"x"), timeout=30
        ),
    }
    unknown = pem(issue_client_certificate(tls_ca, "bench-77"))
    officer_cert = pem(issue_client_certificate(tls_ca, "officer-01", role=OFFICER_ROLE))
    no_role = pem(issue_client_certificate(tls_ca, "bench-01", role=None))
    with deployment.store() as store:
        store.enroll_bench("bench-66", "test")
        store.revoke_bench("bench-66", "test")
    revoked = pem(issue_client_certificate(tls_ca, "bench-66"))
    for who, cert, code in (
        ("unenrolled", unknown, grpc.StatusCode.PERMISSION_DENIED),
        ("revoked", revoked, grpc.StatusCode.PERMISSION_DENIED),
        ("officer", officer_cert, grpc.StatusCode.PERMISSION_DENIED),
        ("no role", no_role, grpc.StatusCode.UNAUTHENTICATED),
    ):
        channel, stub = deployment.stub(client_cert=cert)
        with channel:
            for name, call in bench_calls.items():
                error = rpc_error(lambda call=call, stub=stub: call(stub))
                assert error.code() == code, (who, name, error.details())
    # A bench may not call the custody API.
    channel = deployment.server.channel("bench-01")
    with channel:
        stub = custody_pb2_grpc.CustodyServiceStub(channel)
        error = rpc_error(lambda: stub.GetFleetSummary(custody_pb2.FleetSummaryRequest(), timeout=30))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "vdno-bench certificate may not call" in error.details()
    refusals = deployment.audit_events("auth.refused")
    assert any(e.actor == "officer:officer-01" for e in refusals)
    assert any(e.actor == "bench:bench-66" for e in refusals)
