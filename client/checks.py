"""Local checks a bench makes before applying a signed command and after the meter answers."""

from __future__ import annotations

from dataclasses import dataclass

from vdno.client.bundle import AreaCredentials, TrustBundle, VanillaGeneration
from vdno.client.errors import BundleError, CommandRefused, ResponseRejected
from vdno.gbcs.cells import NO_DS_CELL, NO_KA_CELL, CredentialsReplacementMode, KeyUsage, RemotePartyRole
from vdno.gbcs.cs02b import (
    AuthorisingRemotePartyControl,
    ExecutionOutcome,
    UpdateSecurityCredentialsCommand,
    UpdateSecurityCredentialsResponse,
)
from vdno.gbcs.errors import CertificateError, GbcsError, SignatureError
from vdno.gbcs.framing import (
    GENERAL_SIGNING_TAG,
    SIGNATURE_LEN,
    Cra,
    GbcsMessage,
    GroupingHeader,
    MessageCode,
    decode_message,
)
from vdno.gbcs.ids import eui64_hex
from vdno.gbcs.signature import verify_message_signature
from vdno.gbcs.smki import SmkiCertificate, load_certificate

# The seq-number floor a hand-out, rotation or hand-in gives the new NO cell holder (GBCS 13.3.5
# newRemotePartyFloorSeqNumber): the custodian and the lab DNOs set 0.
NEW_NO_FLOOR = 0


@dataclass(frozen=True)
class CheckedCommand:
    message: GbcsMessage
    header: GroupingHeader
    payload: UpdateSecurityCredentialsCommand
    generation: VanillaGeneration

    @property
    def counter(self) -> int:
        return self.header.originator_counter


@dataclass(frozen=True)
class CheckedResponse:
    message: GbcsMessage
    payload: UpdateSecurityCredentialsResponse
    outcome: ExecutionOutcome


def check_command(command: bytes, device_id: bytes, area_id: int, bundle: TrustBundle) -> CheckedCommand:
    """Refuse (CommandRefused with a named reason) anything but a GS-only, KRP-signed CS02b mode-3 command
    from a vanilla generation in `bundle` that may sign, addressed to `device_id`, installing exactly the
    area's DS and KA certificates into the NO cells, with the bundle's issuing CA as the path certificate."""
    try:
        area = bundle.area(area_id)
    except BundleError as exc:
        raise CommandRefused("unknown-area", str(exc)) from exc
    return _check_transfer(
        command, device_id, bundle, area.ds_certificate, area.ka_certificate, f"area {area_id}'s"
    )


def check_rotation_command(command: bytes, device_id: bytes, bundle: TrustBundle) -> CheckedCommand:
    """As check_command, for a rotation: signed by a vanilla generation that may sign and is not the active
    one, installing exactly the active generation's DS and KA certificates."""
    active = bundle.active_generation()
    if active is None:
        raise CommandRefused("no-active-generation", "the pinned bundle has no active vanilla generation")
    checked = _check_transfer(
        command,
        device_id,
        bundle,
        active.ds_certificate,
        active.ka_certificate,
        f"the active generation {active.generation}'s",
    )
    if checked.generation.generation == active.generation:
        raise CommandRefused("wrong-originator", "a rotation is signed by the generation the meter holds")
    return checked


def _check_transfer(
    command: bytes,
    device_id: bytes,
    bundle: TrustBundle,
    ds_certificate: bytes,
    ka_certificate: bytes,
    whose: str,
) -> CheckedCommand:
    data = bytes(command)
    if not data or data[0] != GENERAL_SIGNING_TAG:
        raise CommandRefused(
            "not-gs-apdu", "command must be a General-Signing APDU (DF ...) without MAC header"
        )
    try:
        message = decode_message(data)
    except GbcsError as exc:
        raise CommandRefused("decode-error", str(exc)) from exc
    apdu = message.apdu
    header = apdu.header
    if apdu.signature is None or len(apdu.signature) != SIGNATURE_LEN:
        raise CommandRefused("unsigned", "command carries no 64-byte KRP signature")
    if header.cra != Cra.COMMAND:
        raise CommandRefused("not-a-command", f"CRA flag {int(header.cra)} is not 1 (command)")
    if header.message_code != MessageCode.CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR:
        raise CommandRefused(
            "wrong-message-code", f"message code 0x{header.message_code:04X} is not 0x0103 (CS02b NO-by-NO)"
        )
    if header.business_target_id != bytes(device_id):
        raise CommandRefused(
            "wrong-target",
            f"Business Target ID {eui64_hex(header.business_target_id)} is not the device "
            f"{bytes(device_id).hex()}",
        )
    try:
        payload = UpdateSecurityCredentialsCommand.decode(apdu.content)
    except GbcsError as exc:
        raise CommandRefused("decode-error", str(exc)) from exc
    control = payload.control
    if control.mode != CredentialsReplacementMode.NETWORK_OPERATOR_BY_NETWORK_OPERATOR:
        raise CommandRefused("wrong-mode", f"credentialsReplacementMode {control.mode} is not 3 (NO-by-NO)")
    if control.ta_cell != NO_DS_CELL:
        raise CommandRefused(
            "wrong-ta-cell", f"authorising TA cell {control.ta_cell} is not {{role 3, digitalSignature}}"
        )
    if control.seq_number != header.originator_counter:
        raise CommandRefused(
            "counter-mismatch",
            f"authorisingRemotePartySeqNumber {control.seq_number} != Originator Counter "
            f"{header.originator_counter}",
        )
    if (
        control.plaintext_symmetric_key is not None
        or control.other_seq_number_changes is not None
        or control.specialist_floor_seq_numbers is not None
    ):
        raise CommandRefused(
            "unexpected-field", "plaintextSymmetricKey / seq-number changes for other roles present"
        )
    _check_floor_and_time_checks(control)
    if payload.execution_date_time is not None:
        raise CommandRefused("future-dated", "hand-out commands must execute immediately")

    generation = bundle.signing_generation(header.business_originator_id)
    if generation is None:
        raise CommandRefused(
            "unknown-originator",
            f"Business Originator ID {eui64_hex(header.business_originator_id)} is not a vanilla generation "
            "that may sign (active or signing-only) in the pinned bundle",
        )
    try:
        signer = load_certificate(generation.ds_certificate)
    except CertificateError as exc:
        raise CommandRefused(
            "bad-bundle", f"generation {generation.generation} DS certificate: {exc}"
        ) from exc
    if (
        signer.entity_id != generation.entity_id
        or signer.role != RemotePartyRole.NETWORK_OPERATOR
        or signer.key_usage != KeyUsage.DIGITAL_SIGNATURE
    ):
        raise CommandRefused(
            "bad-bundle",
            f"generation {generation.generation} DS certificate is not its role-3 DS certificate",
        )
    try:
        verify_message_signature(message, signer.certificate)
    except SignatureError as exc:
        raise CommandRefused("bad-signature", f"{exc} (generation {generation.generation})") from exc

    expected = {NO_DS_CELL: ds_certificate, NO_KA_CELL: ka_certificate}
    targets = [r.target for r in payload.replacements]
    if len(payload.replacements) != 2 or set(targets) != set(expected):
        raise CommandRefused(
            "wrong-replacements",
            f"expected exactly two replacements for the NO DS and NO KA cells, got {len(targets)}: {targets}",
        )
    for replacement in payload.replacements:
        if bytes(replacement.certificate) != bytes(expected[replacement.target]):
            usage = "DS" if replacement.target == NO_DS_CELL else "KA"
            raise CommandRefused(
                "wrong-area-certificate",
                f"the NO {usage} replacement is not {whose} {usage} certificate from the bundle",
            )
    if payload.certification_path_certificates != (bytes(bundle.issuing_ca_certificate),):
        raise CommandRefused(
            "wrong-path-certificate", "certificationPathCertificates is not exactly the bundle's issuing CA"
        )
    return CheckedCommand(message, header, payload, generation)


def _check_floor_and_time_checks(control: AuthorisingRemotePartyControl) -> None:
    """The new NO's seq-number floor is NEW_NO_FLOOR (a higher one would lock it out of the meter), and the
    meter keeps its time-based certificate path checks (GBCS 13.3.5)."""
    if control.floor_seq_number != NEW_NO_FLOOR:
        raise CommandRefused(
            "wrong-floor", f"newRemotePartyFloorSeqNumber {control.floor_seq_number} is not {NEW_NO_FLOOR}"
        )
    if control.apply_time_based_cpv_checks not in (None, 0):
        raise CommandRefused(
            "time-checks-disapplied", "applyTimeBasedCPVChecks disapplies the certificate validity checks"
        )


@dataclass(frozen=True)
class CheckedHandIn:
    message: GbcsMessage
    header: GroupingHeader
    payload: UpdateSecurityCredentialsCommand
    area: AreaCredentials  # whose DNO signed
    generation: VanillaGeneration  # what the command installs

    @property
    def counter(self) -> int:
        return self.header.originator_counter


def check_hand_in_command(
    command: bytes,
    device_id: bytes,
    generation_number: int,
    bundle: TrustBundle,
    no_ds_entity: bytes,
    stored_seq_number: int,
) -> CheckedHandIn:
    """Refuse (CommandRefused with a named reason) anything but a MAC-framed CS02b mode-3 command to
    `device_id`, signed by the area DNO whose entity the meter's NO DS cell holds (`no_ds_entity`, as read),
    installing exactly the active vanilla generation's DS and KA certificates from the bundle, with the
    bundle's issuing CA as path, an authorising seq number above the meter's `stored_seq_number`, executing
    at once. The MAC itself is the meter's to check (it needs the device's key)."""
    data = bytes(command)
    try:
        message = decode_message(data)
        payload = UpdateSecurityCredentialsCommand.decode(message.apdu.content)
    except GbcsError as exc:
        raise CommandRefused("decode-error", str(exc)) from exc
    header = message.apdu.header
    if not message.mac_framed:
        raise CommandRefused("not-mac-framed", "a hand-in command must carry DCC's ACB-SMD MAC")
    if message.apdu.signature is None or len(message.apdu.signature) != SIGNATURE_LEN:
        raise CommandRefused("unsigned", "command carries no 64-byte KRP signature")
    if header.cra != Cra.COMMAND:
        raise CommandRefused("not-a-command", f"CRA flag {int(header.cra)} is not 1 (command)")
    if header.message_code != MessageCode.CS02B_NETWORK_OPERATOR_BY_NETWORK_OPERATOR:
        raise CommandRefused(
            "wrong-message-code", f"message code 0x{header.message_code:04X} is not 0x0103 (CS02b NO-by-NO)"
        )
    if header.business_target_id != bytes(device_id):
        raise CommandRefused(
            "wrong-target",
            f"Business Target ID {eui64_hex(header.business_target_id)} is not the device "
            f"{eui64_hex(bytes(device_id))}",
        )
    control = payload.control
    if control.mode != CredentialsReplacementMode.NETWORK_OPERATOR_BY_NETWORK_OPERATOR:
        raise CommandRefused("wrong-mode", f"credentialsReplacementMode {control.mode} is not 3 (NO-by-NO)")
    if control.ta_cell != NO_DS_CELL:
        raise CommandRefused(
            "wrong-ta-cell", f"authorising TA cell {control.ta_cell} is not {{role 3, digitalSignature}}"
        )
    if header.business_originator_id != no_ds_entity:
        raise CommandRefused(
            "wrong-originator",
            f"Business Originator ID {eui64_hex(header.business_originator_id)} is not the DNO "
            f"{eui64_hex(no_ds_entity)} in the meter's NO cell",
        )
    area = bundle.area_of_entity(header.business_originator_id)
    if area is None:
        raise CommandRefused(
            "unknown-originator",
            f"Business Originator ID {eui64_hex(header.business_originator_id)} is not an area DNO in the "
            "pinned bundle",
        )
    try:
        verify_message_signature(message, load_certificate(area.ds_certificate).certificate)
    except (SignatureError, CertificateError) as exc:
        raise CommandRefused("bad-signature", f"{exc} (area {area.area_id} DNO)") from exc
    generation = bundle.generation(generation_number)
    if generation is None or not generation.active:
        raise CommandRefused(
            "unknown-generation", f"vanilla generation {generation_number} is not active in the pinned bundle"
        )
    expected = {NO_DS_CELL: generation.ds_certificate, NO_KA_CELL: generation.ka_certificate}
    targets = [r.target for r in payload.replacements]
    if len(payload.replacements) != 2 or set(targets) != set(expected):
        raise CommandRefused(
            "wrong-replacements",
            f"expected exactly two replacements for the NO DS and NO KA cells, got {len(targets)}: {targets}",
        )
    for replacement in payload.replacements:
        if bytes(replacement.certificate) != bytes(expected[replacement.target]):
            usage = "DS" if replacement.target == NO_DS_CELL else "KA"
            raise CommandRefused(
                "wrong-generation-certificate",
                f"the NO {usage} replacement is not vanilla generation {generation.generation}'s {usage} "
                "certificate from the bundle",
            )
    if payload.certification_path_certificates != (bytes(bundle.issuing_ca_certificate),):
        raise CommandRefused(
            "wrong-path-certificate", "certificationPathCertificates is not exactly the bundle's issuing CA"
        )
    if control.seq_number <= stored_seq_number:
        raise CommandRefused(
            "stale-seq-number",
            f"authorisingRemotePartySeqNumber {control.seq_number} is not above the meter's "
            f"{stored_seq_number}",
        )
    if control.seq_number != header.originator_counter:
        raise CommandRefused(
            "counter-mismatch",
            f"authorisingRemotePartySeqNumber {control.seq_number} != Originator Counter "
            f"{header.originator_counter}",
        )
    if (
        control.plaintext_symmetric_key is not None
        or control.other_seq_number_changes is not None
        or control.specialist_floor_seq_numbers is not None
    ):
        raise CommandRefused(
            "unexpected-field", "plaintextSymmetricKey / seq-number changes for other roles present"
        )
    _check_floor_and_time_checks(control)
    if payload.execution_date_time is not None:
        raise CommandRefused("future-dated", "hand-in commands must execute immediately")
    return CheckedHandIn(message, header, payload, area, generation)


def check_response(
    response: bytes, command_header: GroupingHeader, device: SmkiCertificate
) -> CheckedResponse:
    """Verify the meter's signed CS02b response: device signature (with `device`, the DS certificate the
    meter gave in CS02e), addressing, echoed counter and mode, and every replacement outcome status 0.
    ResponseRejected with a named reason otherwise."""
    try:
        message = decode_message(bytes(response))
    except GbcsError as exc:
        raise ResponseRejected("decode-error", str(exc)) from exc
    header = message.apdu.header
    if header.cra != Cra.RESPONSE:
        raise ResponseRejected("not-a-response", f"CRA flag {int(header.cra)} is not 2 (response)")
    if header.message_code != command_header.message_code:
        raise ResponseRejected(
            "wrong-message-code",
            f"message code 0x{header.message_code:04X} != command's 0x{command_header.message_code:04X}",
        )
    if header.business_originator_id != command_header.business_target_id:
        raise ResponseRejected(
            "wrong-originator",
            f"response originator {eui64_hex(header.business_originator_id)} is not the device "
            f"{eui64_hex(command_header.business_target_id)}",
        )
    if header.business_target_id != command_header.business_originator_id:
        raise ResponseRejected(
            "wrong-target",
            f"response target {eui64_hex(header.business_target_id)} is not the command originator "
            f"{eui64_hex(command_header.business_originator_id)}",
        )
    if header.originator_counter != command_header.originator_counter:
        raise ResponseRejected(
            "counter-mismatch",
            f"response counter {header.originator_counter} does not echo {command_header.originator_counter}",
        )
    if device.is_device and device.entity_id != command_header.business_target_id:
        raise ResponseRejected(
            "bad-device-certificate",
            f"device certificate is for {eui64_hex(device.entity_id)}, not "
            f"{eui64_hex(command_header.business_target_id)}",
        )
    try:
        verify_message_signature(message, device.certificate)
    except SignatureError as exc:
        raise ResponseRejected("bad-signature", str(exc)) from exc
    try:
        payload = UpdateSecurityCredentialsResponse.decode(message.apdu.content)
    except GbcsError as exc:
        raise ResponseRejected("decode-error", str(exc)) from exc
    outcome = payload.execution_outcome
    if outcome is None:
        raise ResponseRejected("no-execution-outcome", "command accepted but no execution outcome reported")
    if outcome.seq_number != command_header.originator_counter:
        raise ResponseRejected(
            "counter-mismatch",
            f"executionOutcome seq number {outcome.seq_number} != {command_header.originator_counter}",
        )
    if outcome.mode != CredentialsReplacementMode.NETWORK_OPERATOR_BY_NETWORK_OPERATOR:
        raise ResponseRejected("wrong-mode", f"executionOutcome mode {outcome.mode} is not 3")
    if not outcome.replacement_outcomes:
        raise ResponseRejected("no-cell-outcomes", "no replacement outcomes reported")
    failed = [o for o in outcome.replacement_outcomes if o.status != 0]
    if failed:
        details = ", ".join(
            f"role {o.cell.role} {KeyUsage(o.cell.key_usage).name} status {o.status}" for o in failed
        )
        raise ResponseRejected("cell-status", f"meter did not replace every cell: {details}")
    return CheckedResponse(message, payload, outcome)
