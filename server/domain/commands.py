"""The one command the custodian signs: CS02b mode 3 moving a device's NO cells from a vanilla generation to
an area DNO (a hand-out) or to the active generation (a rotation)."""

from __future__ import annotations

from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL, CredentialsReplacementMode
from vdno.gbcs.cs02b import (
    AuthorisingRemotePartyControl,
    TrustAnchorReplacement,
    UpdateSecurityCredentialsCommand,
)
from vdno.gbcs.framing import Cra, GeneralSigningApdu, GroupingHeader, MessageCode
from vdno.server.domain.values import CredentialSet, VanillaGeneration

# New NO's seq-number floor set by a hand-out (GBCS 13.3.5: present when control changes hands).
HAND_OUT_FLOOR = 0


def build_transfer_command(
    generation: VanillaGeneration, target: CredentialSet, device_id: bytes, counter: int, issuing_ca: bytes
) -> GeneralSigningApdu:
    """The unsigned CS02b mode-3 command moving the device's NO cells from `generation` to `target`."""
    header = GroupingHeader(
        cra=Cra.COMMAND,
        originator_counter=counter,
        business_originator_id=generation.entity_id,
        business_target_id=device_id,
        message_code=MessageCode.CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR,
    )
    payload = UpdateSecurityCredentialsCommand(
        control=AuthorisingRemotePartyControl(
            mode=CredentialsReplacementMode.NETWORK_OPERATOR_BY_NETWORK_OPERATOR,
            seq_number=counter,  # authorisingRemotePartySeqNumber = originator counter (docs: rule 4)
            ta_cell=NO_DS_CELL,
            floor_seq_number=HAND_OUT_FLOOR,
        ),
        replacements=(
            TrustAnchorReplacement(target.ds_certificate, NO_DS_CELL),
            TrustAnchorReplacement(target.ka_certificate, NO_KA_CELL),
        ),
        certification_path_certificates=(issuing_ca,),
    )
    return GeneralSigningApdu(header=header, content=payload.encode())
