"""Hash-chained audit log (docs/architecture.md §5.9): append inside the caller's transaction; read it back in
one consistent snapshot, a page at a time (constant memory on SQLite and PostgreSQL), to verify or export it
offline. The chain's rules and the verification are server/domain/audit.py."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from sqlalchemy import Connection, Dialect, Engine
from sqlalchemy.exc import NoResultFound, SQLAlchemyError

from vdno.server.domain.audit import (
    GENESIS_HASH,
    AuditReport,
    AuditRow,
    AuditTip,
    ChainHead,
    CheckpointClaim,
    entry_hash,
    export_header,
    export_line,
    verify_source,
)
from vdno.server.domain.errors import AuditChainBroken, AuditDocumentInvalid, StoreUnavailable
from vdno.server.domain.values import AuditEvent

__all__ = [
    "GENESIS_HASH",
    "PAGE_ROWS",
    "AuditAppender",
    "AuditSnapshot",
    "AuditVerification",
    "audit_snapshot",
    "export_log",
    "read_audit_tip",
    "verify_chain",
    "verify_log",
]

MAX_ROWS_PER_INSERT = 256  # 8 parameters a row: well under SQLite's and PostgreSQL's parameter limits
PAGE_ROWS = 2000  # entries held in memory at once while reading the log back
HEAD = "SELECT seq, hash FROM audit_head WHERE id = 1"
# The head row with the entries at and just after it, in one statement (one snapshot on PostgreSQL too).
TIP = (
    "SELECT h.seq, h.hash, l.seq, l.hash FROM audit_head h "
    "LEFT JOIN audit_log l ON l.seq >= h.seq AND l.seq <= h.seq + 1 WHERE h.id = 1 ORDER BY l.seq"
)
ENTRIES = "SELECT seq, at, event, actor, subject, details, prev_hash, hash FROM audit_log ORDER BY seq"
# json.dumps with options builds a new encoder per call; this one is built once (and is thread-safe).
_DETAILS = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


class AuditAppender:
    """Appends events inside the caller's transaction (docs/architecture.md §5.9), with its SQL prepared once
    for the dialect. The chain head row serialises appenders: PostgreSQL locks it (FOR UPDATE) so replicas
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

    def lock_head(self, conn: Connection) -> None:
        """Take the chain head's lock as append does (PostgreSQL; SQLite's writer holds the write lock)."""
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self._read_head)
        finally:
            cursor.close()

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
                digest = entry_hash(prev, seq, at, event.event, event.actor, event.subject, details)
                values += (seq, at, event.event, event.actor, event.subject, details, prev, digest)
                prev = digest
            for start in range(0, len(events), MAX_ROWS_PER_INSERT):  # one statement per chunk of rows
                chunk = values[8 * start : 8 * (start + MAX_ROWS_PER_INSERT)]
                cursor.execute(self._insert(len(chunk) // 8), chunk)
            cursor.execute(self._update_head, (seq, prev))
        finally:
            cursor.close()


def read_audit_tip(conn: Connection) -> AuditTip | None:
    """The chain head row and what the log holds at and after it. AuditChainBroken when the row is
    malformed."""
    rows = conn.exec_driver_sql(TIP).all()
    if not rows:
        return None
    try:
        head = ChainHead(rows[0][0], rows[0][1])
    except AuditDocumentInvalid as exc:
        raise AuditChainBroken(f"the audit chain head row is malformed: {exc}") from None
    at_head = next((str(r[3]) for r in rows if r[2] == head.seq), None)
    return AuditTip(head, at_head, any(r[2] is not None and r[2] > head.seq for r in rows))


class AuditSnapshot:
    """The log as one read transaction sees it (an AuditSource): SQLite's deferred BEGIN keeps one snapshot
    for the transaction, PostgreSQL runs it REPEATABLE READ. Entries are read with the driver's cursor a
    page at a time: a server-side (named) cursor on PostgreSQL, SQLite's stepping cursor, so memory stays
    flat whatever the log's length."""

    def __init__(self, conn: Connection, page_rows: int) -> None:
        self._conn = conn
        self._page_rows = page_rows
        self._head_row = conn.exec_driver_sql(HEAD).first()

    @property
    def head(self) -> ChainHead | None:
        """AuditDocumentInvalid when the head row holds something other than a seq and a hash."""
        if self._head_row is None:
            return None
        seq, digest = self._head_row
        try:
            return ChainHead(seq, digest)
        except AuditDocumentInvalid as exc:
            raise AuditDocumentInvalid(f"the chain head row is malformed: {exc}") from None

    def pages(self) -> Iterator[Sequence[AuditRow]]:
        dbapi: Any = self._conn.connection.dbapi_connection
        if self._conn.dialect.name == "postgresql":
            cursor = dbapi.cursor(name="vdno_audit_walk", binary=True)
            cursor.itersize = self._page_rows
        else:
            cursor = dbapi.cursor()
        try:
            cursor.execute(ENTRIES)
            while True:
                page = cursor.fetchmany(self._page_rows)
                if not page:
                    return
                yield page
        finally:
            cursor.close()


@contextlib.contextmanager
def audit_snapshot(engine: Engine, page_rows: int = PAGE_ROWS) -> Iterator[AuditSnapshot]:
    """One consistent, read-only view of the log. StoreUnavailable when the database cannot be read."""
    errors = (SQLAlchemyError, engine.dialect.loaded_dbapi.Error)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                yield AuditSnapshot(conn, page_rows)
    except errors as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # no statement, no link
        raise StoreUnavailable(
            f"the audit log in {engine.url.render_as_string()} cannot be read: {reason}"
        ) from exc


def verify_log(
    engine: Engine, claims: Sequence[CheckpointClaim] = (), page_rows: int = PAGE_ROWS
) -> AuditReport:
    with audit_snapshot(engine, page_rows) as snapshot:
        return verify_source(snapshot, claims)


def export_log(engine: Engine, out: TextIO, page_rows: int = PAGE_ROWS) -> tuple[int, ChainHead | None]:
    """Write the log as JSON lines (server/domain/audit.py): the header with the chain head, then every
    entry as stored, from one snapshot. (entries written, the head). AuditDocumentInvalid when the head
    row is malformed (verify the database itself: it names that)."""
    count = 0
    with audit_snapshot(engine, page_rows) as snapshot:
        out.write(export_header(snapshot.head, datetime.now(UTC).isoformat()) + "\n")
        for page in snapshot.pages():
            out.write("".join(export_line(row) + "\n" for row in page))
            count += len(page)
        return count, snapshot.head


@dataclass(frozen=True)
class AuditVerification:
    entries: int
    ok: bool
    problem: str | None = None


def verify_chain(engine: Engine) -> AuditVerification:
    """Walk the whole log: every entry's prev_hash is the previous hash, every hash recomputes, seqs are
    contiguous from 1, and the head row names the last entry."""
    report = verify_log(engine)
    return AuditVerification(
        report.entries, report.ok, report.problems[0].message if report.problems else None
    )
