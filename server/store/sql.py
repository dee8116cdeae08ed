"""SQL implementation of the CustodyStore port: SQLite by default, PostgreSQL in production, same code.

Writes go through one writer thread per process that groups concurrent operations into one transaction
(group commit: one fsync for many issuances); each operation runs in its own SAVEPOINT so one refusal does
not undo its neighbours. A write returns only after its transaction committed.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from server.domain.errors import StoreUnavailable, UnknownIssuance, VdnoError
from server.domain.values import (
    Area,
    AuditEvent,
    Bench,
    BenchStatus,
    CellState,
    GenerationStatus,
    IssuanceDraft,
    IssuanceRecord,
    IssuanceStatus,
    RecordedOutcome,
    VanillaGeneration,
)
from server.store.audit import append_event
from server.store.schema import areas, benches, counters, devices, generations, issuances

T = TypeVar("T")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MAX_BATCH = 128


def make_engine(url: str) -> Engine:
    """Engine for a SQLAlchemy URL. SQLite: WAL, synchronous FULL, BEGIN IMMEDIATE, busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below drive transactions
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise StoreUnavailable("database migration failed") from exc


def _now() -> datetime:
    return datetime.now(UTC)


class _GroupCommitWriter:
    """Owns write transactions for this process; see module docstring."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._queue: queue.Queue[tuple[Callable[[Connection], Any], Future[Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def submit(self, op: Callable[[Connection], T]) -> T:
        fut: Future[T] = Future()
        self._queue.put((op, fut))
        return fut.result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[tuple[Callable[[Connection], Any], Future[Any]]]) -> None:
        outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            with self._engine.begin() as conn:
                for op, fut in batch:
                    savepoint = conn.begin_nested()
                    try:
                        result = op(conn)
                    except (VdnoError, SQLAlchemyError) as exc:
                        savepoint.rollback()
                        outcomes.append((fut, None, exc))
                    else:
                        savepoint.commit()
                        outcomes.append((fut, result, None))
        except SQLAlchemyError as exc:
            failure = StoreUnavailable("the database could not commit; nothing was recorded")
            failure.__cause__ = exc
            for _, fut in batch:
                fut.set_exception(failure)
            return
        for fut, result, error in outcomes:
            if error is None:
                fut.set_result(result)
            elif isinstance(error, VdnoError):
                fut.set_exception(error)
            else:
                failure = StoreUnavailable("the database refused the write; nothing was recorded")
                failure.__cause__ = error
                fut.set_exception(failure)


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
    )


class SqlCustodyStore:
    """CustodyStore over SQLAlchemy. Build with `open_store(url)`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = _GroupCommitWriter(engine)
        self._greatest = func.greatest if engine.dialect.name == "postgresql" else func.max

    def close(self) -> None:
        self._writer.close()
        self.engine.dispose()

    # -- reads
    def _read(self, fn: Callable[[Connection], T]) -> T:
        try:
            with self.engine.connect() as conn:
                return fn(conn)
        except SQLAlchemyError as exc:
            raise StoreUnavailable("the database cannot be read") from exc

    def get_area(self, area_id: int) -> Area | None:
        row = self._read(lambda c: c.execute(select(areas).where(areas.c.area_id == area_id)).first())
        return (
            None
            if row is None
            else Area(
                row.area_id,
                row.name,
                bytes(row.entity_id),
                bytes(row.ds_certificate),
                bytes(row.ka_certificate),
            )
        )

    def list_areas(self) -> list[Area]:
        rows = self._read(lambda c: c.execute(select(areas).order_by(areas.c.area_id)).all())
        return [
            Area(r.area_id, r.name, bytes(r.entity_id), bytes(r.ds_certificate), bytes(r.ka_certificate))
            for r in rows
        ]

    def list_generations(self) -> list[VanillaGeneration]:
        rows = self._read(lambda c: c.execute(select(generations).order_by(generations.c.generation)).all())
        return [
            VanillaGeneration(
                r.generation,
                bytes(r.entity_id),
                r.ds_key_uri,
                r.ka_key_uri,
                bytes(r.ds_certificate),
                bytes(r.ka_certificate),
                GenerationStatus(r.status),
            )
            for r in rows
        ]

    def get_bench(self, bench_id: str) -> Bench | None:
        row = self._read(lambda c: c.execute(select(benches).where(benches.c.bench_id == bench_id)).first())
        return None if row is None else Bench(row.bench_id, BenchStatus(row.status))

    def find_issuance(self, bench_id: str, request_id: str) -> IssuanceRecord | None:
        row = self._read(
            lambda c: c.execute(
                select(issuances).where(
                    issuances.c.bench_id == bench_id, issuances.c.request_id == request_id
                )
            ).first()
        )
        return None if row is None else _issuance(row)

    def get_issuance(self, issuance_id: int) -> IssuanceRecord:
        row = self._read(
            lambda c: c.execute(select(issuances).where(issuances.c.issuance_id == issuance_id)).first()
        )
        if row is None:
            raise UnknownIssuance(f"no issuance {issuance_id}")
        return _issuance(row)

    def list_issuances(self) -> list[IssuanceRecord]:
        rows = self._read(lambda c: c.execute(select(issuances).order_by(issuances.c.issuance_id)).all())
        return [_issuance(r) for r in rows]

    def device_cells(self, device_id: bytes) -> tuple[CellState | None, CellState | None]:
        row = self._read(lambda c: c.execute(select(devices).where(devices.c.device_id == device_id)).first())
        if row is None:
            return None, None
        ds = (
            CellState(bytes(row.no_ds_entity), bytes(row.no_ds_ski)) if row.no_ds_entity is not None else None
        )
        ka = (
            CellState(bytes(row.no_ka_entity), bytes(row.no_ka_ski)) if row.no_ka_entity is not None else None
        )
        return ds, ka

    def counter_value(self, generation: int) -> int | None:
        row = self._read(
            lambda c: c.execute(
                select(counters.c.last_value).where(counters.c.generation == generation)
            ).first()
        )
        return None if row is None else int(row.last_value)

    # -- custody writes
    def record_event(self, event: AuditEvent) -> None:
        self._writer.submit(lambda c: append_event(c, event))

    def upsert_area(self, area: Area, actor: str) -> bool:
        def op(c: Connection) -> bool:
            values = {
                "name": area.name,
                "entity_id": area.entity_id,
                "ds_certificate": area.ds_certificate,
                "ka_certificate": area.ka_certificate,
            }
            existing = c.execute(select(areas).where(areas.c.area_id == area.area_id)).first()
            if existing is not None and all(
                (bytes(existing._mapping[k]) if isinstance(v, bytes) else existing._mapping[k]) == v
                for k, v in values.items()
            ):
                return False
            if existing is None:
                c.execute(insert(areas).values(area_id=area.area_id, **values))
            else:
                c.execute(update(areas).where(areas.c.area_id == area.area_id).values(**values))
            append_event(
                c,
                AuditEvent(
                    "area.registered",
                    actor,
                    f"area:{area.area_id}",
                    {"name": area.name, "entity_id": area.entity_id.hex()},
                ),
            )
            return True

        return self._writer.submit(op)

    def add_generation(self, generation: VanillaGeneration, actor: str) -> bool:
        def op(c: Connection) -> bool:
            if (
                c.execute(
                    select(generations.c.generation).where(generations.c.generation == generation.generation)
                ).first()
                is not None
            ):
                return False
            c.execute(
                insert(generations).values(
                    generation=generation.generation,
                    entity_id=generation.entity_id,
                    ds_key_uri=generation.ds_key_uri,
                    ka_key_uri=generation.ka_key_uri,
                    ds_certificate=generation.ds_certificate,
                    ka_certificate=generation.ka_certificate,
                    status=generation.status.value,
                )
            )
            c.execute(insert(counters).values(generation=generation.generation, last_value=0))
            append_event(
                c,
                AuditEvent(
                    "generation.activated",
                    actor,
                    f"generation:{generation.generation}",
                    {"entity_id": generation.entity_id.hex(), "status": generation.status.value},
                ),
            )
            return True

        return self._writer.submit(op)

    def _set_bench(self, bench_id: str, status: BenchStatus, actor: str) -> bool:
        def op(c: Connection) -> bool:
            row = c.execute(select(benches.c.status).where(benches.c.bench_id == bench_id)).first()
            if row is not None and row.status == status.value:
                return False
            if row is None:
                c.execute(insert(benches).values(bench_id=bench_id, status=status.value, changed_at=_now()))
            else:
                c.execute(
                    update(benches)
                    .where(benches.c.bench_id == bench_id)
                    .values(status=status.value, changed_at=_now())
                )
            append_event(c, AuditEvent(f"bench.{status.value}", actor, f"bench:{bench_id}"))
            return True

        return self._writer.submit(op)

    def enroll_bench(self, bench_id: str, actor: str) -> bool:
        return self._set_bench(bench_id, BenchStatus.ENROLLED, actor)

    def revoke_bench(self, bench_id: str, actor: str) -> bool:
        return self._set_bench(bench_id, BenchStatus.REVOKED, actor)

    # -- issuance
    def begin_issuance(self, draft: IssuanceDraft, counter_floor: int) -> tuple[IssuanceRecord, bool]:
        def op(c: Connection) -> tuple[IssuanceRecord, bool]:
            existing = c.execute(
                select(issuances).where(
                    issuances.c.bench_id == draft.bench_id, issuances.c.request_id == draft.request_id
                )
            ).first()
            if existing is not None:
                return _issuance(existing), False
            counter = c.execute(
                update(counters)
                .where(counters.c.generation == draft.generation)
                .values(last_value=self._greatest(counters.c.last_value + 1, counter_floor))
                .returning(counters.c.last_value)
            ).scalar_one()
            now = _now()
            issuance_id = c.execute(
                insert(issuances)
                .values(
                    bench_id=draft.bench_id,
                    request_id=draft.request_id,
                    request_fingerprint=draft.request_fingerprint,
                    device_id=draft.device_id,
                    area_id=draft.area_id,
                    generation=draft.generation,
                    counter=counter,
                    device_certificate=draft.device_certificate,
                    status=IssuanceStatus.RECORDED.value,
                    created_at=now,
                )
                .returning(issuances.c.issuance_id)
            ).scalar_one()
            append_event(
                c,
                AuditEvent(
                    "command.recorded",
                    f"bench:{draft.bench_id}",
                    f"issuance:{issuance_id}",
                    {
                        "device": draft.device_id.hex(),
                        "area": draft.area_id,
                        "generation": draft.generation,
                        "counter": int(counter),
                        "request_id": draft.request_id,
                    },
                ),
            )
            return IssuanceRecord(
                issuance_id,
                draft.bench_id,
                draft.request_id,
                draft.request_fingerprint,
                draft.device_id,
                draft.area_id,
                draft.generation,
                int(counter),
                draft.device_certificate,
                IssuanceStatus.RECORDED,
                now,
            ), True

        try:
            return self._writer.submit(op)
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, IntegrityError):  # a concurrent twin won the unique key
                found = self.find_issuance(draft.bench_id, draft.request_id)
                if found is not None:
                    return found, False
            raise

    def complete_issuance(self, issuance_id: int, signed_command: bytes) -> IssuanceRecord:
        def op(c: Connection) -> IssuanceRecord:
            row = c.execute(
                update(issuances)
                .where(
                    issuances.c.issuance_id == issuance_id,
                    issuances.c.status.in_([IssuanceStatus.RECORDED.value, IssuanceStatus.FAILED.value]),
                )
                .values(status=IssuanceStatus.SIGNED.value, signed_command=signed_command, signed_at=_now())
                .returning(*issuances.c)
            ).first()
            if row is None:
                raise UnknownIssuance(f"issuance {issuance_id} is not awaiting a signature")
            append_event(
                c,
                AuditEvent(
                    "command.issued",
                    f"bench:{row.bench_id}",
                    f"issuance:{issuance_id}",
                    {"counter": int(row.counter), "sha256": hashlib.sha256(signed_command).hexdigest()},
                ),
            )
            return _issuance(row)

        return self._writer.submit(op)

    def fail_issuance(self, issuance_id: int, reason: str) -> None:
        def op(c: Connection) -> None:
            c.execute(
                update(issuances)
                .where(
                    issuances.c.issuance_id == issuance_id,
                    issuances.c.status == IssuanceStatus.RECORDED.value,
                )
                .values(status=IssuanceStatus.FAILED.value, failure=reason)
            )
            append_event(
                c, AuditEvent("command.failed", "service", f"issuance:{issuance_id}", {"reason": reason})
            )

        self._writer.submit(op)

    def record_outcome(self, issuance_id: int, outcome: RecordedOutcome, response: bytes, actor: str) -> None:
        def op(c: Connection) -> None:
            row = c.execute(
                select(issuances.c.device_id).where(issuances.c.issuance_id == issuance_id)
            ).first()
            if row is None:
                raise UnknownIssuance(f"no issuance {issuance_id}")
            now = _now()
            c.execute(
                update(issuances)
                .where(issuances.c.issuance_id == issuance_id)
                .values(status=outcome.status.value, outcome_response=response, outcome_at=now)
            )
            cells: dict[str, Any] = {"last_issuance_id": issuance_id, "updated_at": now}
            if outcome.no_ds is not None:
                cells.update(
                    no_ds_entity=outcome.no_ds.entity_id, no_ds_ski=outcome.no_ds.subject_key_identifier
                )
            if outcome.no_ka is not None:
                cells.update(
                    no_ka_entity=outcome.no_ka.entity_id, no_ka_ski=outcome.no_ka.subject_key_identifier
                )
            device_id = bytes(row.device_id)
            if c.execute(select(devices.c.device_id).where(devices.c.device_id == device_id)).first() is None:
                c.execute(insert(devices).values(device_id=device_id, **cells))
            else:
                c.execute(update(devices).where(devices.c.device_id == device_id).values(**cells))
            append_event(
                c,
                AuditEvent(
                    "outcome.reported",
                    actor,
                    f"issuance:{issuance_id}",
                    {"status": outcome.status.value, "cells": [list(s) for s in outcome.cell_statuses]},
                ),
            )

        self._writer.submit(op)


def open_store(url: str, run_migrations: bool = True) -> SqlCustodyStore:
    engine = make_engine(url)
    if run_migrations:
        migrate(engine)
    return SqlCustodyStore(engine)
