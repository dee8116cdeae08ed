"""Hash-chained audit log (docs/architecture.md §5.9): append inside the caller's transaction; read it back in
one consistent snapshot, a page at a time (constant memory on SQLite and PostgreSQL), to verify or export it
offline. Each entry is recorded as its hashed bytes (`body`); verification reads (seq, body, hash) alone, on
a long log in seq ranges walked by worker processes at once. The chain's rules and the verification are
server/domain/audit.py."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import multiprocessing
import os
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from sqlalchemy import Connection, Dialect, Engine
from sqlalchemy.exc import NoResultFound, SQLAlchemyError

from vdno.server.domain.audit import (
    GENESIS,
    GENESIS_HASH,
    AuditProblem,
    AuditRecord,
    AuditReport,
    AuditRow,
    AuditTip,
    ChainHead,
    ChainWalk,
    CheckpointClaim,
    ProblemKind,
    entry_body,
    export_header,
    export_line,
    join_walks,
    row_of,
    verify_source,
    walk_records,
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
    "default_workers",
    "export_log",
    "read_audit_tip",
    "verify_chain",
    "verify_log",
    "worker_count",
]

MAX_ROWS_PER_INSERT = 256  # 9 parameters a row: well under SQLite's and PostgreSQL's parameter limits
PAGE_ROWS = 2000  # entries held in memory at once while reading the log back
HEAD = "SELECT seq, hash FROM audit_head WHERE id = 1"
# The head row with the entries at and just after it, in one statement (one snapshot on PostgreSQL too).
TIP = (
    "SELECT h.seq, h.hash, l.seq, l.hash FROM audit_head h "
    "LEFT JOIN audit_log l ON l.seq >= h.seq AND l.seq <= h.seq + 1 WHERE h.id = 1 ORDER BY l.seq"
)
ENTRIES = "SELECT seq, body, hash FROM audit_log ORDER BY seq"
RANGE = "SELECT seq, body, hash FROM audit_log WHERE seq >= {mark} AND seq <= {mark} ORDER BY seq"
# The log's ends in the snapshot, each from the primary key's index: range walks are used only when the seqs
# start at 1 and are whole numbers (a text seq, which SQLite would keep, is the maximum). Gaps and
# entries out of place within 1..max are what the range walks find.
FIRST = "SELECT min(seq) FROM audit_log"
LAST = "SELECT max(seq) FROM audit_log"
PARALLEL_FROM = 1_000_000  # entries from which verification walks seq ranges in worker processes
# json.dumps with options builds a new encoder per call; this one is built once (and is thread-safe).
_DETAILS = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


class AuditAppender:
    """Appends events inside the caller's transaction (docs/architecture.md §5.9), with its SQL prepared once
    for the dialect. The chain head row serialises appenders: PostgreSQL locks it (FOR UPDATE) so replicas
    take turns; on SQLite the writer already holds the database's write lock."""

    def __init__(self, dialect: Dialect) -> None:
        mark = "%s" if dialect.paramstyle in ("format", "pyformat") else "?"  # the driver's placeholder
        self._read_head = HEAD + (" FOR UPDATE" if dialect.name == "postgresql" else "")
        self._row_marks = "(" + ", ".join([mark] * 9) + ")"
        self._inserts: dict[int, str] = {}  # rows per statement -> INSERT with that many VALUES groups
        self._update_head = f"UPDATE audit_head SET seq = {mark}, hash = {mark} WHERE id = 1"  # noqa: S608

    def _insert(self, rows: int) -> str:
        sql = self._inserts.get(rows)
        if sql is None:
            groups = ", ".join([self._row_marks] * rows)
            sql = f"INSERT INTO audit_log (seq, at, event, actor, subject, details, prev_hash, hash, body) VALUES {groups}"  # noqa: S608, E501
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
            sha256 = hashlib.sha256
            for event in events:
                seq += 1
                details = _DETAILS.encode(event.details)
                body = entry_body(prev, seq, at, event.event, event.actor, event.subject, details)
                digest = sha256(body).hexdigest()
                values += (seq, at, event.event, event.actor, event.subject, details, prev, digest, body)
                prev = digest
            for start in range(0, len(events), MAX_ROWS_PER_INSERT):  # one statement per chunk of rows
                chunk = values[9 * start : 9 * (start + MAX_ROWS_PER_INSERT)]
                cursor.execute(self._insert(len(chunk) // 9), chunk)
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
    flat whatever the log's length. With `workers` > 1 a log of at least `parallel_from` entries is walked
    in that many seq ranges at once, one worker process each (_walk_range)."""

    def __init__(self, conn: Connection, page_rows: int, workers: int, parallel_from: int) -> None:
        self._conn = conn
        self._page_rows = page_rows
        self._workers = workers
        self._parallel_from = parallel_from
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

    def pages(self) -> Iterator[Sequence[AuditRecord]]:
        """Every entry's record (seq, body, hash) in seq order."""
        return _pages(self._conn, ENTRIES, (), self._page_rows)

    def rows(self) -> Iterator[Sequence[AuditRow]]:
        """Every entry as its record holds it (row_of), in seq order. AuditDocumentInvalid at the first
        record that is not an entry's JSON array."""
        for page in self.pages():
            yield [row_of(record) for record in page]

    def walk(self, watch: set[int]) -> ChainWalk:
        tasks = self._range_tasks(watch)
        if tasks:
            # spawn, not fork: a fork copies the locks other threads of this process hold (a test runner's,
            # coverage's), and a worker could wait on one for ever. Each worker starts a fresh interpreter
            # (about half a second, hence PARALLEL_FROM) and opens its own engine.
            # A pool executor, not multiprocessing.Pool: a worker that dies breaks it (BrokenProcessPool)
            # where Pool would wait for its task for ever; then the one pass below does the work.
            try:
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(len(tasks), mp_context=context) as pool:
                    joined = join_walks(list(pool.map(_walk_range, tasks)))
            except BrokenProcessPool:
                joined = None
            if joined is not None:
                return joined
        return walk_records(self.pages(), watch)  # one pass; also names the first bad entry

    def _range_tasks(self, watch: set[int]) -> list[_RangeTask]:
        """One task a worker when the log is long and its seqs run from 1 in this snapshot (else none: one
        pass finds whatever is odd). Every range ends at or before this snapshot's last entry, so
        workers reading later snapshots (SQLite) see the same entries while the log is only appended to;
        on PostgreSQL they import this transaction's snapshot."""
        url = self._conn.engine.url
        if self._workers < 2 or (
            url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
        ):
            return []
        first, last = (self._conn.exec_driver_sql(sql).scalar() for sql in (FIRST, LAST))
        if not (type(first) is int and type(last) is int and first == 1):
            return []
        if last < max(self._parallel_from, self._workers):
            return []
        snapshot = None
        if self._conn.dialect.name == "postgresql":
            snapshot = str(self._conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one())
        size = -(-last // self._workers)
        return [
            _RangeTask(
                url.render_as_string(hide_password=False),
                snapshot,
                start,
                min(start + size - 1, last),
                frozenset(watch),
                self._page_rows,
            )
            for start in range(1, last + 1, size)
        ]


@dataclass(frozen=True)
class _RangeTask:
    """Entries first..last to walk in a worker, from entry first - 1 (read, verified by the range before)."""

    url: str
    snapshot: str | None  # PostgreSQL: the exported snapshot to read in
    first: int
    last: int
    watch: frozenset[int]
    page_rows: int


def _walk_range(task: _RangeTask) -> ChainWalk:
    """A worker process's walk of one range, in a connection of its own (constant memory: a page at a
    time). Database errors come back as StoreUnavailable, whose message names the cause."""
    from vdno.server.store.engine import make_engine

    engine = make_engine(task.url)
    errors = (SQLAlchemyError, engine.dialect.loaded_dbapi.Error)
    try:
        with engine.connect() as conn:
            if task.snapshot is not None:
                conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                if task.snapshot is not None:  # the first statement of the transaction
                    conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{task.snapshot}'")
                mark = "%s" if conn.dialect.paramstyle in ("format", "pyformat") else "?"
                sql = RANGE.format(mark=mark)
                pages = _pages(conn, sql, (task.first - 1, task.last), task.page_rows)
                with contextlib.closing(pages):  # its cursor closed while the connection is open
                    return _walk_from(pages, task.first, set(task.watch))
    except errors as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StoreUnavailable(f"the audit log cannot be read by a verifying worker: {reason}") from None
    finally:
        engine.dispose()


def _walk_from(pages: Iterator[Sequence[AuditRecord]], first: int, watch: set[int]) -> ChainWalk:
    """walk_records over pages that start with entry first - 1 (none when first is 1): that entry is where
    the walk starts. A walk with a problem when it is not there (join_walks then falls back to one pass)."""
    if first == 1:
        return walk_records(pages, watch)
    page = next(pages, [])
    try:
        if not page or page[0][0] != first - 1:
            raise AuditDocumentInvalid(f"entry {first - 1}: not found")
        start = ChainHead(page[0][0], page[0][2])
    except AuditDocumentInvalid as exc:
        problem = AuditProblem(ProblemKind.MALFORMED_ENTRY, f"the range from entry {first}: {exc}", first - 1)
        return ChainWalk(GENESIS, 0, GENESIS, problem, {})
    return walk_records(itertools.chain([page[1:]], pages), watch, start)


def _pages(
    conn: Connection, sql: str, params: Sequence[object], page_rows: int
) -> Generator[Sequence[Any], None, None]:
    dbapi: Any = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        cursor = dbapi.cursor(name="vdno_audit_walk", binary=True)
        cursor.itersize = page_rows
    else:
        cursor = dbapi.cursor()
    try:
        cursor.execute(sql, params)
        while True:
            page = cursor.fetchmany(page_rows)
            if not page:
                return
            yield page
    finally:
        cursor.close()


@contextlib.contextmanager
def audit_snapshot(
    engine: Engine, page_rows: int = PAGE_ROWS, workers: int = 1, parallel_from: int = PARALLEL_FROM
) -> Iterator[AuditSnapshot]:
    """One consistent, read-only view of the log. StoreUnavailable when the database cannot be read.
    `workers`: processes that walk the log in seq ranges when it has `parallel_from` entries or more."""
    errors = (SQLAlchemyError, engine.dialect.loaded_dbapi.Error)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                yield AuditSnapshot(conn, page_rows, workers, parallel_from)
    except errors as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # no statement, no link
        raise StoreUnavailable(
            f"the audit log in {engine.url.render_as_string()} cannot be read: {reason}"
        ) from exc


def worker_count(option: int) -> int:
    """What `--workers N` asks for: N processes; 0, default_workers()."""
    return option or default_workers()


def default_workers() -> int:
    """`--workers 0`: one worker process a CPU this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def verify_log(
    engine: Engine,
    claims: Sequence[CheckpointClaim] = (),
    page_rows: int = PAGE_ROWS,
    workers: int = 1,
    parallel_from: int = PARALLEL_FROM,
) -> AuditReport:
    """Verify the log in one snapshot: in one pass, or with `workers` > 1 processes walking seq ranges of a
    log of `parallel_from` entries or more (docs/benchmarks.md: on 2 cores they gain little or lose)."""
    with audit_snapshot(engine, page_rows, workers, parallel_from) as snapshot:
        return verify_source(snapshot, claims)


def export_log(engine: Engine, out: TextIO, page_rows: int = PAGE_ROWS) -> tuple[int, ChainHead | None]:
    """Write the log as JSON lines (server/domain/audit.py): the header with the chain head, then every
    entry as its record holds it (the readable columns are not read), from one snapshot. (entries written,
    the head). AuditDocumentInvalid when the head row is malformed or a record is not an entry's JSON
    array (verify the database itself: it names that)."""
    count = 0
    with audit_snapshot(engine, page_rows) as snapshot:
        out.write(export_header(snapshot.head, datetime.now(UTC).isoformat()) + "\n")
        for page in snapshot.rows():
            out.write("".join(export_line(row) + "\n" for row in page))
            count += len(page)
        return count, snapshot.head


@dataclass(frozen=True)
class AuditVerification:
    entries: int
    ok: bool
    problem: str | None = None


def verify_chain(engine: Engine, workers: int = 1) -> AuditVerification:
    """Walk the whole log: every entry's prev_hash is the previous hash, every hash recomputes, seqs are
    contiguous from 1, and the head row names the last entry. `workers` as for verify_log."""
    report = verify_log(engine, workers=workers)
    return AuditVerification(
        report.entries, report.ok, report.problems[0].message if report.problems else None
    )
