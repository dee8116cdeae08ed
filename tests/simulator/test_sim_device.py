"""The simulated meter's state and bookkeeping (forge_testlib world, real lab keys): its clock and the DLMS
date-time it stamps, the profile it snapshots, what `last_outcome` records for every kind of message, the
seq numbers and counters an accepted command leaves, the CS02a read (order of cells, empty roles, the root
cell's all-zero id) and the authorised reads (MAC-framed, signed, unsigned)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from forge_testlib import (
    COMMAND_DEFECTS,
    COUNTER,
    DEVICE_ID,
    SUPPLIER_ID,
    VANILLA_ID,
    ForgeWorld,
)
from rtds_vectors import read_hex
from sim_testlib import HELD_SEQ, good, meter, outcomes, response_payload, rtds_profile

from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL, CellUsage, KeyUsage, StatusCode
from vdno.gbcs.cs02a import (
    ProvideSecurityCredentialsCommand,
    ProvideSecurityCredentialsResponse,
    RoleCredentials,
    TrustAnchorCellDetails,
)
from vdno.gbcs.cs02b import RemotePartySeqNumberChange, ReplacementOutcome
from vdno.gbcs.cs02e import DeviceCertificateResponse, ProvideDeviceCertificateCommand
from vdno.gbcs.framing import Cra, GeneralSigningApdu, GroupingHeader, MessageCode, decode_message
from vdno.gbcs.mac import add_mac
from vdno.gbcs.signature import sign_apdu, verify_message_signature
from vdno.simulator.device import LastOutcome, SimulatedDevice, dlms_date_time, meter_style
from vdno.simulator.errors import DeviceRefused
from vdno.simulator.profile import SUPPLIER_KA_CELL, DeviceKey, DeviceProfile

CS02A = MessageCode.CS02A_PROVIDE_SECURITY_CREDENTIALS
CS02E = MessageCode.CS02E_PROVIDE_DEVICE_CERTIFICATE
NO_BY_NO = MessageCode.CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR
PLUS_ONE = timezone(timedelta(hours=1))


# --- the DLMS date-time and the meter's length form ---------------------------------------------------


@pytest.fixture
def tokyo_host() -> Iterator[None]:
    """The host's local zone set to UTC+9 for the test (a naive datetime must still be read as UTC)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        yield
    finally:
        mp.undo()
        time.tzset()


def test_the_dlms_date_time_is_utc_for_aware_and_naive_datetimes(tokyo_host: None) -> None:
    # 2026-07-01 12:34:56 UTC: year 07EA, month 07, day 01, no day of week, 0C 22 38, hundredths 00,
    # deviation 8000 (not specified), clock status FF
    want = bytes.fromhex("07ea0701ff0c2238008000ff")
    assert dlms_date_time(datetime(2026, 7, 1, 12, 34, 56, tzinfo=UTC)) == want
    assert dlms_date_time(datetime(2026, 7, 1, 13, 34, 56, tzinfo=PLUS_ONE)) == want
    assert dlms_date_time(datetime(2026, 7, 1, 12, 34, 56)) == want  # naive: taken as UTC, not local
    # across midnight and a year end when converted
    assert dlms_date_time(datetime(2027, 1, 1, 0, 30, tzinfo=PLUS_ONE)) == bytes.fromhex(
        "07ea0c1fff171e00008000ff"
    )


def test_meter_style_lengths() -> None:
    assert meter_style(b"\x30\x81\x00") == b"\x30\x82\x00\x00"  # the shortest long-form TLV
    assert meter_style(b"\x30\x81\x80" + bytes(128)) == b"\x30\x82\x00\x80" + bytes(128)
    for der in (b"", b"\x30", b"\x30\x81", b"\x30\x03\x02\x01\x05", b"\x30\x82\x01\x00" + bytes(256)):
        assert meter_style(der) == der


# --- clock, signing key, snapshot ------------------------------------------------------------------------


def test_the_clock(forge_world: ForgeWorld) -> None:
    profile = meter(forge_world).to_profile()
    real = SimulatedDevice(profile)
    before = datetime.now(UTC)
    now = real.now()
    assert before <= now <= datetime.now(UTC)  # aware, in UTC (a naive time cannot be compared)

    pinned = datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)
    given = SimulatedDevice(profile, clock=lambda: pinned)  # the caller's clock wins over the profile's
    assert given.now() == pinned
    reply = decode_message(given.process(good(forge_world).encode()))
    assert reply.apdu.header.date_time == dlms_date_time(pinned)

    real.set_clock(datetime(2031, 2, 3, 4, 5, 6))  # naive: UTC
    assert real.fixed_clock is not None and real.fixed_clock.tzinfo is UTC
    assert real.now() == pinned
    real.set_clock(datetime(2031, 2, 3, 5, 5, 6, tzinfo=PLUS_ONE))  # aware: kept, the same instant
    assert real.now() == pinned and real.now().tzinfo is PLUS_ONE
    real.set_clock(None)
    assert real.fixed_clock is None
    assert datetime.now(UTC) - real.now() < timedelta(minutes=1)


def test_a_meter_with_its_ds_key_signs_with_it(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    assert device.last_outcome is None  # nothing processed yet
    assert not device.signing_key_is_ephemeral
    reply = decode_message(device.process(good(forge_world).encode()))
    certificate = x509.load_der_x509_certificate(forge_world.device.ds_der)
    verify_message_signature(reply, certificate.public_key())  # type: ignore[arg-type]
    assert (
        device.ds_public_key.public_numbers()
        == forge_world.device.ds.signing_key.public_key().public_numbers()
    )


def test_to_profile_snapshots_the_state_after_processing(forge_world: ForgeWorld) -> None:
    clock = datetime.now(UTC).replace(microsecond=0)  # inside the forge certificates' validity
    device = SimulatedDevice(
        replace(meter(forge_world).to_profile(), require_acb_mac=False, allow_local_reads=True)
    )
    device.set_clock(clock + timedelta(hours=1))
    device.process(good(forge_world).encode())
    snapshot = device.to_profile()
    assert snapshot == DeviceProfile(
        device_id=DEVICE_ID,
        cells={**device.cells},
        seq_numbers={2: 0, 3: 0},
        device_ds=DeviceKey(forge_world.device.ds.signing_key, forge_world.device.ds_der),
        device_ka=DeviceKey(forge_world.device.ka.signing_key, forge_world.device.ka_der),
        require_acb_mac=False,
        allow_local_reads=True,
        clock=clock + timedelta(hours=1),
        originator_counters={VANILLA_ID: COUNTER},
    )
    assert snapshot.cells[NO_DS_CELL] == forge_world.area.ds_der
    # a snapshot, not a view: later changes to the device do not reach it
    device.cells.clear()
    device.seq_numbers[3] = 99
    device.originator_counters.clear()
    assert (len(snapshot.cells), snapshot.seq_numbers[3], snapshot.originator_counters) == (
        6,
        0,
        {VANILLA_ID: COUNTER},
    )
    # and it makes the same device again
    again = SimulatedDevice(snapshot)
    assert again.to_profile() == snapshot


# --- CS02b bookkeeping -----------------------------------------------------------------------------------


def test_what_an_accepted_command_records(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    device.process(good(forge_world).encode())
    assert device.last_outcome == LastOutcome(NO_BY_NO, 0, "all cells replaced")


def test_a_role_without_a_stored_seq_number_starts_at_zero(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    del device.seq_numbers[3]
    form = replace(good(forge_world), seq_number=1)
    assert [o.status for o in outcomes(device.process(form.encode()), device)] == [0, 0]
    assert device.seq_numbers[3] == 0  # the floor


def test_without_a_floor_the_stored_seq_number_is_the_commands(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    form = replace(good(forge_world), floor_seq_number=None)
    payload = response_payload(device.process(form.encode()), device)
    assert payload.execution_outcome is not None and payload.execution_outcome.seq_number_changes == ()
    assert device.seq_numbers[3] == COUNTER


def test_when_no_cell_is_replaced_only_the_commands_seq_number_is_stored(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    form = COMMAND_DEFECTS["no-path"](forge_world, good(forge_world))
    form = replace(form, other_seq_number_changes=(RemotePartySeqNumberChange(2, 77),))
    payload = response_payload(device.process(form.encode()), device)
    assert payload.execution_outcome is not None and payload.execution_outcome.seq_number_changes == ()
    assert device.seq_numbers == {2: 0, 3: COUNTER}  # no floor, no other role's change
    assert device.originator_counters[VANILLA_ID] == COUNTER
    assert device.last_outcome is not None and device.last_outcome.status == StatusCode.NO_TRUST_ANCHOR


def test_other_roles_seq_numbers_change_with_a_replacement(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    other = RemotePartySeqNumberChange(2, 77)
    form = replace(good(forge_world), floor_seq_number=5, other_seq_number_changes=(other,))
    payload = response_payload(device.process(form.encode()), device)
    assert payload.execution_outcome is not None
    assert payload.execution_outcome.seq_number_changes == (RemotePartySeqNumberChange(3, 5), other)
    assert device.seq_numbers == {2: 77, 3: 5}


def test_an_unusable_path_certificate_does_not_hide_the_next_one(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    not_a_certificate = b"\x30\x03\x02\x01\x05"
    form = replace(good(forge_world), path=(not_a_certificate, forge_world.issuing_der))
    assert [o.status for o in outcomes(device.process(form.encode()), device)] == [0, 0]
    assert device.cells[NO_DS_CELL] == forge_world.area.ds_der


def test_disapplied_time_checks_accept_certificates_outside_their_validity(forge_world: ForgeWorld) -> None:
    before_validity = datetime(2001, 1, 1, tzinfo=UTC)
    disapplied = COMMAND_DEFECTS["disapplies-time-checks"](forge_world, good(forge_world))
    assert disapplied.apply_time_based_cpv_checks == 1
    device = meter(forge_world)
    device.set_clock(before_validity)
    assert [o.status for o in outcomes(device.process(disapplied.encode()), device)] == [0, 0]

    for applied in (replace(disapplied, apply_time_based_cpv_checks=0), good(forge_world)):
        device = meter(forge_world)
        device.set_clock(before_validity)
        statuses = [o.status for o in outcomes(device.process(applied.encode()), device)]
        assert statuses == [StatusCode.BAD_CERTIFICATE] * 2
        assert device.last_outcome is not None
        assert device.last_outcome.status == StatusCode.BAD_CERTIFICATE
        assert " not valid at 2001-01-01T00:00:00+00:00 (valid " in device.last_outcome.reason


def test_a_refused_command_reports_the_ids_the_cells_hold(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    command = good(forge_world).encode()
    device.originator_counters[VANILLA_ID] = COUNTER  # a replay
    vanilla = forge_world.vanilla
    assert outcomes(device.process(command), device) == (
        ReplacementOutcome(NO_DS_CELL, 8, VANILLA_ID, vanilla.ds_ski, VANILLA_ID, vanilla.ds_ski),
        ReplacementOutcome(NO_KA_CELL, 8, VANILLA_ID, vanilla.ka_ski, VANILLA_ID, vanilla.ka_ski),
    )
    assert device.last_outcome == LastOutcome(
        NO_BY_NO,
        8,
        f"originator counter {COUNTER} not above the last seen {COUNTER} from {VANILLA_ID.hex()} (replay)",
    )


@pytest.mark.parametrize(
    ("code", "mode"),
    [(MessageCode.CS02B_ROOT_BY_SUPPLIER, 0), (MessageCode.CS02B_ANY_BY_CONTINGENCY, 9)],
    ids=["first-cs02b-code", "last-cs02b-code"],
)
def test_every_cs02b_code_is_answered(forge_world: ForgeWorld, code: int, mode: int) -> None:
    device = meter(forge_world)
    form = replace(good(forge_world), message_code=code, mode=mode)
    assert [o.status for o in outcomes(device.process(form.encode()), device)] == [StatusCode.OTHER] * 2
    assert device.last_outcome == LastOutcome(
        code, StatusCode.OTHER, f"credentialsReplacementMode {mode} not simulated"
    )


def test_what_undecodable_messages_leave_in_last_outcome(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    with pytest.raises(DeviceRefused) as refused:
        device.process(b"\xdd\x00")
    detail = refused.value.reason.removeprefix("message does not decode: ")
    assert detail and detail != refused.value.reason
    assert device.last_outcome == LastOutcome(0, StatusCode.DECODE_ERROR, f"undecodable message: {detail}")

    bad_payload = COMMAND_DEFECTS["extra-payload-element"](forge_world, good(forge_world)).encode()
    with pytest.raises(DeviceRefused) as refused:
        device.process(bad_payload)
    detail = refused.value.reason.removeprefix("CS02b payload does not decode: ")
    assert detail and detail != refused.value.reason
    assert device.last_outcome == LastOutcome(NO_BY_NO, StatusCode.DECODE_ERROR, detail)


# --- reads ---------------------------------------------------------------------------------------------


def _read(
    world: ForgeWorld, code: int, content: bytes, counter: int = 20, originator: bytes = VANILLA_ID
) -> GeneralSigningApdu:
    key = world.supplier.ds_key if originator == SUPPLIER_ID else world.vanilla.ds_key
    return sign_apdu(
        GeneralSigningApdu(GroupingHeader(Cra.COMMAND, counter, originator, DEVICE_ID, code), content), key
    )


def _cs02a(*roles: int) -> bytes:
    return ProvideSecurityCredentialsCommand(NO_DS_CELL, roles).encode()


def _flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def test_a_signed_cs02a_read(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    del device.cells[SUPPLIER_KA_CELL]
    device.cells = {SUPPLIER_KA_CELL: forge_world.supplier.ka_der, **device.cells}  # KA held before DS
    reply = decode_message(device.process(_read(forge_world, CS02A, _cs02a(4, 2, 5, 3, 0)).encode()))
    verify_message_signature(reply, device.ds_public_key)
    vanilla, supplier = forge_world.vanilla, forge_world.supplier
    acb = forge_world.acb
    assert ProvideSecurityCredentialsResponse.decode(reply.apdu.content).roles == (
        RoleCredentials(
            4, 0, None, (TrustAnchorCellDetails(KeyUsage.KEY_AGREEMENT, 0, acb.entity_id, acb.ka_ski),)
        ),
        RoleCredentials(
            2,
            0,
            0,
            (  # DS before KA whatever the order the device holds them in
                TrustAnchorCellDetails(KeyUsage.DIGITAL_SIGNATURE, 0, SUPPLIER_ID, supplier.ds_ski),
                TrustAnchorCellDetails(KeyUsage.KEY_AGREEMENT, 0, SUPPLIER_ID, supplier.ka_ski),
            ),
        ),
        RoleCredentials(5, StatusCode.TRUST_ANCHOR_NOT_FOUND, None, None),  # no transitional CoS cell
        RoleCredentials(
            3,
            0,
            HELD_SEQ,
            (
                TrustAnchorCellDetails(KeyUsage.DIGITAL_SIGNATURE, 0, VANILLA_ID, vanilla.ds_ski),
                TrustAnchorCellDetails(KeyUsage.KEY_AGREEMENT, 0, VANILLA_ID, vanilla.ka_ski),
            ),
        ),
        RoleCredentials(  # the root cell holds a CA: its id is reported as eight zero bytes
            0,
            0,
            None,
            (
                TrustAnchorCellDetails(
                    KeyUsage.KEY_CERT_SIGN,
                    CellUsage.MANAGEMENT,
                    bytes(8),
                    x509.load_der_x509_certificate(forge_world.root_der)
                    .extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
                    .value.digest,
                ),
            ),
        ),
    )
    assert device.last_outcome == LastOutcome(CS02A, 0, "credentials provided")
    assert device.originator_counters[VANILLA_ID] == 20


def test_cs02a_cells_of_one_role_sort_by_key_usage_then_cell_usage(vectors_dir: Path) -> None:
    """RTDS 6.24.1 CS02a (roles 2 and 3) on the lab port, the device holding its cells in reverse order:
    still the RTDS payload bytes (supplier DS, KA, prepayment KA; NO DS, KA)."""
    folder = vectors_dir / "6.24.1_CS02aMAC"
    command = decode_message(read_hex(folder / "CS02aMAC_6.24.1_SUCCESS_COMMAND_GBCS.HEX"))
    rtds = decode_message(read_hex(folder / "CS02aMAC_6.24.1_SUCCESS_RESPONSE_GBCS.HEX"))
    profile = rtds_profile(vectors_dir, allow_local_reads=True)
    device = SimulatedDevice(replace(profile, cells=dict(reversed(list(profile.cells.items())))))
    response = decode_message(device.process(command.apdu_bytes))
    assert response.apdu.content == rtds.apdu.content
    assert device.last_outcome == LastOutcome(CS02A, 0, "credentials provided")
    assert device.originator_counters == {}  # an unauthenticated local read records no counter


def test_a_read_with_a_bad_signature_is_refused(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    read = _flip_last(_read(forge_world, CS02A, _cs02a(3)).encode())
    with pytest.raises(DeviceRefused) as refused:
        device.process(read)
    reason = "KRP signature: signature does not verify over the signed range"
    assert (refused.value.status, refused.value.reason) == (StatusCode.BAD_SIGNATURE, reason)
    assert device.last_outcome == LastOutcome(CS02A, StatusCode.BAD_SIGNATURE, reason)
    assert device.originator_counters == {VANILLA_ID: HELD_SEQ}  # not spent


def test_an_unsigned_read_is_refused_off_the_lab_port(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    unsigned = GeneralSigningApdu(GroupingHeader(Cra.COMMAND, 20, VANILLA_ID, DEVICE_ID, CS02A), _cs02a(3))
    with pytest.raises(DeviceRefused) as refused:
        device.process(unsigned.encode())
    reason = "unsigned read refused (allow_local_reads is off): needs a KRP signature or ACB MAC"
    assert (refused.value.status, refused.value.reason) == (StatusCode.INSUFFICIENT_PERMISSION, reason)
    assert device.last_outcome == LastOutcome(CS02A, StatusCode.INSUFFICIENT_PERMISSION, reason)


def test_a_mac_framed_read(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    acb_ka, device_ka = forge_world.acb_mac()
    apdu = _read(
        forge_world, CS02E, ProvideDeviceCertificateCommand(KeyUsage.KEY_AGREEMENT).encode(), counter=30
    )
    framed = add_mac(apdu.encode(), apdu.header, acb_ka, x509.load_der_x509_certificate(device_ka))
    reply = decode_message(device.process(framed))
    assert DeviceCertificateResponse.decode(reply.apdu.content).certificate == forge_world.device.ka_der
    assert device.last_outcome == LastOutcome(CS02E, 0, "device certificate provided")
    assert device.originator_counters[VANILLA_ID] == 30
    with pytest.raises(DeviceRefused) as refused:  # replayed
        device.process(framed)
    assert refused.value.status == StatusCode.BAD_SEQUENCE_NUMBER
    later = _read(forge_world, CS02E, apdu.content, counter=31)
    broken = _flip_last(
        add_mac(later.encode(), later.header, acb_ka, x509.load_der_x509_certificate(device_ka))
    )
    with pytest.raises(DeviceRefused) as refused:
        device.process(broken)
    assert refused.value.status == StatusCode.BAD_SIGNATURE
    assert device.originator_counters[VANILLA_ID] == 30


def test_a_signed_cs02e_read(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    for counter, key_usage, certificate in (
        (40, KeyUsage.DIGITAL_SIGNATURE, forge_world.device.ds_der),
        (41, KeyUsage.KEY_AGREEMENT, forge_world.device.ka_der),
    ):
        read = _read(
            forge_world, CS02E, ProvideDeviceCertificateCommand(key_usage).encode(), counter, SUPPLIER_ID
        )
        reply = DeviceCertificateResponse.decode(decode_message(device.process(read.encode())).apdu.content)
        assert (reply.response_code, reply.certificate) == (None, certificate)
        assert device.last_outcome == LastOutcome(CS02E, 0, "device certificate provided")
        assert device.originator_counters[SUPPLIER_ID] == counter
    read = _read(
        forge_world, CS02E, ProvideDeviceCertificateCommand(KeyUsage.KEY_CERT_SIGN).encode(), 42, SUPPLIER_ID
    )
    reply = DeviceCertificateResponse.decode(decode_message(device.process(read.encode())).apdu.content)
    assert (reply.response_code, reply.certificate) == (3, None)
    assert device.last_outcome == LastOutcome(CS02E, 3, "no device certificate with that key usage")


def test_a_device_without_a_ka_certificate(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    device.device_ka = DeviceKey(device.device_ka.private_key, None)
    read = _read(forge_world, CS02E, ProvideDeviceCertificateCommand(KeyUsage.KEY_AGREEMENT).encode())
    reply = DeviceCertificateResponse.decode(decode_message(device.process(read.encode())).apdu.content)
    assert (reply.response_code, reply.certificate) == (3, None)
