"""Key custody for security officers: vanilla generations through their life, under two-person control, the
area registry and bench enrolment (docs/architecture.md, "Key custody").

The model is a cloud KMS key: the vanilla credential set has versions (generations), each with a state;
"active" is the alias new hand-ins and rotations point at. States and what moves between them:

  pending --import certificates--> certified --activate*--> active --(another activated)--> signing-only
  active | signing-only | certified --disable*--> disabled --re-enable*--> signing-only
  disabled --schedule destruction*--> destroy-scheduled --cancel*--> disabled
  destroy-scheduled --(grace period over; keys deleted from the token)--> destroyed
  any but destroyed --mark compromised (at once, no approval)--> disabled, compromised for good

(* needs M-of-N approval: requested by one officer, approved by others, executed within a window.)
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from vdno.dno_areas import DNO_AREAS
from vdno.gbcs.cells import KeyUsage
from vdno.gbcs.errors import GbcsError
from vdno.gbcs.smki import SmkiCertificate, load_certificate
from vdno.server.domain.certificates import check_organisation_certificate
from vdno.server.domain.errors import (
    ApprovalRefused,
    CertificateRefused,
    CustodyConflict,
    InvalidRequest,
    UnknownApprovalRequest,
    UnknownArea,
    UnknownGeneration,
)
from vdno.server.domain.policy import TrustAnchors, require_enrolled_officer
from vdno.server.domain.values import (
    ApprovalOperation,
    ApprovalRequest,
    ApprovalStatus,
    ApprovalUse,
    Area,
    Bench,
    BenchOperation,
    BenchStatus,
    GenerationRecord,
    GenerationStatus,
    Officer,
    check_free_text,
    parse_area_id,
    parse_bench_id,
)

Clock = Callable[[], datetime]
NETWORK_OPERATOR_ROLE_OU = "03"


@dataclass(frozen=True)
class CustodySettings:
    """Officers' rules, from the [custody] settings."""

    approvals_required: int = 1  # approvals by officers other than the requester (1: two-person control)
    approval_ttl: timedelta = timedelta(hours=24)  # a request not approved by then expires
    execution_window: timedelta = timedelta(hours=1)  # an approved request not executed by then expires
    destroy_grace: timedelta = timedelta(days=7)  # 7-30 days between scheduling and deleting the keys
    expiry_warning: timedelta = timedelta(days=90)  # warn this long before a signing generation expires
    token_label: str = "vdno"  # the token new generations' keys are made in

    def __post_init__(self) -> None:
        if self.approvals_required < 1:
            raise ValueError("approvals_required must be at least 1")
        if not timedelta(days=7) <= self.destroy_grace <= timedelta(days=30):
            raise ValueError("the destruction grace period must be 7 to 30 days")


@dataclass(frozen=True)
class GeneratedKey:
    """A key pair the token generated: its private key's URI, its public key, what its attributes say."""

    uri: str
    public_key: bytes  # SubjectPublicKeyInfo DER
    attributes: dict[str, Any]


class KeyCeremony(Protocol):
    """What custody needs from the HSM (implemented in server/hsm). HsmUnavailable when the token is away;
    KeyNotInCustody for a key that fails its attribute checks."""

    def generate_key_pair(self, label: str, key_id: bytes) -> GeneratedKey:
        """An EC P-256 key pair generated in the token (sensitive, never extractable), its attributes read
        back and checked; an existing pair with that label is returned when its attributes pass."""
        ...

    def public_key(self, key_uri: str) -> bytes:
        """The SubjectPublicKeyInfo of the pair whose private key `key_uri` names."""
        ...

    def certificate_request(self, key_uri: str, subject: x509.Name) -> bytes:
        """A PKCS#10 request (DER) for `subject`, signed inside the token with the key `key_uri` names."""
        ...

    def destroy_key_pair(self, key_uri: str) -> bool:
        """Delete the private and public key objects; False when there was nothing left to delete."""
        ...


class BenchCertificateIssuer(Protocol):
    """Issues a bench's mTLS client certificate from the request the bench made (its key stays with it)."""

    def issue(self, csr_der: bytes, bench_id: str) -> bytes:
        """Certificate DER: CN = bench id, OU = vdno-bench, the request's public key. InvalidRequest when the
        request does not parse or its signature does not verify."""
        ...


class CustodyStore(Protocol):
    def get_officer(self, officer_id: str) -> Officer | None: ...
    def list_generation_records(self) -> list[GenerationRecord]: ...
    def get_generation_record(self, generation: int) -> GenerationRecord | None: ...
    def reserve_generation_number(self) -> int: ...
    def create_generation(self, record: GenerationRecord, key_facts: dict[str, Any], actor: str) -> int: ...
    def certify_generation(
        self, generation: int, ds_certificate: bytes, ka_certificate: bytes, facts: dict[str, Any], actor: str
    ) -> GenerationRecord: ...
    def change_generation(
        self,
        generation: int,
        allowed: tuple[GenerationStatus, ...],
        to: GenerationStatus,
        event: str,
        actor: str,
        details: dict[str, Any],
        approval: ApprovalUse | None = None,
        operation: ApprovalOperation | None = None,
        values: dict[str, Any] | None = None,
    ) -> GenerationRecord: ...
    def mark_compromised(self, generation: int, reason: str, actor: str) -> GenerationRecord: ...
    def record_destroyed(self, generation: int, now: datetime, facts: dict[str, Any], actor: str) -> None: ...
    def create_approval_request(self, request: ApprovalRequest) -> ApprovalRequest: ...
    def get_approval_request(self, request_id: int) -> ApprovalRequest | None: ...
    def list_approval_requests(self, statuses: tuple[ApprovalStatus, ...]) -> list[ApprovalRequest]: ...
    def grant_approval(
        self, request_id: int, officer_id: str, now: datetime, required: int, window_end: datetime
    ) -> ApprovalRequest: ...
    def reject_approval(
        self, request_id: int, officer_id: str, now: datetime, why: str
    ) -> ApprovalRequest: ...
    def record_execution_outcome(self, request_id: int, outcome: dict[str, Any]) -> None: ...
    def get_area(self, area_id: int) -> Area | None: ...
    def list_areas(self) -> list[Area]: ...
    def replace_area(self, area: Area, actor: str, approval: ApprovalUse) -> Area | None: ...
    def area_history_of(self, area_id: int) -> list[tuple[Area, datetime, str]]: ...
    def read_bench(self, bench_id: str) -> Bench | None: ...
    def list_benches(self) -> list[Bench]: ...
    def enrol_bench(
        self, bench: Bench, actor: str, approval: ApprovalUse | None, facts: dict[str, Any]
    ) -> None: ...
    def revoke_bench_now(self, bench_id: str, reason: str, actor: str) -> bool: ...
    def devices_holding(self, generation: int) -> list[bytes]: ...


@dataclass(frozen=True)
class GenerationView:
    record: GenerationRecord
    days_to_expiry: int | None  # None while it has no certificates


@dataclass(frozen=True)
class ExecutedRequest:
    request: ApprovalRequest
    outcome: dict[str, Any] = field(default_factory=dict)


def _subject_of(parameters: dict[str, Any], key: str, what: str) -> bytes:
    value = parameters.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} is missing")
    return base64.b64decode(value)


def _describe_certificate(der: bytes) -> dict[str, Any]:
    try:
        cert = load_certificate(der)
    except GbcsError as exc:
        return {"unusable": str(exc)}
    c = cert.certificate
    return {
        "subject": c.subject.rfc4514_string(),
        "issuer": c.issuer.rfc4514_string(),
        "serial": format(c.serial_number, "x"),
        "entity_id": cert.entity_id.hex().upper(),
        "key_usage": None if cert.key_usage is None else cert.key_usage.name,
        "not_before": c.not_valid_before_utc.isoformat(),
        "not_after": c.not_valid_after_utc.isoformat(),
        "sha256": hashlib.sha256(cert.der).hexdigest(),
    }


def _describe_csr(der: bytes) -> dict[str, Any]:
    try:
        csr = x509.load_der_x509_csr(der)
        key = csr.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, UnsupportedAlgorithm) as exc:
        return {"unusable": str(exc)}
    return {"subject": csr.subject.rfc4514_string(), "public_key_sha256": hashlib.sha256(key).hexdigest()}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def organisation_subject(entity_id: bytes, common_name: str) -> x509.Name:
    """The SMKI organisation certificate profile's subject: CN, OU = role as two hex digits (03, UTF8String),
    x500UniqueIdentifier = BIT STRING 00 || entity id (cryptography takes a BIT STRING's content octets, the
    unused-bits octet first)."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name, _ASN1Type.UTF8String),
            x509.NameAttribute(
                NameOID.ORGANIZATIONAL_UNIT_NAME, NETWORK_OPERATOR_ROLE_OU, _ASN1Type.UTF8String
            ),
            x509.NameAttribute(NameOID.X500_UNIQUE_IDENTIFIER, b"\x00" + entity_id, _ASN1Type.BitString),
        ]
    )


class CustodyService:
    """The officers' workflows. Thread-safe; one per process."""

    def __init__(
        self,
        store: CustodyStore,
        ceremony: KeyCeremony,
        issuer: BenchCertificateIssuer | None,
        anchors: TrustAnchors,
        settings: CustodySettings,
        clock: Clock,
    ) -> None:
        self._store = store
        self._ceremony = ceremony
        self._issuer = issuer
        self._anchors = anchors
        self._issuing_ca = load_certificate(anchors.issuing_ca)
        self._root = load_certificate(anchors.root_ca)
        self.settings = settings
        self._clock = clock
        self._creating = threading.Lock()  # one key ceremony at a time in this process

    def require_officer(self, officer_id: str) -> None:
        require_enrolled_officer(officer_id, self._store.get_officer(officer_id))

    # -- generations
    def generations(self, officer_id: str) -> list[GenerationView]:
        self.require_officer(officer_id)
        now = self._clock()
        views = []
        for record in self._store.list_generation_records():
            days = None
            not_after = self._not_after(record)
            if not_after is not None:
                days = (not_after - now).days
            views.append(GenerationView(replace(record, not_after=not_after), days))
        return views

    @staticmethod
    def _not_after(record: GenerationRecord) -> datetime | None:
        dates = [
            load_certificate(der).certificate.not_valid_after_utc
            for der in (record.ds_certificate, record.ka_certificate)
            if der is not None
        ]
        return min(dates) if dates else None

    def expiring(self) -> list[GenerationView]:
        """Generations that sign and whose certificates expire within the warning window (for health and
        logs)."""
        now = self._clock()
        return [
            view
            for view in self.signing_expiry()
            if view.record.not_after is not None
            and view.record.not_after - now <= self.settings.expiry_warning
        ]

    def signing_expiry(self) -> list[GenerationView]:
        """Every generation that signs (not compromised), with its certificates' expiry as not_after (for
        metrics)."""
        now = self._clock()
        out = []
        for record in self._store.list_generation_records():
            if not record.status.signs or record.compromised:
                continue
            not_after = self._not_after(record)
            if not_after is not None:
                out.append(GenerationView(replace(record, not_after=not_after), (not_after - now).days))
        return out

    def create_generation(self, officer_id: str, entity_id: bytes) -> GenerationRecord:
        """The key ceremony: a DS and a KA key pair generated in the token, their attributes read back and
        recorded in the audit log; the generation is pending until its certificates are imported."""
        self.require_officer(officer_id)
        if len(entity_id) != 8:
            raise InvalidRequest("entity_id must be an EUI-64 of 16 hex digits")
        if any(g.entity_id == entity_id for g in self._store.list_generation_records()):
            raise CustodyConflict(f"entity id {entity_id.hex()} already names a vanilla generation")
        with self._creating:
            number = self._store.reserve_generation_number()
            keys = {
                usage: self._ceremony.generate_key_pair(
                    f"vanilla-g{number}-{usage}", bytes([number % 256, n])
                )
                for usage, n in (("ds", 1), ("ka", 2))
            }
            record = GenerationRecord(
                generation=number,
                entity_id=entity_id,
                ds_key_uri=keys["ds"].uri,
                ka_key_uri=keys["ka"].uri,
                status=GenerationStatus.PENDING,
                compromised=False,
                created_at=self._clock(),
            )
            facts = {
                usage: dict(key.attributes, label=f"vanilla-g{number}-{usage}") for usage, key in keys.items()
            }
            created = self._store.create_generation(record, facts, f"officer:{officer_id}")
        if created != number:
            raise CustodyConflict("another generation was created at the same time; create it again")
        found = self._store.get_generation_record(number)
        assert found is not None
        return found

    def certificate_request(self, officer_id: str, generation: int, usage: KeyUsage) -> bytes:
        """PKCS#10 (DER) for the generation's DS or KA key, signed in the HSM, subject per the SMKI
        organisation profile."""
        self.require_officer(officer_id)
        record = self._generation(generation)
        if record.status is not GenerationStatus.PENDING:
            raise CustodyConflict(
                f"generation {generation} is {record.status.value}: it is certified already"
            )
        suffix = "" if usage is KeyUsage.DIGITAL_SIGNATURE else " KA"
        uri = record.ds_key_uri if usage is KeyUsage.DIGITAL_SIGNATURE else record.ka_key_uri
        subject = organisation_subject(record.entity_id, f"VDNO vanilla g{generation}{suffix}")
        return self._ceremony.certificate_request(uri, subject)

    def import_certificates(
        self, officer_id: str, generation: int, ds_certificate: bytes, ka_certificate: bytes
    ) -> GenerationRecord:
        """Check both certificates (each refused with the reason) and make the generation certified."""
        self.require_officer(officer_id)
        record = self._generation(generation)
        if record.status is not GenerationStatus.PENDING:
            raise CustodyConflict(
                f"generation {generation} is {record.status.value}, not pending certification"
            )
        now = self._clock()
        checked: list[SmkiCertificate] = []
        for der, usage, uri, what in (
            (ds_certificate, KeyUsage.DIGITAL_SIGNATURE, record.ds_key_uri, "the DS certificate"),
            (ka_certificate, KeyUsage.KEY_AGREEMENT, record.ka_key_uri, "the KA certificate"),
        ):
            checked.append(
                check_organisation_certificate(
                    der,
                    what=what,
                    usage=usage,
                    issuing_ca=self._issuing_ca,
                    root=self._root,
                    now=now,
                    entity_id=record.entity_id,
                    public_key=self._ceremony.public_key(uri),
                )
            )
        ds, ka = checked
        facts = {
            usage: {
                "serial": format(cert.certificate.serial_number, "x"),
                "sha256": hashlib.sha256(cert.der).hexdigest(),
                "not_after": cert.certificate.not_valid_after_utc.isoformat(),
            }
            for usage, cert in (("ds", ds), ("ka", ka))
        }
        return self._store.certify_generation(generation, ds.der, ka.der, facts, f"officer:{officer_id}")

    def mark_compromised(
        self, officer_id: str, generation: int, reason: str
    ) -> tuple[GenerationRecord, list[bytes]]:
        """Disable at once, with no approval; the meters the records show still holding it."""
        self.require_officer(officer_id)
        if not check_free_text(reason, "reason").strip():
            raise InvalidRequest("reason is required: say why the generation is compromised")
        record = self._store.mark_compromised(generation, reason.strip()[:500], f"officer:{officer_id}")
        return record, self._store.devices_holding(generation)

    def destroy_due(self, actor: str) -> list[int]:
        """Delete the keys of every generation whose destruction is due, then record it destroyed. Safe to run
        again after a crash between the two (deleting keys that are gone is a no-op)."""
        now = self._clock()
        destroyed = []
        for record in self._store.list_generation_records():
            due = record.destroy_after
            if record.status is not GenerationStatus.DESTROY_SCHEDULED or due is None or due > now:
                continue
            facts = {
                usage: self._ceremony.destroy_key_pair(uri)
                for usage, uri in (("ds", record.ds_key_uri), ("ka", record.ka_key_uri))
            }
            self._store.record_destroyed(record.generation, now, {"keys_deleted": facts}, actor)
            destroyed.append(record.generation)
        return destroyed

    # -- two-person control
    def request(
        self,
        officer_id: str,
        operation: ApprovalOperation,
        subject: str,
        parameters: dict[str, Any],
        reason: str,
    ) -> ApprovalRequest:
        """Record a request for an operation that needs approval. It is checked now, so that a request that
        cannot succeed is refused at once; it is checked again when executed."""
        self.require_officer(officer_id)
        if not check_free_text(reason, "reason").strip():
            raise InvalidRequest("reason is required: approvers see what, why and who")
        self._precheck(operation, subject, parameters)
        now = self._clock()
        return self._store.create_approval_request(
            ApprovalRequest(
                request_id=0,
                operation=operation,
                subject=subject,
                parameters=parameters,
                reason=reason.strip()[:1000],
                requested_by=officer_id,
                requested_at=now,
                expires_at=now + self.settings.approval_ttl,
                status=ApprovalStatus.PENDING,
                approvals=(),
            )
        )

    def request_generation_change(
        self, officer_id: str, operation: ApprovalOperation, generation: int, reason: str
    ) -> ApprovalRequest:
        if operation not in GENERATION_CHANGES:
            raise InvalidRequest(f"{operation.value} is not a generation change")
        return self.request(
            officer_id, operation, f"generation:{generation}", {"generation": generation}, reason
        )

    def request_area_replacement(
        self, officer_id: str, area_id: int, ds_certificate: bytes, ka_certificate: bytes, reason: str
    ) -> ApprovalRequest:
        area_id = parse_area_id(area_id)
        parameters = {
            "area_id": area_id,
            "ds_certificate": _b64(ds_certificate),
            "ka_certificate": _b64(ka_certificate),
        }
        return self.request(officer_id, ApprovalOperation.REPLACE_AREA, f"area:{area_id}", parameters, reason)

    def request_bench_enrolment(
        self,
        officer_id: str,
        bench_id: str,
        csr_der: bytes,
        facility: str,
        operations: Sequence[BenchOperation],
        reason: str,
    ) -> ApprovalRequest:
        bench_id = parse_bench_id(bench_id)
        if not check_free_text(facility, "facility").strip():
            raise InvalidRequest("facility is required: where the bench is")
        if not operations:
            raise InvalidRequest("operations: name at least one of hand-in, hand-out, rotation")
        parameters = {
            "bench_id": bench_id,
            "csr": _b64(csr_der),
            "facility": facility.strip()[:128],
            "operations": sorted({o.value for o in operations}),
        }
        return self.request(
            officer_id, ApprovalOperation.ENROL_BENCH, f"bench:{bench_id}", parameters, reason
        )

    def approvals(
        self, officer_id: str, include_closed: bool = False
    ) -> list[tuple[ApprovalRequest, ApprovalStatus]]:
        """Requests with their status now: pending and approved ones (all of them with include_closed)."""
        self.require_officer(officer_id)
        now = self._clock()
        statuses = () if include_closed else (ApprovalStatus.PENDING, ApprovalStatus.APPROVED)
        out = []
        for request in self._store.list_approval_requests(statuses):
            status = request.effective_status(now)
            if include_closed or status in (ApprovalStatus.PENDING, ApprovalStatus.APPROVED):
                out.append((request, status))
        return out

    def describe(self, request: ApprovalRequest) -> dict[str, Any]:
        """What exactly a request asks for, as an approver needs to see it: certificates and requests
        decoded and summarised, never as raw bytes."""
        parameters = request.parameters
        if request.operation in GENERATION_CHANGES:
            record = self._store.get_generation_record(int(parameters["generation"]))
            to = GENERATION_CHANGES[request.operation][1]
            return {
                "generation": int(parameters["generation"]),
                "entity_id": None if record is None else record.entity_id.hex().upper(),
                "now": None if record is None else record.status.value,
                "becomes": to.value,
                "compromised": None if record is None else record.compromised,
            }
        if request.operation is ApprovalOperation.REPLACE_AREA:
            area_id = int(parameters["area_id"])
            current = self._store.get_area(area_id)
            return {
                "area_id": area_id,
                "area_name": DNO_AREAS.get(area_id),
                "replaces_entity_id": None if current is None else current.entity_id.hex().upper(),
                "ds_certificate": _describe_certificate(_subject_of(parameters, "ds_certificate", "DS")),
                "ka_certificate": _describe_certificate(_subject_of(parameters, "ka_certificate", "KA")),
            }
        if request.operation is ApprovalOperation.ENROL_BENCH:
            csr = _subject_of(parameters, "csr", "the certificate request")
            return {
                "bench_id": parameters["bench_id"],
                "facility": parameters["facility"],
                "operations": parameters["operations"],
                "csr": _describe_csr(csr),
            }
        return dict(parameters)  # pragma: no cover - the operations are all above

    def approve(self, officer_id: str, request_id: int) -> ApprovalRequest:
        self.require_officer(officer_id)
        now = self._clock()
        return self._store.grant_approval(
            request_id,
            officer_id,
            now,
            self.settings.approvals_required,
            now + self.settings.execution_window,
        )

    def reject(self, officer_id: str, request_id: int, why: str) -> ApprovalRequest:
        self.require_officer(officer_id)
        if not check_free_text(why, "reason").strip():
            raise InvalidRequest("why is required when rejecting a request")
        return self._store.reject_approval(request_id, officer_id, self._clock(), why.strip()[:500])

    def execute(self, officer_id: str, request_id: int) -> ExecutedRequest:
        """Carry out an approved request within its execution window; the request closes in the transaction
        of the change."""
        self.require_officer(officer_id)
        request = self._store.get_approval_request(request_id)
        if request is None:
            raise UnknownApprovalRequest(f"no approval request {request_id}")
        now = self._clock()
        status = request.effective_status(now)
        if status is not ApprovalStatus.APPROVED:
            raise ApprovalRefused(f"approval request {request_id} is {status.value}, not approved")
        use = ApprovalUse(request_id, officer_id, now)
        actor = f"officer:{officer_id}"
        operation = request.operation
        if operation in GENERATION_CHANGES:
            generation = int(request.parameters["generation"])
            allowed, to, event = GENERATION_CHANGES[operation]
            values: dict[str, Any] = {}
            if operation is ApprovalOperation.SCHEDULE_DESTRUCTION:
                values["destroy_after"] = now + self.settings.destroy_grace
            elif operation is ApprovalOperation.CANCEL_DESTRUCTION:
                values["destroy_after"] = None
            elif operation is ApprovalOperation.ACTIVATE_GENERATION:
                self._require_valid(generation, now)
            details = {"request": request_id, "reason": request.reason, "approvals": list(request.approvals)}
            if "destroy_after" in values and values["destroy_after"] is not None:
                details["destroy_after"] = values["destroy_after"].isoformat()
            record = self._store.change_generation(
                generation, allowed, to, event, actor, details, use, operation, values
            )
            return ExecutedRequest(request, {"generation": record.generation, "status": record.status.value})
        if operation is ApprovalOperation.REPLACE_AREA:
            area = self._checked_area(request.parameters)
            previous = self._store.replace_area(area, actor, use)
            return ExecutedRequest(
                request,
                {
                    "area_id": area.area_id,
                    "previous_entity_id": None if previous is None else previous.entity_id.hex(),
                },
            )
        if operation is ApprovalOperation.ENROL_BENCH:
            return ExecutedRequest(request, self._enrol(request, actor, use))
        raise InvalidRequest(f"unknown operation {operation.value}")  # pragma: no cover - enum is closed

    def _precheck(self, operation: ApprovalOperation, subject: str, parameters: dict[str, Any]) -> None:
        if operation in GENERATION_CHANGES:
            record = self._generation(int(parameters["generation"]))
            allowed, to, _ = GENERATION_CHANGES[operation]
            if record.status not in allowed:
                names = ", ".join(s.value for s in allowed)
                raise CustodyConflict(
                    f"generation {record.generation} is {record.status.value}; "
                    f"{operation.value} needs {names}"
                )
            if to.signs and record.compromised:
                raise CustodyConflict(
                    f"generation {record.generation} is marked compromised: it may never sign again"
                )
            if operation is ApprovalOperation.ACTIVATE_GENERATION:
                self._require_valid(record.generation, self._clock())
        elif operation is ApprovalOperation.REPLACE_AREA:
            self._checked_area(parameters)
        elif operation is ApprovalOperation.ENROL_BENCH:
            bench = self._store.read_bench(str(parameters["bench_id"]))
            if bench is not None and bench.status is BenchStatus.ENROLLED:
                raise CustodyConflict(f"bench {bench.bench_id!r} is enrolled already")
            if self._issuer is None:
                raise CustodyConflict(
                    "this server issues no bench certificates ([enrolment] is not configured)"
                )
            self._issuer_check(parameters)

    def _require_valid(self, generation: int, now: datetime) -> None:
        record = self._generation(generation)
        not_after = self._not_after(record)
        if not_after is None:
            raise CustodyConflict(f"generation {generation} has no certificates")
        for der in (record.ds_certificate, record.ka_certificate):
            assert der is not None
            cert = load_certificate(der).certificate
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                raise CertificateRefused(f"generation {generation}'s certificates are not valid now")

    def _checked_area(self, parameters: dict[str, Any]) -> Area:
        area_id = parse_area_id(int(parameters["area_id"]))
        now = self._clock()
        ds = check_organisation_certificate(
            _subject_of(parameters, "ds_certificate", "the DS certificate"),
            what=f"area {area_id}'s DS certificate",
            usage=KeyUsage.DIGITAL_SIGNATURE,
            issuing_ca=self._issuing_ca,
            root=self._root,
            now=now,
        )
        ka = check_organisation_certificate(
            _subject_of(parameters, "ka_certificate", "the KA certificate"),
            what=f"area {area_id}'s KA certificate",
            usage=KeyUsage.KEY_AGREEMENT,
            issuing_ca=self._issuing_ca,
            root=self._root,
            now=now,
            entity_id=ds.entity_id,
        )
        for generation in self._store.list_generation_records():
            if generation.entity_id == ds.entity_id:
                raise CertificateRefused(
                    f"entity {ds.entity_id.hex()} is vanilla generation {generation.generation}'s"
                )
        for other in self._store.list_areas():
            if other.area_id != area_id and other.entity_id == ds.entity_id:
                raise CertificateRefused(f"entity {ds.entity_id.hex()} is area {other.area_id}'s DNO")
        return Area(area_id, DNO_AREAS[area_id], ds.entity_id, ds.der, ka.der)

    def _issuer_check(self, parameters: dict[str, Any]) -> None:
        try:
            csr = x509.load_der_x509_csr(_subject_of(parameters, "csr", "the certificate request"))
            valid = csr.is_signature_valid
        except (ValueError, InvalidSignature, UnsupportedAlgorithm):
            valid = False
        if not valid:
            raise InvalidRequest("csr is not a PKCS#10 request whose signature verifies")

    def _enrol(self, request: ApprovalRequest, actor: str, use: ApprovalUse) -> dict[str, Any]:
        if self._issuer is None:
            raise CustodyConflict("this server issues no bench certificates ([enrolment] is not configured)")
        parameters = request.parameters
        bench_id = str(parameters["bench_id"])
        certificate = self._issuer.issue(_subject_of(parameters, "csr", "the certificate request"), bench_id)
        fingerprint = hashlib.sha256(certificate).hexdigest()
        bench = Bench(
            bench_id,
            BenchStatus.ENROLLED,
            frozenset(BenchOperation(o) for o in parameters["operations"]),
            str(parameters["facility"]),
            fingerprint,
        )
        self._store.enrol_bench(bench, actor, use, {"request": request.request_id})
        pem = x509.load_der_x509_certificate(certificate).public_bytes(Encoding.PEM).decode("ascii")
        outcome = {"bench_id": bench_id, "certificate_pem": pem, "certificate_sha256": fingerprint}
        self._store.record_execution_outcome(request.request_id, outcome)
        return outcome

    # -- areas and benches
    def areas(self, officer_id: str) -> list[tuple[Area, list[tuple[Area, datetime, str]]]]:
        """Each registered area with its earlier sets (oldest first)."""
        self.require_officer(officer_id)
        return [(area, self._store.area_history_of(area.area_id)) for area in self._store.list_areas()]

    def area(self, officer_id: str, area_id: int) -> tuple[Area, list[tuple[Area, datetime, str]]]:
        self.require_officer(officer_id)
        area = self._store.get_area(parse_area_id(area_id))
        if area is None:
            raise UnknownArea(f"area {area_id} is not registered")
        return area, self._store.area_history_of(area_id)

    def benches(self, officer_id: str) -> list[Bench]:
        self.require_officer(officer_id)
        return self._store.list_benches()

    def revoke_bench(self, officer_id: str, bench_id: str, reason: str) -> bool:
        """At once (no approval: revoking must never wait); felt by the bench's next call on every replica."""
        self.require_officer(officer_id)
        if not check_free_text(reason, "reason").strip():
            raise InvalidRequest("reason is required: say why the bench is revoked")
        return self._store.revoke_bench_now(
            parse_bench_id(bench_id), reason.strip()[:500], f"officer:{officer_id}"
        )

    def _generation(self, generation: int) -> GenerationRecord:
        record = self._store.get_generation_record(generation)
        if record is None:
            raise UnknownGeneration(f"no vanilla generation {generation}")
        return record


# operation -> (states it may start from, the state it leads to, the audit event)
GENERATION_CHANGES: dict[ApprovalOperation, tuple[tuple[GenerationStatus, ...], GenerationStatus, str]] = {
    ApprovalOperation.ACTIVATE_GENERATION: (
        (GenerationStatus.CERTIFIED, GenerationStatus.SIGNING_ONLY),
        GenerationStatus.ACTIVE,
        "generation.activated",
    ),
    ApprovalOperation.DISABLE_GENERATION: (
        (GenerationStatus.CERTIFIED, GenerationStatus.ACTIVE, GenerationStatus.SIGNING_ONLY),
        GenerationStatus.DISABLED,
        "generation.disabled",
    ),
    ApprovalOperation.REENABLE_GENERATION: (
        (GenerationStatus.DISABLED,),
        GenerationStatus.SIGNING_ONLY,
        "generation.reenabled",
    ),
    ApprovalOperation.SCHEDULE_DESTRUCTION: (
        (GenerationStatus.DISABLED,),
        GenerationStatus.DESTROY_SCHEDULED,
        "generation.destroy-scheduled",
    ),
    ApprovalOperation.CANCEL_DESTRUCTION: (
        (GenerationStatus.DESTROY_SCHEDULED,),
        GenerationStatus.DISABLED,
        "generation.destroy-cancelled",
    ),
}
