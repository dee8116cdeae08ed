"""CS02b Update Security Credentials: command, response and future-dated alert payloads (README §8.1, §8.2).

Commands encode to DER; responses and alerts decode with a lenient BER reader (non-minimal lengths).
Certificates are carried as their exact DER bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gbcs.cells import TrustAnchorCellIdentifier


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
        raise NotImplementedError

    @classmethod
    def decode(cls, data: bytes) -> UpdateSecurityCredentialsCommand:
        """Lenient BER; the whole of `data` must be one CommandPayload. DecodeError otherwise."""
        raise NotImplementedError


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
        raise NotImplementedError

    @classmethod
    def decode(cls, data: bytes) -> UpdateSecurityCredentialsResponse:
        raise NotImplementedError


@dataclass(frozen=True)
class FutureDatedAlert:
    """Message code 0x00CB, CRA 3: alertCode 0x8F66 success / 0x8F67 failure."""

    alert_code: int
    execution_date_time: datetime
    execution_outcome: ExecutionOutcome

    def encode(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def decode(cls, data: bytes) -> FutureDatedAlert:
        raise NotImplementedError
