"""CS02b Update Security Credentials: command, response and future-dated alert payloads
(gbcs/README.md §8.1, §8.2).

Commands encode to DER; responses and alerts decode with a lenient BER reader (non-minimal lengths).
Certificates are carried as their exact DER bytes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime

from vdno.gbcs import ber
from vdno.gbcs.cells import TrustAnchorCellIdentifier
from vdno.gbcs.errors import DecodeError, EncodeError

_TAG_PLAINTEXT_KEY = 0x80
_TAG_APPLY_TIME_CPV = 0x81
_TAG_TA_CELL = 0xA2
_TAG_SEQ_NUMBER = 0x83
_TAG_FLOOR = 0x84
_TAG_SPECIALIST_FLOOR = 0xA5
_TAG_OTHER_CHANGES = 0xA6


@dataclass(frozen=True)
class SpecialistSeqNumber:
    seq_number_usage: int  # 0 = prepaymentTopUp
    seq_number: int


@dataclass(frozen=True)
class RemotePartySeqNumberChange:
    role: int
    floor_seq_number: int
    specialist_floor_seq_numbers: tuple[SpecialistSeqNumber, ...] | None = None


@dataclass(frozen=True)
class AuthorisingRemotePartyControl:
    mode: int  # CredentialsReplacementMode
    seq_number: int  # [3] authorisingRemotePartySeqNumber
    ta_cell: TrustAnchorCellIdentifier | None = None  # [2]
    plaintext_symmetric_key: bytes | None = None  # [0]
    apply_time_based_cpv_checks: int | None = None  # [1] 0 apply, 1 disapply
    floor_seq_number: int | None = None  # [4]
    specialist_floor_seq_numbers: tuple[SpecialistSeqNumber, ...] | None = None  # [5]
    other_seq_number_changes: tuple[RemotePartySeqNumberChange, ...] | None = None  # [6]


@dataclass(frozen=True)
class TrustAnchorReplacement:
    certificate: bytes  # full X.509 DER
    target: TrustAnchorCellIdentifier


@dataclass(frozen=True)
class UpdateSecurityCredentialsCommand:
    control: AuthorisingRemotePartyControl
    replacements: tuple[TrustAnchorReplacement, ...]
    certification_path_certificates: tuple[bytes, ...]
    execution_date_time: datetime | None = None  # GeneralizedTime YYYYMMDDHHMMSSZ, UTC

    def encode(self) -> bytes:
        """DER CommandPayload."""
        parts = [
            _encode_control(self.control),
            ber.sequence(*(_encode_replacement(r) for r in self.replacements)),
            _encode_certification_path(self.certification_path_certificates),
        ]
        if self.execution_date_time is not None:
            parts.append(ber.generalized_time(self.execution_date_time))
        return ber.sequence(*parts)

    @classmethod
    def decode(cls, data: bytes) -> UpdateSecurityCredentialsCommand:
        """Lenient BER; the whole of `data` must be one CommandPayload. DecodeError otherwise."""
        what = "CS02b CommandPayload"
        reader = ber.read_sequence(data, what)
        control = _decode_control(reader.next(ber.TAG_SEQUENCE, "authorisingRemotePartyControl"))
        replacements_tlv = reader.next(ber.TAG_SEQUENCE, "replacements")
        replacements = tuple(
            _decode_replacement(item)
            for item in ber.read_sequence_of(replacements_tlv, "replacements", ber.TAG_SEQUENCE)
        )
        path_tlv = reader.next(ber.TAG_SEQUENCE, "certificationPathCertificates")
        path = tuple(
            item.raw
            for item in ber.read_sequence_of(path_tlv, "certificationPathCertificates", ber.TAG_SEQUENCE)
        )
        time_tlv = reader.optional(ber.TAG_GENERALIZED_TIME, "executionDateTime")
        reader.done()
        execution = None if time_tlv is None else ber.decode_generalized_time(time_tlv, "executionDateTime")
        return cls(control, replacements, path, execution)


@dataclass(frozen=True)
class ReplacementOutcome:
    cell: TrustAnchorCellIdentifier
    status: int  # StatusCode
    existing_subject_unique_id: bytes
    existing_subject_key_identifier: bytes
    replacing_subject_unique_id: bytes
    replacing_subject_key_identifier: bytes


@dataclass(frozen=True)
class ExecutionOutcome:
    seq_number: int
    mode: int
    seq_number_changes: tuple[RemotePartySeqNumberChange, ...]
    replacement_outcomes: tuple[ReplacementOutcome, ...]


@dataclass(frozen=True)
class UpdateSecurityCredentialsResponse:
    """ResponsePayload: commandAccepted NULL, executionOutcome OPTIONAL."""

    execution_outcome: ExecutionOutcome | None = None

    def encode(self) -> bytes:
        """DER (the simulator's output)."""
        parts = [ber.tlv(ber.TAG_NULL, b"")]
        if self.execution_outcome is not None:
            parts.append(_encode_outcome(self.execution_outcome))
        return ber.sequence(*parts)

    @classmethod
    def decode(cls, data: bytes) -> UpdateSecurityCredentialsResponse:
        what = "CS02b ResponsePayload"
        reader = ber.read_sequence(data, what)
        accepted = reader.next(ber.TAG_NULL, "commandAccepted")
        if accepted.content:
            raise DecodeError(f"{what}: commandAccepted NULL has content at offset {accepted.offset}")
        outcome_tlv = reader.optional(ber.TAG_SEQUENCE, "executionOutcome")
        reader.done()
        return cls(None if outcome_tlv is None else _decode_outcome(outcome_tlv))


@dataclass(frozen=True)
class FutureDatedAlert:
    """Message code 0x00CB, CRA 3: alertCode 0x8F66 success / 0x8F67 failure."""

    alert_code: int
    execution_date_time: datetime
    execution_outcome: ExecutionOutcome

    def encode(self) -> bytes:
        return ber.sequence(
            ber.der_int(self.alert_code),
            ber.generalized_time(self.execution_date_time),
            _encode_outcome(self.execution_outcome),
        )

    @classmethod
    def decode(cls, data: bytes) -> FutureDatedAlert:
        what = "CS02b AlertPayload"
        reader = ber.read_sequence(data, what)
        code = ber.decode_int(reader.next(ber.TAG_INTEGER, "alertCode"), "alertCode")
        when = ber.decode_generalized_time(
            reader.next(ber.TAG_GENERALIZED_TIME, "executionDateTime"), "executionDateTime"
        )
        outcome = _decode_outcome(reader.next(ber.TAG_SEQUENCE, "executionOutcome"))
        reader.done()
        return cls(code, when, outcome)


# --- helpers ------------------------------------------------------------------------------------


def _encode_specialist(items: tuple[SpecialistSeqNumber, ...]) -> bytes:
    return b"".join(ber.sequence(ber.der_int(i.seq_number_usage), ber.der_int(i.seq_number)) for i in items)


def _decode_specialist(item: ber.Tlv, what: str) -> tuple[SpecialistSeqNumber, ...]:
    result = []
    for child in ber.read_sequence_of(item, what, ber.TAG_SEQUENCE):
        reader = ber.SeqReader(child, f"{what} entry")
        usage = ber.decode_int(reader.next(ber.TAG_INTEGER, "seqNumberUsage"), f"{what}.seqNumberUsage")
        number = ber.decode_int(reader.next(ber.TAG_INTEGER, "seqNumber"), f"{what}.seqNumber")
        reader.done()
        result.append(SpecialistSeqNumber(usage, number))
    return tuple(result)


def _encode_change(change: RemotePartySeqNumberChange) -> bytes:
    parts = [ber.der_int(change.role), ber.der_int(change.floor_seq_number)]
    if change.specialist_floor_seq_numbers is not None:
        parts.append(ber.sequence(_encode_specialist(change.specialist_floor_seq_numbers)))
    return ber.sequence(*parts)


def _decode_changes(item: ber.Tlv, what: str) -> tuple[RemotePartySeqNumberChange, ...]:
    result = []
    for child in ber.read_sequence_of(item, what, ber.TAG_SEQUENCE):
        reader = ber.SeqReader(child, f"{what} entry")
        role = ber.decode_int(reader.next(ber.TAG_INTEGER, "remotePartyRole"), f"{what}.remotePartyRole")
        floor = ber.decode_int(reader.next(ber.TAG_INTEGER, "floorSeqNumber"), f"{what}.floorSeqNumber")
        spec_tlv = reader.optional(ber.TAG_SEQUENCE, "specialistFloorSeqNumbers")
        reader.done()
        spec = None if spec_tlv is None else _decode_specialist(spec_tlv, f"{what}.specialistFloorSeqNumbers")
        result.append(RemotePartySeqNumberChange(role, floor, spec))
    return tuple(result)


def _encode_control(control: AuthorisingRemotePartyControl) -> bytes:
    parts = [ber.der_int(control.mode)]
    if control.plaintext_symmetric_key is not None:
        parts.append(ber.tlv(_TAG_PLAINTEXT_KEY, bytes(control.plaintext_symmetric_key)))
    if control.apply_time_based_cpv_checks is not None:
        parts.append(ber.der_int(control.apply_time_based_cpv_checks, _TAG_APPLY_TIME_CPV))
    if control.ta_cell is not None:
        parts.append(ber.tlv(_TAG_TA_CELL, b"".join(control.ta_cell.encode_fields())))
    parts.append(ber.der_int(control.seq_number, _TAG_SEQ_NUMBER))
    if control.floor_seq_number is not None:
        parts.append(ber.der_int(control.floor_seq_number, _TAG_FLOOR))
    if control.specialist_floor_seq_numbers is not None:
        parts.append(ber.tlv(_TAG_SPECIALIST_FLOOR, _encode_specialist(control.specialist_floor_seq_numbers)))
    if control.other_seq_number_changes is not None:
        parts.append(
            ber.tlv(_TAG_OTHER_CHANGES, b"".join(_encode_change(c) for c in control.other_seq_number_changes))
        )
    return ber.sequence(*parts)


def _decode_control(item: ber.Tlv) -> AuthorisingRemotePartyControl:
    what = "authorisingRemotePartyControl"
    reader = ber.SeqReader(item, what)
    mode = ber.decode_int(reader.next(ber.TAG_INTEGER, "credentialsReplacementMode"), f"{what}.mode")
    key_tlv = reader.optional(_TAG_PLAINTEXT_KEY, "[0] plaintextSymmetricKey")
    cpv_tlv = reader.optional(_TAG_APPLY_TIME_CPV, "[1] applyTimeBasedCPVChecks")
    cell_tlv = reader.optional(_TAG_TA_CELL, "[2] authorisingRemotePartyTACellIdentifier")
    seq = ber.decode_int(
        reader.next(_TAG_SEQ_NUMBER, "[3] authorisingRemotePartySeqNumber"), f"{what}.seqNumber"
    )
    floor_tlv = reader.optional(_TAG_FLOOR, "[4] newRemotePartyFloorSeqNumber")
    spec_tlv = reader.optional(_TAG_SPECIALIST_FLOOR, "[5] newRemotePartySpecialistFloorSeqNumber")
    other_tlv = reader.optional(_TAG_OTHER_CHANGES, "[6] otherRemotePartySeqNumberChanges")
    reader.done()
    return AuthorisingRemotePartyControl(
        mode=mode,
        seq_number=seq,
        ta_cell=None if cell_tlv is None else TrustAnchorCellIdentifier.decode_tlv(cell_tlv, f"{what}.[2]"),
        plaintext_symmetric_key=None if key_tlv is None else key_tlv.content,
        apply_time_based_cpv_checks=None if cpv_tlv is None else ber.decode_int(cpv_tlv, f"{what}.[1]"),
        floor_seq_number=None if floor_tlv is None else ber.decode_int(floor_tlv, f"{what}.[4]"),
        specialist_floor_seq_numbers=(
            None if spec_tlv is None else _decode_specialist(spec_tlv, f"{what}.[5]")
        ),
        other_seq_number_changes=None if other_tlv is None else _decode_changes(other_tlv, f"{what}.[6]"),
    )


# A signer encodes the same few certificates (its areas', its issuing CA's) into every command: each
# encoding is a pure function of immutable values, so it is kept.
@functools.lru_cache(maxsize=256)
def _encode_replacement(replacement: TrustAnchorReplacement) -> bytes:
    return ber.sequence(
        ber.check_der_element(replacement.certificate, "replacementCertificate"),
        replacement.target.encode(),
    )


@functools.lru_cache(maxsize=64)
def _encode_certification_path(certificates: tuple[bytes, ...]) -> bytes:
    return ber.sequence(
        *(ber.check_der_element(c, "certificationPathCertificates entry") for c in certificates)
    )


def _decode_replacement(item: ber.Tlv) -> TrustAnchorReplacement:
    what = "TrustAnchorReplacement"
    reader = ber.SeqReader(item, what)
    cert = reader.next(ber.TAG_SEQUENCE, "replacementCertificate")
    target = TrustAnchorCellIdentifier.decode_tlv(
        reader.next(ber.TAG_SEQUENCE, "targetTrustAnchorCell"), f"{what}.targetTrustAnchorCell"
    )
    reader.done()
    return TrustAnchorReplacement(cert.raw, target)


def _encode_outcome(outcome: ExecutionOutcome) -> bytes:
    return ber.sequence(
        ber.der_int(outcome.seq_number),
        ber.der_int(outcome.mode),
        ber.sequence(*(_encode_change(c) for c in outcome.seq_number_changes)),
        ber.sequence(*(_encode_replacement_outcome(o) for o in outcome.replacement_outcomes)),
    )


def _decode_outcome(item: ber.Tlv) -> ExecutionOutcome:
    what = "executionOutcome"
    reader = ber.SeqReader(item, what)
    seq = ber.decode_int(reader.next(ber.TAG_INTEGER, "authorisingRemotePartySeqNumber"), f"{what}.seq")
    mode = ber.decode_int(reader.next(ber.TAG_INTEGER, "credentialsReplacementMode"), f"{what}.mode")
    changes = _decode_changes(
        reader.next(ber.TAG_SEQUENCE, "remotePartySeqNumberChanges"), f"{what}.remotePartySeqNumberChanges"
    )
    outcomes_tlv = reader.next(ber.TAG_SEQUENCE, "replacementOutcomes")
    reader.done()
    outcomes = tuple(
        _decode_replacement_outcome(o)
        for o in ber.read_sequence_of(outcomes_tlv, f"{what}.replacementOutcomes", ber.TAG_SEQUENCE)
    )
    return ExecutionOutcome(seq, mode, changes, outcomes)


_OUTCOME_IDS = (
    "existingSubjectUniqueID",
    "existingSubjectKeyIdentifier",
    "replacingSubjectUniqueID",
    "replacingSubjectKeyIdentifier",
)


def _encode_replacement_outcome(outcome: ReplacementOutcome) -> bytes:
    if outcome.status < 0:
        raise EncodeError(f"statusCode {outcome.status} negative")
    return ber.sequence(
        outcome.cell.encode(),
        ber.der_int(outcome.status, ber.TAG_ENUMERATED),
        ber.tlv(ber.TAG_OCTET_STRING, bytes(outcome.existing_subject_unique_id)),
        ber.tlv(ber.TAG_OCTET_STRING, bytes(outcome.existing_subject_key_identifier)),
        ber.tlv(ber.TAG_OCTET_STRING, bytes(outcome.replacing_subject_unique_id)),
        ber.tlv(ber.TAG_OCTET_STRING, bytes(outcome.replacing_subject_key_identifier)),
    )


def _decode_replacement_outcome(item: ber.Tlv) -> ReplacementOutcome:
    what = "ReplacementOutcome"
    reader = ber.SeqReader(item, what)
    cell = TrustAnchorCellIdentifier.decode_tlv(
        reader.next(ber.TAG_SEQUENCE, "affectedTrustAnchorCell"), f"{what}.affectedTrustAnchorCell"
    )
    status = ber.decode_int(
        reader.next((ber.TAG_ENUMERATED, ber.TAG_INTEGER), "statusCode"), f"{what}.statusCode"
    )
    ids = [reader.next(ber.TAG_OCTET_STRING, name).content for name in _OUTCOME_IDS]
    reader.done()
    return ReplacementOutcome(cell, status, ids[0], ids[1], ids[2], ids[3])
