"""A migration that fails says why in one line: the revision it was applying and the database's error, and
leaves the schema where it was; a database that a newer vdno migrated, or that cannot be opened, is named."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import text

from vdno.server.domain.errors import StoreUnavailable
from vdno.server.store.engine import MIGRATIONS, make_engine, migrate, migrate_database

REVISION_0002 = "0002 (Hand-in orders, the fleet's custody state and history, officers.)"


@contextlib.contextmanager
def database_at(request: pytest.FixtureRequest, tmp_path: Path, revision: str) -> Iterator[str]:
    """The URL of a database (request.param: sqlite or postgres) migrated to `revision` only."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'vdno.db'}"
        schema = None
    else:
        base = request.getfixturevalue("postgres_url").replace("postgresql://", "postgresql+psycopg://")
        schema = f"t_{uuid.uuid4().hex[:12]}"
        url = f"{base}?options=-csearch_path%3D{schema}"
        admin = make_engine(base)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        admin.dispose()
    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()
    try:
        yield url
    finally:
        if schema is not None:
            admin = make_engine(url.split("?", 1)[0])
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_at_0001(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database migrated to revision 0001 only."""
    with database_at(request, tmp_path, "0001") as url:
        yield url


def run(url: str, sql: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql))
            return list(result.scalars()) if result.returns_rows else []
    finally:
        engine.dispose()


def test_a_failing_migration_names_its_revision_and_the_database_error(database_at_0001: str) -> None:
    run(database_at_0001, "CREATE TABLE officers (x INTEGER)")  # revision 0002 creates it
    with pytest.raises(StoreUnavailable) as caught:
        migrate_database(database_at_0001)
    message = str(caught.value)
    assert message.startswith(f"database migration {REVISION_0002} failed: (")
    assert "officers" in message and "already exists" in message
    assert "\n" not in message and "[SQL:" not in message
    assert run(database_at_0001, "SELECT version_num FROM alembic_version") == ["0001"]  # nothing applied


def test_a_database_migrated_by_a_newer_vdno_is_named(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'vdno.db'}"
    migrate_database(url)
    [newest] = run(url, "SELECT version_num FROM alembic_version")
    run(url, "UPDATE alembic_version SET version_num = '0099'")
    with pytest.raises(StoreUnavailable) as caught:
        migrate_database(url)
    assert str(caught.value) == (
        f"the database is at revision 0099, which this vdno-server does not know (its newest is {newest}): a "
        "newer vdno-server has migrated it"
    )


def test_a_database_that_cannot_be_opened_is_named_without_its_password() -> None:
    engine = make_engine("postgresql+psycopg://vdno:s3cret@127.0.0.1:1/vdno?connect_timeout=2")
    try:
        with pytest.raises(StoreUnavailable) as caught:
            migrate(engine)
    finally:
        engine.dispose()
    message = str(caught.value)
    assert message.startswith("cannot open the database postgresql+psycopg://vdno:***@127.0.0.1:1/vdno")
    assert "s3cret" not in message and "\n" not in message
