"""Every refusal of the bench's checks (client/checks.py), each reached by a command or response forged with
exactly one defect and real keys (forge_testlib): the reason and what the message names. The good forms pass
the same checks, and test_every_refusal_reason_has_a_test holds the tables below to the module's source."""

from __future__ import annotations

import ast
import inspect
from dataclasses import replace

import pytest
from forge_testlib import (
    AREA_ENTITY,
    AREA_ID,
    COMMAND_DEFECTS,
    DEVICE_ID,
    OTHER_DEVICE_ID,
    RESPONSE_DEFECTS,
    STRANGER_ID,
    VANILLA_ID,
    ForgeWorld,
)
from lab_testlib import der, org

import vdno.client.checks
from vdno.client.bundle import TrustBundle
from vdno.client.checks import check_command, check_hand_in_command, check_response, check_rotation_command
from vdno.client.errors import CommandRefused, ResponseRejected
from vdno.gbcs.framing import decode_message
from vdno.gbcs.smki import load_certificate

STORED_SEQ = 7  # the meter's stored NO seq number, as read before a hand-in


def refused(call: object) -> CommandRefused | ResponseRejected:
    with pytest.raises((CommandRefused, ResponseRejected)) as info:
        call()  # type: ignore[operator]
    error = info.value
    assert str(error).startswith(error.reason + ": "), "the message starts with the reason, then the detail"
    return error


# --- hand-out: check_command ---------------------------------------------------------------------------

HAND_OUT: dict[str, tuple[str, str]] = {
    # defect: (reason, what the detail names)
    "mac-framed": ("not-gs-apdu", "without MAC header"),
    "unsigned": ("unsigned", "no 64-byte KRP signature"),
    "null-signature": ("unsigned", "no 64-byte KRP signature"),
    "not-a-command": ("not-a-command", "CRA flag 3"),
    "message-code-0102": ("wrong-message-code", "0x0102 is not 0x0103"),
    "mode-8-consistent": ("wrong-message-code", "0x0108 is not 0x0103"),
    "other-recipient": ("wrong-target", OTHER_DEVICE_ID.hex()),
    "unknown-control-field": ("decode-error", "authorisingRemotePartyControl"),
    "extra-payload-element": ("decode-error", "CS02b CommandPayload"),
    "mode-2": ("wrong-mode", "credentialsReplacementMode 2"),
    "ka-cell-authorises": ("wrong-ta-cell", "key_usage=<KeyUsage.KEY_AGREEMENT"),
    "supplier-cell-authorises": ("wrong-ta-cell", "role=2,"),
    "no-authorising-cell": ("wrong-ta-cell", "authorising TA cell None"),
    "seq-number-not-counter": ("counter-mismatch", "!= Originator Counter"),
    "seq-number-stale": ("counter-mismatch", "authorisingRemotePartySeqNumber 7"),
    "plaintext-key": ("unexpected-field", "plaintextSymmetricKey"),
    "other-role-seq-change": ("unexpected-field", "other roles"),
    "specialist-floor": ("unexpected-field", "other roles"),
    "other-floor": ("wrong-floor", "newRemotePartyFloorSeqNumber 5 is not 0"),
    "disapplies-time-checks": ("time-checks-disapplied", "applyTimeBasedCPVChecks"),
    "future-dated": ("future-dated", "execute immediately"),
    "other-originator": ("unknown-originator", STRANGER_ID.hex()),
    "signature-flipped": ("bad-signature", "generation 2"),
    "signed-by-stranger": ("bad-signature", "does not verify"),
    "extra-replacement": ("wrong-replacements", "got 3"),
    "duplicate-replacement": ("wrong-replacements", "got 3"),
    "ds-replaced-twice": ("wrong-replacements", "got 2"),
    "missing-replacement": ("wrong-replacements", "got 1"),
    "replaces-supplier-cell": ("wrong-replacements", "role=2,"),
    "certificates-swapped": ("wrong-area-certificate", "the NO DS replacement is not area 14's DS"),
    "other-area-certificates": ("wrong-area-certificate", "area 14's"),
    "no-path": ("wrong-path-certificate", "issuing CA"),
    "root-as-path": ("wrong-path-certificate", "issuing CA"),
}


def test_the_good_hand_out_passes(forge_world: ForgeWorld) -> None:
    checked = check_command(forge_world.hand_out().encode(), DEVICE_ID, AREA_ID, forge_world.bench_bundle())
    assert (checked.counter, checked.generation.generation) == (forge_world.hand_out().counter, 2)


@pytest.mark.parametrize(("defect", "expected"), HAND_OUT.items(), ids=list(HAND_OUT))
def test_hand_out_refusals(forge_world: ForgeWorld, defect: str, expected: tuple[str, str]) -> None:
    command = COMMAND_DEFECTS[defect](forge_world, forge_world.hand_out()).encode()
    error = refused(lambda: check_command(command, DEVICE_ID, AREA_ID, forge_world.bench_bundle()))
    assert (error.reason, expected[1] in error.detail) == (expected[0], True), error.detail


def test_hand_out_bytes_that_do_not_decode(forge_world: ForgeWorld) -> None:
    good = forge_world.hand_out().encode()
    bundle = forge_world.bench_bundle()
    assert refused(lambda: check_command(b"", DEVICE_ID, AREA_ID, bundle)).reason == "not-gs-apdu"
    error = refused(lambda: check_command(good[:40], DEVICE_ID, AREA_ID, bundle))
    assert (error.reason, "truncated" in error.detail) == ("decode-error", True)


def test_hand_out_to_an_area_missing_from_the_bundle(forge_world: ForgeWorld) -> None:
    error = refused(
        lambda: check_command(forge_world.hand_out().encode(), DEVICE_ID, 23, forge_world.bench_bundle())
    )
    assert (error.reason, error.detail) == ("unknown-area", "area 23 is not in the trust bundle")


def _with_generation_2_ds(bundle: TrustBundle, certificate: bytes) -> TrustBundle:
    generations = tuple(
        replace(g, ds_certificate=certificate) if g.generation == 2 else g for g in bundle.generations
    )
    return replace(bundle, generations=generations)


def test_a_bundle_whose_generation_certificate_is_unusable(forge_world: ForgeWorld) -> None:
    command = forge_world.hand_out().encode()
    bundle = forge_world.bench_bundle()
    garbled = _with_generation_2_ds(bundle, b"\x30\x03\x02\x01\x00")
    error = refused(lambda: check_command(command, DEVICE_ID, AREA_ID, garbled))
    assert (error.reason, error.detail.startswith("generation 2 DS certificate:")) == ("bad-bundle", True)
    # each of the three properties alone: the key usage, the role (a supplier's DS certificate naming the
    # generation's entity) and the entity (a network operator's DS certificate naming another one)
    same_entity_as_supplier = org(
        forge_world.issuing, forge_world.vanilla.entity_id, 2, "ds", forge_world.now
    )
    another_entity = org(forge_world.issuing, forge_world.area.entity_id, 3, "ds", forge_world.now)
    for certificate in (
        forge_world.vanilla.ka_der,
        der(same_entity_as_supplier.certificate),
        der(another_entity.certificate),
    ):
        unusable = _with_generation_2_ds(bundle, certificate)
        error = refused(lambda b=unusable: check_command(command, DEVICE_ID, AREA_ID, b))
        assert (error.reason, error.detail) == (
            "bad-bundle",
            "generation 2 DS certificate is not its role-3 DS certificate",
        )


def test_a_generation_that_may_no_longer_sign(forge_world: ForgeWorld) -> None:
    bundle = forge_world.bench_bundle()
    compromised = replace(
        bundle, generations=tuple(replace(g, compromised=g.generation == 2) for g in bundle.generations)
    )
    error = refused(lambda: check_command(forge_world.hand_out().encode(), DEVICE_ID, AREA_ID, compromised))
    assert (error.reason, VANILLA_ID.hex() in error.detail) == ("unknown-originator", True)


# --- rotation: check_rotation_command ------------------------------------------------------------------


def test_the_good_rotation_passes(forge_world: ForgeWorld) -> None:
    checked = check_rotation_command(forge_world.rotation().encode(), DEVICE_ID, forge_world.bench_bundle())
    assert checked.generation.generation == 1


def test_rotation_refusals(forge_world: ForgeWorld) -> None:
    bundle = forge_world.bench_bundle()
    # signed by the active generation itself, installing its own certificates
    own = replace(forge_world.rotation(), originator=VANILLA_ID, signer=forge_world.vanilla.ds_key).encode()
    error = refused(lambda: check_rotation_command(own, DEVICE_ID, bundle))
    assert (error.reason, "signed by the generation the meter holds" in error.detail) == (
        "wrong-originator",
        True,
    )
    # a hand-out presented as a rotation installs an area's certificates, not the active generation's
    error = refused(lambda: check_rotation_command(forge_world.hand_out().encode(), DEVICE_ID, bundle))
    assert (error.reason, "the active generation 2's DS" in error.detail) == ("wrong-area-certificate", True)
    no_active = replace(bundle, generations=tuple(g for g in bundle.generations if g.generation != 2))
    error = refused(lambda: check_rotation_command(forge_world.rotation().encode(), DEVICE_ID, no_active))
    assert (error.reason, error.detail) == (
        "no-active-generation",
        "the pinned bundle has no active vanilla generation",
    )


# --- hand-in: check_hand_in_command --------------------------------------------------------------------

HAND_IN: dict[str, tuple[str, str]] = {
    "not-mac-framed": ("not-mac-framed", "ACB-SMD MAC"),
    "unsigned": ("unsigned", "no 64-byte KRP signature"),
    "null-signature": ("unsigned", "no 64-byte KRP signature"),
    "not-a-command": ("not-a-command", "CRA flag 3"),
    "message-code-0102": ("wrong-message-code", "0x0102"),
    "mode-8-consistent": ("wrong-message-code", "0x0108"),
    "other-recipient": ("wrong-target", OTHER_DEVICE_ID.hex()),
    "mode-2": ("wrong-mode", "credentialsReplacementMode 2"),
    "ka-cell-authorises": ("wrong-ta-cell", "KEY_AGREEMENT"),
    "supplier-cell-authorises": ("wrong-ta-cell", "role=2,"),
    "no-authorising-cell": ("wrong-ta-cell", "None"),
    "other-originator": ("wrong-originator", f"is not the DNO {AREA_ENTITY.hex()}"),
    "signature-flipped": ("bad-signature", "area 14 DNO"),
    "signed-by-stranger": ("bad-signature", "area 14 DNO"),
    "extra-replacement": ("wrong-replacements", "got 3"),
    "duplicate-replacement": ("wrong-replacements", "got 3"),
    "ds-replaced-twice": ("wrong-replacements", "got 2"),
    "missing-replacement": ("wrong-replacements", "got 1"),
    "replaces-supplier-cell": ("wrong-replacements", "role=2,"),
    "certificates-swapped": ("wrong-generation-certificate", "vanilla generation 2's DS"),
    "other-area-certificates": ("wrong-generation-certificate", "vanilla generation 2's DS"),
    "no-path": ("wrong-path-certificate", "issuing CA"),
    "root-as-path": ("wrong-path-certificate", "issuing CA"),
    "seq-number-stale": ("stale-seq-number", "7 is not above the meter's 7"),
    "seq-number-not-counter": ("counter-mismatch", "!= Originator Counter"),
    "plaintext-key": ("unexpected-field", "plaintextSymmetricKey"),
    "other-role-seq-change": ("unexpected-field", "other roles"),
    "specialist-floor": ("unexpected-field", "other roles"),
    "other-floor": ("wrong-floor", "5 is not 0"),
    "disapplies-time-checks": ("time-checks-disapplied", "applyTimeBasedCPVChecks"),
    "future-dated": ("future-dated", "execute immediately"),
    "unknown-control-field": ("decode-error", "authorisingRemotePartyControl"),
    "extra-payload-element": ("decode-error", "CS02b CommandPayload"),
}


def check_hand_in(
    world: ForgeWorld, command: bytes, generation: int = 2, holder: bytes = AREA_ENTITY
) -> object:
    return check_hand_in_command(command, DEVICE_ID, generation, world.bench_bundle(), holder, STORED_SEQ)


def test_the_good_hand_in_passes(forge_world: ForgeWorld) -> None:
    checked = check_hand_in_command(
        forge_world.hand_in().encode(), DEVICE_ID, 2, forge_world.bench_bundle(), AREA_ENTITY, STORED_SEQ
    )
    assert (checked.area.area_id, checked.generation.generation) == (AREA_ID, 2)


@pytest.mark.parametrize(("defect", "expected"), HAND_IN.items(), ids=list(HAND_IN))
def test_hand_in_refusals(forge_world: ForgeWorld, defect: str, expected: tuple[str, str]) -> None:
    command = COMMAND_DEFECTS[defect](forge_world, forge_world.hand_in()).encode()
    error = refused(lambda: check_hand_in(forge_world, command))
    assert (error.reason, expected[1] in error.detail) == (expected[0], True), error.detail


def test_hand_in_the_bench_leaves_to_the_meter(forge_world: ForgeWorld) -> None:
    """The MAC is the meter's to check (it needs the device's key): the bench lets a wrong one through
    (the simulator tests show the meter's answer)."""
    for defect in ("mac-flipped",):
        command = COMMAND_DEFECTS[defect](forge_world, forge_world.hand_in()).encode()
        assert check_hand_in(forge_world, command).counter == forge_world.hand_in().counter  # type: ignore[attr-defined]


def test_hand_in_from_a_holder_or_for_a_generation_the_bundle_does_not_know(forge_world: ForgeWorld) -> None:
    stranger = replace(forge_world.hand_in(), originator=STRANGER_ID).encode()
    error = refused(lambda: check_hand_in(forge_world, stranger, holder=STRANGER_ID))
    assert (error.reason, "is not an area DNO in the pinned bundle" in error.detail) == (
        "unknown-originator",
        True,
    )
    for generation in (1, 9):  # signing-only, unknown
        error = refused(lambda g=generation: check_hand_in(forge_world, forge_world.hand_in().encode(), g))
        assert (error.reason, error.detail) == (
            "unknown-generation",
            f"vanilla generation {generation} is not active in the pinned bundle",
        )


def test_hand_in_bytes_that_do_not_decode(forge_world: ForgeWorld) -> None:
    error = refused(lambda: check_hand_in(forge_world, forge_world.hand_in().encode()[:-20]))
    assert error.reason == "decode-error"


# --- the meter's response: check_response --------------------------------------------------------------

RESPONSE: dict[str, tuple[str, str]] = {
    "is-a-command": ("not-a-response", "CRA flag 1"),
    "message-code-0102": ("wrong-message-code", "0x0102 != command's 0x0103"),
    "from-other-device": ("wrong-originator", OTHER_DEVICE_ID.hex()),
    "to-someone-else": ("wrong-target", STRANGER_ID.hex()),
    "counter-not-echoed": ("counter-mismatch", "does not echo"),
    "signature-flipped": ("bad-signature", "does not verify"),
    "signed-with-device-ka-key": ("bad-signature", "does not verify"),
    "signed-by-other-device": ("bad-signature", "does not verify"),
    "unsigned": ("bad-signature", "signature absent"),
    "extra-payload-element": ("decode-error", "CS02b ResponsePayload"),
    "no-execution-outcome": ("no-execution-outcome", "no execution outcome"),
    "outcome-seq-number": ("counter-mismatch", "executionOutcome seq number"),
    "outcome-mode-8": ("wrong-mode", "executionOutcome mode 8"),
    "no-cell-outcomes": ("no-cell-outcomes", "no replacement outcomes"),
}


def test_the_good_response_passes(forge_world: ForgeWorld) -> None:
    command = forge_world.hand_out()
    header = decode_message(command.encode()).apdu.header
    checked = check_response(
        forge_world.response(command).encode(), header, load_certificate(forge_world.device.ds_der)
    )
    assert [o.status for o in checked.outcome.replacement_outcomes] == [0, 0]


@pytest.mark.parametrize(("defect", "expected"), RESPONSE.items(), ids=list(RESPONSE))
def test_response_refusals(forge_world: ForgeWorld, defect: str, expected: tuple[str, str]) -> None:
    command = forge_world.hand_out()
    header = decode_message(command.encode()).apdu.header
    response = RESPONSE_DEFECTS[defect](forge_world, forge_world.response(command)).encode()
    error = refused(lambda: check_response(response, header, load_certificate(forge_world.device.ds_der)))
    assert (error.reason, expected[1] in error.detail) == (expected[0], True), error.detail


def test_response_refusals_of_cells_bytes_and_certificates(forge_world: ForgeWorld) -> None:
    command = forge_world.hand_out()
    header = decode_message(command.encode()).apdu.header
    device = load_certificate(forge_world.device.ds_der)
    failed = forge_world.response(command, statuses=(0, 10)).encode()
    error = refused(lambda: check_response(failed, header, device))
    assert (error.reason, error.detail) == (
        "cell-status",
        "meter did not replace every cell: role 3 KEY_AGREEMENT status 10",
    )
    error = refused(lambda: check_response(b"\xdf\x09\x02", header, device))
    assert error.reason == "decode-error"
    good = forge_world.response(command).encode()
    other = load_certificate(forge_world.other_device.ds_der)
    error = refused(lambda: check_response(good, header, other))
    assert (error.reason, OTHER_DEVICE_ID.hex() in error.detail) == ("bad-device-certificate", True)


# --- every reason in the module has a test above ----------------------------------------------------------

TESTED = {
    "check_command": {r for r, _ in HAND_OUT.values()} | {"unknown-area", "decode-error", "bad-bundle"},
    "check_rotation_command": {"no-active-generation", "wrong-originator"},
    "_check_transfer": {r for r, _ in HAND_OUT.values()} | {"bad-bundle", "decode-error"},
    "check_hand_in_command": {r for r, _ in HAND_IN.values()} | {"unknown-originator", "unknown-generation"},
    "_check_floor_and_time_checks": {"wrong-floor", "time-checks-disapplied"},
    "check_response": {r for r, _ in RESPONSE.values()}
    | {"cell-status", "decode-error", "bad-device-certificate"},
}


def refusal_reasons() -> dict[str, set[str]]:
    """Function name -> the reasons it raises CommandRefused / ResponseRejected with, read from the source."""
    found: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(inspect.getsource(vdno.client.checks))):
        if isinstance(node, ast.FunctionDef):
            for call in ast.walk(node):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Name)
                    and call.func.id in ("CommandRefused", "ResponseRejected")
                ):
                    assert isinstance(call.args[0], ast.Constant)
                    found.setdefault(node.name, set()).add(str(call.args[0].value))
    return found


def test_every_refusal_reason_has_a_test() -> None:
    for function, reasons in refusal_reasons().items():
        assert reasons <= TESTED.get(function, set()), (
            f"{function}: untested {reasons - TESTED.get(function, set())}"
        )


def test_what_passes_is_handed_back_decoded(forge_world: ForgeWorld) -> None:
    """The checks hand back the message and payload they decoded and checked (what the bench sends and
    records), not only the verdict."""
    hand_in = forge_world.hand_in()
    data = hand_in.encode()  # the MAC framing is fresh each time: encode once
    checked = check_hand_in_command(data, DEVICE_ID, 2, forge_world.bench_bundle(), AREA_ENTITY, STORED_SEQ)
    assert checked.message == decode_message(data)
    assert checked.payload == hand_in.payload() and checked.counter == hand_in.counter
    command = forge_world.hand_out()
    command_data = command.encode()
    handed_out = check_command(command_data, DEVICE_ID, AREA_ID, forge_world.bench_bundle())
    assert handed_out.message == decode_message(command_data)
    assert handed_out.payload == command.payload() and handed_out.counter == command.counter
    assert handed_out.generation.generation == 2
    header = decode_message(command_data).apdu.header
    response = forge_world.response(command)
    response_data = response.encode()
    answered = check_response(response_data, header, load_certificate(forge_world.device.ds_der))
    assert answered.message == decode_message(response_data)
    assert answered.outcome == answered.payload.execution_outcome == response.outcome
