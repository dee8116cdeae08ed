"""Officers' controls through the real service (mTLS subprocess, SoftHSM token, SQLite): the rules of
two-person control, a compromised generation, certificate import refusals, area replacement with history,
bench enrolment from a CSR made at the bench and revocation felt at once, and who may call what."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from integration_testlib import (
    BIN,
    Deployment,
    activate,
    approved,
    certify_generation,
    new_request_id,
    rpc_error,
    smki_certificate,
)

from vdno.admin.api import CustodyCallFailed
from vdno.client.api import BenchClient
from vdno.client.enrolment import make_key_and_request
from vdno.client.errors import ServiceError
from vdno.client.handout import APPLIED, hand_out, read_meter, rotate
from vdno.labdcc.parties import area_entity_id
from vdno.labpki.hierarchy import LabHierarchy
from vdno.labpki.smki import issue_organisation_certificate, make_issuing_ca, make_root_ca, new_p256_key
from vdno.labpki.tls import OFFICER_ROLE, issue_client_certificate
from vdno.server.bootstrap import vanilla_entity_id
from vdno.v1 import custodian_pb2, custodian_pb2_grpc, custody_pb2, custody_pb2_grpc


def refusal(call: Any) -> CustodyCallFailed:
    with pytest.raises(CustodyCallFailed) as refused:
        call()
    return refused.value


def generation_status(deployment: Deployment, number: int) -> str:
    with deployment.officer() as officer:
        return next(g["status"] for g in officer.list_generations() if int(g["generation"]) == number)


@pytest.fixture(scope="module")
def spare(deployment: Deployment) -> int:
    """A certified generation the tests may request changes of (never activated by them)."""
    return certify_generation(deployment, vanilla_entity_id(40))


# -- two-person control ----------------------------------------------------------------------------------


def test_self_approval_double_approval_and_m_of_n(deployment: Deployment, spare: int) -> None:
    with deployment.officer() as officer:
        request = officer.request_generation_change(spare, "disable-generation", "test: rules")
        request_id = int(request["request_id"])
        # approvers see what, why and who
        [listed] = [r for r in officer.approval_requests(False) if int(r["request_id"]) == request_id]
        assert (listed["requested_by"], listed["reason"], listed["status"]) == (
            "officer-01",
            "test: rules",
            "pending",
        )
        assert json.loads(listed["details_json"])["becomes"] == "disabled"
        own = refusal(lambda: officer.approve(request_id))
        assert own.code == "FAILED_PRECONDITION" and "may not approve it" in own.message
        early = refusal(lambda: officer.execute(request_id))
        assert early.code == "FAILED_PRECONDITION" and "pending, not approved" in early.message
    assert generation_status(deployment, spare) == "certified"  # nothing changed while pending
    with deployment.officer("officer-02") as other:
        approval = other.approve(request_id)
        again = refusal(lambda: other.approve(request_id))
    assert approval["status"] == "approved" and approval["approvals"] == ["officer-02"]
    assert again.code == "FAILED_PRECONDITION"
    with deployment.officer() as officer:
        done = officer.execute(request_id)
        twice = refusal(lambda: officer.execute(request_id))
    assert done["request"]["status"] == "executed" and twice.code == "FAILED_PRECONDITION"
    assert generation_status(deployment, spare) == "disabled"
    events = [e.event for e in deployment.audit_events() if e.subject == f"approval:{request_id}"]
    assert events == ["approval.requested", "approval.granted", "approval.approved", "approval.executed"]
    # undo it, the same way
    with deployment.officer() as officer:
        request = officer.request_generation_change(spare, "reenable-generation", "test: undo")
    approved(deployment, request)
    assert generation_status(deployment, spare) == "signing-only"


def test_expired_and_rejected_requests_change_nothing_and_cannot_be_revived(
    deployment: Deployment, spare: int
) -> None:
    before = generation_status(deployment, spare)
    with deployment.officer() as officer:
        expiring = int(
            officer.request_generation_change(spare, "disable-generation", "test: expire")["request_id"]
        )
        window = int(
            officer.request_generation_change(spare, "disable-generation", "test: window")["request_id"]
        )
        rejected = int(
            officer.request_generation_change(spare, "disable-generation", "test: reject")["request_id"]
        )
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    deployment.execute(
        "UPDATE approval_requests SET expires_at = :t WHERE request_id = :i", t=past, i=expiring
    )
    with deployment.officer("officer-02") as other:
        late = refusal(lambda: other.approve(expiring))
        other.approve(window)
        no = other.reject(rejected, "test: not now")
        revive = refusal(lambda: other.approve(rejected))
    assert late.code == "FAILED_PRECONDITION" and "expired" in late.message
    assert (
        no["status"] == "rejected" and revive.code == "FAILED_PRECONDITION" and "rejected" in revive.message
    )
    deployment.execute("UPDATE approval_requests SET execute_by = :t WHERE request_id = :i", t=past, i=window)
    with deployment.officer() as officer:
        too_late = refusal(lambda: officer.execute(window))
        for request_id in (expiring, rejected):
            assert (
                refusal(lambda request_id=request_id: officer.execute(request_id)).code
                == "FAILED_PRECONDITION"
            )
        listed = {int(r["request_id"]): r["status"] for r in officer.approval_requests(True)}
    assert too_late.code == "FAILED_PRECONDITION" and "expired" in too_late.message
    assert (listed[expiring], listed[window], listed[rejected]) == ("expired", "expired", "rejected")
    assert generation_status(deployment, spare) == before


def test_a_compromised_generation_is_disabled_at_once_and_signs_nothing(deployment: Deployment) -> None:
    number = certify_generation(deployment, vanilla_entity_id(41))
    activate(deployment, number)
    transport, [meter] = deployment.meters(1)
    with deployment.client() as api:
        assert rotate(api, transport, api.trust_bundle(), meter, gateway=deployment.dcc).status == APPLIED
    # generation 1 is signing-only now; it is what meters made by deployment.meters hold
    with deployment.officer() as officer:
        reply = officer.mark_compromised(number, "test: key material exposed")
        refused_undo = refusal(
            lambda: officer.request_generation_change(number, "reenable-generation", "undo")
        )
    assert reply["generation"]["status"] == "disabled" and reply["generation"]["compromised"] is True
    assert meter.hex().upper() in reply["devices_holding"]
    assert refused_undo.code == "FAILED_PRECONDITION" and "compromised" in refused_undo.message
    [event] = [
        e for e in deployment.audit_events("generation.compromised") if e.subject == f"generation:{number}"
    ]
    assert event.actor == "officer:officer-01" and "exposed" in event.details
    reading = read_meter(transport, meter)
    with deployment.client() as api, pytest.raises(ServiceError) as refused:
        api.request_hand_out(
            new_request_id(), meter.hex(), 12, reading.device_certificate, reading.credentials_response
        )
    assert refused.value.code_name == "FAILED_PRECONDITION"
    activate(deployment, 1)  # leave generation 1 active for the other tests of the module


# -- certificate import ------------------------------------------------------------------------------------


def test_certificate_import_refuses_each_failure_with_its_reason(deployment: Deployment) -> None:
    entity = vanilla_entity_id(42)
    with deployment.officer() as officer:
        number = int(officer.create_generation(entity.hex())["generation"])
        csr_ds, csr_ka = officer.certificate_request(number, "ds"), officer.certificate_request(number, "ka")
    good_ds = smki_certificate(deployment.state, csr_ds, entity, "ds")
    good_ka = smki_certificate(deployment.state, csr_ka, entity, "ka")
    pki = LabHierarchy.load(deployment.state / "pki")
    der = lambda c: c.public_bytes(serialization.Encoding.DER)  # noqa: E731
    other_key = der(
        issue_organisation_certificate(pki.issuing_ca, new_p256_key().public_key(), entity, 3, "ds")
    )
    stranger_root = make_root_ca("STRANGER-ROOT")
    stranger_ca = make_issuing_ca(stranger_root)
    cases = [
        ((other_key, good_ka), "does not certify the key held in the token"),
        (
            (smki_certificate(deployment.state, csr_ds, entity, "ds", role=2), good_ka),
            "not a network-operator",
        ),
        (
            (smki_certificate(deployment.state, csr_ds, entity, "ka"), good_ka),
            "key usage KEY_AGREEMENT, not DIGITAL",
        ),
        ((smki_certificate(deployment.state, csr_ds, vanilla_entity_id(43), "ds"), good_ka), "names entity"),
        (
            (
                der(
                    issue_organisation_certificate(
                        stranger_ca, x509.load_der_x509_csr(csr_ds).public_key(), entity, 3, "ds"
                    )
                ),
                good_ka,
            ),  # type: ignore[arg-type]
            "does not chain",
        ),
        (
            (
                der(
                    issue_organisation_certificate(
                        pki.issuing_ca,
                        x509.load_der_x509_csr(csr_ds).public_key(),
                        entity,
                        3,
                        "ds",
                        now=datetime(2001, 1, 1, tzinfo=UTC),
                        years=1,
                    )
                ),
                good_ka,
            ),  # type: ignore[arg-type]
            "is not valid now",
        ),
        ((b"not a certificate", good_ka), "not a usable certificate"),
    ]
    with deployment.officer() as officer:
        for (ds, ka), reason in cases:
            error = refusal(lambda ds=ds, ka=ka: officer.import_certificates(number, ds, ka))
            assert reason in error.message, (reason, error.message)
        assert generation_status(deployment, number) == "pending"
        certified = officer.import_certificates(number, good_ds, good_ka)
    assert certified["status"] == "certified"


# -- the area registry -------------------------------------------------------------------------------------


def test_an_area_set_is_replaced_with_approval_and_the_old_one_kept(deployment: Deployment) -> None:
    pki = LabHierarchy.load(deployment.state / "pki")
    entity = area_entity_id(13)
    ds, ka = (
        issue_organisation_certificate(
            pki.issuing_ca, new_p256_key().public_key(), entity, 3, u
        ).public_bytes(serialization.Encoding.DER)
        for u in ("ds", "ka")
    )
    with deployment.officer() as officer:
        old = next(a["current"] for a in officer.list_areas() if int(a["current"]["area_id"]) == 13)
        request = officer.request_area_replacement(13, ds, ka, "test: DNO renewed its certificates")
        assert json.loads(request["details_json"])["replaces_entity_id"] == entity.hex().upper()
    assert next(a for a in deployment_areas(deployment) if a["current"]["area_id"] == 13)["current"] == old
    approved(deployment, request)
    [record] = [a for a in deployment_areas(deployment) if a["current"]["area_id"] == 13]
    assert record["current"]["ds_certificate"] == _b64(ds)
    assert [h["ds_certificate"] for h in record["history"]] == [old["ds_certificate"]]
    assert record["history"][0]["replaced_by"] == "officer:officer-01"
    with deployment.client() as api:
        assert api.trust_bundle().area(13).ds_certificate == ds


def deployment_areas(deployment: Deployment) -> list[dict[str, Any]]:
    with deployment.officer() as officer:
        return officer.list_areas()


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


# -- benches -----------------------------------------------------------------------------------------------


def test_a_bench_enrolled_from_its_csr_is_pinned_limited_and_revoked_at_once(
    deployment: Deployment, tmp_path: Path
) -> None:
    key_path, csr_path = make_key_and_request("bench-31", tmp_path)
    with deployment.officer() as officer:
        request = officer.request_bench_enrolment(
            "bench-31", csr_path.read_bytes(), "Lab triage, line 3", ["hand-out"], "test: new bench"
        )
    executed = approved(deployment, request)
    outcome = json.loads(executed["outcome_json"])
    certificate = outcome["certificate_pem"].encode()
    issued = x509.load_pem_x509_certificate(certificate)
    assert (
        issued.public_key().public_numbers()
        == serialization.load_pem_private_key(  # type: ignore[union-attr]
            key_path.read_bytes(), None
        )
        .public_key()
        .public_numbers()
    )
    bench = BenchClient(deployment.target, deployment.tls_ca.read_bytes(), certificate, key_path.read_bytes(),
                        server_name_override="localhost", attempts=1)  # fmt: skip
    with bench:
        bundle = bench.trust_bundle()
        transport, [meter] = deployment.meters(1)
        reading = read_meter(transport, meter)
        with pytest.raises(ServiceError) as hand_in:
            bench.request_hand_in(
                new_request_id(), meter.hex(), reading.device_certificate, reading.credentials_response
            )
        assert (
            hand_in.value.code_name == "PERMISSION_DENIED"
            and "not enrolled for hand-in" in hand_in.value.message
        )
        assert hand_out(bench, transport, bundle, meter, 19, gateway=deployment.dcc).status == APPLIED
        # another certificate for the same CN, from the same CA, is not the enrolled one
        tls_ca = LabHierarchy.load(deployment.state / "pki").tls_ca
        impostor = issue_client_certificate(tls_ca, "bench-31")
        impostor_pem = (
            impostor.certificate.public_bytes(serialization.Encoding.PEM),
            impostor.private_key.private_bytes(  # type: ignore[union-attr]
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        impostor_client = BenchClient(
            deployment.target,
            deployment.tls_ca.read_bytes(),
            *impostor_pem,
            server_name_override="localhost",
            attempts=1,
        )
        with impostor_client as other, pytest.raises(ServiceError) as pinned:
            other.trust_bundle()
        assert pinned.value.code_name == "PERMISSION_DENIED"

        with deployment.officer("officer-02") as officer:
            officer.revoke_bench("bench-31", "test: bench stolen")
        transport, [next_meter] = deployment.meters(1)
        reading = read_meter(transport, next_meter)
        with pytest.raises(ServiceError) as revoked:  # the hand-out path too: checked in its transaction
            bench.request_hand_out(
                new_request_id(),
                next_meter.hex(),
                19,
                reading.device_certificate,
                reading.credentials_response,
            )
        assert revoked.value.code_name == "PERMISSION_DENIED"
    [event] = [e for e in deployment.audit_events("bench.revoked") if e.subject == "bench:bench-31"]
    assert event.actor == "officer:officer-02" and "stolen" in event.details


def test_init_never_re_enrols_a_revoked_bench(deployment: Deployment) -> None:
    from harness import run_init

    with deployment.officer() as officer:
        officer.revoke_bench("bench-02", "test: retired")
    run_init(
        deployment.state,
        ("bench-01", "bench-02"),
        database_url=deployment.database_url if deployment.backend == "postgres" else None,
    )
    with deployment.officer() as officer:
        status = next(b["status"] for b in officer.list_benches() if b["bench_id"] == "bench-02")
    assert status == "revoked"
    channel, stub = deployment.stub("bench-02")
    with channel:
        error = rpc_error(lambda: stub.GetTrustBundle(custodian_pb2.GetTrustBundleRequest(), timeout=30))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


# -- who may call what -------------------------------------------------------------------------------------


def test_the_authorisation_matrix_holds_on_every_rpc(deployment: Deployment) -> None:
    tls_ca = LabHierarchy.load(deployment.state / "pki").tls_ca
    officer = issue_client_certificate(tls_ca, "officer-01", role=OFFICER_ROLE)
    officer_pem = (
        officer.private_key.private_bytes(  # type: ignore[union-attr]
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        officer.certificate.public_bytes(serialization.Encoding.PEM),
    )
    services = (
        (
            custodian_pb2.DESCRIPTOR.services_by_name["BenchService"],
            custodian_pb2_grpc.BenchServiceStub,
            officer_pem,
        ),
        (
            custody_pb2.DESCRIPTOR.services_by_name["CustodyService"],
            custody_pb2_grpc.CustodyServiceStub,
            None,
        ),
    )
    checked = 0
    for service, stub_class, client_cert in services:
        channel = deployment.server.channel("bench-01", client_cert)
        with channel:
            stub = stub_class(channel)
            for method in service.methods:
                request = _message(method.input_type)
                call = getattr(stub, method.name)
                error = rpc_error(lambda call=call, request=request: call(request, timeout=30))
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (
                    service.name,
                    method.name,
                    error.details(),
                )
                assert "certificate may not call" in error.details()
                checked += 1
    assert checked == len(services[0][0].methods) + len(services[1][0].methods) >= 29


def _message(descriptor: Any) -> Any:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)()


def test_the_cli_runs_the_two_person_flow(deployment: Deployment, spare: int) -> None:
    import subprocess

    def admin(officer: str, *args: str) -> Any:
        done = subprocess.run(
            [str(BIN / "vdno-admin"), "--config", str(deployment.state / "clients" / f"{officer}.toml"),
             "--server", deployment.target, "--json", *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return done

    requested = admin("officer-01", "generations", "disable", str(spare), "--reason", "test: cli")
    assert requested.returncode == 0, requested.stderr
    request_id = str(json.loads(requested.stdout)["request_id"])
    own = admin("officer-01", "approvals", "approve", request_id)
    assert own.returncode == 1 and "may not approve" in own.stderr
    assert admin("officer-02", "approvals", "approve", request_id).returncode == 0
    executed = admin("officer-01", "approvals", "execute", request_id)
    assert executed.returncode == 0, executed.stderr
    listed = json.loads(admin("officer-02", "generations", "list").stdout)
    assert next(g for g in listed if int(g["generation"]) == spare)["status"] == "disabled"
    unreachable = subprocess.run(
        [str(BIN / "vdno-admin"), "--config", str(deployment.state / "clients" / "officer-01.toml"),
         "--server", "127.0.0.1:1", "generations", "list"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert unreachable.returncode == 3
    missing = subprocess.run(
        [str(BIN / "vdno-admin"), "generations", "list"], capture_output=True, text=True, check=False
    )
    assert missing.returncode == 2 and "missing --server" in missing.stderr
