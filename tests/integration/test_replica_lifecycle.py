"""Replicas over one database, on SQLite and PostgreSQL: several `vdno-server serve` processes started at
once on a new database all come up (they take turns migrating it), and restoring an old backup of the
database reuses no originator counter (the counter floor follows the clock)."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.script import ScriptDirectory
from cryptography import x509
from harness import ServerProcess
from integration_testlib import Deployment, new_request_id, postgres_schema
from sqlalchemy import text

from vdno.client.handout import read_meter
from vdno.gbcs.framing import decode_message
from vdno.gbcs.signature import verify_signature
from vdno.server.store.engine import MIGRATIONS, make_engine


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


# -- backup and restore -----------------------------------------------------------------------------


def server_url(deployment: Deployment) -> str:
    """libpq URL of the deployment's PostgreSQL database (without the schema)."""
    return deployment.database_url.split("?", 1)[0].replace("postgresql+psycopg://", "postgresql://")


def schema_of(url: str) -> str:
    """The schema a postgres_schema URL points its search_path at."""
    return url.rsplit("search_path%3D", 1)[1]


def take_backup(deployment: Deployment, folder: Path, pg_dump: str) -> Path:
    """A backup of the running service's database, as an operator takes one: SQLite's online backup API
    (a consistent copy while the server writes), PostgreSQL's pg_dump of the schema."""
    if deployment.backend == "sqlite":
        backup = folder / "backup.db"
        source, copy = sqlite3.connect(deployment.state / "vdno.db"), sqlite3.connect(backup)
        try:
            source.backup(copy)
        finally:
            source.close()
            copy.close()
        return backup
    backup = folder / "backup.dump"
    schema = schema_of(deployment.database_url)
    dump = [pg_dump, "--format=custom", f"--schema={schema}", f"--file={backup}", server_url(deployment)]
    subprocess.run(dump, check=True, capture_output=True, timeout=120)
    return backup


def restore_backup(deployment: Deployment, backup: Path, pg_restore: str) -> None:
    """Replace the (stopped) service's database with the backup."""
    if deployment.backend == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            (deployment.state / f"vdno.db{suffix}").unlink(missing_ok=True)
        shutil.copyfile(backup, deployment.state / "vdno.db")
        return
    with psycopg.connect(server_url(deployment), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema_of(deployment.database_url)}" CASCADE')
    restore = [pg_restore, f"--dbname={server_url(deployment)}", str(backup)]
    subprocess.run(restore, check=True, capture_output=True, timeout=120)


def hand_outs(deployment: Deployment, count: int, request_ids: list[str] | None = None) -> list[Any]:
    """`count` hand-outs of fresh meters (with these request ids, or new ones); the replies."""
    transport, device_ids = deployment.meters(count)
    ids = request_ids or [new_request_id() for _ in range(count)]
    with deployment.client() as api:
        return [
            api.request_hand_out(
                request_id, device_id.hex(), 12, reading.device_certificate, reading.credentials_response
            )
            for request_id, device_id in zip(ids, device_ids, strict=True)
            for reading in [read_meter(transport, device_id)]
        ]


def test_restoring_an_old_backup_reuses_no_counter(
    deployment: Deployment, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    pg_dump, pg_restore = (
        request.getfixturevalue("postgres_backup_tools") if deployment.backend == "postgres" else ("", "")
    )
    before = hand_outs(deployment, 4)
    backup = take_backup(deployment, tmp_path, pg_dump)
    lost_ids = [new_request_id() for _ in range(4)]
    lost = hand_outs(deployment, 4, lost_ids)  # issued after the backup: the restore forgets them
    highest = max(int(r.originator_counter) for r in [*before, *lost])

    deployment.server.stop()
    restore_backup(deployment, backup, pg_restore)
    deployment.server.start()
    with deployment.engine() as engine, engine.connect() as conn:
        restored_last = conn.execute(text("SELECT last_value FROM counters WHERE generation = 1")).one()[0]
    assert restored_last < highest  # the backup is older than the counters the meters have seen
    assert deployment.issuance_rows(request_id=lost_ids[0]) == []

    after = hand_outs(deployment, 4) + hand_outs(deployment, 2, lost_ids[:2])  # new ids, and lost ones again
    counters = [int(r.originator_counter) for r in after]
    assert min(counters) > highest  # the clock floor, not the restored last value, sets the next counter
    vanilla_ds = x509.load_der_x509_certificate(deployment.vanilla_certificates()[0])
    for reply in after:
        message = decode_message(reply.command)
        verify_signature(message.signed_range, message.apdu.signature, vanilla_ds)
        assert message.apdu.header.originator_counter == reply.originator_counter
    assert deployment.verify_audit().returncode == 0
