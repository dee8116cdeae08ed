"""check_command accepts a correct command and refuses every tampering with a named reason;
check_response verifies the meter's signed response."""

from __future__ import annotations

from dataclasses import replace

import pytest
from bench_testlib import (
    AREA_ID,
    DEVICE_ID,
    OTHER_AREA_ID,
    OTHER_DEVICE_ID,
    LabWorld,
    build_command,
    der,
    device_response,
    with_status,
)

from vdno.client.checks import check_command, check_response
from vdno.client.errors import CommandRefused, ResponseRejected
from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL
from vdno.gbcs.cs02b import TrustAnchorReplacement
from vdno.gbcs.framing import decode_message, encode_mac_framed
from vdno.gbcs.smki import load_certificate
from vdno.labpki.smki import issue_device_certificate, new_p256_key


def test_accepts_correct_command(world: LabWorld) -> None:
    command = build_command(world, counter=4242)
    checked = check_command(command, DEVICE_ID, AREA_ID, world.bundle)
    assert checked.counter == 4242
    assert checked.generation.generation == 2
    assert checked.header.business_target_id == DEVICE_ID


def refusal(world: LabWorld, command: bytes, **kw: object) -> str:
    device = kw.get("device", DEVICE_ID)
    area = kw.get("area", AREA_ID)
    bundle = kw.get("bundle", world.bundle)
    with pytest.raises(CommandRefused) as info:
        check_command(command, device, area, bundle)  # type: ignore[arg-type]
    assert str(info.value).startswith(info.value.reason)
    return info.value.reason


def test_wrong_target_device(world: LabWorld) -> None:
    assert refusal(world, build_command(world, device_id=OTHER_DEVICE_ID)) == "wrong-target"


def test_wrong_mode(world: LabWorld) -> None:
    assert refusal(world, build_command(world, mode=8)) == "wrong-mode"


def test_wrong_area_certificate(world: LabWorld) -> None:
    # a correctly signed command for another area's certificates, checked against AREA_ID
    assert refusal(world, build_command(world, area_id=OTHER_AREA_ID)) == "wrong-area-certificate"


def test_area_certificates_swapped(world: LabWorld) -> None:
    area = world.areas[AREA_ID]
    swapped = (
        TrustAnchorReplacement(area.ka_cert, NO_DS_CELL),
        TrustAnchorReplacement(area.ds_cert, NO_KA_CELL),
    )
    assert refusal(world, build_command(world, replacements=swapped)) == "wrong-area-certificate"


def test_bad_signature(world: LabWorld) -> None:
    command = bytearray(build_command(world))
    command[-3] ^= 0x01
    assert refusal(world, bytes(command)) == "bad-signature"


def test_signed_by_someone_else_claiming_vanilla_id(world: LabWorld) -> None:
    command = build_command(world, signer=world.areas[AREA_ID], originator=world.vanilla.entity_id)
    assert refusal(world, command) == "bad-signature"


def test_unknown_originator(world: LabWorld) -> None:
    assert refusal(world, build_command(world, signer=world.areas[AREA_ID])) == "unknown-originator"


def test_retired_generation_is_unknown(world: LabWorld) -> None:
    assert refusal(world, build_command(world, signer=world.other_vanilla)) == "unknown-originator"
    assert refusal(world, build_command(world), bundle=with_status(world.bundle, "compromised")) == (
        "unknown-originator"
    )


def test_extra_replacement(world: LabWorld) -> None:
    area = world.areas[AREA_ID]
    extra = (
        TrustAnchorReplacement(area.ds_cert, NO_DS_CELL),
        TrustAnchorReplacement(area.ka_cert, NO_KA_CELL),
        TrustAnchorReplacement(area.ka_cert, replace(NO_KA_CELL, cell_usage=1)),
    )
    assert refusal(world, build_command(world, replacements=extra)) == "wrong-replacements"


def test_missing_replacement(world: LabWorld) -> None:
    only_ds = (TrustAnchorReplacement(world.areas[AREA_ID].ds_cert, NO_DS_CELL),)
    assert refusal(world, build_command(world, replacements=only_ds)) == "wrong-replacements"


def test_wrong_path_certificate(world: LabWorld) -> None:
    assert refusal(world, build_command(world, path=())) == "wrong-path-certificate"
    root = world.bundle.root_ca_certificate
    assert refusal(world, build_command(world, path=(root,))) == "wrong-path-certificate"


def test_seq_number_differs_from_counter(world: LabWorld) -> None:
    assert refusal(world, build_command(world, counter=10, seq_number=11)) == "counter-mismatch"


def test_unknown_area(world: LabWorld) -> None:
    assert refusal(world, build_command(world), area=23) == "unknown-area"


def test_mac_framed_or_unsigned_refused(world: LabWorld) -> None:
    command = build_command(world)
    assert refusal(world, encode_mac_framed(command, bytes(12))) == "not-gs-apdu"
    precommand = decode_message(command).apdu.encode_precommand()
    assert refusal(world, precommand) == "unsigned"
    assert refusal(world, b"\xdf\x09") == "decode-error"


# --- check_response --------------------------------------------------------------------------------


def test_response_accepted(world: LabWorld) -> None:
    command = build_command(world, counter=777)
    header = decode_message(command).apdu.header
    checked = check_response(device_response(world, command), header, load_certificate(world.device_cert))
    assert checked.outcome.seq_number == 777


def response_refusal(world: LabWorld, response: bytes, command: bytes, cert: bytes | None = None) -> str:
    header = decode_message(command).apdu.header
    with pytest.raises(ResponseRejected) as info:
        check_response(response, header, load_certificate(cert or world.device_cert))
    return info.value.reason


def test_response_cell_failure(world: LabWorld) -> None:
    command = build_command(world)
    assert response_refusal(world, device_response(world, command, (0, 10)), command) == "cell-status"


def test_response_counter_not_echoed(world: LabWorld) -> None:
    command = build_command(world, counter=900)
    response = device_response(world, command, counter=901)
    assert response_refusal(world, response, command) == "counter-mismatch"


def test_response_bad_signature(world: LabWorld) -> None:
    command = build_command(world)
    response = bytearray(device_response(world, command))
    response[-2] ^= 0x01
    assert response_refusal(world, bytes(response), command) == "bad-signature"


def test_response_wrong_device_certificate(world: LabWorld) -> None:
    command = build_command(world)
    response = device_response(world, command)
    # the device's KA certificate is for the right device but its key did not sign
    assert response_refusal(world, response, command, world.device_ka_cert) == "bad-signature"
    assert response_refusal(world, response, command, world.vanilla.ds_cert) == "bad-signature"


def test_response_device_certificate_for_another_device(world: LabWorld) -> None:
    command = build_command(world)
    response = device_response(world, command)
    other = der(issue_device_certificate(world.device_ca, new_p256_key().public_key(), OTHER_DEVICE_ID, "ds"))
    assert response_refusal(world, response, command, other) == "bad-device-certificate"
