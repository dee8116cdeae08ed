"""A meter's whole journey through the real service (mTLS subprocess, SoftHSM token) on SQLite and
PostgreSQL, with lab meters that require DCC's ACB-SMD MAC: in service in area X -> hand-in ordered at a
triage bench -> DUIS request exported for the area DNO -> the lab DNO signs and the lab ACB MACs -> command
imported and checked -> applied by another bench -> in stock on vanilla -> handed out to area Y. At every
stage the meters' cells and the service's records agree."""

from __future__ import annotations

import json

import pytest
import xmlschema
from duis_testlib import assert_valid_duis
from integration_testlib import VANILLA_G1_ENTITY, Deployment, area_entity_id, ski_of

from vdno.client.hand_in import APPLIED as HAND_IN_APPLIED
from vdno.client.hand_in import ORDERED, apply_hand_ins, order_hand_in
from vdno.client.handout import APPLIED, hand_out
from vdno.duis.messages import UpdateSecurityCredentialsKrp, decode_request
from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL
from vdno.gbcs.framing import decode_message
from vdno.simulator.device import SimulatedDevice

# Meters in service across areas, each handed out afterwards to another area.
JOURNEYS = ((10, 21), (13, 13), (17, 11), (23, 10), (12, 22))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def cells_entity(device: SimulatedDevice) -> tuple[bytes, bytes]:
    """(entity id, key id) of the certificate in the meter's NO DS cell."""
    cert = device.cell_certificate(NO_DS_CELL)
    assert cert is not None
    return cert.entity_id, cert.subject_key_identifier


def records(deployment: Deployment, device_id: bytes) -> tuple[str, int | None, int | None]:
    with deployment.store() as store:
        custody = store.device_custody(device_id)
    assert custody is not None, f"no records of {device_id.hex()}"
    return custody.state.value, custody.area_id, custody.generation


def test_a_tray_makes_the_whole_journey(deployment: Deployment, duis_schema: xmlschema.XMLSchema) -> None:
    transport, devices = deployment.commissioned_meters([area for area, _ in JOURNEYS])
    meters = {d: transport.devices[d] for d in devices}
    vanilla_ds, vanilla_ka = deployment.vanilla_certificates()

    # 1. order, at a triage bench
    with deployment.client("bench-01") as api:
        bundle = api.trust_bundle()
        ordered = [order_hand_in(api, transport, bundle, d) for d in devices]
    assert [r.status for r in ordered] == [ORDERED] * len(devices), [r.reason for r in ordered]
    assert [(r.area_id, r.generation) for r in ordered] == [(a, 1) for a, _ in JOURNEYS]
    for device_id, (area, _) in zip(devices, JOURNEYS, strict=True):
        assert cells_entity(meters[device_id])[0] == area_entity_id(area)  # untouched
        assert records(deployment, device_id) == ("hand-in-ordered", area, 1)

    # 2. export: one DUIS 6.15.1 request per order, valid against the DUIS schema, asking for vanilla g1
    with deployment.officer() as officer:
        exported = officer.export_hand_in_requests(0)
    ours = {
        rec["device_id"]: (rec, xml) for rec, xml in exported if bytes.fromhex(rec["device_id"]) in meters
    }
    assert len(ours) == len(devices)
    for device_id, (area, _) in zip(devices, JOURNEYS, strict=True):
        record, xml = ours[device_id.hex().upper()]
        assert_valid_duis(duis_schema, xml)
        request = decode_request(xml)
        body = request.body
        assert isinstance(body, UpdateSecurityCredentialsKrp)
        assert (request.command_variant, request.service_reference_variant) == (6, "6.15.1")
        assert (request.request_id.originator, request.request_id.target) == (area_entity_id(area), device_id)
        assert (body.remote_party_role, body.floor_seq_number, body.apply_time_based_cpv_checks) == (
            "NetworkOperator",
            0,
            True,
        )
        assert (body.digital_signing_certificate, body.key_agreement_certificate) == (vanilla_ds, vanilla_ka)
        manifest = json.loads(record["manifest_record"])
        assert (manifest["area"], manifest["storedSeqNumber"], manifest["minimumSeqNumber"]) == (area, 7, 8)

        # 3. the lab DNO signs and the lab ACB MACs; DCC answers with the LocalCommand response
        response_xml = deployment.dcc.answer_request(xml)
        with deployment.officer() as officer:
            order = officer.import_hand_in_command(response_xml)
        assert (order["status"], order["mac_present"]) == ("authorised", True)
        assert records(deployment, device_id) == ("hand-in-authorised", area, 1)
        assert cells_entity(meters[device_id])[0] == area_entity_id(area)

    # 4. apply, at another bench
    with deployment.client("bench-02") as api:
        applied = apply_hand_ins(api, transport, api.trust_bundle(), devices)
    assert [r.status for r in applied] == [HAND_IN_APPLIED] * len(devices), [r.reason for r in applied]
    for device_id in devices:
        assert meters[device_id].cells[NO_DS_CELL] == vanilla_ds
        assert meters[device_id].cells[NO_KA_CELL] == vanilla_ka
        assert records(deployment, device_id) == ("vanilla", None, 1)
    with deployment.officer() as officer:
        holding = set(officer.devices_holding(1))
    assert {d.hex().upper() for d in devices} <= holding

    # 5. hand-out to the install area, through DCC's ACB
    with deployment.client("bench-01") as api:
        bundle = api.trust_bundle()
        handed = [
            hand_out(api, transport, bundle, d, target, gateway=deployment.dcc)
            for d, (_, target) in zip(devices, JOURNEYS, strict=True)
        ]
    assert [r.status for r in handed] == [APPLIED] * len(devices), [r.reason for r in handed]
    for device_id, result, (_, target) in zip(devices, handed, JOURNEYS, strict=True):
        area_ds, area_ka = deployment.area_certificates(target)
        assert (meters[device_id].cells[NO_DS_CELL], meters[device_id].cells[NO_KA_CELL]) == (
            area_ds,
            area_ka,
        )
        assert cells_entity(meters[device_id]) == (area_entity_id(target), ski_of(area_ds))
        assert records(deployment, device_id) == ("area", target, None)
        assert result.applied_command is not None and decode_message(result.applied_command).mac_framed
        assert meters[device_id].originator_counters[VANILLA_G1_ENTITY] == result.counter

    # The history of one meter tells the journey; the fleet no longer counts it on vanilla.
    first = devices[0]
    with deployment.officer() as officer:
        history = officer.device_history(first.hex())
        holding = set(officer.devices_holding(1))
        summary = officer.fleet_summary()
    assert [(e["event"], e["state"], e["area_id"], e["generation"]) for e in history["events"]] == [
        ("observed-in-area", "area", JOURNEYS[0][0], 0),
        ("hand-in-ordered", "hand-in-ordered", JOURNEYS[0][0], 1),
        ("hand-in-authorised", "hand-in-authorised", JOURNEYS[0][0], 1),
        ("hand-in-applied", "vanilla", 0, 1),
        ("hand-out-applied", "area", JOURNEYS[0][1], 0),
    ]
    assert [e["actor"] for e in history["events"]] == [
        "bench:bench-01",
        "bench:bench-01",
        "officer:officer-01",
        "bench:bench-02",
        "bench:bench-01",
    ]
    assert not {d.hex().upper() for d in devices} & holding
    in_area = {(c["area_id"], c["state"]): int(c["count"]) for c in summary["counts"]}
    for _, target in JOURNEYS:
        assert in_area[(target, "area")] >= 1
    assert deployment.verify_audit().returncode == 0
