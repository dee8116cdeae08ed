"""Migrations under a database lock: processes that migrate one new database at the same moment take
turns, on a SQLite file and on PostgreSQL; one that cannot get the lock in time says so."""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from vdno.server.domain.errors import StoreUnavailable
from vdno.server.store.engine import MIGRATION_LOCK_CLASS, MIGRATIONS, make_engine, migrate, migrate_database

MIGRATE_ON_CUE = """
import sys
from vdno.server.store.engine import migrate_database
print("ready", flush=True)
sys.stdin.readline()
migrate_database(sys.argv[1])
"""


@pytest.fixture(params=["sqlite", "postgres"])
def new_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database nobody has migrated yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'vdno.db'}"
        return
    base = request.getfixturevalue("postgres_url").replace("postgresql://", "postgresql+psycopg://")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(base)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def schema_versions(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    finally:
        engine.dispose()


def test_five_processes_migrating_one_new_database_at_once_all_succeed(new_database: str) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_ON_CUE, new_database],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    try:
        for p in processes:  # each has imported everything: the cue starts them within milliseconds
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in processes:
            assert p.stdin is not None
            p.stdin.write("\n")
            p.stdin.flush()
        failures = [p.communicate(timeout=120)[1][-600:] for p in processes if p.wait(timeout=120) != 0]
    finally:
        for p in processes:
            p.kill()
            p.wait()
    assert failures == []
    assert schema_versions(new_database) == [ScriptDirectory(str(MIGRATIONS)).get_current_head()]


@contextlib.contextmanager
def held_migration_lock(url: str) -> Iterator[None]:
    """Hold the migration lock of the database at `url` as another process migrating it would."""
    if url.startswith("sqlite"):
        with Path(url.removeprefix("sqlite:///") + ".migratelock").open("a+b") as held:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX)
            yield
        return
    base, _, options = url.replace("postgresql+psycopg://", "postgresql://").partition("?options=")
    with psycopg.connect(base, options=options.replace("%3D", "=")) as conn:
        conn.execute(
            f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_CLASS}, hashtext(coalesce(current_schema(), '')))"
        )
        yield
        conn.rollback()


def test_a_migration_waits_for_the_lock_and_gives_up_after_the_wait(new_database: str) -> None:
    engine = make_engine(new_database)
    try:
        with held_migration_lock(new_database):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="another process has been migrating the database"):
                migrate(engine, lock_wait=0.5)
            assert 0.5 <= time.monotonic() - started < 3.0
        migrate(engine, lock_wait=0.5)  # free again
    finally:
        engine.dispose()
    assert len(schema_versions(new_database)) == 1


@pytest.mark.parametrize("new_database", ["postgres"], indirect=True)
def test_a_wait_for_the_lock_that_the_database_cancels_for_another_reason_is_named_as_such(
    new_database: str,
) -> None:
    """Only the lock's own timeout means another process is migrating; a statement timeout of the
    database's (here shorter than the lock wait) is reported as the database's error."""
    engine = make_engine(new_database + "%20-cstatement_timeout%3D200")
    try:
        with (
            held_migration_lock(new_database),
            pytest.raises(StoreUnavailable, match="cannot open the database") as refused,
        ):
            migrate(engine, lock_wait=5)
        assert "statement timeout" in str(refused.value)
        assert "another process" not in str(refused.value)
    finally:
        engine.dispose()
    migrate_database(new_database)  # nothing was half done: it migrates once the lock is free
    assert len(schema_versions(new_database)) == 1
