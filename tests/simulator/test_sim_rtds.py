"""The simulator against the RTDS 6.15.1 NO-by-NO vector (pre-state: root cell = Z1, clock in validity)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from rtds_vectors import read_hex
from sim_testlib import (
    RTDS_DEVICE,
    RTDS_NO,
    RTDS_SUPPLIER,
    assert_unchanged_outcomes,
    load_key,
    pem_to_der,
    response_payload,
    rtds_profile,
    snapshot,
)

from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL, StatusCode
from vdno.gbcs.cs02a import ProvideSecurityCredentialsResponse
from vdno.gbcs.framing import Cra, decode_apdu, decode_message
from vdno.gbcs.signature import sign_apdu, verify_message_signature
from vdno.gbcs.smki import load_certificate
from vdno.simulator.device import SimulatedDevice, dlms_date_time
from vdno.simulator.errors import DeviceRefused


def _device(vectors_dir: Path, **kw: object) -> SimulatedDevice:
    return SimulatedDevice(rtds_profile(vectors_dir, **kw))  # type: ignore[arg-type]


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


def test_rtds_nobyno_known_answer(vectors_dir: Path, nobyno_command: bytes, nobyno_response: bytes) -> None:
    device = _device(vectors_dir)
    response = device.process(nobyno_command)

    got = decode_message(response)
    want = decode_message(nobyno_response)
    # payload byte-for-byte, incl. the meter's non-minimal 30 82 00 83 outer length
    assert got.apdu.content == want.apdu.content
    # header: everything but the date-time (our clock is 2020, inside the certificates' validity)
    assert got.apdu.header.cra == Cra.RESPONSE
    assert got.apdu.header.originator_counter == want.apdu.header.originator_counter == 1200
    assert got.apdu.header.business_originator_id == RTDS_DEVICE
    assert got.apdu.header.business_target_id == RTDS_NO
    assert got.apdu.header.message_code == want.apdu.header.message_code == 0x0103
    assert got.apdu.header.date_time == dlms_date_time(datetime(2020, 1, 1, tzinfo=UTC))
    assert dlms_date_time(datetime(2015, 1, 1, tzinfo=UTC)) == want.apdu.header.date_time
    # byte-for-byte up to the signature, apart from the 12 date-time bytes at offset 30
    assert response[:30] == nobyno_response[:30]
    assert response[42:182] == nobyno_response[42:182]
    # the response is signed with the device's key (RTDS has no device private key: ephemeral one)
    verify_message_signature(got, device.ds_public_key)
    assert device.signing_key_is_ephemeral

    after = vectors_dir / "keystore-after-replacement"
    assert device.cells[NO_DS_CELL] == pem_to_der(after / "90b3d51f30020000-ds-ski4238d306b6f725a2.pem")
    assert device.cells[NO_KA_CELL] == pem_to_der(after / "90b3d51f30020000-ka-ski483e0ad640c236c5.pem")
    assert device.seq_numbers[3] == 0  # floor
    assert device.originator_counters[RTDS_NO] == 1200
    assert device.last_outcome is not None and device.last_outcome.status == 0


def test_rtds_gs_only_accepted_when_mac_not_required(
    vectors_dir: Path, nobyno_command: bytes, nobyno_response: bytes
) -> None:
    device = _device(vectors_dir)
    gs_only = decode_message(nobyno_command).apdu_bytes
    assert gs_only[0] == 0xDF
    response = device.process(gs_only)
    assert decode_message(response).apdu.content == decode_message(nobyno_response).apdu.content


def test_rtds_replay_rejected(vectors_dir: Path, nobyno_command: bytes) -> None:
    device = _device(vectors_dir)
    device.process(nobyno_command)
    before = snapshot(device)
    response = device.process(nobyno_command)
    assert_unchanged_outcomes(response, device, StatusCode.BAD_SEQUENCE_NUMBER)
    payload = response_payload(response, device)
    assert payload.execution_outcome is not None and payload.execution_outcome.seq_number_changes == ()
    assert snapshot(device) == before


@pytest.mark.parametrize(
    "index",
    [
        25,  # originator counter (signed range)
        1342,  # last content byte (inside Z1's signature value)
        1350,  # KRP signature r
    ],
)
def test_rtds_flipped_byte_rejected(vectors_dir: Path, nobyno_command: bytes, index: int) -> None:
    device = _device(vectors_dir)
    before = snapshot(device)
    response = device.process(_flip(nobyno_command, index))
    assert_unchanged_outcomes(response, device, StatusCode.BAD_SIGNATURE)
    assert snapshot(device) == before


def test_rtds_other_device_refused(vectors_dir: Path, nobyno_command: bytes) -> None:
    other = _device(vectors_dir, device_id=bytes.fromhex("00db1234567890a1"))
    before = snapshot(other)
    with pytest.raises(DeviceRefused) as info:
        other.process(nobyno_command)
    assert info.value.status is None
    assert "addressed to 00db1234567890a0" in info.value.reason
    assert snapshot(other) == before

    # the same device, with the target id changed in the command
    device = _device(vectors_dir)
    before = snapshot(device)
    with pytest.raises(DeviceRefused):
        device.process(_flip(nobyno_command, 43))
    assert snapshot(device) == before


def test_rtds_originator_not_in_no_cell(vectors_dir: Path, nobyno_precommand: bytes) -> None:
    """The supplier signs a well-formed NO-by-NO command as itself: its id is not the NO cell's entity."""
    apdu, _ = decode_apdu(nobyno_precommand)
    forged = apdu.__class__(
        apdu.header.__class__(
            cra=apdu.header.cra,
            originator_counter=apdu.header.originator_counter,
            business_originator_id=RTDS_SUPPLIER,
            business_target_id=apdu.header.business_target_id,
            message_code=apdu.header.message_code,
        ),
        apdu.content,
    )
    signed = sign_apdu(forged, load_key(vectors_dir / "keystore" / "90b3d51f30010000-ds.key"))
    device = _device(vectors_dir)
    before = snapshot(device)
    response = device.process(signed.encode())
    assert_unchanged_outcomes(response, device, StatusCode.INSUFFICIENT_PERMISSION)
    assert snapshot(device) == before
    assert decode_message(response).apdu.header.business_target_id == RTDS_SUPPLIER


def test_rtds_originator_when_no_cell_holds_someone_else(vectors_dir: Path, nobyno_command: bytes) -> None:
    keystore = vectors_dir / "keystore"
    profile = rtds_profile(vectors_dir)
    cells = dict(profile.cells)
    cells[NO_DS_CELL] = pem_to_der(keystore / "90b3d51f30000002-ds.pem")  # the ACB holds the NO cell
    device = SimulatedDevice(rtds_profile(vectors_dir, cells=cells))
    before = snapshot(device)
    response = device.process(nobyno_command)
    assert_unchanged_outcomes(response, device, StatusCode.INSUFFICIENT_PERMISSION)
    assert snapshot(device) == before


def test_rtds_mac_required_missing_or_invalid(vectors_dir: Path, nobyno_command: bytes) -> None:
    device = _device(vectors_dir, require_acb_mac=True)
    before = snapshot(device)
    gs_only = decode_message(nobyno_command).apdu_bytes
    for message in (gs_only, _flip(nobyno_command, len(nobyno_command) - 1), nobyno_command):
        # RTDS publishes no device KA private key, so even the genuine MAC cannot be checked: refused
        response = device.process(message)
        assert_unchanged_outcomes(response, device, StatusCode.BAD_SIGNATURE)
        assert snapshot(device) == before


def test_rtds_seq_number_not_above_stored(vectors_dir: Path, nobyno_command: bytes) -> None:
    device = _device(vectors_dir, seq_numbers={2: 0, 3: 1200})
    before = snapshot(device)
    response = device.process(nobyno_command)
    assert_unchanged_outcomes(response, device, StatusCode.BAD_SEQUENCE_NUMBER)
    assert snapshot(device) == before


def test_rtds_expired_certificates_rejected_per_cell(vectors_dir: Path, nobyno_command: bytes) -> None:
    device = _device(vectors_dir, clock=datetime(2026, 6, 1, tzinfo=UTC))
    before = snapshot(device)
    response = device.process(nobyno_command)
    payload = response_payload(response, device)
    assert payload.execution_outcome is not None
    assert [o.status for o in payload.execution_outcome.replacement_outcomes] == [5, 5]
    assert payload.execution_outcome.seq_number_changes == ()
    assert snapshot(device).cells == before.cells
    # the command itself was authentic and is now spent
    assert device.originator_counters[RTDS_NO] == 1200


def test_rtds_root_cell_unknown_ca_gives_no_trust_anchor(vectors_dir: Path, nobyno_command: bytes) -> None:
    profile = rtds_profile(vectors_dir)
    cells = dict(profile.cells)
    from vdno.simulator.profile import ROOT_CELL

    cells[ROOT_CELL] = pem_to_der(vectors_dir / "keystore" / "90b3d51f30000001-ds.pem")  # not a CA
    device = SimulatedDevice(rtds_profile(vectors_dir, cells=cells))
    response = device.process(nobyno_command)
    payload = response_payload(response, device)
    assert payload.execution_outcome is not None
    assert {o.status for o in payload.execution_outcome.replacement_outcomes} == {10}
    assert device.cells[NO_DS_CELL] == profile.cells[NO_DS_CELL]


def test_rtds_cs02a_local_read_matches_rtds_payload(vectors_dir: Path) -> None:
    """The RTDS 6.24.1 CS02a (roles 2 and 3), read on the lab port, answers with the RTDS payload bytes."""
    folder = vectors_dir / "6.24.1_CS02aMAC"
    command = decode_message(read_hex(folder / "CS02aMAC_6.24.1_SUCCESS_COMMAND_GBCS.HEX"))
    rtds = decode_message(read_hex(folder / "CS02aMAC_6.24.1_SUCCESS_RESPONSE_GBCS.HEX"))
    device = _device(vectors_dir, allow_local_reads=True)
    response = decode_message(device.process(command.apdu_bytes))  # GS-only, signature length 00
    verify_message_signature(response, device.ds_public_key)
    assert response.apdu.content == rtds.apdu.content
    assert response.apdu.header.message_code == 0x0008
    assert response.apdu.header.originator_counter == 1302
    parsed = ProvideSecurityCredentialsResponse.decode(response.apdu.content)
    assert [r.role for r in parsed.roles] == [2, 3]

    # without the lab port, and without a checkable MAC, the read is refused
    strict = _device(vectors_dir)
    with pytest.raises(DeviceRefused) as info:
        strict.process(command.apdu_bytes)
    assert info.value.status == StatusCode.INSUFFICIENT_PERMISSION
    with pytest.raises(DeviceRefused) as info:
        strict.process(read_hex(folder / "CS02aMAC_6.24.1_SUCCESS_COMMAND_GBCS.HEX"))
    assert info.value.status == StatusCode.BAD_SIGNATURE


def test_rtds_cs02e_signed_read(vectors_dir: Path) -> None:
    """RTDS 6.24.2 CS02e, signed by the supplier (MAC not checkable without the device KA key, so sent
    GS-only): the device returns its DS certificate."""
    folder = vectors_dir / "6.24.2_CS02e"
    command = decode_message(read_hex(folder / "CS02e_6.24.2_SUCCESS_COMMAND_GBCS.HEX"))
    rtds = decode_message(read_hex(folder / "CS02e_6.24.2_SUCCESS_RESPONSE_GBCS.HEX"))
    device = _device(vectors_dir)
    response = decode_message(device.process(command.apdu_bytes))
    verify_message_signature(response, device.ds_public_key)
    assert response.apdu.content == rtds.apdu.content
    cert = load_certificate(response.apdu.content)
    assert cert.entity_id == RTDS_DEVICE and cert.is_device
    # replayed: refused
    with pytest.raises(DeviceRefused) as info:
        device.process(command.apdu_bytes)
    assert info.value.status == StatusCode.BAD_SEQUENCE_NUMBER


def test_garbage_refused_with_decode_error(vectors_dir: Path) -> None:
    device = _device(vectors_dir)
    for garbage in (b"", b"\x00", b"\xdf\x09", b"\xdd" + bytes(20), bytes(range(256))):
        with pytest.raises(DeviceRefused) as info:
            device.process(garbage)
        assert info.value.status == StatusCode.DECODE_ERROR
