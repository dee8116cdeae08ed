"""Hash-chained audit log (ARCHITECTURE §5.9): append inside the caller's transaction; verify offline."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, Dialect, Engine, select
from sqlalchemy.exc import NoResultFound

from server.domain.values import AuditEvent
from server.store.schema import audit_head, audit_log

GENESIS_HASH = "0" * 64
MAX_ROWS_PER_INSERT = 256  # 8 parameters a row: well under SQLite's and PostgreSQL's parameter limits
HEAD = "SELECT seq, hash FROM audit_head WHERE id = 1"
# json.dumps with options builds a new encoder per call; these are built once (and are thread-safe).
_HASHED_BODY = json.JSONEncoder(separators=(",", ":"))
_DETAILS = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def _entry_hash(prev_hash: str, seq: int, at: str, event: str, actor: str, subject: str, details: str) -> str:
    body = _HASHED_BODY.encode([prev_hash, seq, at, event, actor, subject, details])
    return hashlib.sha256(body.encode()).hexdigest()


class AuditAppender:
    """Appends events inside the caller's transaction (ARCHITECTURE §5.9), with its SQL prepared once for
    the dialect. The chain head row serialises appenders: PostgreSQL locks it (FOR UPDATE) so replicas
    take turns; on SQLite the writer already holds the database's write lock."""

    def __init__(self, dialect: Dialect) -> None:
        mark = "%s" if dialect.paramstyle in ("format", "pyformat") else "?"  # the driver's placeholder
        self._read_head = HEAD + (" FOR UPDATE" if dialect.name == "postgresql" else "")
        self._row_marks = "(" + ", ".join([mark] * 8) + ")"
        self._inserts: dict[int, str] = {}  # rows per statement -> INSERT with that many VALUES groups
        self._update_head = f"UPDATE audit_head SET seq = {mark}, hash = {mark} WHERE id = 1"  # noqa: S608

    def _insert(self, rows: int) -> str:
        sql = self._inserts.get(rows)
        if sql is None:
            groups = ", ".join([self._row_marks] * rows)
            sql = f"INSERT INTO audit_log (seq, at, event, actor, subject, details, prev_hash, hash) VALUES {groups}"  # noqa: S608, E501
            self._inserts[rows] = sql
        return sql

    def append(self, conn: Connection, events: list[AuditEvent]) -> None:
        """Append events in order after the chain head."""
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self._read_head)
            head = cursor.fetchone()
            if head is None:
                raise NoResultFound("audit_head row 1 is missing (the initial migration creates it)")
            seq, prev = int(head[0]), str(head[1])
            at = datetime.now(UTC).isoformat()
            values: list[object] = []
            for event in events:
                seq += 1
                details = _DETAILS.encode(event.details)
                digest = _entry_hash(prev, seq, at, event.event, event.actor, event.subject, details)
                values += (seq, at, event.event, event.actor, event.subject, details, prev, digest)
                prev = digest
            for start in range(0, len(events), MAX_ROWS_PER_INSERT):  # one statement per chunk of rows
                chunk = values[8 * start : 8 * (start + MAX_ROWS_PER_INSERT)]
                cursor.execute(self._insert(len(chunk) // 8), chunk)
            cursor.execute(self._update_head, (seq, prev))
        finally:
            cursor.close()


@dataclass(frozen=True)
class AuditVerification:
    entries: int
    ok: bool
    problem: str | None = None


def verify_chain(engine: Engine) -> AuditVerification:
    """Walk the whole log: every entry's prev_hash is the previous hash, every hash recomputes, seqs are
    contiguous from 1, and the head row names the last entry."""
    prev, count = GENESIS_HASH, 0
    with engine.connect() as conn:
        for row in conn.execute(select(audit_log).order_by(audit_log.c.seq)):
            count += 1
            if row.seq != count:
                return AuditVerification(count - 1, False, f"sequence gap: expected {count}, found {row.seq}")
            if row.prev_hash != prev:
                return AuditVerification(count - 1, False, f"entry {row.seq}: prev_hash does not link")
            expect = _entry_hash(prev, row.seq, row.at, row.event, row.actor, row.subject, row.details)
            if row.hash != expect:
                return AuditVerification(
                    count - 1, False, f"entry {row.seq}: hash does not match its content"
                )
            prev = row.hash
        head = conn.execute(select(audit_head).where(audit_head.c.id == 1)).one()
    if head.seq != count or head.hash != prev:
        return AuditVerification(count, False, "chain head does not name the last entry (truncated log?)")
    return AuditVerification(count, True)
