"""A simulated SMETS2 device: trust-anchor cells, seq numbers, anti-replay counters, its own keys, a clock.

`SimulatedDevice.process(message) -> response bytes` handles:

* CS02b Update Security Credentials in mode 3 (networkOperatorByNetworkOperator) and mode 8
  (anyExceptAbnormalRootByRecovery), with the checks of gbcs/README.md §9;
* CS02a Provide Security Credentials Details and CS02e Provide Device Certificate (reads).

Responses are GS-only (`DF … 40 sig`), signed with the device DS key. When the profile carries no DS
private key (RTDS publishes none) the device signs with an ephemeral key made at start-up: the payload is
then right but the signature does not verify with the published device certificate (`ds_public_key` gives
the key actually used).

Decisions (the GBCS device-side rules are only partly public, see gbcs/README.md §0):

* No signed response is possible -> `DeviceRefused(status, reason)` is raised: bytes that do not decode
  (status 1 decodeError), a message not addressed to this device or not a command (status None: a real
  device drops it), an unsupported message code (None), and reads (CS02a/CS02e) that are not authorised
  (3 badSignature for a bad signature/MAC, 4 insufficientPermission when unauthenticated, 8 replay).
* A decodable CS02b addressed to the device always gets a signed response. Whole-command failures
  (message code/mode mismatch or unsupported mode, MAC missing or invalid, wrong or absent authorising
  cell, Business Originator ID not the entity in that cell, bad KRP signature, counter/seq number not above
  the stored one, a target cell the mode does not permit) are modelled as "no execution": commandAccepted
  plus an executionOutcome whose replacementOutcomes list every target cell with the failure status and
  existing == replacing ids, and an empty remotePartySeqNumberChanges. Nothing on the device changes.
  Order of the checks (the first failure is reported): mode vs message code, duplicate targets, ACB MAC,
  authorising cell for the mode, Business Originator ID = that cell's entity, originator counter and
  authorisingRemotePartySeqNumber above the stored ones (before the signature, so a replay of a genuine
  command reports 8), KRP signature, target cells permitted by the mode.
  Status codes: 1 decodeError (malformed structure, duplicate targets, MAC header on a mode 8 command),
  3 badSignature (KRP signature or ACB MAC), 4 insufficientPermission (mode/cell/originator/target not
  permitted), 8 badSequenceNumber (replay), 25 trustAnchorNotFound (the authorising cell is empty),
  127 other (modes the simulator does not implement).
* Otherwise each target cell is checked on its own (certificate parses, OU and key usage match the cell,
  path through the command's certificationPathCertificates to the root cell, validity at the device clock
  unless applyTimeBasedCPVChecks = disapply): status 0 and the cell replaced, or 5 badCertificate /
  10 noTrustAnchor / 25 trustAnchorNotFound (no such cell on the device) and the cell unchanged
  (RTDS IMMEDIATE_ERROR shows per-cell outcomes). An accepted command records the KRP's originator counter
  and sets the authorising role's stored seq number to the command's; if at least one cell was replaced,
  newRemotePartyFloorSeqNumber then sets the authorising role's stored seq number and
  otherRemotePartySeqNumberChanges set the other roles' (reported in remotePartySeqNumberChanges).
* ACB MAC: with require_acb_mac (default) a mode 3 command must be MAC-framed and the MAC must verify
  (device KA private key + the certificate in the ACB KA cell). With require_acb_mac false both forms are
  accepted; a MAC that is present is still checked when the device holds both keys (a wrong MAC is never
  accepted), and ignored when it cannot be checked (RTDS: no device private key).
* Reads: a MAC-framed read must carry a valid ACB MAC; a signed read must verify with the DS cell named by
  the CS02a command (CS02e: the DS cell whose entity is the Business Originator) and pass the anti-replay
  counter; unsigned GS-only reads (signature length 00 or pre-command form) are answered only when
  allow_local_reads is true (the lab triage port).
* The outer SEQUENCE of CS02a/CS02b response payloads uses the meter's non-minimal `82 00 nn` length form
  when DER would use `81 nn`, as the RTDS responses do, so payloads match the RTDS bytes exactly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric import ec

from vdno.gbcs.cells import (
    NO_DS_CELL,
    CredentialsReplacementMode,
    KeyUsage,
    RemotePartyRole,
    StatusCode,
    TrustAnchorCellIdentifier,
)
from vdno.gbcs.cs02a import (
    ProvideSecurityCredentialsCommand,
    ProvideSecurityCredentialsResponse,
    RoleCredentials,
    TrustAnchorCellDetails,
)
from vdno.gbcs.cs02b import (
    ExecutionOutcome,
    RemotePartySeqNumberChange,
    ReplacementOutcome,
    UpdateSecurityCredentialsCommand,
    UpdateSecurityCredentialsResponse,
)
from vdno.gbcs.cs02e import DeviceCertificateResponse, ProvideDeviceCertificateCommand
from vdno.gbcs.errors import CertificateError, DecodeError, GbcsError, MacError, SignatureError
from vdno.gbcs.framing import (
    Cra,
    GbcsMessage,
    GeneralSigningApdu,
    GroupingHeader,
    MessageCode,
    decode_message,
)
from vdno.gbcs.mac import verify_mac
from vdno.gbcs.signature import sign_apdu, verify_signature
from vdno.gbcs.smki import (
    SmkiCertificate,
    check_replacement_for_cell,
    load_certificate,
    verify_certification_path,
)
from vdno.simulator.errors import DeviceRefused
from vdno.simulator.profile import ACB_KA_CELL, RECOVERY_CELL, ROOT_CELL, DeviceKey, DeviceProfile

CS02B_FIRST = int(MessageCode.CS02B_ROOT_BY_SUPPLIER)
CS02B_LAST = int(MessageCode.CS02B_ANY_BY_CONTINGENCY)

# Which authorising cell each supported mode requires, and which roles it may replace.
_MODE_AUTHORISER = {
    CredentialsReplacementMode.NETWORK_OPERATOR_BY_NETWORK_OPERATOR: NO_DS_CELL,
    CredentialsReplacementMode.ANY_EXCEPT_ABNORMAL_ROOT_BY_RECOVERY: RECOVERY_CELL,
}
_MODE_TARGET_ROLES = {
    CredentialsReplacementMode.NETWORK_OPERATOR_BY_NETWORK_OPERATOR: frozenset(
        {RemotePartyRole.NETWORK_OPERATOR}
    ),
    CredentialsReplacementMode.ANY_EXCEPT_ABNORMAL_ROOT_BY_RECOVERY: frozenset(
        {
            RemotePartyRole.RECOVERY,
            RemotePartyRole.SUPPLIER,
            RemotePartyRole.NETWORK_OPERATOR,
            RemotePartyRole.ACCESS_CONTROL_BROKER,
            RemotePartyRole.TRANSITIONAL_COS,
            RemotePartyRole.WAN_PROVIDER,
        }
    ),
}
_ZERO_ID = bytes(8)


def dlms_date_time(when: datetime) -> bytes:
    """12-byte DLMS date-time as RTDS: year(2) month day dow=FF hour min sec 00 deviation=8000 status=FF."""
    utc = when.astimezone(UTC) if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return (
        utc.year.to_bytes(2, "big")
        + bytes([utc.month, utc.day, 0xFF, utc.hour, utc.minute, utc.second, 0x00])
        + b"\x80\x00\xff"
    )


def meter_style(der: bytes) -> bytes:
    """Re-encode the outer TLV length `81 nn` as `82 00 nn` (non-minimal BER, as real meters/RTDS do)."""
    if len(der) >= 3 and der[1] == 0x81:
        return der[:1] + b"\x82\x00" + der[2:]
    return der


class _Reject(Exception):
    """Internal: whole-command failure of a CS02b command."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class LastOutcome:
    """What the device did with the last message (for tests and logs)."""

    message_code: int
    status: int  # 0 when every cell succeeded / the read was answered; else the (first) failure status
    reason: str


class SimulatedDevice:
    """One SMETS2 device. Thread-safe: `process` is serialised by a per-device lock."""

    def __init__(self, profile: DeviceProfile, clock: Callable[[], datetime] | None = None) -> None:
        self.device_id: bytes = bytes(profile.device_id)
        self.cells: dict[TrustAnchorCellIdentifier, bytes] = dict(profile.cells)
        self.seq_numbers: dict[int, int] = dict(profile.seq_numbers)
        self.originator_counters: dict[bytes, int] = dict(profile.originator_counters)
        self.require_acb_mac = profile.require_acb_mac
        self.allow_local_reads = profile.allow_local_reads
        self.fixed_clock: datetime | None = profile.clock
        self._clock = clock
        self.device_ds = profile.device_ds
        self.device_ka = profile.device_ka
        self._signing_key: ec.EllipticCurvePrivateKey = (
            profile.device_ds.private_key
            if profile.device_ds.private_key is not None
            else ec.generate_private_key(ec.SECP256R1())
        )
        self.signing_key_is_ephemeral = profile.device_ds.private_key is None
        self.last_outcome: LastOutcome | None = None
        self._lock = threading.RLock()

    # --- state ------------------------------------------------------------------------------------

    @property
    def ds_public_key(self) -> ec.EllipticCurvePublicKey:
        """The key that verifies this device's responses."""
        return self._signing_key.public_key()

    def now(self) -> datetime:
        if self._clock is not None:
            return self._clock()
        if self.fixed_clock is not None:
            return self.fixed_clock
        return datetime.now(UTC)

    def set_clock(self, when: datetime | None) -> None:
        """Pin the device clock (None = real time)."""
        self.fixed_clock = None if when is None else (when if when.tzinfo else when.replace(tzinfo=UTC))

    def to_profile(self) -> DeviceProfile:
        """Snapshot of the current state as a profile (save it to persist the device)."""
        with self._lock:
            return DeviceProfile(
                device_id=self.device_id,
                cells=dict(self.cells),
                seq_numbers=dict(self.seq_numbers),
                device_ds=DeviceKey(self.device_ds.private_key, self.device_ds.certificate),
                device_ka=self.device_ka,
                require_acb_mac=self.require_acb_mac,
                allow_local_reads=self.allow_local_reads,
                clock=self.fixed_clock,
                originator_counters=dict(self.originator_counters),
            )

    def cell_certificate(self, cell: TrustAnchorCellIdentifier) -> SmkiCertificate | None:
        der = self.cells.get(cell)
        if der is None:
            return None
        try:
            return load_certificate(der)
        except CertificateError:
            return None

    # --- entry point ------------------------------------------------------------------------------

    def process(self, message: bytes) -> bytes:
        """Handle one GBCS message; return the signed response bytes or raise DeviceRefused."""
        with self._lock:
            try:
                msg = decode_message(bytes(message))
            except DecodeError as exc:
                self._note(0, StatusCode.DECODE_ERROR, f"undecodable message: {exc}")
                raise DeviceRefused(StatusCode.DECODE_ERROR, f"message does not decode: {exc}") from exc
            header = msg.apdu.header
            if header.cra != Cra.COMMAND:
                raise DeviceRefused(None, f"CRA flag {int(header.cra)} is not a command")
            if header.business_target_id != self.device_id:
                raise DeviceRefused(
                    None,
                    f"addressed to {header.business_target_id.hex()}, this device is {self.device_id.hex()}",
                )
            code = header.message_code
            if CS02B_FIRST <= code <= CS02B_LAST:
                return self._cs02b(msg)
            if code == MessageCode.CS02A_PROVIDE_SECURITY_CREDENTIALS:
                return self._cs02a(msg)
            if code == MessageCode.CS02E_PROVIDE_DEVICE_CERTIFICATE:
                return self._cs02e(msg)
            raise DeviceRefused(None, f"message code {code:#06x} is not supported by the simulator")

    # --- CS02b ------------------------------------------------------------------------------------

    def _cs02b(self, msg: GbcsMessage) -> bytes:
        header = msg.apdu.header
        try:
            command = UpdateSecurityCredentialsCommand.decode(msg.apdu.content)
        except GbcsError as exc:
            self._note(header.message_code, StatusCode.DECODE_ERROR, str(exc))
            raise DeviceRefused(StatusCode.DECODE_ERROR, f"CS02b payload does not decode: {exc}") from exc
        targets = [r.target for r in command.replacements]
        try:
            authoriser = self._authorise_cs02b(msg, command)
        except _Reject as rej:
            outcomes = tuple(self._unchanged(cell, rej.status) for cell in targets)
            self._note(header.message_code, rej.status, rej.reason)
            return self._cs02b_response(header, command, (), outcomes)

        # accepted: per-cell execution
        root = self.cell_certificate(ROOT_CELL)
        path: list[SmkiCertificate] = []
        for der in command.certification_path_certificates:
            try:
                path.append(load_certificate(der))
            except CertificateError:
                continue  # an unusable path certificate simply does not help any chain
        check_time = command.control.apply_time_based_cpv_checks != 1
        now = self.now()
        outcomes_list: list[ReplacementOutcome] = []
        replaced = 0
        first_failure: tuple[int, str] | None = None
        for replacement in command.replacements:
            cell = replacement.target
            status, reason, new = self._check_replacement(
                replacement.certificate, cell, path, root, now, check_time
            )
            if status != StatusCode.SUCCESS or new is None:
                outcomes_list.append(self._unchanged(cell, status))
                first_failure = first_failure or (status, reason)
                continue
            old_uid, old_ski = self._ids_of(cell)
            self.cells[cell] = new.der
            replaced += 1
            outcomes_list.append(
                ReplacementOutcome(
                    cell, StatusCode.SUCCESS, old_uid, old_ski, _uid(new), new.subject_key_identifier
                )
            )

        # counters and seq numbers
        self.originator_counters[header.business_originator_id] = header.originator_counter
        self.seq_numbers[authoriser.role] = command.control.seq_number
        changes: list[RemotePartySeqNumberChange] = []
        if replaced:
            if command.control.floor_seq_number is not None:
                self.seq_numbers[authoriser.role] = command.control.floor_seq_number
                changes.append(RemotePartySeqNumberChange(authoriser.role, command.control.floor_seq_number))
            for change in command.control.other_seq_number_changes or ():
                self.seq_numbers[change.role] = change.floor_seq_number
                changes.append(change)
        status, reason = first_failure or (StatusCode.SUCCESS, "all cells replaced")
        self._note(header.message_code, status, reason)
        return self._cs02b_response(header, command, tuple(changes), tuple(outcomes_list))

    def _authorise_cs02b(
        self, msg: GbcsMessage, command: UpdateSecurityCredentialsCommand
    ) -> TrustAnchorCellIdentifier:
        """Whole-command checks; returns the authorising cell or raises _Reject."""
        header = msg.apdu.header
        control = command.control
        if control.mode != header.message_code - CS02B_FIRST:
            raise _Reject(
                StatusCode.INSUFFICIENT_PERMISSION,
                f"mode {control.mode} does not match message code {header.message_code:#06x}",
            )
        if control.mode not in _MODE_AUTHORISER:
            raise _Reject(StatusCode.OTHER, f"credentialsReplacementMode {control.mode} not simulated")
        mode = CredentialsReplacementMode(control.mode)
        targets = [r.target for r in command.replacements]
        if len(set(targets)) != len(targets):
            raise _Reject(StatusCode.DECODE_ERROR, "the same target cell appears twice")

        # 1. ACB-SMD MAC
        if mode == CredentialsReplacementMode.ANY_EXCEPT_ABNORMAL_ROOT_BY_RECOVERY:
            if msg.mac_framed:
                raise _Reject(StatusCode.DECODE_ERROR, "mode 8 commands carry no MAC header")
        else:
            self._check_mac(msg, required=self.require_acb_mac)

        # 2. authorising cell consistent with the mode, originator is its entity
        required = _MODE_AUTHORISER[mode]
        if control.ta_cell != required:
            raise _Reject(
                StatusCode.INSUFFICIENT_PERMISSION,
                f"authorising TA cell {control.ta_cell} is not the one mode {int(mode)} needs ({required})",
            )
        cell_cert = self.cell_certificate(required)
        if cell_cert is None:
            raise _Reject(StatusCode.TRUST_ANCHOR_NOT_FOUND, f"the authorising cell {required} is empty")
        if cell_cert.entity_id != header.business_originator_id:
            raise _Reject(
                StatusCode.INSUFFICIENT_PERMISSION,
                f"Business Originator ID {header.business_originator_id.hex()} is not the entity "
                f"{cell_cert.entity_id.hex()} in the authorising cell",
            )

        # 3. anti-replay counter and seq number (before the signature: a replay is reported as such)
        self._check_counter(header)
        stored_seq = self.seq_numbers.get(required.role, 0)
        if control.seq_number <= stored_seq:
            raise _Reject(
                StatusCode.BAD_SEQUENCE_NUMBER,
                f"authorisingRemotePartySeqNumber {control.seq_number} not above stored {stored_seq}",
            )

        # 4. KRP signature with the key in that cell
        try:
            verify_signature(msg.signed_range, msg.apdu.signature, cell_cert.certificate)
        except SignatureError as exc:
            raise _Reject(StatusCode.BAD_SIGNATURE, f"KRP signature: {exc}") from exc

        # 5. targets permitted by the mode
        allowed = _MODE_TARGET_ROLES[mode]
        for cell in targets:
            if cell.role not in allowed:
                raise _Reject(
                    StatusCode.INSUFFICIENT_PERMISSION,
                    f"mode {int(mode)} may not replace the cell of role {cell.role}",
                )
        return required

    def _check_mac(self, msg: GbcsMessage, required: bool) -> None:
        if msg.mac is None:
            if required:
                raise _Reject(
                    StatusCode.BAD_SIGNATURE, "ACB-SMD MAC required but the command is not MAC-framed"
                )
            return
        acb = self.cell_certificate(ACB_KA_CELL)
        ka_key = self.device_ka.private_key
        if acb is None or ka_key is None:
            if required:
                raise _Reject(
                    StatusCode.BAD_SIGNATURE,
                    "ACB-SMD MAC cannot be checked (no ACB KA cell or no device KA private key)",
                )
            return
        try:
            verify_mac(msg, ka_key, acb.certificate)
        except MacError as exc:
            raise _Reject(StatusCode.BAD_SIGNATURE, f"ACB-SMD MAC: {exc}") from exc

    def _check_counter(self, header: GroupingHeader) -> None:
        last = self.originator_counters.get(header.business_originator_id)
        if last is not None and header.originator_counter <= last:
            raise _Reject(
                StatusCode.BAD_SEQUENCE_NUMBER,
                f"originator counter {header.originator_counter} not above the last seen {last} "
                f"from {header.business_originator_id.hex()} (replay)",
            )

    def _check_replacement(
        self,
        der: bytes,
        cell: TrustAnchorCellIdentifier,
        path: list[SmkiCertificate],
        root: SmkiCertificate | None,
        now: datetime,
        check_time: bool,
    ) -> tuple[int, str, SmkiCertificate | None]:
        if cell not in self.cells:
            return StatusCode.TRUST_ANCHOR_NOT_FOUND, f"no cell {cell} on this device", None
        if root is None:
            return StatusCode.NO_TRUST_ANCHOR, "the root cell is empty", None
        try:
            new = load_certificate(der)
            check_replacement_for_cell(new, cell)
            verify_certification_path(new, tuple(path), root, now, check_time=check_time)
        except CertificateError as exc:
            return exc.status_code, str(exc), None
        return StatusCode.SUCCESS, "ok", new

    def _ids_of(self, cell: TrustAnchorCellIdentifier) -> tuple[bytes, bytes]:
        cert = self.cell_certificate(cell)
        if cert is None:
            return _ZERO_ID, _ZERO_ID
        return _uid(cert), cert.subject_key_identifier

    def _unchanged(self, cell: TrustAnchorCellIdentifier, status: int) -> ReplacementOutcome:
        uid, ski = self._ids_of(cell)
        return ReplacementOutcome(cell, status, uid, ski, uid, ski)

    def _cs02b_response(
        self,
        header: GroupingHeader,
        command: UpdateSecurityCredentialsCommand,
        changes: tuple[RemotePartySeqNumberChange, ...],
        outcomes: tuple[ReplacementOutcome, ...],
    ) -> bytes:
        payload = UpdateSecurityCredentialsResponse(
            ExecutionOutcome(command.control.seq_number, command.control.mode, changes, outcomes)
        )
        return self._respond(header, meter_style(payload.encode()), dlms_date_time(self.now()))

    # --- reads ------------------------------------------------------------------------------------

    def _cs02a(self, msg: GbcsMessage) -> bytes:
        header = msg.apdu.header
        try:
            command = ProvideSecurityCredentialsCommand.decode(msg.apdu.content)
        except GbcsError as exc:
            raise DeviceRefused(StatusCode.DECODE_ERROR, f"CS02a payload does not decode: {exc}") from exc
        self._authorise_read(msg, command.ta_cell)
        roles = []
        for role in command.roles:
            cells = sorted(
                (c for c in self.cells if c.role == role),
                key=lambda c: (_KU_ORDER.get(int(c.key_usage), 9), int(c.cell_usage)),
            )
            if not cells:
                roles.append(RoleCredentials(role, StatusCode.TRUST_ANCHOR_NOT_FOUND, None, None))
                continue
            details = []
            for cell in cells:
                uid, ski = self._ids_of(cell)
                details.append(TrustAnchorCellDetails(int(cell.key_usage), int(cell.cell_usage), uid, ski))
            roles.append(
                RoleCredentials(role, StatusCode.SUCCESS, self.seq_numbers.get(role), tuple(details))
            )
        payload = ProvideSecurityCredentialsResponse(tuple(roles))
        self._note(header.message_code, 0, "credentials provided")
        return self._respond(header, meter_style(payload.encode()), None)

    def _cs02e(self, msg: GbcsMessage) -> bytes:
        header = msg.apdu.header
        try:
            command = ProvideDeviceCertificateCommand.decode(msg.apdu.content)
        except GbcsError as exc:
            raise DeviceRefused(StatusCode.DECODE_ERROR, f"CS02e payload does not decode: {exc}") from exc
        self._authorise_read(msg, None)
        key = {KeyUsage.DIGITAL_SIGNATURE: self.device_ds, KeyUsage.KEY_AGREEMENT: self.device_ka}.get(
            command.key_usage
        )
        if key is None or key.certificate is None:
            response = DeviceCertificateResponse(response_code=3)
            self._note(header.message_code, 3, "no device certificate with that key usage")
        else:
            response = DeviceCertificateResponse(certificate=key.certificate)
            self._note(header.message_code, 0, "device certificate provided")
        return self._respond(header, response.encode(), None)

    def _authorise_read(self, msg: GbcsMessage, ta_cell: TrustAnchorCellIdentifier | None) -> None:
        header = msg.apdu.header
        try:
            if msg.mac_framed:
                self._check_mac(msg, required=True)
                self._check_counter(header)
            elif msg.apdu.signature:
                cert = self._read_signer(header, ta_cell)
                try:
                    verify_signature(msg.signed_range, msg.apdu.signature, cert.certificate)
                except SignatureError as exc:
                    raise _Reject(StatusCode.BAD_SIGNATURE, f"KRP signature: {exc}") from exc
                self._check_counter(header)
            elif not self.allow_local_reads:
                raise _Reject(
                    StatusCode.INSUFFICIENT_PERMISSION,
                    "unsigned read refused (allow_local_reads is off): needs a KRP signature or ACB MAC",
                )
            else:
                return  # local unauthenticated read on the lab port: no counter recorded
        except _Reject as rej:
            self._note(header.message_code, rej.status, rej.reason)
            raise DeviceRefused(rej.status, rej.reason) from rej
        self.originator_counters[header.business_originator_id] = header.originator_counter

    def _read_signer(
        self, header: GroupingHeader, ta_cell: TrustAnchorCellIdentifier | None
    ) -> SmkiCertificate:
        if ta_cell is not None:
            candidates = [ta_cell]
        else:
            candidates = [c for c in self.cells if c.key_usage == KeyUsage.DIGITAL_SIGNATURE]
        for cell in candidates:
            cert = self.cell_certificate(cell)
            if cert is not None and cert.entity_id == header.business_originator_id:
                if cert.key_usage != KeyUsage.DIGITAL_SIGNATURE:
                    break
                return cert
        raise _Reject(
            StatusCode.INSUFFICIENT_PERMISSION,
            f"no digital-signing cell holds originator {header.business_originator_id.hex()}",
        )

    # --- output -----------------------------------------------------------------------------------

    def _respond(self, command: GroupingHeader, content: bytes, date_time: bytes | None) -> bytes:
        header = GroupingHeader(
            cra=Cra.RESPONSE,
            originator_counter=command.originator_counter,
            business_originator_id=self.device_id,
            business_target_id=command.business_originator_id,
            message_code=command.message_code,
            date_time=date_time,
        )
        return sign_apdu(GeneralSigningApdu(header, content), self._signing_key).encode()

    def _note(self, code: int, status: int, reason: str) -> None:
        self.last_outcome = LastOutcome(code, int(status), reason)


_KU_ORDER = {
    int(KeyUsage.KEY_CERT_SIGN): 0,
    int(KeyUsage.DIGITAL_SIGNATURE): 1,
    int(KeyUsage.KEY_AGREEMENT): 2,
}


def _uid(cert: SmkiCertificate) -> bytes:
    """Entity id for outcome/CS02a reporting; CA certificates (root cell) report all-zero
    (gbcs/README.md §8.2)."""
    return cert.entity_id if len(cert.entity_id) == 8 else _ZERO_ID


__all__ = ["DeviceRefused", "LastOutcome", "SimulatedDevice", "dlms_date_time", "meter_style"]
