"""What the simulated meter refuses, and with which status, for each forged CS02b command (forge_testlib:
real lab keys, ACB-MACed, one defect each): whole-command refusals leave every cell, seq number and counter
as they were; per-cell refusals leave those cells; messages it cannot answer raise DeviceRefused."""

from __future__ import annotations

from dataclasses import replace

import pytest
from forge_testlib import (
    COMMAND_DEFECTS,
    COUNTER,
    DEVICE_ID,
    VANILLA_ID,
    ForgeWorld,
)
from sim_testlib import assert_unchanged_outcomes, good, meter, snapshot, statuses

from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL, KeyUsage, StatusCode
from vdno.gbcs.cs02a import ProvideSecurityCredentialsCommand
from vdno.gbcs.cs02e import DeviceCertificateResponse, ProvideDeviceCertificateCommand
from vdno.gbcs.framing import Cra, GeneralSigningApdu, GroupingHeader, MessageCode, decode_message
from vdno.gbcs.signature import sign_apdu
from vdno.simulator.device import LastOutcome, SimulatedDevice
from vdno.simulator.errors import DeviceRefused
from vdno.simulator.profile import ROOT_CELL, DeviceKey


def test_the_good_command_is_applied(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    response = device.process(good(forge_world).encode())
    assert statuses(response, device) == [0, 0]
    assert (device.cells[NO_DS_CELL], device.cells[NO_KA_CELL]) == (
        forge_world.area.ds_der,
        forge_world.area.ka_der,
    )
    assert device.originator_counters[VANILLA_ID] == good(forge_world).counter
    assert device.seq_numbers[3] == 0  # the floor: the area DNO starts afresh


# the meter names cells by their repr as decoded from the command (the role an int, the bits enums)
_KA_CELL = (
    "TrustAnchorCellIdentifier(role=3, key_usage=<KeyUsage.KEY_AGREEMENT: 4>, "
    "cell_usage=<CellUsage.MANAGEMENT: 0>)"
)
_SUPPLIER_DS_CELL = (
    "TrustAnchorCellIdentifier(role=2, key_usage=<KeyUsage.DIGITAL_SIGNATURE: 0>, "
    "cell_usage=<CellUsage.MANAGEMENT: 0>)"
)
_NOT_MODE_3S = f"is not the one mode 3 needs ({NO_DS_CELL})"
_DOES_NOT_VERIFY = "KRP signature: signature does not verify over the signed range"
_ABSENT = "KRP signature: signature absent (no signature-length byte or length 00)"

# defect: (whole-command status, the meter's reason)
WHOLE_COMMAND: dict[str, tuple[int, str]] = {
    "not-mac-framed": (StatusCode.BAD_SIGNATURE, "ACB-SMD MAC required but the command is not MAC-framed"),
    "mac-flipped": (StatusCode.BAD_SIGNATURE, "ACB-SMD MAC: ACB-SMD MAC does not match"),
    "message-code-0102": (StatusCode.INSUFFICIENT_PERMISSION, "mode 3 does not match message code 0x0102"),
    "mode-2": (StatusCode.INSUFFICIENT_PERMISSION, "mode 2 does not match message code 0x0103"),
    "mode-8-consistent": (StatusCode.DECODE_ERROR, "mode 8 commands carry no MAC header"),
    "ds-replaced-twice": (StatusCode.DECODE_ERROR, "the same target cell appears twice"),
    "duplicate-replacement": (StatusCode.DECODE_ERROR, "the same target cell appears twice"),
    "ka-cell-authorises": (
        StatusCode.INSUFFICIENT_PERMISSION,
        f"authorising TA cell {_KA_CELL} {_NOT_MODE_3S}",
    ),
    "supplier-cell-authorises": (
        StatusCode.INSUFFICIENT_PERMISSION,
        f"authorising TA cell {_SUPPLIER_DS_CELL} {_NOT_MODE_3S}",
    ),
    "no-authorising-cell": (StatusCode.INSUFFICIENT_PERMISSION, f"authorising TA cell None {_NOT_MODE_3S}"),
    "other-originator": (
        StatusCode.INSUFFICIENT_PERMISSION,
        "Business Originator ID 5a5a5a5a5a5a5a5a is not the entity 7a11a0000000f002 in the authorising cell",
    ),
    "seq-number-stale": (
        StatusCode.BAD_SEQUENCE_NUMBER,
        "authorisingRemotePartySeqNumber 7 not above stored 10",
    ),
    "signature-flipped": (StatusCode.BAD_SIGNATURE, _DOES_NOT_VERIFY),
    "signed-by-stranger": (StatusCode.BAD_SIGNATURE, _DOES_NOT_VERIFY),
    "null-signature": (StatusCode.BAD_SIGNATURE, _ABSENT),
    "unsigned": (StatusCode.BAD_SIGNATURE, _ABSENT),
    "replaces-supplier-cell": (
        StatusCode.INSUFFICIENT_PERMISSION,
        "mode 3 may not replace the cell of role 2",
    ),
}


def refused_whole(device: SimulatedDevice, message: bytes, status: int, reason: str) -> None:
    before = snapshot(device)
    response = device.process(message)
    assert_unchanged_outcomes(response, device, status)
    assert snapshot(device) == before, "a refused command changes nothing on the meter"
    code = decode_message(message).apdu.header.message_code
    assert device.last_outcome == LastOutcome(code, status, reason)
    header = decode_message(response).apdu.header
    assert (header.cra, header.business_originator_id) == (Cra.RESPONSE, DEVICE_ID)


@pytest.mark.parametrize(("defect", "expected"), WHOLE_COMMAND.items(), ids=list(WHOLE_COMMAND))
def test_whole_command_refusals(forge_world: ForgeWorld, defect: str, expected: tuple[int, str]) -> None:
    message = COMMAND_DEFECTS[defect](forge_world, good(forge_world)).encode()
    refused_whole(meter(forge_world), message, *expected)


def test_a_replay_an_empty_cell_an_unsimulated_mode_and_an_uncheckable_mac(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    command = good(forge_world).encode()
    device.originator_counters[VANILLA_ID] = good(forge_world).counter  # it has seen this counter
    refused_whole(
        device,
        command,
        StatusCode.BAD_SEQUENCE_NUMBER,
        f"originator counter {COUNTER} not above the last seen {COUNTER} from {VANILLA_ID.hex()} (replay)",
    )

    device = meter(forge_world)
    del device.cells[NO_DS_CELL]
    refused_whole(
        device, command, StatusCode.TRUST_ANCHOR_NOT_FOUND, f"the authorising cell {NO_DS_CELL} is empty"
    )

    unsimulated = replace(good(forge_world), mode=2, message_code=MessageCode.CS02B_SUPPLIER_BY_SUPPLIER)
    refused_whole(
        meter(forge_world),
        unsimulated.encode(),
        StatusCode.OTHER,
        "credentialsReplacementMode 2 not simulated",
    )

    device = meter(forge_world)
    device.device_ka = DeviceKey(None, device.device_ka.certificate)  # the meter lost its KA private key
    refused_whole(
        device,
        command,
        StatusCode.BAD_SIGNATURE,
        "ACB-SMD MAC cannot be checked (no ACB KA cell or no device KA private key)",
    )


# defect: the status of each cell (the cells with status 0 are replaced)
PER_CELL: dict[str, list[int]] = {
    "certificates-swapped": [StatusCode.BAD_CERTIFICATE, StatusCode.BAD_CERTIFICATE],
    "no-path": [StatusCode.NO_TRUST_ANCHOR, StatusCode.NO_TRUST_ANCHOR],
    "extra-replacement": [0, 0, StatusCode.TRUST_ANCHOR_NOT_FOUND],  # no NO prepayment KA cell on a meter
}
# defect: the meter's reason for the first cell it refuses
PER_CELL_REASON = {
    "certificates-swapped": "replacement certificate key usage KEY_AGREEMENT does not match the cell's "
    "DIGITAL_SIGNATURE",
    "no-path": "no chain from 2.5.4.45=#000d000000000000f4,OU=03 (issuer CN=VDNO-LAB-Z1,OU=07) to the "
    "trust anchor CN=VDNO-LAB-ROOT,OU=00",
    "extra-replacement": "no cell TrustAnchorCellIdentifier(role=3, key_usage=<KeyUsage.KEY_AGREEMENT: 4>, "
    "cell_usage=1) on this device",
}


@pytest.mark.parametrize(("defect", "expected"), PER_CELL.items(), ids=list(PER_CELL))
def test_per_cell_refusals(forge_world: ForgeWorld, defect: str, expected: list[int]) -> None:
    device = meter(forge_world)
    form = COMMAND_DEFECTS[defect](forge_world, good(forge_world))
    response = device.process(form.encode())
    assert statuses(response, device) == expected
    placed = {r.target: r.certificate for r, s in zip(form.replacements, expected, strict=True) if s == 0}
    for cell in (NO_DS_CELL, NO_KA_CELL):
        was = forge_world.vanilla.ds_der if cell == NO_DS_CELL else forge_world.vanilla.ka_der
        assert device.cells[cell] == placed.get(cell, was)
    assert device.originator_counters[VANILLA_ID] == form.counter  # authentic: the counter is spent
    first_failure = next(s for s in expected if s != 0)
    assert device.last_outcome == LastOutcome(form.message_code, first_failure, PER_CELL_REASON[defect])


def test_a_meter_without_a_root_cell_refuses_every_replacement(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    del device.cells[ROOT_CELL]
    response = device.process(good(forge_world).encode())
    assert statuses(response, device) == [StatusCode.NO_TRUST_ANCHOR] * 2
    assert device.last_outcome is not None and device.last_outcome.reason == "the root cell is empty"


def test_what_the_meter_does_not_refuse(forge_world: ForgeWorld) -> None:
    """The simulator executes a future-dated command at once (it does not model execution times), and takes
    another floor, disapplied time checks, a seq number other than the counter and another area's set."""
    for defect in ("future-dated", "other-floor", "disapplies-time-checks", "seq-number-not-counter"):
        device = meter(forge_world)
        assert statuses(
            device.process(COMMAND_DEFECTS[defect](forge_world, good(forge_world)).encode()), device
        ) == [
            0,
            0,
        ], defect
    device = meter(forge_world)
    device.process(COMMAND_DEFECTS["other-floor"](forge_world, good(forge_world)).encode())
    assert device.seq_numbers[3] == 5


# defect (or bytes): DeviceRefused status (None: a real meter drops it unanswered) and reason
UNANSWERED: dict[str, tuple[int | None, str]] = {
    "other-recipient": (None, "addressed to 00db0000f0f0f002"),
    "not-a-command": (None, "CRA flag 3 is not a command"),
    "extra-payload-element": (StatusCode.DECODE_ERROR, "CS02b payload does not decode"),
    "unknown-control-field": (StatusCode.DECODE_ERROR, "CS02b payload does not decode"),
}


@pytest.mark.parametrize(("defect", "expected"), UNANSWERED.items(), ids=list(UNANSWERED))
def test_messages_the_meter_does_not_answer(
    forge_world: ForgeWorld, defect: str, expected: tuple[int | None, str]
) -> None:
    device = meter(forge_world)
    before = snapshot(device)
    with pytest.raises(DeviceRefused) as refused:
        device.process(COMMAND_DEFECTS[defect](forge_world, good(forge_world)).encode())
    assert refused.value.status == expected[0]
    assert expected[1] in refused.value.reason, refused.value.reason
    assert snapshot(device) == before


def _read(code: int, content: bytes, counter: int = 20) -> GeneralSigningApdu:
    return GeneralSigningApdu(GroupingHeader(Cra.COMMAND, counter, VANILLA_ID, DEVICE_ID, code), content)


def test_reads_and_codes_the_meter_does_not_answer(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    key = forge_world.vanilla.ds_key
    cases: list[tuple[bytes, int | None, str]] = [
        (b"\xdd\x00", StatusCode.DECODE_ERROR, "message does not decode"),
        (sign_apdu(_read(0x0011, b"\x05\x00"), key).encode(), None, "message code 0x0011 is not supported"),
        (sign_apdu(_read(0x0008, b"\x30\x00"), key).encode(), StatusCode.DECODE_ERROR, "CS02a payload"),
        (sign_apdu(_read(0x000C, b"\x30\x00"), key).encode(), StatusCode.DECODE_ERROR, "CS02e payload"),
        # a read signed by the vanilla DS key but naming the NO KA cell: no digital-signing cell there
        (
            sign_apdu(
                _read(0x0008, ProvideSecurityCredentialsCommand(NO_KA_CELL, (3,)).encode()), key
            ).encode(),
            StatusCode.INSUFFICIENT_PERMISSION,
            "no digital-signing cell holds originator 7a11a0000000f002",
        ),
    ]
    for message, status, reason in cases:
        with pytest.raises(DeviceRefused) as refused:
            device.process(message)
        assert (refused.value.status, reason in refused.value.reason) == (status, True), refused.value.reason


def test_a_signed_read_for_a_certificate_the_meter_does_not_have(forge_world: ForgeWorld) -> None:
    device = meter(forge_world)
    read = sign_apdu(
        _read(0x000C, ProvideDeviceCertificateCommand(KeyUsage.KEY_CERT_SIGN).encode()),
        forge_world.vanilla.ds_key,
    )
    reply = DeviceCertificateResponse.decode(decode_message(device.process(read.encode())).apdu.content)
    assert (reply.response_code, reply.certificate) == (3, None)
    assert device.last_outcome is not None and device.last_outcome.status == 3
