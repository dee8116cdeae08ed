"""Hand-in orders and the fleet's custody records (the HandInStore port's writes and reads).

Every write runs on the store's group-commit writer, in one transaction with the device's history rows and
the security events it causes (audit log). `HandInRecords` is mixed into SqlCustodyStore, which provides
`_writer` (writes) and `_read` (reads that turn database failures into StoreUnavailable)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite

from vdno.server.domain.errors import HandInCommandRefused, OutstandingCommand, UnknownOrder
from vdno.server.domain.outcomes import MeterOutcome
from vdno.server.domain.values import (
    AuditEvent,
    AuthorisedHandIn,
    CellState,
    CustodyState,
    DeviceCustody,
    DeviceEvent,
    FleetCount,
    FleetSummary,
    HandInDraft,
    HandInOrder,
    HandInStatus,
    IssuanceStatus,
    Officer,
    OfficerStatus,
)
from vdno.server.store.schema import (
    SIGNED_ISSUANCE,
    device_counts,
    device_history,
    devices,
    hand_in_orders,
    officers,
)

if TYPE_CHECKING:
    from vdno.server.store.group_commit import _GroupCommitWriter

T = TypeVar("T")
WriteOp = Callable[[Connection, list[AuditEvent]], T]
OUTSTANDING = (HandInStatus.AWAITING.value, HandInStatus.AUTHORISED.value)
# The signed, unreported commands, counted from the partial index ix_issuance_signed: its condition
# written as the index's, a literal (SQLite uses a partial index only for a query term equal to its own).
# Meters per custody state, generation and area: the kept counts (one row a group), not every meter.
FLEET_COUNTS = (
    select(
        device_counts.c.custody_state,
        device_counts.c.generation,
        device_counts.c.area_id,
        device_counts.c.devices,
    )
    .where(device_counts.c.devices > 0)
    .order_by(device_counts.c.custody_state, device_counts.c.generation, device_counts.c.area_id)
)
# device_counts from the meters' rows (after a bulk load; migration 0006 fills it the same way).
DEVICE_COUNTS_REBUILD = (
    "INSERT INTO device_counts (group_key, custody_state, generation, area_id, devices) "
    "SELECT coalesce(custody_state, '') || '|' || coalesce(CAST(generation AS VARCHAR(12)), '') || '|' || "
    "coalesce(CAST(area_id AS VARCHAR(12)), ''), custody_state, generation, area_id, count(*) "
    "FROM devices GROUP BY custody_state, generation, area_id"
)
# Connection.info key under which a writer's transaction collects device_counts changes (set_custody).
COUNT_DELTAS = "vdno_device_count_deltas"
Group = tuple[str | None, int | None, int | None]  # (custody state, generation, area)
FLEET_SIGNED = text(f"SELECT count(*) FROM issuances WHERE {SIGNED_ISSUANCE}")  # noqa: S608 (constant)


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes; everything is stored in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _order(row: Any) -> HandInOrder:
    return HandInOrder(
        order_id=int(row.order_id),
        bench_id=row.bench_id,
        request_id=row.request_id,
        request_fingerprint=row.request_fingerprint,
        device_id=bytes(row.device_id),
        area_id=int(row.area_id),
        area_entity_id=bytes(row.area_entity_id),
        seq_number=int(row.seq_number),
        generation=int(row.generation),
        device_certificate=bytes(row.device_certificate),
        status=HandInStatus(row.status),
        created_at=_aware(row.created_at),
        command=None if row.command is None else bytes(row.command),
        counter=None if row.counter is None else int(row.counter),
        mac_present=bool(row.mac_present),
        outcome_response=None if row.outcome_response is None else bytes(row.outcome_response),
        authorised_at=None if row.authorised_at is None else _aware(row.authorised_at),
    )


def set_custody(
    c: Connection,
    device_id: bytes,
    state: CustodyState,
    *,
    area_id: int | None,
    generation: int | None,
    event: str,
    reference: str,
    actor: str,
    at: datetime,
    cells: tuple[CellState | None, CellState | None] = (None, None),
) -> None:
    """Set the device's custody state (creating its row) and append the event to its history; the meters
    per state, generation and area (device_counts) follow, see count_custody_change."""
    before = c.execute(
        select(devices.c.custody_state, devices.c.generation, devices.c.area_id).where(
            devices.c.device_id == device_id
        )
    ).first()
    values: dict[str, Any] = {
        "custody_state": state.value,
        "area_id": area_id,
        "generation": generation,
        "updated_at": at,
    }
    no_ds, no_ka = cells
    if no_ds is not None:
        values.update(no_ds_entity=no_ds.entity_id, no_ds_ski=no_ds.subject_key_identifier)
    if no_ka is not None:
        values.update(no_ka_entity=no_ka.entity_id, no_ka_ski=no_ka.subject_key_identifier)
    dialect = c.dialect.name
    upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(devices)
    c.execute(
        upsert.values(device_id=device_id, **values).on_conflict_do_update(
            index_elements=[devices.c.device_id], set_=values
        )
    )
    c.execute(
        insert(device_history).values(
            device_id=device_id,
            at=at,
            event=event,
            state=state.value,
            area_id=area_id,
            generation=generation,
            reference=reference,
            actor=actor,
        )
    )
    count_custody_change(c, None if before is None else tuple(before), (state.value, generation, area_id))


def group_key(state: str | None, generation: int | None, area_id: int | None) -> str:
    """device_counts' key of a (custody state, generation, area) group: empty text for a NULL."""
    return f"{state or ''}|{'' if generation is None else generation}|{'' if area_id is None else area_id}"


def count_custody_change(c: Connection, before: Group | None, after: Group) -> None:
    """A meter moved from group `before` (None: it was not in the records) to `after`. Inside a writer's
    transaction (COUNT_DELTAS in c.info) the change is collected, and the writer applies the transaction's
    changes at its end, after locking the audit chain head: replicas then never wait for each other's
    device_counts rows in opposite orders. Elsewhere it is applied at once."""
    if before == after:
        return
    deltas: dict[Group, int] = {after: 1}
    if before is not None:
        deltas[before] = -1
    pending: dict[Group, int] | None = c.info.get(COUNT_DELTAS)
    if pending is None:
        apply_device_counts(c, deltas)
        return
    for group, delta in deltas.items():
        pending[group] = pending.get(group, 0) + delta


def apply_device_counts(c: Connection, deltas: dict[Group, int]) -> None:
    """Add each group's delta to its device_counts row (created at need), in group_key order."""
    dialect = c.dialect.name
    for key, (state, generation, area_id), delta in sorted(
        (group_key(*group), group, delta) for group, delta in deltas.items() if delta
    ):
        upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(device_counts)
        c.execute(
            upsert.values(
                group_key=key, custody_state=state, generation=generation, area_id=area_id, devices=delta
            ).on_conflict_do_update(
                index_elements=[device_counts.c.group_key], set_={"devices": device_counts.c.devices + delta}
            )
        )


class HandInRecords:
    """HandInStore's hand-in and fleet methods over SQLAlchemy (see module docstring)."""

    _writer: _GroupCommitWriter
    _read: Callable[[Callable[[Connection], Any]], Any]

    # -- officers (enrolled by bootstrap or by officers)
    def get_officer(self, officer_id: str) -> Officer | None:
        row = self._read(
            lambda c: c.execute(select(officers).where(officers.c.officer_id == officer_id)).first()
        )
        return None if row is None else Officer(row.officer_id, OfficerStatus(row.status))

    def set_officer(self, officer_id: str, status: OfficerStatus, actor: str) -> bool:
        """Enrol or revoke an officer; False when nothing changed."""

        def op(c: Connection, events: list[AuditEvent]) -> bool:
            row = c.execute(select(officers.c.status).where(officers.c.officer_id == officer_id)).first()
            if row is not None and row.status == status.value:
                return False
            if row is None:
                c.execute(
                    insert(officers).values(officer_id=officer_id, status=status.value, changed_at=_now())
                )
            else:
                c.execute(
                    update(officers)
                    .where(officers.c.officer_id == officer_id)
                    .values(status=status.value, changed_at=_now())
                )
            events.append(AuditEvent(f"officer.{status.value}", actor, f"officer:{officer_id}"))
            return True

        return bool(self._writer.submit(op))

    # -- hand-in orders
    def record_hand_in_order(self, draft: HandInDraft) -> tuple[HandInOrder, bool]:
        def op(c: Connection, events: list[AuditEvent]) -> tuple[HandInOrder, bool]:
            same = c.execute(
                select(hand_in_orders).where(
                    hand_in_orders.c.bench_id == draft.bench_id,
                    hand_in_orders.c.request_id == draft.request_id,
                )
            ).first()
            if same is not None:
                return _order(same), False
            outstanding = c.execute(
                select(hand_in_orders.c.order_id, hand_in_orders.c.status, hand_in_orders.c.bench_id).where(
                    hand_in_orders.c.device_id == draft.device_id, hand_in_orders.c.status.in_(OUTSTANDING)
                )
            ).first()
            if outstanding is not None:
                raise OutstandingCommand(
                    f"device {draft.device_id.hex()} already has hand-in order {outstanding.order_id} "
                    f"({outstanding.status}, ordered by bench {outstanding.bench_id})"
                )
            now = _now()
            result = c.execute(
                insert(hand_in_orders)
                .values(
                    bench_id=draft.bench_id,
                    request_id=draft.request_id,
                    request_fingerprint=draft.request_fingerprint,
                    device_id=draft.device_id,
                    area_id=draft.area_id,
                    area_entity_id=draft.area_entity_id,
                    seq_number=draft.seq_number,
                    generation=draft.generation,
                    device_certificate=draft.device_certificate,
                    status=HandInStatus.AWAITING.value,
                    created_at=now,
                    mac_present=False,
                )
                .returning(hand_in_orders.c.order_id)
            )
            order_id = int(result.scalar_one())
            actor = f"bench:{draft.bench_id}"
            reference = f"order:{order_id}"
            set_custody(
                c, draft.device_id, CustodyState.AREA, area_id=draft.area_id, generation=None,
                event="observed-in-area", reference=reference, actor=actor, at=now,
            )  # fmt: skip
            set_custody(
                c, draft.device_id, CustodyState.HAND_IN_ORDERED, area_id=draft.area_id,
                generation=draft.generation, event="hand-in-ordered", reference=reference, actor=actor,
                at=now,
            )  # fmt: skip
            events.append(
                AuditEvent(
                    "hand-in.ordered",
                    actor,
                    reference,
                    {
                        "device": draft.device_id.hex(),
                        "area": draft.area_id,
                        "generation": draft.generation,
                        "seq_number": draft.seq_number,
                        "request_id": draft.request_id,
                    },
                )
            )
            order = HandInOrder(
                order_id, draft.bench_id, draft.request_id, draft.request_fingerprint, draft.device_id,
                draft.area_id, draft.area_entity_id, draft.seq_number, draft.generation,
                draft.device_certificate, HandInStatus.AWAITING, now,
            )  # fmt: skip
            return order, True

        result: tuple[HandInOrder, bool] = self._writer.submit(op)
        return result

    def find_hand_in_order(self, bench_id: str, request_id: str) -> HandInOrder | None:
        return self._one(
            select(hand_in_orders).where(
                hand_in_orders.c.bench_id == bench_id, hand_in_orders.c.request_id == request_id
            )
        )

    def get_hand_in_order(self, order_id: int) -> HandInOrder | None:
        return self._one(select(hand_in_orders).where(hand_in_orders.c.order_id == order_id))

    def outstanding_hand_in(self, device_id: bytes) -> HandInOrder | None:
        return self._one(
            select(hand_in_orders).where(
                hand_in_orders.c.device_id == device_id, hand_in_orders.c.status.in_(OUTSTANDING)
            )
        )

    def hand_in_orders_of(self, device_id: bytes) -> list[HandInOrder]:
        return self._many(
            select(hand_in_orders)
            .where(hand_in_orders.c.device_id == device_id)
            .order_by(hand_in_orders.c.order_id)
        )

    def list_hand_in_orders(self, area_id: int | None, status: HandInStatus | None) -> list[HandInOrder]:
        query = select(hand_in_orders).order_by(hand_in_orders.c.area_id, hand_in_orders.c.order_id)
        if area_id is not None:
            query = query.where(hand_in_orders.c.area_id == area_id)
        if status is not None:
            query = query.where(hand_in_orders.c.status == status.value)
        return self._many(query)

    def authorised_hand_ins(self, device_ids: Sequence[bytes]) -> list[HandInOrder]:
        if not device_ids:
            return []
        return self._many(
            select(hand_in_orders)
            .where(
                hand_in_orders.c.device_id.in_(list(device_ids)),
                hand_in_orders.c.status == HandInStatus.AUTHORISED.value,
            )
            .order_by(hand_in_orders.c.order_id)
        )

    def authorise_hand_in(self, authorised: AuthorisedHandIn, actor: str) -> HandInOrder:
        def op(c: Connection, events: list[AuditEvent]) -> HandInOrder:
            now = _now()
            updated = c.execute(
                update(hand_in_orders)
                .where(
                    hand_in_orders.c.order_id == authorised.order_id,
                    hand_in_orders.c.status == HandInStatus.AWAITING.value,
                )
                .values(
                    status=HandInStatus.AUTHORISED.value,
                    command=authorised.command,
                    counter=authorised.counter,
                    mac_present=authorised.mac_present,
                    authorised_at=now,
                )
            ).rowcount
            if updated != 1:
                raise HandInCommandRefused(
                    f"hand-in order {authorised.order_id} is no longer awaiting a command"
                )
            row = c.execute(
                select(hand_in_orders).where(hand_in_orders.c.order_id == authorised.order_id)
            ).one()
            order = _order(row)
            reference = f"order:{order.order_id}"
            set_custody(
                c, order.device_id, CustodyState.HAND_IN_AUTHORISED, area_id=order.area_id,
                generation=order.generation, event="hand-in-authorised", reference=reference, actor=actor,
                at=now,
            )  # fmt: skip
            events.append(
                AuditEvent(
                    "hand-in.authorised",
                    actor,
                    reference,
                    {
                        "device": order.device_id.hex(),
                        "area": order.area_id,
                        "counter": authorised.counter,
                        "mac_present": authorised.mac_present,
                        "sha256": hashlib.sha256(authorised.command).hexdigest(),
                    },
                )
            )
            return order

        result: HandInOrder = self._writer.submit(op)
        return result

    def record_hand_in_outcome(
        self, order_id: int, outcome: MeterOutcome, response: bytes, actor: str
    ) -> None:
        def op(c: Connection, events: list[AuditEvent]) -> None:
            row = c.execute(select(hand_in_orders).where(hand_in_orders.c.order_id == order_id)).first()
            if row is None:
                raise UnknownOrder(f"no hand-in order {order_id}")
            order = _order(row)
            if order.outcome_response is not None:
                return  # recorded by a concurrent report of the same response (checked by the caller)
            applied = outcome.status is IssuanceStatus.APPLIED
            status = HandInStatus.APPLIED if applied else HandInStatus.REJECTED
            now = _now()
            c.execute(
                update(hand_in_orders)
                .where(hand_in_orders.c.order_id == order_id)
                .values(status=status.value, outcome_response=response, outcome_at=now)
            )
            reference = f"order:{order_id}"
            if applied:
                set_custody(
                    c, order.device_id, CustodyState.VANILLA, area_id=None, generation=order.generation,
                    event="hand-in-applied", reference=reference, actor=actor, at=now,
                    cells=(outcome.no_ds, outcome.no_ka),
                )  # fmt: skip
            else:
                set_custody(
                    c, order.device_id, CustodyState.AREA, area_id=order.area_id, generation=None,
                    event="hand-in-rejected", reference=reference, actor=actor, at=now,
                    cells=(outcome.no_ds, outcome.no_ka),
                )  # fmt: skip
            events.append(
                AuditEvent(
                    "hand-in.outcome",
                    actor,
                    reference,
                    {"status": status.value, "cells": [list(s) for s in outcome.cell_statuses]},
                )
            )

        self._writer.submit(op)

    def record_export(self, orders: Sequence[HandInOrder], actor: str) -> None:
        def op(c: Connection, events: list[AuditEvent]) -> None:
            events.append(
                AuditEvent(
                    "hand-in.exported",
                    actor,
                    "hand-in-orders",
                    {
                        "orders": [o.order_id for o in orders],
                        "areas": sorted({o.area_id for o in orders}),
                    },
                )
            )

        self._writer.submit(op)

    # -- fleet
    def fleet_summary(self) -> FleetSummary:
        def read(c: Connection) -> FleetSummary:
            rows = c.execute(FLEET_COUNTS).all()
            outstanding = c.execute(FLEET_SIGNED).scalar_one()
            counts = tuple(
                FleetCount(
                    CustodyState(state) if state is not None else CustodyState.UNKNOWN,
                    generation,
                    area_id,
                    int(count),
                )
                for state, generation, area_id, count in rows
            )
            return FleetSummary(counts, sum(c.count for c in counts), int(outstanding))

        result: FleetSummary = self._read(read)
        return result

    def device_custody(self, device_id: bytes) -> DeviceCustody | None:
        row = self._read(lambda c: c.execute(select(devices).where(devices.c.device_id == device_id)).first())
        if row is None:
            return None
        state = CustodyState(row.custody_state) if row.custody_state is not None else CustodyState.UNKNOWN
        return DeviceCustody(bytes(row.device_id), state, row.area_id, row.generation)

    def device_history(self, device_id: bytes) -> list[DeviceEvent]:
        rows = self._read(
            lambda c: c.execute(
                select(device_history)
                .where(device_history.c.device_id == device_id)
                .order_by(device_history.c.entry_id)
            ).all()
        )
        return [
            DeviceEvent(
                _aware(r.at), r.event, CustodyState(r.state), r.area_id, r.generation, r.reference, r.actor
            )
            for r in rows
        ]

    def devices_holding(self, generation: int) -> list[bytes]:
        rows = self._read(
            lambda c: c.execute(
                select(devices.c.device_id)
                .where(
                    devices.c.custody_state == CustodyState.VANILLA.value, devices.c.generation == generation
                )
                .order_by(devices.c.device_id)
            ).all()
        )
        return [bytes(r.device_id) for r in rows]

    # -- helpers
    def _one(self, query: Any) -> HandInOrder | None:
        row = self._read(lambda c: c.execute(query).first())
        return None if row is None else _order(row)

    def _many(self, query: Any) -> list[HandInOrder]:
        rows = self._read(lambda c: c.execute(query).all())
        return [_order(r) for r in rows]
