"""The forge builders (forge_testlib) make exactly the defect they name: each forged command or response
differs from the good one in the parts its defect touches and in no other (header fields, payload elements,
unknown elements, signature and MAC validity under the good signer's and the ACB's keys)."""

from __future__ import annotations

import pytest
from forge_testlib import (
    COMMAND_DEFECTS,
    RESPONSE_DEFECTS,
    ForgeWorld,
    anatomy,
    differing_parts,
    forge_problems,
)

from vdno.gbcs.framing import decode_message
from vdno.gbcs.signature import verify_message_signature

# Defects of framing apply to one kind of command only: the MAC to the MAC-framed hand-in, framing one to
# the GS-only commands of the custodian.
GS_ONLY = [name for name in COMMAND_DEFECTS if name not in ("not-mac-framed", "mac-flipped")]
MAC_FRAMED = [name for name in COMMAND_DEFECTS if name != "mac-framed"]
CASES = (
    [("hand_out", name) for name in GS_ONLY]
    + [("rotation", name) for name in GS_ONLY]
    + [("hand_in", name) for name in MAC_FRAMED]
)


@pytest.mark.parametrize(("base", "defect"), CASES, ids=[f"{b}-{d}" for b, d in CASES])
def test_a_forged_command_differs_only_by_its_defect(forge_world: ForgeWorld, base: str, defect: str) -> None:
    good = getattr(forge_world, base)()
    assert forge_problems(forge_world, good, COMMAND_DEFECTS[defect]) == set()


@pytest.mark.parametrize("defect", list(RESPONSE_DEFECTS))
def test_a_forged_response_differs_only_by_its_defect(forge_world: ForgeWorld, defect: str) -> None:
    good = forge_world.response(forge_world.hand_out())
    assert forge_problems(forge_world, good, RESPONSE_DEFECTS[defect]) == set()


def test_good_forms_are_signed_and_maced_with_the_real_keys(forge_world: ForgeWorld) -> None:
    for form in (forge_world.hand_out(), forge_world.rotation(), forge_world.hand_in()):
        message = decode_message(form.encode())
        verify_message_signature(message, form.signer.public_key())
        parts = anatomy(form.encode(), form.signer.public_key(), forge_world.acb_mac())
        assert parts["signature"] == "valid"
        assert parts["mac"] == ("valid" if form.mac else "absent")
    response = forge_world.response(forge_world.hand_out())
    verify_message_signature(decode_message(response.encode()), forge_world.device.ds.certificate)


def test_anatomy_sees_a_flipped_bit_in_the_signed_bytes(forge_world: ForgeWorld) -> None:
    """A forgery that changed bytes without signing them anew would show as an invalid signature."""
    form = forge_world.hand_in()
    good = form.encode()
    key = forge_world.area.ds_key.public_key()
    counter = good.find(form.counter.to_bytes(8, "big")) + 7
    inside_certificate = good.find(forge_world.vanilla.ds_der) + len(forge_world.vanilla.ds_der) - 3
    for index in (counter, inside_certificate):
        flipped = bytearray(good)
        flipped[index] ^= 0x01
        changed = differing_parts(anatomy(good, key), anatomy(bytes(flipped), key))
        assert "signature" in changed, index
