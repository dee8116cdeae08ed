"""Helpers of the audit tests: `vdno-admin` run in-process (CliRunner) or as a subprocess, copies of a
deployment's audit log to damage (SQLite: the database file; PostgreSQL: the two audit tables in a schema
of their own), the kinds of damage, and a checkpoint forged with a software key."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from integration_testlib import BIN, Deployment
from sqlalchemy import Connection, create_engine, text
from typer.testing import CliRunner

from vdno.admin.cli import app as admin_app
from vdno.gbcs.signature import der_to_raw
from vdno.server.domain.audit import ChainHead
from vdno.server.domain.checkpoint import AuditCheckpoint, key_id_of


@dataclass(frozen=True)
class AdminRun:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def admin(args: list[str], database_url: str | None = None) -> AdminRun:
    """`vdno-admin ARGS` in-process (the real CLI code; offline commands need no server settings)."""
    env = {"VDNO_DATABASE_URL": database_url} if database_url else {}
    result = CliRunner().invoke(admin_app, args, env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return AdminRun(result.exit_code, result.stdout, result.stderr)


def admin_process(args: list[str], database_url: str) -> AdminRun:
    """`vdno-admin ARGS` as its own process."""
    done = subprocess.run(
        [str(BIN / "vdno-admin"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "VDNO_DATABASE_URL": database_url},
        check=False,
    )
    return AdminRun(done.returncode, done.stdout, done.stderr)


def officer_args(deployment: Deployment, officer: str = "officer-01") -> list[str]:
    config = deployment.state / "clients" / f"{officer}.toml"
    return ["--config", str(config), "--server", deployment.target]


def take_checkpoint(deployment: Deployment, out: Path) -> dict[str, Any]:
    run = admin([*officer_args(deployment), "audit", "checkpoint", "--out", str(out), "--json"])
    assert run.code == 0, run.stderr
    summary: dict[str, Any] = run.json()
    return summary


@contextlib.contextmanager
def log_copy(deployment: Deployment, folder: Path) -> Iterator[str]:
    """A copy of the deployment's audit log to damage; yields its database URL."""
    if deployment.backend == "sqlite":
        target = folder / f"copy-{uuid.uuid4().hex[:8]}.db"
        source = sqlite3.connect(deployment.state / "vdno.db")
        copy = sqlite3.connect(target)
        with contextlib.closing(source), contextlib.closing(copy):
            source.backup(copy)
        yield f"sqlite:///{target}"
        return
    base, _, options = deployment.database_url.partition("?")
    source_schema = options.rsplit("%3D", 1)[1]
    schema = f"audit_{uuid.uuid4().hex[:10]}"
    engine = create_engine(base)
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            for table in ("audit_log", "audit_head"):
                conn.execute(
                    text(f'CREATE TABLE "{schema}".{table} (LIKE "{source_schema}".{table} INCLUDING ALL)')
                )
                conn.execute(text(f'INSERT INTO "{schema}".{table} SELECT * FROM "{source_schema}".{table}'))
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@contextlib.contextmanager
def connection(url: str) -> Iterator[Connection]:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def last_seq(conn: Connection) -> int:
    return int(conn.execute(text("SELECT max(seq) FROM audit_log")).scalar_one())


def hash_at(conn: Connection, seq: int) -> str:
    return str(conn.execute(text("SELECT hash FROM audit_log WHERE seq = :s"), {"s": seq}).scalar_one())


def body_at(conn: Connection, seq: int) -> bytes:
    return bytes(conn.execute(text("SELECT body FROM audit_log WHERE seq = :s"), {"s": seq}).scalar_one())


def edit_record(conn: Connection, seq: int, old: bytes, new: bytes) -> None:
    """Replace `old` by `new` in entry `seq`'s record (its body), the hash left as it was."""
    body = body_at(conn, seq)
    assert old in body
    conn.execute(
        text("UPDATE audit_log SET body = :b WHERE seq = :s"), {"b": body.replace(old, new, 1), "s": seq}
    )


def rehash_from(conn: Connection, seq: int) -> None:
    """Relink and recompute every record and hash from entry `seq` on and move the head to match: a rewrite
    the chain alone cannot tell from the real log."""
    prev = hash_at(conn, seq - 1) if seq > 1 else "0" * 64
    rows = conn.execute(
        text("SELECT seq, body FROM audit_log WHERE seq >= :s ORDER BY seq"), {"s": seq}
    ).all()
    for row in rows:
        body = b'["' + prev.encode() + bytes(row.body)[66:]  # entry_body's layout: ["<prev_hash>",<seq>,...
        digest = hashlib.sha256(body).hexdigest()
        conn.execute(
            text("UPDATE audit_log SET prev_hash = :p, hash = :h, body = :b WHERE seq = :s"),
            {"p": prev, "h": digest, "b": body, "s": row.seq},
        )
        prev = digest
    conn.execute(
        text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1"), {"s": rows[-1].seq, "h": prev}
    )


def move_head_to(conn: Connection, seq: int) -> None:
    conn.execute(
        text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1"), {"s": seq, "h": hash_at(conn, seq)}
    )


def forged_checkpoint(head: ChainHead, at: str, key_id: str | None = None) -> tuple[str, str]:
    """A checkpoint of `head` signed by a key that is not the audit key: (document, that key's id). The
    document names `key_id` when given (a forger copying the audit key's id), else the signing key's."""
    private = ec.generate_private_key(ec.SECP256R1())
    payload = AuditCheckpoint.payload_of(head, at)
    signature = der_to_raw(private.sign(payload, ec.ECDSA(hashes.SHA256())))
    own_id = key_id_of(private.public_key())
    return AuditCheckpoint(head, at, key_id or own_id, signature).to_document(), own_id


__all__ = [
    "AdminRun",
    "admin",
    "admin_process",
    "body_at",
    "connection",
    "edit_record",
    "forged_checkpoint",
    "hash_at",
    "last_seq",
    "log_copy",
    "move_head_to",
    "officer_args",
    "rehash_from",
    "take_checkpoint",
]
