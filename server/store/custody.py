"""Key custody records: vanilla generations through their life, two-person control requests, area credential
sets and their history, benches and officers. Every write runs on the group-commit writer in one transaction
with the audit events it causes; an approved request is closed in the transaction of the change it
authorises (so an executed request and its change are never apart).

`CustodyRecords` is mixed into SqlCustodyStore, which provides `_writer`, `_read` and `_invalidate` (drop
cached reference data after a write)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, func, insert, select, update

from vdno.server.domain.errors import (
    ApprovalRefused,
    CustodyConflict,
    UnknownApprovalRequest,
    UnknownArea,
    UnknownGeneration,
)
from vdno.server.domain.values import (
    ALL_BENCH_OPERATIONS,
    ApprovalOperation,
    ApprovalRequest,
    ApprovalStatus,
    ApprovalUse,
    Area,
    AuditEvent,
    Bench,
    BenchOperation,
    BenchStatus,
    GenerationRecord,
    GenerationStatus,
)
from vdno.server.store.schema import (
    approval_grants,
    approval_requests,
    area_history,
    areas,
    benches,
    counters,
    generations,
)

if TYPE_CHECKING:
    from vdno.server.store.group_commit import _GroupCommitWriter

T = TypeVar("T")
_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def _aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything is stored in UTC."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def generation_record(row: Any) -> GenerationRecord:
    created = _aware(row.created_at) or datetime.fromtimestamp(0, UTC)
    return GenerationRecord(
        generation=int(row.generation),
        entity_id=bytes(row.entity_id),
        ds_key_uri=row.ds_key_uri,
        ka_key_uri=row.ka_key_uri,
        status=GenerationStatus(row.status),
        compromised=bool(row.compromised),
        created_at=created,
        ds_certificate=None if row.ds_certificate is None else bytes(row.ds_certificate),
        ka_certificate=None if row.ka_certificate is None else bytes(row.ka_certificate),
        destroy_after=_aware(row.destroy_after),
    )


def bench_record(row: Any) -> Bench:
    operations = frozenset(BenchOperation(o) for o in str(row.operations or "").split(",") if o)
    return Bench(
        row.bench_id,
        BenchStatus(row.status),
        operations,
        row.facility,
        row.certificate_sha256,
    )


def _approval(row: Any, grants: list[str]) -> ApprovalRequest:
    return ApprovalRequest(
        request_id=int(row.request_id),
        operation=ApprovalOperation(row.operation),
        subject=row.subject,
        parameters=json.loads(row.parameters),
        reason=row.reason,
        requested_by=row.requested_by,
        requested_at=_aware(row.requested_at) or datetime.fromtimestamp(0, UTC),
        expires_at=_aware(row.expires_at) or datetime.fromtimestamp(0, UTC),
        status=ApprovalStatus(row.status),
        approvals=tuple(grants),
        approved_at=_aware(row.approved_at),
        execute_by=_aware(row.execute_by),
        closed_at=_aware(row.closed_at),
        closed_by=row.closed_by,
        outcome=None if row.outcome is None else json.loads(row.outcome),
    )


def _read_approval(c: Connection, request_id: int) -> ApprovalRequest | None:
    row = c.execute(select(approval_requests).where(approval_requests.c.request_id == request_id)).first()
    if row is None:
        return None
    grants = c.execute(
        select(approval_grants.c.officer_id)
        .where(approval_grants.c.request_id == request_id)
        .order_by(approval_grants.c.at, approval_grants.c.officer_id)
    ).all()
    return _approval(row, [g.officer_id for g in grants])


def close_approved(
    c: Connection, use: ApprovalUse, operation: ApprovalOperation, subject: str, events: list[AuditEvent]
) -> ApprovalRequest:
    """Inside the change's transaction: the request must be approved, for this operation and subject, and
    within its execution window; it becomes executed. ApprovalRefused otherwise (nothing changes)."""
    request = _read_approval(c, use.request_id)
    if request is None:
        raise UnknownApprovalRequest(f"no approval request {use.request_id}")
    if (request.operation, request.subject) != (operation, subject):
        raise ApprovalRefused(
            f"approval request {use.request_id} is for {request.operation.value} of {request.subject}, "
            f"not {operation.value} of {subject}"
        )
    status = request.effective_status(use.now)
    if status is not ApprovalStatus.APPROVED:
        raise ApprovalRefused(f"approval request {use.request_id} is {status.value}, not approved")
    updated = c.execute(
        update(approval_requests)
        .where(
            approval_requests.c.request_id == use.request_id,
            approval_requests.c.status == ApprovalStatus.APPROVED.value,
        )
        .values(status=ApprovalStatus.EXECUTED.value, closed_at=use.now, closed_by=use.officer_id)
    ).rowcount
    if updated != 1:
        raise ApprovalRefused(f"approval request {use.request_id} was executed or closed meanwhile")
    events.append(
        AuditEvent(
            "approval.executed",
            f"officer:{use.officer_id}",
            f"approval:{use.request_id}",
            {"operation": operation.value, "subject": subject, "approvals": list(request.approvals)},
        )
    )
    return request


class CustodyRecords:
    """The custody part of the store (see module docstring)."""

    _writer: _GroupCommitWriter
    _read: Callable[[Callable[[Connection], Any]], Any]
    _invalidate: Callable[[], None]

    def _write(self, op: Callable[[Connection, list[AuditEvent]], T]) -> T:
        try:
            result: T = self._writer.submit(op)
            return result
        finally:
            self._invalidate()

    # -- generations
    def list_generation_records(self) -> list[GenerationRecord]:
        rows = self._read(lambda c: c.execute(select(generations).order_by(generations.c.generation)).all())
        return [generation_record(r) for r in rows]

    def get_generation_record(self, generation: int) -> GenerationRecord | None:
        row = self._read(
            lambda c: c.execute(select(generations).where(generations.c.generation == generation)).first()
        )
        return None if row is None else generation_record(row)

    def create_generation(self, record: GenerationRecord, key_facts: dict[str, Any], actor: str) -> int:
        """Record a new generation (PENDING) under the next number never used; returns that number. The key
        ceremony's facts (attributes read back from the token) go into the audit log."""

        def op(c: Connection, events: list[AuditEvent]) -> int:
            last = c.execute(select(func.max(generations.c.generation))).scalar_one()
            number = int(last or 0) + 1
            if c.execute(
                select(generations.c.generation).where(generations.c.entity_id == record.entity_id)
            ).first():
                raise CustodyConflict(
                    f"entity id {record.entity_id.hex()} already names a vanilla generation"
                )
            c.execute(
                insert(generations).values(
                    generation=number,
                    entity_id=record.entity_id,
                    ds_key_uri=record.ds_key_uri.replace("{generation}", str(number)),
                    ka_key_uri=record.ka_key_uri.replace("{generation}", str(number)),
                    status=GenerationStatus.PENDING.value,
                    compromised=False,
                    created_at=record.created_at,
                )
            )
            c.execute(insert(counters).values(generation=number, last_value=0))
            events.append(
                AuditEvent(
                    "generation.created",
                    actor,
                    f"generation:{number}",
                    {"entity_id": record.entity_id.hex(), "keys": key_facts},
                )
            )
            return number

        return self._write(op)

    def reserve_generation_number(self) -> int:
        """The number the next created generation will get (keys are labelled with it before it exists)."""
        last = self._read(lambda c: c.execute(select(func.max(generations.c.generation))).scalar_one())
        return int(last or 0) + 1

    def certify_generation(
        self, generation: int, ds_certificate: bytes, ka_certificate: bytes, facts: dict[str, Any], actor: str
    ) -> GenerationRecord:
        """PENDING -> CERTIFIED with its checked SMKI certificates."""

        def op(c: Connection, events: list[AuditEvent]) -> GenerationRecord:
            updated = c.execute(
                update(generations)
                .where(
                    generations.c.generation == generation,
                    generations.c.status == GenerationStatus.PENDING.value,
                )
                .values(
                    ds_certificate=ds_certificate,
                    ka_certificate=ka_certificate,
                    status=GenerationStatus.CERTIFIED.value,
                )
            ).rowcount
            if updated != 1:
                raise CustodyConflict(f"generation {generation} is not pending certification")
            events.append(AuditEvent("certificate.imported", actor, f"generation:{generation}", facts))
            return self._generation_in(c, generation)

        return self._write(op)

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
    ) -> GenerationRecord:
        """Move a generation from one of `allowed` to `to` (activation also moves the active one, if any, to
        SIGNING_ONLY), closing `approval` in the same transaction. CustodyConflict if it is not in an allowed
        state (or is compromised and `to` may sign)."""

        def op(c: Connection, events: list[AuditEvent]) -> GenerationRecord:
            subject = f"generation:{generation}"
            if approval is not None:
                assert operation is not None
                close_approved(c, approval, operation, subject, events)
            current = self._generation_in(c, generation)
            if current.status not in allowed:
                names = ", ".join(s.value for s in allowed)
                raise CustodyConflict(f"generation {generation} is {current.status.value}, not {names}")
            if to.signs and current.compromised:
                raise CustodyConflict(
                    f"generation {generation} is marked compromised: it may never sign again"
                )
            if to is GenerationStatus.ACTIVE:
                previous = c.execute(
                    select(generations.c.generation).where(
                        generations.c.status == GenerationStatus.ACTIVE.value,
                        generations.c.generation != generation,
                    )
                ).all()
                for row in previous:
                    c.execute(
                        update(generations)
                        .where(generations.c.generation == row.generation)
                        .values(status=GenerationStatus.SIGNING_ONLY.value)
                    )
                    events.append(
                        AuditEvent(
                            "generation.signing-only",
                            actor,
                            f"generation:{row.generation}",
                            {"because": f"generation {generation} was activated"},
                        )
                    )
            c.execute(
                update(generations)
                .where(generations.c.generation == generation)
                .values(status=to.value, **(values or {}))
            )
            events.append(AuditEvent(event, actor, subject, details))
            return self._generation_in(c, generation)

        return self._write(op)

    def mark_compromised(self, generation: int, reason: str, actor: str) -> GenerationRecord:
        """Disable at once (no approval), flagged compromised for good."""

        def op(c: Connection, events: list[AuditEvent]) -> GenerationRecord:
            current = self._generation_in(c, generation)
            if current.status is GenerationStatus.DESTROYED:
                raise CustodyConflict(f"generation {generation} is destroyed")
            status = (
                current.status
                if current.status in (GenerationStatus.DISABLED, GenerationStatus.DESTROY_SCHEDULED)
                else GenerationStatus.DISABLED
            )
            c.execute(
                update(generations)
                .where(generations.c.generation == generation)
                .values(compromised=True, status=status.value)
            )
            events.append(
                AuditEvent(
                    "generation.compromised",
                    actor,
                    f"generation:{generation}",
                    {"reason": reason, "was": current.status.value, "now": status.value},
                )
            )
            return self._generation_in(c, generation)

        return self._write(op)

    def record_destroyed(self, generation: int, now: datetime, facts: dict[str, Any], actor: str) -> None:
        """DESTROY_SCHEDULED (due) -> DESTROYED, once its keys are gone from the token."""

        def op(c: Connection, events: list[AuditEvent]) -> None:
            updated = c.execute(
                update(generations)
                .where(
                    generations.c.generation == generation,
                    generations.c.status == GenerationStatus.DESTROY_SCHEDULED.value,
                )
                .values(status=GenerationStatus.DESTROYED.value, destroyed_at=now)
            ).rowcount
            if updated != 1:
                raise CustodyConflict(f"generation {generation} is not scheduled for destruction")
            events.append(AuditEvent("generation.destroyed", actor, f"generation:{generation}", facts))

        self._write(op)

    @staticmethod
    def _generation_in(c: Connection, generation: int) -> GenerationRecord:
        row = c.execute(select(generations).where(generations.c.generation == generation)).first()
        if row is None:
            raise UnknownGeneration(f"no vanilla generation {generation}")
        return generation_record(row)

    # -- approvals
    def create_approval_request(self, request: ApprovalRequest) -> ApprovalRequest:
        def op(c: Connection, events: list[AuditEvent]) -> ApprovalRequest:
            request_id = c.execute(
                insert(approval_requests)
                .values(
                    operation=request.operation.value,
                    subject=request.subject,
                    parameters=_JSON.encode(request.parameters),
                    reason=request.reason,
                    requested_by=request.requested_by,
                    requested_at=request.requested_at,
                    expires_at=request.expires_at,
                    status=ApprovalStatus.PENDING.value,
                )
                .returning(approval_requests.c.request_id)
            ).scalar_one()
            events.append(
                AuditEvent(
                    "approval.requested",
                    f"officer:{request.requested_by}",
                    f"approval:{request_id}",
                    {
                        "operation": request.operation.value,
                        "subject": request.subject,
                        "reason": request.reason,
                        "parameters": _summary(request.parameters),
                    },
                )
            )
            return replace(request, request_id=int(request_id))

        return self._write(op)

    def get_approval_request(self, request_id: int) -> ApprovalRequest | None:
        result: ApprovalRequest | None = self._read(lambda c: _read_approval(c, request_id))
        return result

    def list_approval_requests(self, statuses: tuple[ApprovalStatus, ...]) -> list[ApprovalRequest]:
        def read(c: Connection) -> list[ApprovalRequest]:
            query = select(approval_requests.c.request_id).order_by(approval_requests.c.request_id)
            if statuses:
                query = query.where(approval_requests.c.status.in_([s.value for s in statuses]))
            found = [_read_approval(c, int(r.request_id)) for r in c.execute(query).all()]
            return [r for r in found if r is not None]

        result: list[ApprovalRequest] = self._read(read)
        return result

    def grant_approval(
        self, request_id: int, officer_id: str, now: datetime, required: int, window_end: datetime
    ) -> ApprovalRequest:
        """Add the officer's approval to a pending request (never the requester's, never twice); once it has
        `required` approvals it becomes APPROVED, executable until `window_end`."""

        def op(c: Connection, events: list[AuditEvent]) -> ApprovalRequest:
            request = _read_approval(c, request_id)
            if request is None:
                raise UnknownApprovalRequest(f"no approval request {request_id}")
            status = request.effective_status(now)
            if status is not ApprovalStatus.PENDING:
                raise ApprovalRefused(
                    f"approval request {request_id} is {status.value}: it takes no approvals"
                )
            if officer_id == request.requested_by:
                raise ApprovalRefused(f"officer {officer_id!r} requested {request_id} and may not approve it")
            if officer_id in request.approvals:
                raise ApprovalRefused(f"officer {officer_id!r} has already approved request {request_id}")
            c.execute(insert(approval_grants).values(request_id=request_id, officer_id=officer_id, at=now))
            events.append(
                AuditEvent(
                    "approval.granted",
                    f"officer:{officer_id}",
                    f"approval:{request_id}",
                    {"operation": request.operation.value, "subject": request.subject},
                )
            )
            if len(request.approvals) + 1 >= required:
                c.execute(
                    update(approval_requests)
                    .where(approval_requests.c.request_id == request_id)
                    .values(status=ApprovalStatus.APPROVED.value, approved_at=now, execute_by=window_end)
                )
                events.append(
                    AuditEvent(
                        "approval.approved",
                        f"officer:{officer_id}",
                        f"approval:{request_id}",
                        {"execute_by": window_end.isoformat()},
                    )
                )
            found = _read_approval(c, request_id)
            assert found is not None
            return found

        return self._write(op)

    def reject_approval(self, request_id: int, officer_id: str, now: datetime, why: str) -> ApprovalRequest:
        def op(c: Connection, events: list[AuditEvent]) -> ApprovalRequest:
            request = _read_approval(c, request_id)
            if request is None:
                raise UnknownApprovalRequest(f"no approval request {request_id}")
            status = request.effective_status(now)
            if status not in (ApprovalStatus.PENDING, ApprovalStatus.APPROVED):
                raise ApprovalRefused(f"approval request {request_id} is {status.value}: nothing to reject")
            c.execute(
                update(approval_requests)
                .where(approval_requests.c.request_id == request_id)
                .values(
                    status=ApprovalStatus.REJECTED.value,
                    closed_at=now,
                    closed_by=officer_id,
                    outcome=_JSON.encode({"rejected": why}),
                )
            )
            events.append(
                AuditEvent(
                    "approval.rejected", f"officer:{officer_id}", f"approval:{request_id}", {"why": why}
                )
            )
            found = _read_approval(c, request_id)
            assert found is not None
            return found

        return self._write(op)

    def record_execution_outcome(self, request_id: int, outcome: dict[str, Any]) -> None:
        """What an executed request produced (e.g. an enrolled bench's certificate), for its requester."""

        def op(c: Connection, events: list[AuditEvent]) -> None:
            c.execute(
                update(approval_requests)
                .where(approval_requests.c.request_id == request_id)
                .values(outcome=_JSON.encode(outcome))
            )

        self._write(op)

    # -- areas
    def replace_area(self, area: Area, actor: str, approval: ApprovalUse) -> Area | None:
        """Register or replace an area's credential set (the previous one goes to the history); returns the
        previous set."""

        def op(c: Connection, events: list[AuditEvent]) -> Area | None:
            close_approved(c, approval, ApprovalOperation.REPLACE_AREA, f"area:{area.area_id}", events)
            row = c.execute(select(areas).where(areas.c.area_id == area.area_id)).first()
            previous = None
            values = {
                "name": area.name,
                "entity_id": area.entity_id,
                "ds_certificate": area.ds_certificate,
                "ka_certificate": area.ka_certificate,
            }
            if row is not None:
                previous = Area(
                    row.area_id,
                    row.name,
                    bytes(row.entity_id),
                    bytes(row.ds_certificate),
                    bytes(row.ka_certificate),
                )
                c.execute(
                    insert(area_history).values(
                        area_id=area.area_id,
                        name=previous.name,
                        entity_id=previous.entity_id,
                        ds_certificate=previous.ds_certificate,
                        ka_certificate=previous.ka_certificate,
                        replaced_at=approval.now,
                        replaced_by=actor,
                    )
                )
                c.execute(update(areas).where(areas.c.area_id == area.area_id).values(**values))
            else:
                c.execute(insert(areas).values(area_id=area.area_id, **values))
            events.append(
                AuditEvent(
                    "area.replaced" if previous is not None else "area.registered",
                    actor,
                    f"area:{area.area_id}",
                    {
                        "name": area.name,
                        "entity_id": area.entity_id.hex(),
                        "previous_entity_id": None if previous is None else previous.entity_id.hex(),
                    },
                )
            )
            return previous

        return self._write(op)

    def area_history_of(self, area_id: int) -> list[tuple[Area, datetime, str]]:
        """Earlier sets of an area, oldest first: (set, replaced at, replaced by)."""
        rows = self._read(
            lambda c: c.execute(
                select(area_history)
                .where(area_history.c.area_id == area_id)
                .order_by(area_history.c.entry_id)
            ).all()
        )
        out = []
        for r in rows:
            old = Area(
                r.area_id, r.name, bytes(r.entity_id), bytes(r.ds_certificate), bytes(r.ka_certificate)
            )
            out.append((old, _aware(r.replaced_at) or datetime.fromtimestamp(0, UTC), r.replaced_by))
        if (
            not out
            and self._read(lambda c: c.execute(select(areas).where(areas.c.area_id == area_id)).first())
            is None
        ):
            raise UnknownArea(f"area {area_id} is not registered")
        return out

    # -- benches
    def read_bench(self, bench_id: str) -> Bench | None:
        """The bench as the database says now (no cache: a revocation is felt at once)."""
        row = self._read(lambda c: c.execute(select(benches).where(benches.c.bench_id == bench_id)).first())
        return None if row is None else bench_record(row)

    def list_benches(self) -> list[Bench]:
        rows = self._read(lambda c: c.execute(select(benches).order_by(benches.c.bench_id)).all())
        return [bench_record(r) for r in rows]

    def enrol_bench(
        self,
        bench: Bench,
        actor: str,
        approval: ApprovalUse | None,
        facts: dict[str, Any],
    ) -> None:
        """Enrol a bench (or re-enrol a revoked one with a new certificate), with its facility, operations and
        pinned certificate. CustodyConflict if it is enrolled already."""

        def op(c: Connection, events: list[AuditEvent]) -> None:
            if approval is not None:
                close_approved(c, approval, ApprovalOperation.ENROL_BENCH, f"bench:{bench.bench_id}", events)
            row = c.execute(select(benches.c.status).where(benches.c.bench_id == bench.bench_id)).first()
            now = approval.now if approval is not None else datetime.now(UTC)
            values = {
                "status": BenchStatus.ENROLLED.value,
                "changed_at": now,
                "facility": bench.facility,
                "operations": ",".join(sorted(o.value for o in bench.operations)),
                "certificate_sha256": bench.certificate_sha256,
            }
            if row is None:
                c.execute(insert(benches).values(bench_id=bench.bench_id, **values))
            elif row.status == BenchStatus.ENROLLED.value:
                raise CustodyConflict(f"bench {bench.bench_id!r} is enrolled already")
            else:
                c.execute(update(benches).where(benches.c.bench_id == bench.bench_id).values(**values))
            events.append(
                AuditEvent(
                    "bench.enrolled",
                    actor,
                    f"bench:{bench.bench_id}",
                    {
                        "facility": bench.facility,
                        "operations": sorted(o.value for o in bench.operations),
                        "certificate_sha256": bench.certificate_sha256,
                        **facts,
                    },
                )
            )

        self._write(op)

    def revoke_bench_now(self, bench_id: str, reason: str, actor: str) -> bool:
        """Revoke (False when it was revoked already); felt by the next call on every replica."""

        def op(c: Connection, events: list[AuditEvent]) -> bool:
            row = c.execute(select(benches.c.status).where(benches.c.bench_id == bench_id)).first()
            if row is None:
                raise CustodyConflict(f"bench {bench_id!r} is not enrolled")
            if row.status == BenchStatus.REVOKED.value:
                return False
            c.execute(
                update(benches)
                .where(benches.c.bench_id == bench_id)
                .values(status=BenchStatus.REVOKED.value, changed_at=datetime.now(UTC))
            )
            events.append(AuditEvent("bench.revoked", actor, f"bench:{bench_id}", {"reason": reason}))
            return True

        return self._write(op)


def _summary(parameters: dict[str, Any]) -> dict[str, Any]:
    """Parameters for the audit log: large values (certificates, CSRs) by size only."""
    return {
        k: (f"<{len(v)} characters>" if isinstance(v, str) and len(v) > 200 else v)
        for k, v in parameters.items()
    }


__all__ = ["ALL_BENCH_OPERATIONS", "CustodyRecords", "bench_record", "close_approved", "generation_record"]
