"""The simulator with a test PKI of our own: MAC required end to end, per-cell failures, mode 8, reads."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sim_testlib import (
    ACB,
    LAB_DEVICE,
    NO_A,
    NO_B,
    RECOVERY,
    World,
    assert_unchanged_outcomes,
    cs02a,
    cs02b,
    cs02e,
    lab_device,
    outcomes,
    response_payload,
    snapshot,
    with_mac,
)

from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL, KeyUsage, StatusCode
from vdno.gbcs.cs02a import ProvideSecurityCredentialsResponse
from vdno.gbcs.cs02b import RemotePartySeqNumberChange
from vdno.gbcs.cs02e import DeviceCertificateResponse
from vdno.gbcs.framing import Cra, decode_message
from vdno.gbcs.mac import add_mac
from vdno.gbcs.signature import sign_apdu, verify_message_signature
from vdno.gbcs.smki import load_certificate, verify_certification_path
from vdno.labpki.smki import new_p256_key
from vdno.simulator.device import SimulatedDevice
from vdno.simulator.errors import DeviceRefused
from vdno.simulator.profile import (
    ACB_DS_CELL,
    RECOVERY_CELL,
    ROOT_CELL,
    SUPPLIER_DS_CELL,
)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _ka_cert(device: SimulatedDevice) -> bytes:
    assert device.device_ka.certificate is not None
    return device.device_ka.certificate


def _device_ds_cert(device: SimulatedDevice) -> x509.Certificate:
    assert device.device_ds.certificate is not None
    return x509.load_der_x509_certificate(device.device_ds.certificate)


def _a_to_b(world: World, counter: int = 1000, **kw: object):  # type: ignore[no-untyped-def]
    return cs02b(
        world.no_a_ds,
        NO_A,
        LAB_DEVICE,
        counter,
        [(world.no_b_ds, NO_DS_CELL), (world.no_b_ka, NO_KA_CELL)],
        [world.issuing],
        **kw,  # type: ignore[arg-type]
    )


def test_end_to_end_mac_required(world: World) -> None:
    device = lab_device(world)
    assert device.require_acb_mac and not device.signing_key_is_ephemeral
    # the device certificate chains to the lab root (device CA under root)
    ds = load_certificate(device.device_ds.certificate or b"")
    verify_certification_path(
        ds,
        (load_certificate(_der(world.device_ca.certificate)),),
        load_certificate(_der(world.root.certificate)),
        world.now + timedelta(hours=1),
    )

    command = with_mac(_a_to_b(world), world.acb_ka.signing_key, _ka_cert(device))
    response = device.process(command)
    msg = decode_message(response)
    verify_message_signature(msg, _device_ds_cert(device))  # with the device's certificate
    assert msg.apdu.header.cra == Cra.RESPONSE
    assert msg.apdu.header.business_target_id == NO_A
    assert msg.apdu.header.originator_counter == 1000
    payload = response_payload(response, device)
    assert payload.execution_outcome is not None
    assert payload.execution_outcome.seq_number_changes == (RemotePartySeqNumberChange(3, 0),)
    found = payload.execution_outcome.replacement_outcomes
    assert [o.status for o in found] == [0, 0]
    assert found[0].existing_subject_unique_id == NO_A and found[0].replacing_subject_unique_id == NO_B
    assert device.cells[NO_DS_CELL] == _der(world.no_b_ds.certificate)
    assert device.cells[NO_KA_CELL] == _der(world.no_b_ka.certificate)
    assert device.seq_numbers[3] == 0

    # B hands the cells back to A; its counters start fresh (above the floor 0)
    back = cs02b(
        world.no_b_ds,
        NO_B,
        LAB_DEVICE,
        5,
        [(world.no_a_ds, NO_DS_CELL), (world.no_a_ka, NO_KA_CELL)],
        [world.issuing],
    )
    response = device.process(with_mac(back, world.acb_ka.signing_key, _ka_cert(device)))
    assert [o.status for o in outcomes(response, device)] == [0, 0]
    assert device.cells[NO_DS_CELL] == _der(world.no_a_ds.certificate)

    # A's old command, replayed: A is in the cell again, but its counter 1000 is spent
    before = snapshot(device)
    response = device.process(command)
    assert_unchanged_outcomes(response, device, StatusCode.BAD_SEQUENCE_NUMBER)
    assert snapshot(device) == before


def test_mac_required_missing_invalid_or_wrong_key(world: World) -> None:
    device = lab_device(world)
    before = snapshot(device)
    apdu = _a_to_b(world)
    good = with_mac(apdu, world.acb_ka.signing_key, _ka_cert(device))
    bad_mac = good[:-1] + bytes([good[-1] ^ 0x80])
    wrong_acb = add_mac(
        apdu.encode(), apdu.header, new_p256_key(), x509.load_der_x509_certificate(_ka_cert(device))
    )
    for message in (apdu.encode(), bad_mac, wrong_acb):
        response = device.process(message)
        assert_unchanged_outcomes(response, device, StatusCode.BAD_SIGNATURE)
        assert snapshot(device) == before
    assert device.process(good)  # and the genuine one still works (nothing was consumed)
    assert device.cells[NO_DS_CELL] == _der(world.no_b_ds.certificate)


def test_mac_off_accepts_gs_only_but_still_checks_a_present_mac(world: World) -> None:
    device = lab_device(world, require_acb_mac=False)
    apdu = _a_to_b(world)
    good = with_mac(apdu, world.acb_ka.signing_key, _ka_cert(device))
    response = device.process(good[:-1] + bytes([good[-1] ^ 1]))
    assert_unchanged_outcomes(response, device, StatusCode.BAD_SIGNATURE)
    response = device.process(apdu.encode())
    assert [o.status for o in outcomes(response, device)] == [0, 0]


def test_per_cell_failures_leave_those_cells(world: World) -> None:
    device = lab_device(world, require_acb_mac=False)
    # DS from an unknown CA (10), KA cell given a DS certificate (5)
    apdu = cs02b(
        world.no_a_ds,
        NO_A,
        LAB_DEVICE,
        10,
        [(world.foreign_no_ds, NO_DS_CELL), (world.no_b_ds, NO_KA_CELL)],
        [world.issuing],
    )
    response = device.process(apdu.encode())
    assert [o.status for o in outcomes(response, device)] == [10, 5]
    assert device.cells[NO_DS_CELL] == _der(world.no_a_ds.certificate)
    payload = response_payload(response, device)
    assert payload.execution_outcome is not None and payload.execution_outcome.seq_number_changes == ()

    # partial success: DS replaced, KA cell given a supplier (OU=02) certificate -> 5
    apdu = cs02b(
        world.no_a_ds,
        NO_A,
        LAB_DEVICE,
        11,
        [(world.no_b_ds, NO_DS_CELL), (world.supplier_ds, NO_KA_CELL)],
        [world.issuing],
    )
    response = device.process(apdu.encode())
    assert [o.status for o in outcomes(response, device)] == [0, 5]
    assert device.cells[NO_DS_CELL] == _der(world.no_b_ds.certificate)
    assert device.cells[NO_KA_CELL] == _der(world.no_a_ka.certificate)


def test_path_certificate_needed(world: World) -> None:
    device = lab_device(world, require_acb_mac=False)
    no_path = cs02b(
        world.no_a_ds, NO_A, LAB_DEVICE, 1000, [(world.no_b_ds, NO_DS_CELL), (world.no_b_ka, NO_KA_CELL)], []
    )
    response = device.process(no_path.encode())
    assert [o.status for o in outcomes(response, device)] == [10, 10]
    response = device.process(
        cs02b(world.no_a_ds, NO_A, LAB_DEVICE, 1001, [(world.no_b_ds, NO_DS_CELL)], [world.issuing]).encode()
    )
    assert [o.status for o in outcomes(response, device)] == [0]


def test_time_checks_and_disapply(world: World) -> None:
    device = lab_device(world, require_acb_mac=False)
    device.set_clock(world.now + timedelta(days=365 * 11))  # beyond the 10-year org certificates
    response = device.process(_a_to_b(world, 1000).encode())
    assert [o.status for o in outcomes(response, device)] == [5, 5]
    response = device.process(_a_to_b(world, 1001, disapply_time=True).encode())
    assert [o.status for o in outcomes(response, device)] == [0, 0]


def test_mode3_target_not_permitted_and_wrong_ta_cell(world: World) -> None:
    device = lab_device(world, require_acb_mac=False)
    before = snapshot(device)
    apdu = cs02b(
        world.no_a_ds,
        NO_A,
        LAB_DEVICE,
        1000,
        [(world.no_b_ds, NO_DS_CELL), (world.supplier_ds, SUPPLIER_DS_CELL)],
        [world.issuing],
    )
    assert_unchanged_outcomes(device.process(apdu.encode()), device, StatusCode.INSUFFICIENT_PERMISSION)
    apdu = _a_to_b(world, 1001, ta_cell=ACB_DS_CELL)
    assert_unchanged_outcomes(device.process(apdu.encode()), device, StatusCode.INSUFFICIENT_PERMISSION)
    apdu = _a_to_b(world, 1002, mode=2)  # mode 2 is not simulated
    assert_unchanged_outcomes(device.process(apdu.encode()), device, StatusCode.OTHER)
    assert snapshot(device) == before


def test_seq_number_must_exceed_stored(world: World) -> None:
    device = lab_device(world, require_acb_mac=False, seq_numbers={3: 50})
    before = snapshot(device)
    response = device.process(_a_to_b(world, 1000, seq=50).encode())
    assert_unchanged_outcomes(response, device, StatusCode.BAD_SEQUENCE_NUMBER)
    assert snapshot(device) == before
    response = device.process(_a_to_b(world, 1001, seq=51).encode())
    assert [o.status for o in outcomes(response, device)] == [0, 0]


def test_mode8_recovery_replaces_no_cells(world: World) -> None:
    device = lab_device(world, seq_numbers={1: 0, 3: 7})
    changes = (RemotePartySeqNumberChange(3, 0),)
    apdu = cs02b(
        world.recovery,
        RECOVERY,
        LAB_DEVICE,
        8000,
        [(world.no_b_ds, NO_DS_CELL), (world.no_b_ka, NO_KA_CELL)],
        [world.issuing],
        mode=8,
        ta_cell=RECOVERY_CELL,
        floor=None,
        other_changes=changes,
    )
    # mode 8 commands carry no MAC header (a MAC-framed one is malformed)
    before = snapshot(device)
    framed = with_mac(apdu, world.acb_ka.signing_key, _ka_cert(device))
    assert_unchanged_outcomes(device.process(framed), device, StatusCode.DECODE_ERROR)
    assert snapshot(device) == before

    response = device.process(apdu.encode())
    payload = response_payload(response, device)
    assert payload.execution_outcome is not None
    assert payload.execution_outcome.mode == 8
    assert payload.execution_outcome.seq_number_changes == changes
    assert [o.status for o in payload.execution_outcome.replacement_outcomes] == [0, 0]
    assert device.cells[NO_DS_CELL] == _der(world.no_b_ds.certificate)
    assert device.seq_numbers == {1: 8000, 3: 0}

    # a mode 8 command signed by the NO (not the recovery key) is refused
    forged = cs02b(
        world.no_b_ds,
        NO_B,
        LAB_DEVICE,
        9000,
        [(world.no_a_ds, NO_DS_CELL)],
        [world.issuing],
        mode=8,
        ta_cell=NO_DS_CELL,
    )
    before = snapshot(device)
    assert_unchanged_outcomes(device.process(forged.encode()), device, StatusCode.INSUFFICIENT_PERMISSION)
    # recovery may not touch the root cell
    root_grab = cs02b(
        world.recovery,
        RECOVERY,
        LAB_DEVICE,
        8001,
        [(world.root, ROOT_CELL)],
        [],
        mode=8,
        ta_cell=RECOVERY_CELL,
    )
    assert_unchanged_outcomes(device.process(root_grab.encode()), device, StatusCode.INSUFFICIENT_PERMISSION)
    assert snapshot(device) == before


def test_cs02a_reads(world: World) -> None:
    strict = lab_device(world)
    local = lab_device(world, allow_local_reads=True)
    unsigned = cs02a(NO_A, LAB_DEVICE, 1, (3, 6, 0), NO_DS_CELL)

    with pytest.raises(DeviceRefused) as info:
        strict.process(unsigned.encode())
    assert info.value.status == StatusCode.INSUFFICIENT_PERMISSION
    with pytest.raises(DeviceRefused):
        strict.process(unsigned.encode_precommand())

    for message in (unsigned.encode(), unsigned.encode_precommand()):
        msg = decode_message(local.process(message))
        verify_message_signature(msg, _device_ds_cert(local))
        assert msg.apdu.header.message_code == 0x0008 and msg.apdu.header.date_time is None
        parsed = ProvideSecurityCredentialsResponse.decode(msg.apdu.content)
        no, wan, root = parsed.roles
        assert (no.role, no.status, no.current_seq_number) == (3, 0, 0)
        assert no.cells is not None
        assert [(c.key_usage, c.subject_unique_id) for c in no.cells] == [
            (KeyUsage.DIGITAL_SIGNATURE, NO_A),
            (KeyUsage.KEY_AGREEMENT, NO_A),
        ]
        assert (
            no.cells[0].subject_key_identifier
            == load_certificate(_der(world.no_a_ds.certificate)).subject_key_identifier
        )
        assert (wan.role, wan.status, wan.cells) == (6, StatusCode.TRUST_ANCHOR_NOT_FOUND, None)
        assert root.cells is not None and root.cells[0].subject_unique_id == bytes(8)

    # a read signed by the NO in the named cell is answered; replayed, refused
    signed = sign_apdu(cs02a(NO_A, LAB_DEVICE, 77, (3,), NO_DS_CELL), world.no_a_ds.signing_key)
    assert strict.process(signed.encode())
    with pytest.raises(DeviceRefused) as info:
        strict.process(signed.encode())
    assert info.value.status == StatusCode.BAD_SEQUENCE_NUMBER
    # signed by someone not in the named cell
    forged = sign_apdu(cs02a(NO_B, LAB_DEVICE, 78, (3,), NO_DS_CELL), world.no_b_ds.signing_key)
    with pytest.raises(DeviceRefused) as info:
        strict.process(forged.encode())
    assert info.value.status == StatusCode.INSUFFICIENT_PERMISSION

    # the ACB reads with a MAC only (signature length 00), as in RTDS 6.24.1
    acb_read = cs02a(ACB, LAB_DEVICE, 1302, (2, 3), ACB_DS_CELL)
    msg = decode_message(strict.process(with_mac(acb_read, world.acb_ka.signing_key, _ka_cert(strict))))
    verify_message_signature(msg, _device_ds_cert(strict))


def test_cs02e_reads(world: World) -> None:
    device = lab_device(world, allow_local_reads=True)
    for usage, expected in (
        (KeyUsage.DIGITAL_SIGNATURE, device.device_ds),
        (KeyUsage.KEY_AGREEMENT, device.device_ka),
    ):
        msg = decode_message(device.process(cs02e(NO_A, LAB_DEVICE, 1, usage).encode()))
        verify_message_signature(msg, _device_ds_cert(device))
        assert msg.apdu.header.message_code == 0x000C
        reply = DeviceCertificateResponse.decode(msg.apdu.content)
        assert reply.certificate == expected.certificate
        cert = load_certificate(reply.certificate or b"")
        assert cert.is_device and cert.entity_id == LAB_DEVICE and cert.key_usage == usage

    strict = lab_device(world)
    with pytest.raises(DeviceRefused):
        strict.process(cs02e(NO_A, LAB_DEVICE, 1, KeyUsage.DIGITAL_SIGNATURE).encode())
    signed = sign_apdu(cs02e(NO_A, LAB_DEVICE, 2, KeyUsage.KEY_AGREEMENT), world.no_a_ds.signing_key)
    reply = DeviceCertificateResponse.decode(decode_message(strict.process(signed.encode())).apdu.content)
    assert reply.certificate == strict.device_ka.certificate
