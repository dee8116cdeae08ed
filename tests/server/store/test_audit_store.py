"""The audit log read back from SQLite and PostgreSQL a page at a time: verification, export, and the
damage a database edit does, named."""

from __future__ import annotations

import io

import pytest
from sqlalchemy import text
from test_sql_store import store, store_url  # noqa: F401 (fixtures)

from vdno.server.domain.audit import (
    ENTRY_FIELDS,
    ChainHead,
    CheckpointClaim,
    CheckpointStatus,
    ProblemKind,
    read_export,
    verify_source,
)
from vdno.server.domain.values import AuditEvent
from vdno.server.store.audit import audit_snapshot, export_log, verify_chain, verify_log
from vdno.server.store.sql import SqlCustodyStore

PAGE = 7  # entries per page: the 50 entries below span several pages


def fill(target: SqlCustodyStore, count: int = 50) -> None:
    for start in range(0, count, 10):  # several transactions, several timestamps
        events = [
            AuditEvent("bench.enrolled", "t", f"bench:b{i}", {"i": i, "t": 'q"é'})
            for i in range(start, start + 10)
        ]
        target._writer.submit(lambda _c, sink, events=events: sink.extend(events))


def hash_at(target: SqlCustodyStore, seq: int) -> str:
    with target.engine.connect() as c:
        return str(c.execute(text("SELECT hash FROM audit_log WHERE seq = :s"), {"s": seq}).scalar_one())


def test_the_log_is_verified_page_by_page_against_checkpoints(store: SqlCustodyStore) -> None:  # noqa: F811
    fill(store)
    claims = [CheckpointClaim(f"cp{n}", ChainHead(n, hash_at(store, n))) for n in (7, 8, 50)]
    report = verify_log(store.engine, claims, page_rows=PAGE)
    assert report.ok and report.entries == 50 and report.head == ChainHead(50, hash_at(store, 50))
    assert [c.status for c in report.checkpoints] == [CheckpointStatus.REACHED] * 3
    with audit_snapshot(store.engine, page_rows=PAGE) as snapshot:
        sizes = [len(page) for page in snapshot.pages()]
    assert max(sizes) == PAGE and sum(sizes) == 50


def test_an_export_holds_the_rows_as_stored_and_verifies_like_the_database(
    store: SqlCustodyStore,  # noqa: F811
) -> None:
    fill(store, 30)
    out = io.StringIO()
    count, head = export_log(store.engine, out, page_rows=PAGE)
    assert count == 30 and head == ChainHead(30, hash_at(store, 30))
    exported = read_export(io.StringIO(out.getvalue()))
    with store.engine.connect() as c:
        stored = [
            tuple(r) for r in c.execute(text(f"SELECT {', '.join(ENTRY_FIELDS)} FROM audit_log ORDER BY seq"))
        ]
    assert [r for page in exported.pages() for r in page] == stored
    assert (
        verify_source(read_export(io.StringIO(out.getvalue()))).as_json()
        == verify_log(store.engine).as_json()
    )


def test_database_edits_are_named(store: SqlCustodyStore) -> None:  # noqa: F811
    fill(store, 20)
    checkpoint = CheckpointClaim("cp", ChainHead(18, hash_at(store, 18)))
    with store.engine.begin() as c:  # the newest rows deleted and the head moved to match
        c.execute(text("DELETE FROM audit_log WHERE seq > 15"))
        c.execute(text("UPDATE audit_head SET seq = 15, hash = :h WHERE id = 1"), {"h": hash_at(store, 15)})
    assert verify_chain(store.engine).ok
    [problem] = verify_log(store.engine, [checkpoint], page_rows=PAGE).problems
    assert (problem.kind, problem.seq) == (ProblemKind.LOG_TRUNCATED, 16)
    with store.engine.begin() as c:
        c.execute(text("DELETE FROM audit_log WHERE seq = 9"))
    result = verify_chain(store.engine)
    assert not result.ok and result.entries == 8 and (result.problem or "").startswith("entry 9: missing")
    with store.engine.begin() as c:
        c.execute(text("DELETE FROM audit_head"))
    kinds = [p.kind for p in verify_log(store.engine).problems]
    assert kinds == [ProblemKind.SEQUENCE_GAP, ProblemKind.HEAD_MISSING]


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_postgres_streams_the_log_through_a_server_side_cursor(store: SqlCustodyStore) -> None:  # noqa: F811
    """verify-audit in constant memory on PostgreSQL: the entries stay on the server, in a cursor of the
    snapshot's transaction, and come a page at a time (SQLite's cursor steps through the file)."""
    fill(store, 30)
    with audit_snapshot(store.engine, page_rows=PAGE) as snapshot:
        pages = snapshot.pages()
        assert len(next(pages)) == PAGE
        held = snapshot._conn.exec_driver_sql("SELECT name, statement FROM pg_cursors").all()
        assert [name for name, _ in held] == ["vdno_audit_walk"] and "FROM audit_log" in held[0][1]
        assert sum(len(page) for page in pages) == 30 - PAGE
