"""A vanilla generation's whole life through the real service (mTLS subprocess, SoftHSM token), on SQLite
and PostgreSQL: officers create generation 2 (keys generated in the token, attributes read back and
audited), certify it from CSRs signed in the HSM, activate it with two-person control; stock rotates from 1
to 2 through DCC's MAC; a meter is handed out from 2; generation 1 is disabled, its destruction scheduled
and, once the grace period is over, its keys are deleted from the token and it signs nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from integration_testlib import (
    Deployment,
    activate,
    approved,
    certify_generation,
    token_labels,
)

from vdno.client.errors import ServiceError
from vdno.client.hand_in import ORDERED, order_hand_in
from vdno.client.handout import APPLIED, hand_out, read_meter, rotate
from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL
from vdno.server.bootstrap import vanilla_entity_id


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def statuses(deployment: Deployment) -> dict[int, str]:
    with deployment.officer() as officer:
        return {int(g["generation"]): g["status"] for g in officer.list_generations()}


def test_generation_lifecycle_rotation_and_destruction(deployment: Deployment, softhsm_module: Path) -> None:
    g2_entity = vanilla_entity_id(2)
    transport, stock = deployment.meters(3)
    meters = {d: transport.devices[d] for d in stock}

    # create and certify: keys made in the token, attributes recorded
    number = certify_generation(deployment, g2_entity)
    assert number == 2
    [created] = [e for e in deployment.audit_events("generation.created") if e.subject == "generation:2"]
    keys = json.loads(created.details)["keys"]
    for usage in ("ds", "ka"):
        assert keys[usage]["local"] is True and keys[usage]["sensitive"] is True
        assert keys[usage]["extractable"] is False and keys[usage]["never_extractable"] is True
    assert {"vanilla-g2-ds", "vanilla-g2-ka"} <= set(token_labels(deployment.state, softhsm_module))
    assert statuses(deployment) == {1: "active", 2: "certified"}

    # activate with two-person control: generation 1 becomes signing-only
    executed = activate(deployment, 2)
    assert executed["request"]["status"] == "executed"
    assert statuses(deployment) == {1: "signing-only", 2: "active"}

    # rotate two meters in stock from 1 to 2 (signed by 1's key, through DCC's MAC)
    with deployment.client() as api:
        bundle = api.trust_bundle()
        [g2] = [g for g in bundle.generations if g.generation == 2]
        rotated = [rotate(api, transport, bundle, d, gateway=deployment.dcc) for d in stock[:2]]
    assert [r.status for r in rotated] == [APPLIED, APPLIED], [r.reason for r in rotated]
    assert [(r.generation, r.target_generation) for r in rotated] == [(1, 2), (1, 2)]
    for device_id in stock[:2]:
        assert (meters[device_id].cells[NO_DS_CELL], meters[device_id].cells[NO_KA_CELL]) == (
            g2.ds_certificate,
            g2.ka_certificate,
        )
    with deployment.officer() as officer:
        on_two = set(officer.devices_holding(2))
        on_one = set(officer.devices_holding(1))
    assert {d.hex().upper() for d in stock[:2]} <= on_two and not {
        d.hex().upper() for d in stock[:2]
    } & on_one

    # a meter on 2 is handed out, signed by 2's key; new hand-ins now target 2
    with deployment.client() as api:
        handed = hand_out(api, transport, bundle, stock[0], 16, gateway=deployment.dcc)
    assert handed.status == APPLIED and handed.generation == 2, handed.reason
    commissioned, [in_service] = deployment.commissioned_meters([17])
    with deployment.client() as api:
        ordered = order_hand_in(api, commissioned, api.trust_bundle(), in_service)
    assert ordered.status == ORDERED and ordered.generation == 2, ordered.reason

    # disable 1, schedule its destruction; after the grace period its keys leave the token
    for operation in ("disable-generation", "schedule-destruction"):
        with deployment.officer() as officer:
            request = officer.request_generation_change(1, operation, f"test: {operation}")
        approved(deployment, request)
    assert statuses(deployment)[1] == "destroy-scheduled"
    with deployment.officer() as officer:
        assert officer.destroy_due() == []  # the grace period is not over
    assert "vanilla-g1-ds" in token_labels(deployment.state, softhsm_module)
    deployment.execute(
        "UPDATE generations SET destroy_after = :past WHERE generation = 1", past="2000-01-01 00:00:00+00:00"
    )
    with deployment.officer() as officer:
        assert officer.destroy_due() == [1]
    labels = set(token_labels(deployment.state, softhsm_module))
    assert not {"vanilla-g1-ds", "vanilla-g1-ka"} & labels and {"vanilla-g2-ds", "vanilla-g2-ka"} <= labels
    assert statuses(deployment) == {1: "destroyed", 2: "active"}
    assert [e.subject for e in deployment.audit_events("generation.destroyed")] == ["generation:1"]

    # the meter still on 1 can get no command signed by it; a new generation takes a new number
    reading = read_meter(transport, stock[2])
    with deployment.client() as api, pytest.raises(ServiceError) as refused:
        api.request_hand_out(
            "lifecycle-g1", stock[2].hex(), 16, reading.device_certificate, reading.credentials_response
        )
    assert refused.value.code_name == "FAILED_PRECONDITION"
    assert certify_generation(deployment, vanilla_entity_id(3)) == 3
    assert deployment.verify_audit().returncode == 0
