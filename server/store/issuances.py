"""Issuance records: the statements every issuance runs (_HotPathSql), the mapping of an issuances row, and
the CustodyStore port's issuance writes and reads. The pipeline's steps (a draft recorded under its
counter, signed bytes stored, a failure marked) run in one transaction per step on the pipeline's writer;
outcomes, cancellations and abandoned attempts on the group-commit writer, each in the transaction of the
security events it causes (audit log).

`IssuanceRecords` is mixed into SqlCustodyStore, which provides `_writer` and `_step_writer` (the
group-commit writers, server/store/group_commit.py: with a thread, and the pipeline's, without),
`_hot` (the statements below for its dialect), `_driver_integrity_error` (the driver's IntegrityError)
and `_read` (reads that turn database failures into StoreUnavailable)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, text, update
from sqlalchemy.exc import IntegrityError

from vdno.server.domain.errors import (
    BenchNotEnrolled,
    CommandCancelled,
    CustodyConflict,
    DeviceNotVanilla,
    KeyNotInCustody,
    OutstandingCommand,
    StoreUnavailable,
    UnknownIssuance,
    VdnoError,
)
from vdno.server.domain.values import (
    AuditEvent,
    BenchStatus,
    Cancellation,
    CustodyState,
    IssuanceDraft,
    IssuanceRecord,
    IssuanceStatus,
    IssuanceStep,
    RecordedOutcome,
    custody_phrase,
)
from vdno.server.store.fleet import set_custody
from vdno.server.store.group_commit import WriteOp, _GroupCommitWriter
from vdno.server.store.schema import CANCELLED_ISSUANCE, OUTSTANDING_ISSUANCE, devices, issuances


def _now() -> datetime:
    return datetime.now(UTC)


class _HotPathSql:
    """The statements every issuance runs, as plain SQL prepared once for the dialect (named parameters,
    adapted to the driver's style). SQLAlchemy Core statement building costs more than the commit itself
    at these rates; everything else in this module uses Core."""

    def __init__(self, engine: Engine) -> None:
        pg = engine.dialect.name == "postgresql"

        def q(template: str) -> str:
            return re.sub(r":(\w+)", r"%(\1)s", template) if pg else template

        greatest = "GREATEST" if pg else "MAX"
        # SQLite: the new row's id is the cursor's lastrowid (issuance_id is the rowid): no row to step to.
        self.record_returns_id = pg
        # The counter is allocated only while the bench is enrolled, the generation may sign and the records
        # do not show the meter elsewhere than on that generation, read in the transaction that records the
        # issuance: a revocation, a compromise or an outcome is felt at once, by every replica, whatever a
        # request's earlier (cached) checks or its reading of the meter saw. (A meter the records have never
        # seen has no row.) The INSERT that follows fails while the meter has an outstanding issuance
        # (uq_issuance_outstanding_device): together, no extra statement per issuance.
        self.allocate = q(
            f"UPDATE counters SET last_value = {greatest}(last_value + 1, :floor) "  # noqa: S608 (constant)
            "WHERE generation = :generation "
            "AND EXISTS (SELECT 1 FROM benches WHERE bench_id = :bench_id AND status = 'enrolled') "
            "AND EXISTS (SELECT 1 FROM generations g WHERE g.generation = :generation "
            "AND g.status IN ('active', 'signing-only') AND NOT g.compromised) "
            "AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.device_id = :device_id "
            "AND d.custody_state IS NOT NULL AND (d.custody_state <> 'vanilla' OR d.generation IS NULL "
            "OR d.generation <> :generation)) "
            "RETURNING last_value"
        )
        self.bench_status = q("SELECT status FROM benches WHERE bench_id = :bench_id")
        # PostgreSQL: the counter rows a step allocates from, locked as the UPDATE above locks them, in one
        # order (SQLite: the writer holds the database's write lock already).
        self.lock_counters = (
            q(
                "SELECT generation FROM counters WHERE generation = ANY(:generations) "
                "ORDER BY generation FOR NO KEY UPDATE"
            )
            if pg
            else None
        )
        columns = (
            "bench_id, request_id, request_fingerprint, device_id, area_id, generation, counter, "
            "device_certificate, status, created_at, target_generation"
        )
        values = (
            ":bench_id, :request_id, :fingerprint, :device_id, :area_id, :generation, :counter, "
            ":device_certificate, :status, :now, :target_generation"
        )
        returning = " RETURNING issuance_id" if pg else ""
        self.record = q(f"INSERT INTO issuances ({columns}) VALUES ({values}){returning}")  # noqa: S608 (constant)
        self.complete = q(
            "UPDATE issuances SET status = :signed, signed_command = :command, signed_at = :now "
            "WHERE issuance_id = :issuance_id AND status IN (:recorded, :failed)"
        )


def _cursor(c: Connection) -> Any:
    """The driver's cursor on the writer's connection, inside its current transaction."""
    return c.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


def _aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes; everything is stored in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _issuance(row: Any) -> IssuanceRecord:
    return IssuanceRecord(
        issuance_id=row.issuance_id,
        bench_id=row.bench_id,
        request_id=row.request_id,
        request_fingerprint=row.request_fingerprint,
        device_id=bytes(row.device_id),
        area_id=row.area_id,
        generation=row.generation,
        counter=int(row.counter),
        device_certificate=bytes(row.device_certificate),
        status=IssuanceStatus(row.status),
        created_at=_aware(row.created_at),
        signed_command=bytes(row.signed_command) if row.signed_command is not None else None,
        outcome_response=bytes(row.outcome_response) if row.outcome_response is not None else None,
        target_generation=row.target_generation,
        cancelled_by=row.cancelled_by,
        cancel_reason=row.cancel_reason,
    )


class IssuanceRecords:
    """The issuance part of the store (see module docstring)."""

    _writer: _GroupCommitWriter
    _step_writer: _GroupCommitWriter
    _hot: _HotPathSql
    _driver_integrity_error: type[Exception]
    _read: Callable[[Callable[[Connection], Any]], Any]

    # -- reads
    def find_issuance(self, bench_id: str, request_id: str) -> IssuanceRecord | None:
        row = self._read(
            lambda c: c.execute(
                select(issuances).where(
                    issuances.c.bench_id == bench_id, issuances.c.request_id == request_id
                )
            ).first()
        )
        return None if row is None else _issuance(row)

    def list_issuances(self) -> list[IssuanceRecord]:
        rows = self._read(lambda c: c.execute(select(issuances).order_by(issuances.c.issuance_id)).all())
        return [_issuance(r) for r in rows]

    # -- issuance
    def write_issuance_step(
        self,
        signed: Sequence[tuple[IssuanceRecord, bytes]],
        failed: Sequence[tuple[int, str]],
        drafts: Sequence[tuple[IssuanceDraft, int]],
    ) -> IssuanceStep:
        ops: list[WriteOp[Any]] = [self._complete_op(record, command) for record, command in signed]
        ops += [self._fail_op(issuance_id, reason) for issuance_id, reason in failed]
        ops += [self._begin_op(draft, floor) for draft, floor in drafts]
        outcomes = self._step_writer.run_group(ops, self._counter_lock(drafts))
        stored = outcomes[: len(signed)]
        begun = outcomes[len(signed) + len(failed) :]
        for i, (record, _) in enumerate(signed):
            if self._conflict(stored[i]):  # finishing a failed attempt while another command holds the meter
                stored[i] = self._outstanding_refusal(record.device_id, stored[i])
        for i, (draft, _) in enumerate(drafts):
            outcome = begun[i]
            if not isinstance(outcome, VdnoError) or (
                isinstance(outcome, StoreUnavailable) and not self._conflict(outcome)
            ):
                continue
            # Refused: the request id may be recorded already (a retry, or a twin in another process), which
            # is answered from its record whatever the refusal (the meter's records may have moved on since,
            # by this very command). Else a conflict is the meter's outstanding command.
            found = self.find_issuance(draft.bench_id, draft.request_id)
            if found is not None:
                begun[i] = (found, False)
            elif self._conflict(outcome):
                begun[i] = self._outstanding_refusal(draft.device_id, outcome)
        return IssuanceStep(stored=tuple(stored), begun=tuple(begun))

    def _counter_lock(
        self, drafts: Sequence[tuple[IssuanceDraft, int]]
    ) -> Callable[[Connection], None] | None:
        """PostgreSQL: a step that allocates counters locks their rows first, before any other lock, in
        generation order, in the step's own transaction (not an op's SAVEPOINT). Replicas then wait for
        one another only at that point: never while one holds an issuance row (storing signed bytes,
        marking a failure) that the other's twin of a request id must wait for in the unique check, nor
        with the generations the other way round. And a twin's rolled-back op cannot release the lock
        halfway through the step."""
        statement = self._hot.lock_counters
        wanted = sorted({draft.generation for draft, _ in drafts})
        if statement is None or not wanted:
            return None

        def lock(c: Connection) -> None:
            cur = _cursor(c)
            try:
                cur.execute(statement, {"generations": wanted})
            finally:
                cur.close()

        return lock

    def _conflict(self, outcome: object) -> bool:
        return isinstance(outcome, StoreUnavailable) and isinstance(
            outcome.__cause__, (IntegrityError, self._driver_integrity_error)
        )

    def _outstanding_refusal(self, device_id: bytes, error: VdnoError) -> VdnoError:
        """OutstandingCommand naming the meter's outstanding issuance; `error` if there is none (any more)."""
        outstanding = self.outstanding_issuance(device_id)
        if outstanding is None:
            return error
        return OutstandingCommand(
            f"device {device_id.hex()} has an outstanding command: {outstanding.describe()}; its outcome "
            "must be reported (or the command cancelled) first"
        )

    def _begin_op(self, draft: IssuanceDraft, counter_floor: int) -> WriteOp[tuple[IssuanceRecord, bool]]:
        hot = self._hot

        def op(c: Connection, events: list[AuditEvent]) -> tuple[IssuanceRecord, bool]:
            # A request id already recorded fails the insert (unique bench, request id): the op fails,
            # under a SAVEPOINT nothing of it is kept, and write_issuance_step returns the existing record.
            cur = _cursor(c)
            try:
                cur.execute(
                    hot.allocate,
                    {
                        "floor": counter_floor,
                        "generation": draft.generation,
                        "bench_id": draft.bench_id,
                        "device_id": draft.device_id,
                    },
                )
                allocated = cur.fetchone()
                if allocated is None:
                    raise self._refusal(c, draft)
                counter = int(allocated[0])
                now = _now()
                cur.execute(
                    hot.record,
                    {
                        "bench_id": draft.bench_id,
                        "request_id": draft.request_id,
                        "fingerprint": draft.request_fingerprint,
                        "device_id": draft.device_id,
                        "area_id": draft.area_id,
                        "generation": draft.generation,
                        "counter": counter,
                        "device_certificate": draft.device_certificate,
                        "status": IssuanceStatus.RECORDED.value,
                        "now": now,
                        "target_generation": draft.target_generation,
                    },
                )
                issuance_id = cur.fetchone()[0] if hot.record_returns_id else cur.lastrowid
            finally:
                cur.close()
            events.append(
                AuditEvent(
                    "command.recorded",
                    f"bench:{draft.bench_id}",
                    f"issuance:{issuance_id}",
                    {
                        "device": draft.device_id.hex(),
                        "area": draft.area_id,
                        "generation": draft.generation,
                        "target_generation": draft.target_generation,
                        "counter": counter,
                        "request_id": draft.request_id,
                    },
                ),
            )
            return IssuanceRecord(
                int(issuance_id),
                draft.bench_id,
                draft.request_id,
                draft.request_fingerprint,
                draft.device_id,
                draft.area_id,
                draft.generation,
                counter,
                draft.device_certificate,
                IssuanceStatus.RECORDED,
                now,
                target_generation=draft.target_generation,
            ), True

        return op

    def _refusal(self, c: Connection, draft: IssuanceDraft) -> VdnoError:
        """Why the counter was not allocated (read in the same transaction)."""
        cur = _cursor(c)
        try:
            cur.execute(self._hot.bench_status, {"bench_id": draft.bench_id})
            bench = cur.fetchone()
        finally:
            cur.close()
        if bench is None or bench[0] != BenchStatus.ENROLLED.value:
            return BenchNotEnrolled(f"bench {draft.bench_id!r} is not enrolled or has been revoked")
        device = c.execute(
            select(devices.c.custody_state, devices.c.area_id, devices.c.generation).where(
                devices.c.device_id == draft.device_id
            )
        ).first()
        if (
            device is not None
            and device.custody_state is not None
            and (device.custody_state != CustodyState.VANILLA.value or device.generation != draft.generation)
        ):
            state = CustodyState(device.custody_state)
            where = custody_phrase(state, device.area_id, device.generation)
            error = (
                OutstandingCommand
                if state in (CustodyState.HAND_IN_ORDERED, CustodyState.HAND_IN_AUTHORISED)
                else DeviceNotVanilla
            )
            return error(
                f"the custodian's records show device {draft.device_id.hex()} {where}, not on vanilla "
                f"generation {draft.generation} as its reading says: read the meter again"
            )
        return KeyNotInCustody(f"vanilla generation {draft.generation} may no longer sign")

    def _complete_op(self, record: IssuanceRecord, signed_command: bytes) -> WriteOp[IssuanceRecord]:
        hot = self._hot

        def op(c: Connection, events: list[AuditEvent]) -> IssuanceRecord:
            cur = _cursor(c)
            try:
                cur.execute(
                    hot.complete,
                    {
                        "signed": IssuanceStatus.SIGNED.value,
                        "command": signed_command,
                        "now": _now(),
                        "issuance_id": record.issuance_id,
                        "recorded": IssuanceStatus.RECORDED.value,
                        "failed": IssuanceStatus.FAILED.value,
                    },
                )
                updated = cur.rowcount
            finally:
                cur.close()
            if updated != 1:
                # Another attempt (a retry in another process, after this one looked abandoned) stored its
                # signed bytes first: those are the ones released, this signature is dropped.
                query = select(issuances).where(issuances.c.issuance_id == record.issuance_id)
                row = c.execute(query).first()
                if row is not None and row.status == IssuanceStatus.CANCELLED.value:
                    raise CommandCancelled(
                        f"request {record.request_id!r} was cancelled by {row.cancelled_by}: "
                        f"{row.cancel_reason}"
                    )
                if row is not None and row.signed_command is not None:
                    return _issuance(row)
                raise UnknownIssuance(f"issuance {record.issuance_id} is not awaiting a signature")
            events.append(
                AuditEvent(
                    "command.issued",
                    f"bench:{record.bench_id}",
                    f"issuance:{record.issuance_id}",
                    {"counter": record.counter, "sha256": hashlib.sha256(signed_command).hexdigest()},
                ),
            )
            return replace(record, status=IssuanceStatus.SIGNED, signed_command=signed_command)

        return op

    def _fail_op(self, issuance_id: int, reason: str) -> WriteOp[None]:
        def op(c: Connection, events: list[AuditEvent]) -> None:
            c.execute(
                update(issuances)
                .where(
                    issuances.c.issuance_id == issuance_id,
                    issuances.c.status == IssuanceStatus.RECORDED.value,
                )
                .values(status=IssuanceStatus.FAILED.value, failure=reason)
            )
            events.append(
                AuditEvent("command.failed", "service", f"issuance:{issuance_id}", {"reason": reason})
            )

        return op

    def record_outcome(self, issuance_id: int, outcome: RecordedOutcome, response: bytes, actor: str) -> bool:
        """Record the verified outcome once (False when one was recorded meanwhile, and nothing changes).
        The device's custody follows `outcome.custody` only while the records still show it on the
        generation that signed (a command applies only from there): an outcome reported after the records
        moved on (a cancelled command reported late) is recorded on the issuance and audited, and the
        device's records are left as they are."""

        def op(c: Connection, events: list[AuditEvent]) -> bool:
            row = c.execute(
                select(
                    issuances.c.device_id,
                    issuances.c.generation,
                    issuances.c.target_generation,
                    issuances.c.status,
                ).where(issuances.c.issuance_id == issuance_id)
            ).first()
            if row is None:
                raise UnknownIssuance(f"no issuance {issuance_id}")
            now = _now()
            updated = c.execute(
                update(issuances)
                .where(issuances.c.issuance_id == issuance_id, issuances.c.outcome_response.is_(None))
                .values(status=outcome.status.value, outcome_response=response, outcome_at=now)
            ).rowcount
            if updated != 1:
                return False
            device_id = bytes(row.device_id)
            reference = f"issuance:{issuance_id}"
            kind = "rotation" if row.target_generation is not None else "hand-out"
            applied = outcome.status is IssuanceStatus.APPLIED
            device = c.execute(
                select(devices.c.custody_state, devices.c.generation).where(devices.c.device_id == device_id)
            ).first()
            moved_on = (
                device is not None
                and device.custody_state is not None
                and (
                    device.custody_state != CustodyState.VANILLA.value or device.generation != row.generation
                )
            )
            custody = "unchanged" if moved_on or outcome.custody is None else outcome.custody.value
            if custody != "unchanged":
                assert outcome.custody is not None
                set_custody(
                    c, device_id, outcome.custody, area_id=outcome.area_id, generation=outcome.generation,
                    event=f"{kind}-{'applied' if applied else 'rejected'}", reference=reference, actor=actor,
                    at=now, cells=(outcome.no_ds, outcome.no_ka),
                )  # fmt: skip
                c.execute(
                    update(devices)
                    .where(devices.c.device_id == device_id)
                    .values(last_issuance_id=issuance_id)
                )
            events.append(
                AuditEvent(
                    "outcome.reported",
                    actor,
                    reference,
                    {
                        "status": outcome.status.value,
                        "cells": [list(s) for s in outcome.cell_statuses],
                        "evidence": outcome.evidence,
                        "was": row.status,
                        "custody": custody,
                    },
                ),
            )
            return True

        return bool(self._writer.submit(op))

    def get_issuance(self, issuance_id: int) -> IssuanceRecord | None:
        row = self._read(
            lambda c: c.execute(select(issuances).where(issuances.c.issuance_id == issuance_id)).first()
        )
        return None if row is None else _issuance(row)

    def outstanding_issuance(self, device_id: bytes) -> IssuanceRecord | None:
        """The meter's recorded or signed, unreported issuance, if any (at most one: the index says so)."""
        row = self._read(
            lambda c: c.execute(
                select(issuances).where(issuances.c.device_id == device_id, text(OUTSTANDING_ISSUANCE))
            ).first()
        )
        return None if row is None else _issuance(row)

    def unreported_commands(self, device_id: bytes) -> list[IssuanceRecord]:
        """The meter's released commands without an outcome, newest first: the outstanding one (signed) and
        cancelled ones that a meter may still have applied."""

        def read(c: Connection) -> list[Any]:
            rows = list(
                c.execute(
                    select(issuances).where(issuances.c.device_id == device_id, text(OUTSTANDING_ISSUANCE))
                ).all()
            )
            rows += c.execute(
                select(issuances).where(issuances.c.device_id == device_id, text(CANCELLED_ISSUANCE))
            ).all()
            return rows

        records = [_issuance(r) for r in self._read(read)]
        return sorted(
            (r for r in records if r.signed_command is not None and r.outcome_response is None),
            key=lambda r: r.issuance_id,
            reverse=True,
        )

    def fail_abandoned_issuances(self, recorded_before: datetime) -> list[int]:
        """Mark FAILED every issuance still RECORDED that was recorded before `recorded_before` (its attempt
        died: nothing of it was released, since signed bytes are stored before release); audited. A retry of
        the request then finishes it under its recorded counter. Returns their ids."""

        # Read first (through the outstanding index: a handful of rows), write only when there is any.
        query = select(issuances.c.issuance_id).where(
            text(OUTSTANDING_ISSUANCE),
            issuances.c.status == IssuanceStatus.RECORDED.value,
            issuances.c.created_at < recorded_before,
        )
        if not self._read(lambda c: c.execute(query).first()):
            return []

        def op(c: Connection, events: list[AuditEvent]) -> list[int]:
            ids = [int(r.issuance_id) for r in c.execute(query).all()]
            reason = "attempt abandoned (its process stopped before signing it)"
            for issuance_id in ids:
                self._fail_op(issuance_id, reason)(c, events)
            return ids

        result: list[int] = self._writer.submit(op)
        return result

    def cancel_issuance(
        self, issuance_id: int, cancellation: Cancellation, bench_id: str | None = None
    ) -> IssuanceRecord:
        """Withdraw a command that has no outcome (RECORDED, SIGNED or FAILED -> CANCELLED); audited as
        command.cancelled, saying whether its signed bytes had been released. With `bench_id`, only that
        bench's issuance (UnknownIssuance otherwise). Cancelling a cancelled command changes nothing."""

        def op(c: Connection, events: list[AuditEvent]) -> IssuanceRecord:
            row = c.execute(select(issuances).where(issuances.c.issuance_id == issuance_id)).first()
            if row is None or (bench_id is not None and row.bench_id != bench_id):
                raise UnknownIssuance(f"no issuance {issuance_id}" if bench_id is None else "no such request")
            record = _issuance(row)
            if record.status is IssuanceStatus.CANCELLED:
                return record
            if record.status in (IssuanceStatus.APPLIED, IssuanceStatus.REJECTED):
                raise CustodyConflict(
                    f"{record.describe()} has its outcome recorded: there is nothing to cancel"
                )
            now = _now()
            c.execute(
                update(issuances)
                .where(issuances.c.issuance_id == issuance_id, issuances.c.status == record.status.value)
                .values(
                    status=IssuanceStatus.CANCELLED.value,
                    cancelled_at=now,
                    cancelled_by=cancellation.actor,
                    cancel_reason=cancellation.reason,
                )
            )
            events.append(
                AuditEvent(
                    "command.cancelled",
                    cancellation.actor,
                    f"issuance:{issuance_id}",
                    {
                        "device": record.device_id.hex(),
                        "bench": record.bench_id,
                        "request_id": record.request_id,
                        "was": record.status.value,
                        "released": record.signed_command is not None,
                        "reason": cancellation.reason,
                    },
                )
            )
            return replace(
                record,
                status=IssuanceStatus.CANCELLED,
                cancelled_by=cancellation.actor,
                cancel_reason=cancellation.reason,
            )

        result: IssuanceRecord = self._writer.submit(op)
        return result
