"""The audit log read back from SQLite and PostgreSQL a page at a time: verification (in one pass and in seq
ranges walked by worker processes), export from the records, and the damage a database edit does, named."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

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
    record_of,
    verify_source,
)
from vdno.server.domain.errors import StoreUnavailable
from vdno.server.domain.values import AuditEvent
from vdno.server.store.audit import (
    _RangeTask,
    _walk_range,
    audit_snapshot,
    export_log,
    verify_chain,
    verify_log,
)
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
    assert [r for page in exported.pages() for r in page] == [record_of(row) for row in stored]
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


def test_an_edited_readable_column_changes_nothing_shown_and_an_edited_record_is_named(
    store: SqlCustodyStore,  # noqa: F811
) -> None:
    """The readable columns are a search index (server/domain/audit.py): the export shows the records, so an
    edit of a column shows nowhere and verification, which reads the records, has nothing to report."""
    fill(store, 10)
    before = io.StringIO()
    export_log(store.engine, before)
    with store.engine.begin() as c:
        c.execute(text("UPDATE audit_log SET actor = 'mallory', details = '{}' WHERE seq = 4"))
    after = io.StringIO()
    export_log(store.engine, after)
    assert after.getvalue().splitlines()[1:] == before.getvalue().splitlines()[1:]
    assert '"actor":"t"' in after.getvalue().splitlines()[4] and "mallory" not in after.getvalue()
    assert verify_log(store.engine).ok
    with store.engine.begin() as c:  # the record itself edited: the hash no longer matches
        body = c.execute(text("SELECT body FROM audit_log WHERE seq = 4")).scalar_one()
        c.execute(
            text("UPDATE audit_log SET body = :b WHERE seq = 4"),
            {"b": bytes(body).replace(b'"t"', b'"m"', 1)},
        )
    [problem] = verify_log(store.engine).problems
    assert (problem.kind, problem.seq) == (ProblemKind.HASH_MISMATCH, 4)


def test_seq_ranges_walked_by_workers_verify_like_one_pass(store: SqlCustodyStore) -> None:  # noqa: F811
    fill(store, 50)
    claims = [CheckpointClaim(f"cp{n}", ChainHead(n, hash_at(store, n))) for n in (13, 17, 50)]
    one_pass = verify_log(store.engine, claims, page_rows=PAGE, workers=1)
    with audit_snapshot(store.engine, page_rows=PAGE, workers=3, parallel_from=1) as snapshot:
        assert [(t.first, t.last) for t in snapshot._range_tasks(set())] == [(1, 17), (18, 34), (35, 50)]
        ranged = verify_source(snapshot, claims)
    assert ranged.ok and ranged.as_json() == one_pass.as_json() and ranged.entries == 50
    with store.engine.begin() as c:  # damage at the start of the second range: one pass names it
        c.execute(text("UPDATE audit_log SET hash = :h WHERE seq = 18"), {"h": "f" * 64})
    damaged = verify_log(store.engine, claims, page_rows=PAGE, workers=3, parallel_from=1)
    assert damaged.as_json() == verify_log(store.engine, claims, page_rows=PAGE, workers=1).as_json()
    assert [(p.kind, p.seq) for p in damaged.problems] == [(ProblemKind.HASH_MISMATCH, 18)]
    with store.engine.begin() as c:  # the hash put back, the end of the second range deleted
        c.execute(text("UPDATE audit_log SET hash = :h WHERE seq = 18"), {"h": hash_of_body(store, 18)})
        c.execute(text("DELETE FROM audit_log WHERE seq = 34"))
    [gap] = verify_log(store.engine, page_rows=PAGE, workers=3, parallel_from=1).problems[:1]
    assert (gap.kind, gap.seq) == (ProblemKind.SEQUENCE_GAP, 34)


def hash_of_body(target: SqlCustodyStore, seq: int) -> str:
    with target.engine.connect() as c:
        body = c.execute(text("SELECT body FROM audit_log WHERE seq = :s"), {"s": seq}).scalar_one()
    return hashlib.sha256(body).hexdigest()


def test_range_workers_see_the_snapshot_not_entries_appended_since(store: SqlCustodyStore) -> None:  # noqa: F811
    fill(store, 40)
    with audit_snapshot(store.engine, page_rows=PAGE, workers=2, parallel_from=1) as snapshot:
        store.record_event(AuditEvent("bench.enrolled", "t", "bench:late", {}))  # committed after it began
        report = verify_source(snapshot, [])
    assert report.ok and report.entries == 40 and report.head == ChainHead(40, hash_at(store, 40))
    assert verify_log(store.engine, page_rows=PAGE, workers=2, parallel_from=1).entries == 41


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_postgres_range_workers_read_the_snapshot_they_were_given(store: SqlCustodyStore) -> None:  # noqa: F811
    """Each worker imports the verifying transaction's snapshot (pg_export_snapshot): an entry damaged
    after it began is not what the workers read."""
    fill(store, 30)
    with audit_snapshot(store.engine, page_rows=PAGE, workers=2, parallel_from=1) as snapshot:
        tasks = snapshot._range_tasks(set())
        with store.engine.begin() as c:
            c.execute(text("UPDATE audit_log SET hash = :h WHERE seq = 20"), {"h": "f" * 64})
        walks = [_walk_range(task) for task in tasks]
    assert [(w.problem, w.last.seq) for w in walks] == [(None, 15), (None, 30)]
    [problem] = verify_log(store.engine, page_rows=PAGE, workers=2, parallel_from=1).problems
    assert (problem.kind, problem.seq) == (ProblemKind.HASH_MISMATCH, 20)


def test_a_log_whose_seqs_do_not_start_at_1_is_walked_in_one_pass(store: SqlCustodyStore) -> None:  # noqa: F811
    fill(store, 20)
    with store.engine.begin() as c:
        c.execute(text("UPDATE audit_log SET seq = 0 WHERE seq = 20"))
    with audit_snapshot(store.engine, page_rows=PAGE, workers=2, parallel_from=1) as snapshot:
        assert snapshot._range_tasks(set()) == []
        [problem] = verify_source(snapshot, []).problems
    assert (problem.kind, problem.seq) == (ProblemKind.OUT_OF_ORDER, 1)


def test_a_worker_that_cannot_read_its_range_says_so(tmp_path: Path) -> None:
    damaged = tmp_path / "not-a-database.db"
    damaged.write_bytes(b"this is not a SQLite file" * 100)
    task = _RangeTask(f"sqlite:///{damaged}", None, 1, 10, frozenset(), PAGE)
    with pytest.raises(StoreUnavailable, match=r"cannot be read by a verifying worker: .*not a database"):
        _walk_range(task)
