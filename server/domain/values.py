"""Domain values, built by validating constructors. No protobuf, grpc or pkcs11 types here."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from vdno.dno_areas import DNO_AREAS
from vdno.gbcs.errors import DecodeError
from vdno.gbcs.ids import parse_eui64
from vdno.server.domain.errors import InvalidRequest, VdnoError

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
_BENCH_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")


def parse_entity_id(text: str, what: str) -> bytes:
    """An EUI-64 as 16 hex digits (separators '-', ':' or ' ' allowed) -> 8 bytes."""
    try:
        return parse_eui64(text)
    except DecodeError:
        raise InvalidRequest(f"{what} must be an EUI-64 of 16 hex digits, got {text!r:.40}") from None


def parse_area_id(value: int) -> int:
    if value not in DNO_AREAS:
        raise InvalidRequest(f"area id must be a GB DNO area 10-23, got {value}")
    return value


MAX_RECORD_ID = 2**31 - 1  # record ids and generation numbers are SQL INTEGER columns (PostgreSQL: 32 bits)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def parse_record_id(value: int, what: str) -> int:
    """A record id or number from a request (an order, an approval request, a generation): 1 to
    MAX_RECORD_ID."""
    if not 1 <= value <= MAX_RECORD_ID:
        raise InvalidRequest(f"{what} must be 1 to {MAX_RECORD_ID}, got {value}")
    return value


def check_free_text(text: str, what: str) -> str:
    """Free text an officer gives (a reason, a facility): no control characters but tab and line breaks (a
    database text column holds no NUL)."""
    found = _CONTROL.search(text)
    if found is not None:
        raise InvalidRequest(f"{what} holds the control character U+{ord(found.group()):04X}")
    return text


def parse_request_id(text: str) -> str:
    if not _REQUEST_ID.match(text or ""):
        raise InvalidRequest("request id must be 1-64 characters of letters, digits and . _ : -")
    return text


def parse_bench_id(text: str) -> str:
    if not _BENCH_ID.match(text or ""):
        raise InvalidRequest("bench id must be 1-64 characters of letters, digits and . _ -")
    return text


class GenerationStatus(StrEnum):
    """A vanilla generation's life (docs: a key version in the cloud KMS sense)."""

    PENDING = "pending"  # keys generated in the token; no certificates yet
    CERTIFIED = "certified"  # SMKI certificates imported; signs nothing yet
    ACTIVE = "active"  # the one target of new hand-ins and rotations; signs for meters holding it
    SIGNING_ONLY = "signing-only"  # signs hand-outs and rotations for meters holding it; target of nothing
    DISABLED = "disabled"  # signs nothing; can be re-enabled (unless compromised)
    DESTROY_SCHEDULED = "destroy-scheduled"  # disabled, keys deleted once the grace period ends
    DESTROYED = "destroyed"  # keys deleted from the token; the number is never reused

    @property
    def signs(self) -> bool:
        """Whether the generation's key may sign commands for meters that hold it."""
        return self in (GenerationStatus.ACTIVE, GenerationStatus.SIGNING_ONLY)


class BenchStatus(StrEnum):
    ENROLLED = "enrolled"
    REVOKED = "revoked"


class IssuanceStatus(StrEnum):
    RECORDED = "recorded"  # counter allocated, not yet signed (write-ahead)
    SIGNED = "signed"  # signature verified and stored; released to the bench
    FAILED = "failed"  # signing or verification failed; counter burnt, nothing released
    APPLIED = "applied"  # the meter's signed answer shows both NO cells holding what the command installs
    REJECTED = "rejected"  # the meter's signed response reports a refusal
    CANCELLED = "cancelled"  # withdrawn before an outcome; a meter that received it may still apply it

    @property
    def outstanding(self) -> bool:
        """Holds the meter: no other command may be issued for it (one outstanding command per meter)."""
        return self in (IssuanceStatus.RECORDED, IssuanceStatus.SIGNED)


@dataclass(frozen=True)
class CredentialSet:
    """What a command installs in a meter's NO cells: one party's DS and KA certificates (DER)."""

    entity_id: bytes
    ds_certificate: bytes
    ka_certificate: bytes


@dataclass(frozen=True)
class Area:
    area_id: int
    name: str
    entity_id: bytes
    ds_certificate: bytes  # DER, the area DNO's NO digital-signing certificate
    ka_certificate: bytes  # DER, the area DNO's NO key-agreement certificate

    @property
    def credentials(self) -> CredentialSet:
        return CredentialSet(self.entity_id, self.ds_certificate, self.ka_certificate)


@dataclass(frozen=True)
class VanillaGeneration:
    """A generation with its certificates (certified or later): what commands are built and checked with."""

    generation: int
    entity_id: bytes
    ds_key_uri: str  # RFC 7512 URI of the private DS key in the token
    ka_key_uri: str
    ds_certificate: bytes
    ka_certificate: bytes
    status: GenerationStatus
    compromised: bool = False

    @property
    def signs(self) -> bool:
        return self.status.signs and not self.compromised

    @property
    def credentials(self) -> CredentialSet:
        return CredentialSet(self.entity_id, self.ds_certificate, self.ka_certificate)


@dataclass(frozen=True)
class GenerationRecord:
    """Everything the custodian records of a generation, whatever its state."""

    generation: int
    entity_id: bytes
    ds_key_uri: str
    ka_key_uri: str
    status: GenerationStatus
    compromised: bool
    created_at: datetime
    ds_certificate: bytes | None = None
    ka_certificate: bytes | None = None
    destroy_after: datetime | None = None
    not_after: datetime | None = None  # the earlier expiry of its DS and KA certificates


class BenchOperation(StrEnum):
    """What an enrolled bench may ask for."""

    HAND_IN = "hand-in"
    HAND_OUT = "hand-out"
    ROTATION = "rotation"


ALL_BENCH_OPERATIONS = frozenset(BenchOperation)


@dataclass(frozen=True)
class Bench:
    bench_id: str
    status: BenchStatus
    operations: frozenset[BenchOperation] = ALL_BENCH_OPERATIONS
    facility: str | None = None
    certificate_sha256: str | None = None  # pins the certificate issued at enrolment (None: any, by CN)


class OfficerStatus(StrEnum):
    ENROLLED = "enrolled"
    REVOKED = "revoked"


@dataclass(frozen=True)
class Officer:
    officer_id: str
    status: OfficerStatus


@dataclass(frozen=True)
class HandOutRequest:
    """A bench's request to hand a vanilla meter out to an area, with what it read from the meter."""

    bench_id: str
    request_id: str
    device_id: bytes
    area_id: int
    device_certificate: bytes  # DER device DS certificate (CS02e)
    credentials_response: bytes  # the device-signed CS02a response (GS APDU)

    @classmethod
    def create(
        cls,
        bench_id: str,
        request_id: str,
        device_id: str,
        area_id: int,
        device_certificate: bytes,
        credentials_response: bytes,
    ) -> HandOutRequest:
        if not device_certificate:
            raise InvalidRequest("device_certificate is required (the meter's CS02e DS certificate)")
        if not credentials_response:
            raise InvalidRequest("credentials_response is required (the meter's signed CS02a response)")
        return cls(
            bench_id=parse_bench_id(bench_id),
            request_id=parse_request_id(request_id),
            device_id=parse_entity_id(device_id, "device_id"),
            area_id=parse_area_id(area_id),
            device_certificate=device_certificate,
            credentials_response=credentials_response,
        )

    def fingerprint(self) -> str:
        """What a retry with the same request id must repeat: the device and the area."""
        return hashlib.sha256(self.device_id + bytes([self.area_id])).hexdigest()


@dataclass(frozen=True)
class RotationRequest:
    """A bench's request to move a meter in stock from its vanilla generation onto the active one."""

    bench_id: str
    request_id: str
    device_id: bytes
    device_certificate: bytes  # DER device DS certificate (CS02e)
    credentials_response: bytes  # the device-signed CS02a response (GS APDU)

    @classmethod
    def create(
        cls,
        bench_id: str,
        request_id: str,
        device_id: str,
        device_certificate: bytes,
        credentials_response: bytes,
    ) -> RotationRequest:
        if not device_certificate:
            raise InvalidRequest("device_certificate is required (the meter's CS02e DS certificate)")
        if not credentials_response:
            raise InvalidRequest("credentials_response is required (the meter's signed CS02a response)")
        return cls(
            bench_id=parse_bench_id(bench_id),
            request_id=parse_request_id(request_id),
            device_id=parse_entity_id(device_id, "device_id"),
            device_certificate=device_certificate,
            credentials_response=credentials_response,
        )

    def fingerprint(self) -> str:
        """What a retry with the same request id must repeat: the device (and that it is a rotation)."""
        return hashlib.sha256(b"rotation" + self.device_id).hexdigest()


@dataclass(frozen=True)
class IssuanceDraft:
    """What is recorded before the HSM signs (docs/architecture.md §5.3)."""

    bench_id: str
    request_id: str
    request_fingerprint: str
    device_id: bytes
    area_id: int | None  # a hand-out's area
    generation: int  # whose key signs
    device_certificate: bytes
    target_generation: int | None = None  # a rotation's target


@dataclass(frozen=True)
class IssuanceRecord:
    issuance_id: int
    bench_id: str
    request_id: str
    request_fingerprint: str
    device_id: bytes
    area_id: int | None  # a hand-out's area
    generation: int  # whose key signs
    counter: int
    device_certificate: bytes
    status: IssuanceStatus
    created_at: datetime
    signed_command: bytes | None = None
    outcome_response: bytes | None = None
    target_generation: int | None = None  # a rotation's target
    cancelled_by: str | None = None  # officer:<id> | bench:<id>
    cancel_reason: str | None = None

    @property
    def kind(self) -> str:
        return "rotation" if self.target_generation is not None else "hand-out"

    def describe(self) -> str:
        """How refusals name it: request id, bench, issuance id and status."""
        return (
            f"request {self.request_id!r} of bench {self.bench_id} ({self.kind}, issuance "
            f"{self.issuance_id}, {self.status.value})"
        )


@dataclass(frozen=True)
class IssuanceStep:
    """What one write step of the issuance pipeline did, item by item, in the order given; an item's
    error (a VdnoError) does not undo its neighbours. `stored`: the signed commands now durable (status
    SIGNED). `begun`: (record, created) per draft, created False when the request id already had one."""

    stored: tuple[IssuanceRecord | VdnoError, ...]
    begun: tuple[tuple[IssuanceRecord, bool] | VdnoError, ...]


@dataclass(frozen=True)
class SignedCommand:
    """A released CS02b mode-3 command: GS APDU with the KRP signature, no MAC header."""

    issuance_id: int
    device_id: bytes
    area_id: int | None  # a hand-out's area
    generation: int  # whose key signed
    counter: int
    command: bytes
    target_generation: int | None = None  # a rotation's target

    @classmethod
    def of(cls, record: IssuanceRecord, command: bytes) -> SignedCommand:
        return cls(
            record.issuance_id,
            record.device_id,
            record.area_id,
            record.generation,
            record.counter,
            command,
            record.target_generation,
        )


@dataclass(frozen=True)
class OutcomeReport:
    """What a bench reports for a released command: the meter's signed CS02b response to it, or (when the
    meter already held what the command installs, so the bench did not send it again) the meter's signed
    CS02a answer read after the command was issued. Exactly one of the two."""

    bench_id: str
    request_id: str
    response: bytes  # the meter's signed CS02b response, or b""
    credentials_answer: bytes = b""  # the meter's signed CS02a answer, or b""

    @classmethod
    def create(
        cls, bench_id: str, request_id: str, response: bytes, credentials_answer: bytes = b""
    ) -> OutcomeReport:
        if bool(response) == bool(credentials_answer):
            raise InvalidRequest(
                "give exactly one of response (the meter's signed CS02b response) and credentials_answer "
                "(its signed CS02a answer)"
            )
        return cls(parse_bench_id(bench_id), parse_request_id(request_id), response, credentials_answer)

    @property
    def evidence(self) -> bytes:
        return self.response or self.credentials_answer


@dataclass(frozen=True)
class Cancellation:
    """An officer's or a bench's withdrawal of a command (audited with its reason)."""

    actor: str  # officer:<id> | bench:<id>
    reason: str

    @classmethod
    def create(cls, actor: str, reason: str) -> Cancellation:
        text = (reason or "").strip()
        if not text or len(text) > 500:
            raise InvalidRequest("reason is required (1-500 characters): say why the command is withdrawn")
        return cls(actor, text)


@dataclass(frozen=True)
class CellState:
    """What a device's NO cell holds, from its signed responses."""

    entity_id: bytes
    subject_key_identifier: bytes


@dataclass(frozen=True)
class RecordedOutcome:
    issuance_id: int
    status: IssuanceStatus
    cell_statuses: tuple[tuple[int, int, int], ...]  # (role, key usage bit, status code)
    no_ds: CellState | None
    no_ka: CellState | None
    # what the records then say the meter holds, from the verified answer (None: what they said before)
    custody: CustodyState | None = None
    area_id: int | None = None
    generation: int | None = None
    evidence: str = "response"  # response (CS02b) | credentials (CS02a)


@dataclass(frozen=True)
class AuditEvent:
    event: str  # e.g. "command.issued", "bench.enrolled", "auth.refused"
    actor: str
    subject: str
    details: dict[str, Any] = field(default_factory=dict)


# -- hand-in and fleet (a meter's journey: area X -> hand-in order -> vanilla g in stock -> area Y)


class HandInStatus(StrEnum):
    AWAITING = "awaiting-authorisation"  # recorded; the area DNO has not returned a command yet
    AUTHORISED = "authorised"  # a command from the area DNO (through DCC) passed every check
    APPLIED = "applied"  # the meter's signed response reports both NO cells on the vanilla generation
    REJECTED = "rejected"  # the meter's signed response reports a refusal
    CANCELLED = "cancelled"

    @property
    def outstanding(self) -> bool:
        return self in (HandInStatus.AWAITING, HandInStatus.AUTHORISED)


class CustodyState(StrEnum):
    """What the custodian's records say a meter's NO cells hold, or are about to."""

    AREA = "area"  # an area DNO's credential set
    HAND_IN_ORDERED = "hand-in-ordered"
    HAND_IN_AUTHORISED = "hand-in-authorised"
    VANILLA = "vanilla"  # a vanilla generation: in stock
    UNKNOWN = "unknown"  # an entity the custodian does not know


def area_phrase(area_id: int | None) -> str:
    """An area as people name it: "area 12 (London)"."""
    name = DNO_AREAS.get(area_id or 0)
    return f"area {area_id}" + (f" ({name})" if name else "")


def custody_phrase(state: CustodyState, area_id: int | None, generation: int | None) -> str:
    """Where the custodian's records put a meter, as refusals say it (never a raw entity id or None)."""
    if state is CustodyState.AREA:
        return f"already handed out to {area_phrase(area_id)}"
    if state is CustodyState.VANILLA:
        return f"in stock on vanilla generation {generation}"
    if state is CustodyState.HAND_IN_ORDERED:
        return f"with a hand-in ordered from {area_phrase(area_id)}"
    if state is CustodyState.HAND_IN_AUTHORISED:
        return f"with a hand-in authorised from {area_phrase(area_id)}"
    return "holding certificates of an entity this custodian does not know"


@dataclass(frozen=True)
class HandInRequest:
    """A bench's request to bring a meter into vanilla custody, with what it read from the meter."""

    bench_id: str
    request_id: str
    device_id: bytes
    device_certificate: bytes  # DER device DS certificate (CS02e)
    credentials_response: bytes  # the device-signed CS02a response (GS APDU)

    @classmethod
    def create(
        cls,
        bench_id: str,
        request_id: str,
        device_id: str,
        device_certificate: bytes,
        credentials_response: bytes,
    ) -> HandInRequest:
        if not device_certificate:
            raise InvalidRequest("device_certificate is required (the meter's CS02e DS certificate)")
        if not credentials_response:
            raise InvalidRequest("credentials_response is required (the meter's signed CS02a response)")
        return cls(
            bench_id=parse_bench_id(bench_id),
            request_id=parse_request_id(request_id),
            device_id=parse_entity_id(device_id, "device_id"),
            device_certificate=device_certificate,
            credentials_response=credentials_response,
        )

    def fingerprint(self) -> str:
        """What a retry with the same request id must repeat: the device."""
        return hashlib.sha256(b"hand-in" + self.device_id).hexdigest()


@dataclass(frozen=True)
class HandInDraft:
    """A validated hand-in order, before it is recorded."""

    bench_id: str
    request_id: str
    request_fingerprint: str
    device_id: bytes
    area_id: int  # the area whose DNO holds the meter's NO cells
    area_entity_id: bytes
    seq_number: int  # the meter's NO seq number as read (the DNO's command must exceed it)
    generation: int  # the vanilla generation the meter is to receive
    device_certificate: bytes


@dataclass(frozen=True)
class HandInOrder:
    order_id: int
    bench_id: str
    request_id: str
    request_fingerprint: str
    device_id: bytes
    area_id: int
    area_entity_id: bytes
    seq_number: int
    generation: int
    device_certificate: bytes
    status: HandInStatus
    created_at: datetime
    command: bytes | None = None  # as the meter receives it: MAC header, signed GS APDU, MAC
    counter: int | None = None  # the DNO's originator counter in `command`
    mac_present: bool = False
    outcome_response: bytes | None = None
    authorised_at: datetime | None = None


@dataclass(frozen=True)
class AuthorisedHandIn:
    """What import established about a DNO's command for an order."""

    order_id: int
    command: bytes
    counter: int
    mac_present: bool


@dataclass(frozen=True)
class ExportedHandIn:
    """One order as the area DNO receives it: a DUIS 6.15.1 request and its manifest record."""

    order: HandInOrder
    duis_request: bytes
    manifest_record: dict[str, Any]


@dataclass(frozen=True)
class DeviceCustody:
    device_id: bytes
    state: CustodyState
    area_id: int | None
    generation: int | None


@dataclass(frozen=True)
class DeviceEvent:
    at: datetime
    event: str  # observed-in-area | hand-in-ordered | hand-in-authorised | hand-in-applied | ...
    state: CustodyState
    area_id: int | None
    generation: int | None
    reference: str  # order:<id> | issuance:<id>
    actor: str


@dataclass(frozen=True)
class FleetCount:
    state: CustodyState
    generation: int | None
    area_id: int | None
    count: int


@dataclass(frozen=True)
class FleetSummary:
    counts: tuple[FleetCount, ...]
    devices: int
    hand_outs_outstanding: int


# -- two-person control


class ApprovalOperation(StrEnum):
    """Officer operations that need M-of-N approval before they may be executed."""

    ACTIVATE_GENERATION = "activate-generation"
    DISABLE_GENERATION = "disable-generation"
    REENABLE_GENERATION = "reenable-generation"
    SCHEDULE_DESTRUCTION = "schedule-destruction"
    CANCEL_DESTRUCTION = "cancel-destruction"
    REPLACE_AREA = "replace-area"
    ENROL_BENCH = "enrol-bench"


class ApprovalStatus(StrEnum):
    PENDING = "pending"  # waiting for approvals (until expires_at)
    APPROVED = "approved"  # enough approvals; may be executed until execute_by
    EXECUTED = "executed"
    REJECTED = "rejected"
    EXPIRED = "expired"  # not approved, or not executed, in time (computed: the row keeps its last status)


@dataclass(frozen=True)
class ApprovalRequest:
    request_id: int
    operation: ApprovalOperation
    subject: str  # generation:<n> | area:<id> | bench:<id>
    parameters: dict[str, Any]
    reason: str
    requested_by: str
    requested_at: datetime
    expires_at: datetime
    status: ApprovalStatus  # as stored; see effective_status
    approvals: tuple[str, ...]  # officer ids, in order
    approved_at: datetime | None = None
    execute_by: datetime | None = None
    closed_at: datetime | None = None
    closed_by: str | None = None
    outcome: dict[str, Any] | None = None

    def effective_status(self, now: datetime) -> ApprovalStatus:
        """The status as of `now`: a pending request past its expiry, or an approved one past its execution
        window, is expired (and stays so: it is requested anew)."""
        if self.status is ApprovalStatus.PENDING and now > self.expires_at:
            return ApprovalStatus.EXPIRED
        if self.status is ApprovalStatus.APPROVED and self.execute_by is not None and now > self.execute_by:
            return ApprovalStatus.EXPIRED
        return self.status


@dataclass(frozen=True)
class ApprovalUse:
    """An approved request being executed now, by an officer: closed in the transaction of its change."""

    request_id: int
    officer_id: str
    now: datetime
