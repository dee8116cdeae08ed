"""The database engine and its schema: engines for SQLite (WAL, pragmas, the writer's BEGIN IMMEDIATE) and
PostgreSQL (plan and lock settings), and the Alembic migrations, run by one process at a time under a
database lock (PostgreSQL: an advisory lock of the schema; SQLite: a flock on `<db>.migratelock`)."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from vdno.server.domain.errors import StoreUnavailable
from vdno.server.store.files import create_private_file

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATION_LOCK_WAIT = 120.0  # seconds a process waits for another one's migration before it gives up
# PostgreSQL advisory lock of the migrations: (this constant, hash of the schema's name).
MIGRATION_LOCK_CLASS = int.from_bytes(b"vdno", "big") >> 1
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE when lock_timeout ends a wait
# PostgreSQL: every execution of a prepared statement is planned for its parameters and the tables' size
# now. psycopg prepares a statement after its 5th execution, and PostgreSQL would then settle on a generic
# plan made from the statistics of that moment: for tables analysed while empty that is a sequential scan
# (the hand-out's UPDATE issuances ... WHERE issuance_id, the devices lookup of an outcome), kept until
# something analyses them again, so the rate would depend on autovacuum (docs/architecture.md §8). A custom
# plan of these one-row statements costs a few microseconds; psycopg still saves the parsing.
PLAN_CACHE_MODE = "SET plan_cache_mode = force_custom_plan"


def make_engine(url: str, writer: bool = False, lock_wait: float | None = None) -> Engine:
    """Engine for a SQLAlchemy URL. SQLite: WAL, busy timeout; the writer's transactions start with BEGIN
    IMMEDIATE (take the write lock up front), readers' with a plain deferred BEGIN so they never wait for
    the writer. Commits are synchronous FULL, except on the writer's engine (synchronous NORMAL), whose
    only user, _GroupCommitWriter, makes each commit durable itself (_WalSync). `lock_wait`: seconds a
    statement waits for a lock (SQLite's busy timeout, else 30 s; PostgreSQL's lock_timeout, else none).
    PostgreSQL connections plan each execution of a prepared statement afresh (PLAN_CACHE_MODE)."""
    if url.startswith("sqlite"):
        create_private_file(make_url(url).database)
        timeout = 30.0 if lock_wait is None else lock_wait
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": timeout})
        begin = "BEGIN IMMEDIATE" if writer else "BEGIN"
        synchronous = "NORMAL" if writer else "FULL"

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below drive transactions
            cur = dbapi_conn.cursor()
            mode = cur.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if writer and mode not in ("wal", "memory"):  # NORMAL is durable only with _WalSync's sync
                cur.close()
                raise StoreUnavailable(f"SQLite cannot use WAL mode here (journal_mode is {mode})")
            cur.execute(f"PRAGMA synchronous={synchronous}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.connection.dbapi_connection.execute(begin)  # type: ignore[union-attr]  # straight to the driver

        return engine
    engine = create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)
    settings = [PLAN_CACHE_MODE]
    if lock_wait is not None:
        settings.append(f"SET lock_timeout = {max(1, round(lock_wait * 1000))}")

    @event.listens_for(engine, "connect")
    def _on_pg_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        for setting in settings:
            cur.execute(setting)
        cur.close()
        dbapi_conn.commit()

    return engine


def migrate(engine: Engine, lock_wait: float = MIGRATION_LOCK_WAIT) -> None:
    """Bring the schema to the newest Alembic revision (idempotent). Processes that start together on one
    database take turns, each waiting at most `lock_wait` seconds (then StoreUnavailable): on PostgreSQL
    under an advisory lock of the schema held by the migrating transaction, on a SQLite file under an
    exclusive flock on `<db>.migratelock`. The next one finds the schema at the newest revision.

    A failure is StoreUnavailable in one line naming the revision and the database's error:
    "database migration 0002 (Hand-in orders, ...) failed: (sqlite3.OperationalError) table ... exists"."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    applied: list[str] = []
    cfg.attributes["on_version_apply"] = lambda step, **_: applied.append(step.up_revision_id)
    pg = engine.dialect.name == "postgresql"
    database = engine.url.database
    lock_path = Path(database + ".migratelock") if not pg and database and database != ":memory:" else None
    pending: list[Script] | None = None  # the revisions to apply, oldest first, once the database is open
    try:
        with _file_lock(lock_path, lock_wait), engine.begin() as conn:
            if pg:
                _advisory_migration_lock(conn, lock_wait)
            pending = _pending_revisions(cfg, conn)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        if pending is None:
            where = engine.url.render_as_string(hide_password=True)
            raise StoreUnavailable(f"cannot open the database {where}: {_first_line(exc)}") from exc
        failed = pending[len(applied)] if len(applied) < len(pending) else None
        revision = "" if failed is None else f" {failed.revision} ({_first_line(failed.doc)})"
        raise StoreUnavailable(f"database migration{revision} failed: {_first_line(exc)}") from exc
    except OSError as exc:  # the lock file next to a SQLite database
        raise StoreUnavailable(f"cannot open the database's migration lock: {exc}") from exc


def _pending_revisions(cfg: Config, conn: Connection) -> list[Script]:
    """The revisions an upgrade to head applies to the database on `conn`, oldest first. StoreUnavailable
    when the database is at a revision these migrations do not know (a newer vdno migrated it)."""
    scripts = ScriptDirectory.from_config(cfg)
    current = MigrationContext.configure(conn).get_current_heads()
    try:
        return list(reversed(list(scripts.iterate_revisions("heads", current[0] if current else "base"))))
    except (RevisionError, CommandError) as exc:
        raise StoreUnavailable(
            f"the database is at revision {', '.join(current)}, which this vdno-server does not know (its "
            f"newest is {scripts.get_current_head()}): a newer vdno-server has migrated it"
        ) from exc


def _first_line(error: object) -> str:
    """The first line of an error (SQLAlchemy adds the statement and a link on the lines after it)."""
    lines = str(error or "").strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _advisory_migration_lock(conn: Connection, wait: float) -> None:
    """The schema's migration lock, held until `conn`'s transaction ends; StoreUnavailable after `wait`."""
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, round(wait * 1000))}")
    try:
        conn.exec_driver_sql(
            f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_CLASS}, hashtext(coalesce(current_schema(), '')))"
        )
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
        raise StoreUnavailable(
            f"another process has been migrating the database for {wait:g} s; try again later"
        ) from exc
    conn.exec_driver_sql("SET LOCAL lock_timeout = 0")  # the migration's own statements wait as before


@contextlib.contextmanager
def _file_lock(path: Path | None, wait: float) -> Iterator[None]:
    """An exclusive flock on `path` (nothing for None) while the block runs; StoreUnavailable after `wait`
    seconds without it."""
    if path is None:
        yield
        return
    with path.open("a+b") as held:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        f"another process has been migrating the database for {wait:g} s; try again later"
                    ) from None
                time.sleep(0.02)
        yield  # closing the file releases the lock


def migrate_database(url: str) -> None:
    """Bring the database at `url` to the newest revision, once, before any server process opens it."""
    engine = make_engine(url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
