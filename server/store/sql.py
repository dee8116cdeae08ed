"""SQL implementation of the CustodyStore port: SQLite by default, PostgreSQL in production, same code.

SqlCustodyStore is the facade: it opens the engines (server/store/engine.py) and two group-commit writers
(server/store/group_commit.py): one the issuance pipeline's thread drives (write_issuance_step), one with a
thread of its own for every other write. A writer waits at most `write_lock_wait` seconds for the write lock
(PostgreSQL: for a row or table lock): then its writes answer StoreUnavailable, nothing of them recorded.
It keeps the reference data (benches, areas, generations) and the audit log's plain events here, and takes
the issuance, hand-in and fleet, and custody records from its mixins (server/store/issuances.py, fleet.py,
custody.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from vdno.server.domain.audit import AuditTip
from vdno.server.domain.errors import StoreUnavailable
from vdno.server.domain.values import (
    Area,
    AuditEvent,
    Bench,
    BenchStatus,
    CellState,
    GenerationStatus,
    VanillaGeneration,
)
from vdno.server.store.audit import read_audit_tip
from vdno.server.store.custody import CustodyRecords, bench_record
from vdno.server.store.engine import make_engine, migrate, migrate_database
from vdno.server.store.fleet import HandInRecords
from vdno.server.store.group_commit import WRITE_LOCK_WAIT, WriteOp, _GroupCommitWriter
from vdno.server.store.issuances import IssuanceRecords, _HotPathSql
from vdno.server.store.schema import areas, benches, counters, devices, generations
from vdno.server.store.sqlite_durability import _WalSync

T = TypeVar("T")
REFERENCE_TTL = 1.0  # seconds a replica may serve bench/area/generation data it read earlier


def _now() -> datetime:
    return datetime.now(UTC)


class SqlCustodyStore(IssuanceRecords, HandInRecords, CustodyRecords):
    """CustodyStore and HandInStore over SQLAlchemy (see module docstring). Build with `open_store(url)`."""

    def __init__(self, engine: Engine, write_lock_wait: float = WRITE_LOCK_WAIT) -> None:
        """`write_lock_wait`: seconds a write waits for the write lock before it answers StoreUnavailable
        (PostgreSQL: give `engine` that lock_timeout, see open_store)."""
        self.engine = engine
        sqlite = engine.dialect.name == "sqlite"
        url = engine.url.render_as_string(hide_password=False)
        write_engine = make_engine(url, writer=True, lock_wait=write_lock_wait) if sqlite else engine
        self._write_engine = write_engine
        database = write_engine.url.database if sqlite else None
        lock_path = Path(database + ".writelock") if database and database != ":memory:" else None
        # Each writer syncs the WAL on a descriptor of its own.
        self._wal_path = Path(database + "-wal") if lock_path is not None and database else None
        wal_path = self._wal_path
        wal = (lambda: _WalSync(wal_path)) if wal_path is not None else None
        self._writer = _GroupCommitWriter(
            write_engine, lock_path, wal=wal() if wal else None, lock_wait=write_lock_wait
        )
        self._step_writer = _GroupCommitWriter(
            write_engine, lock_path, threaded=False, wal=wal() if wal else None, lock_wait=write_lock_wait
        )
        self._hot = _HotPathSql(engine)
        self._driver_integrity_error: type[Exception] = engine.dialect.loaded_dbapi.IntegrityError
        self._cache: dict[object, tuple[float, Any]] = {}
        self._cache_lock = threading.Lock()

    def close(self) -> None:
        self._writer.close()
        self._step_writer.close()
        self.engine.dispose()
        self._write_engine.dispose()

    def _cached(self, key: object, load: Callable[[], T]) -> T:
        """Reference data (benches, areas, generations) for REFERENCE_TTL; own writes invalidate it."""
        now = time.monotonic()
        with self._cache_lock:
            hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return cast(T, hit[1])
        value = load()
        with self._cache_lock:
            self._cache[key] = (now + REFERENCE_TTL, value)
        return value

    def _write_reference(self, op: WriteOp[T]) -> T:
        try:
            return self._writer.submit(op)
        finally:
            self._invalidate()

    def _invalidate(self) -> None:
        """Forget cached reference data (after this store's own writes)."""
        with self._cache_lock:
            self._cache.clear()

    # -- reads
    def _read(self, fn: Callable[[Connection], T]) -> T:
        try:
            with self.engine.connect() as conn:
                return fn(conn)
        except SQLAlchemyError as exc:
            raise StoreUnavailable("the database cannot be read") from exc

    def get_area(self, area_id: int) -> Area | None:
        return next((a for a in self.list_areas() if a.area_id == area_id), None)

    def list_areas(self) -> list[Area]:
        return self._cached("areas", self._load_areas)

    def _load_areas(self) -> list[Area]:
        rows = self._read(lambda c: c.execute(select(areas).order_by(areas.c.area_id)).all())
        return [
            Area(r.area_id, r.name, bytes(r.entity_id), bytes(r.ds_certificate), bytes(r.ka_certificate))
            for r in rows
        ]

    def list_generations(self) -> list[VanillaGeneration]:
        return self._cached("generations", self._load_generations)

    def _load_generations(self) -> list[VanillaGeneration]:
        """Generations with their certificates (certified or later)."""
        rows = self._read(
            lambda c: c.execute(
                select(generations)
                .where(generations.c.ds_certificate.is_not(None), generations.c.ka_certificate.is_not(None))
                .order_by(generations.c.generation)
            ).all()
        )
        return [
            VanillaGeneration(
                r.generation,
                bytes(r.entity_id),
                r.ds_key_uri,
                r.ka_key_uri,
                bytes(r.ds_certificate),
                bytes(r.ka_certificate),
                GenerationStatus(r.status),
                bool(r.compromised),
            )
            for r in rows
        ]

    def get_bench(self, bench_id: str) -> Bench | None:
        return self._cached(("bench", bench_id), lambda: self._load_bench(bench_id))

    def _load_bench(self, bench_id: str) -> Bench | None:
        row = self._read(lambda c: c.execute(select(benches).where(benches.c.bench_id == bench_id)).first())
        return None if row is None else bench_record(row)

    def ensure_durable(self) -> None:
        """SQLite: another process's commit is visible before its writer has synced the WAL (_WalSync), so
        the WAL is synced from here too. PostgreSQL shows only durable commits."""
        if self._wal_path is None:
            return
        try:
            _WalSync.sync_current(self._wal_path)
        except OSError as exc:
            raise StoreUnavailable("the database could not make what it holds durable") from exc

    def check_writable(self) -> None:
        """Health: a trivial write transaction through the writer (SQLite: takes and releases the write
        lock; PostgreSQL: a round trip in a transaction). StoreUnavailable if the database cannot take a
        write within the write-lock wait."""
        self._writer.submit(lambda c, _events: c.exec_driver_sql("SELECT 1").close())

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

    def record_event(self, event: AuditEvent) -> None:
        self._writer.submit(lambda _c, events: events.append(event))

    def audit_tip(self) -> AuditTip | None:
        return self._read(read_audit_tip)

    def upsert_area(self, area: Area, actor: str) -> bool:
        def op(c: Connection, events: list[AuditEvent]) -> bool:
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
            events.append(
                AuditEvent(
                    "area.registered",
                    actor,
                    f"area:{area.area_id}",
                    {"name": area.name, "entity_id": area.entity_id.hex()},
                ),
            )
            return True

        return self._write_reference(op)

    def add_generation(self, generation: VanillaGeneration, actor: str) -> bool:
        def op(c: Connection, events: list[AuditEvent]) -> bool:
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
            events.append(
                AuditEvent(
                    "generation.activated",
                    actor,
                    f"generation:{generation.generation}",
                    {"entity_id": generation.entity_id.hex(), "status": generation.status.value},
                ),
            )
            return True

        return self._write_reference(op)

    def _set_bench(self, bench_id: str, status: BenchStatus, actor: str) -> bool:
        def op(c: Connection, events: list[AuditEvent]) -> bool:
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
            events.append(AuditEvent(f"bench.{status.value}", actor, f"bench:{bench_id}"))
            return True

        return self._write_reference(op)

    def enroll_bench(self, bench_id: str, actor: str) -> bool:
        return self._set_bench(bench_id, BenchStatus.ENROLLED, actor)

    def revoke_bench(self, bench_id: str, actor: str) -> bool:
        return self._set_bench(bench_id, BenchStatus.REVOKED, actor)


def open_store(
    url: str, run_migrations: bool = True, write_lock_wait: float = WRITE_LOCK_WAIT
) -> SqlCustodyStore:
    """The store at `url`; with run_migrations, its schema is brought to the newest revision first. A write
    waits at most `write_lock_wait` seconds for the database's write lock (then StoreUnavailable)."""
    sqlite = url.startswith("sqlite")
    # PostgreSQL: the writers use this engine, so it carries the lock timeout (migrations do not).
    engine = make_engine(url, lock_wait=None if sqlite else write_lock_wait)
    if run_migrations:
        if sqlite:
            migrate(engine)
        else:
            migrate_database(url)
    return SqlCustodyStore(engine, write_lock_wait)
