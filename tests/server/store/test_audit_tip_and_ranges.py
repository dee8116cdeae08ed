"""The audit log's writer side and the pieces of a range walk, on SQLite and PostgreSQL: the chain tip a
writer reads (read_audit_tip), the appender's rows and its head lock, how a snapshot cuts the log into
worker ranges (_range_tasks), a range walked in this process (_walk_range, _walk_from), the export's
header time and the worker count (docs/architecture.md §8)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import URL, Engine, create_engine, make_url, text
from sqlalchemy.exc import NoResultFound
from sqlalchemy.pool import StaticPool
from test_audit_store import PAGE, fill, hash_at
from test_sql_store import store, store_url  # noqa: F401 (fixtures)

from vdno.server.domain.audit import (
    GENESIS,
    GENESIS_HASH,
    AuditProblem,
    AuditTip,
    ChainHead,
    ChainWalk,
    ProblemKind,
)
from vdno.server.domain.errors import AuditChainBroken
from vdno.server.domain.values import AuditEvent
from vdno.server.store.audit import (
    AuditAppender,
    _RangeTask,
    _walk_from,
    _walk_range,
    audit_snapshot,
    default_workers,
    export_log,
    read_audit_tip,
    verify_log,
    worker_count,
)
from vdno.server.store.engine import make_engine
from vdno.server.store.sql import SqlCustodyStore


def tip(engine: Engine) -> AuditTip | None:
    with engine.connect() as c:
        return read_audit_tip(c)


def test_the_tip_names_the_head_its_entry_and_whether_entries_lie_beyond(store: SqlCustodyStore) -> None:  # noqa: F811
    assert tip(store.engine) == AuditTip(GENESIS, None, False)  # the empty log: no entry 0
    fill(store, 10)
    assert tip(store.engine) == AuditTip(ChainHead(10, hash_at(store, 10)), hash_at(store, 10), False)
    with store.engine.begin() as c:  # the head moved back: entries 7..10 lie beyond it
        c.execute(text("UPDATE audit_head SET seq = 6, hash = :h WHERE id = 1"), {"h": hash_at(store, 6)})
    assert tip(store.engine) == AuditTip(ChainHead(6, hash_at(store, 6)), hash_at(store, 6), True)
    h6 = hash_at(store, 6)
    with store.engine.begin() as c:  # the head's own entry gone, the next one still there
        c.execute(text("DELETE FROM audit_log WHERE seq = 6"))
    assert tip(store.engine) == AuditTip(ChainHead(6, h6), None, True)


def test_the_tip_of_a_database_without_a_head_row_is_none_and_a_malformed_head_is_named(
    store: SqlCustodyStore,  # noqa: F811
) -> None:
    fill(store, 3)
    with store.engine.begin() as c:
        c.execute(text("UPDATE audit_head SET hash = 'not-a-hash' WHERE id = 1"))
    with pytest.raises(
        AuditChainBroken,
        match=r"^the audit chain head row is malformed: hash must be 64 lower-case hex digits, not 'not-a-",
    ):
        tip(store.engine)
    with store.engine.begin() as c:
        c.execute(text("DELETE FROM audit_head"))
    assert tip(store.engine) is None


def test_the_appender_writes_each_event_as_a_chained_row_in_chunks(store: SqlCustodyStore) -> None:  # noqa: F811
    """More events than one INSERT carries (256 rows): every row lands once, in order, chained."""
    events = [AuditEvent("bench.enrolled", "officer:o1", f"bench:b{i}", {"i": i}) for i in range(600)]
    before = datetime.now(UTC)
    with store.engine.begin() as c:
        AuditAppender(store.engine.dialect).append(c, events)
    with store.engine.connect() as c:
        rows = c.execute(
            text(
                "SELECT seq, at, event, actor, subject, details, prev_hash, hash, body "
                "FROM audit_log ORDER BY seq"
            )
        ).all()
    assert [r.seq for r in rows] == list(range(1, 601))
    assert [(r.event, r.actor, r.subject, r.details) for r in rows[:2]] == [
        ("bench.enrolled", "officer:o1", "bench:b0", '{"i":0}'),
        ("bench.enrolled", "officer:o1", "bench:b1", '{"i":1}'),
    ]
    assert rows[599].subject == "bench:b599" and rows[599].details == '{"i":599}'
    at = datetime.fromisoformat(str(rows[0].at))
    assert at.utcoffset() == timedelta(0) and before <= at <= datetime.now(UTC)
    assert {r.at for r in rows} == {rows[0].at}  # one append, one time
    prev = GENESIS_HASH
    for r in rows:
        assert r.prev_hash == prev and r.hash == hashlib.sha256(bytes(r.body)).hexdigest()
        prev = r.hash
    report = verify_log(store.engine, page_rows=PAGE, workers=1)
    assert report.ok and report.entries == 600 and report.head == ChainHead(600, prev)


def test_the_appender_without_a_head_row_says_what_is_missing(store: SqlCustodyStore) -> None:  # noqa: F811
    with store.engine.begin() as c:
        c.execute(text("DELETE FROM audit_head"))
    with (
        pytest.raises(
            NoResultFound, match=r"^audit_head row 1 is missing \(the initial migration creates it\)$"
        ),
        store.engine.begin() as c,
    ):
        AuditAppender(store.engine.dialect).append(c, [AuditEvent("bench.enrolled", "t", "bench:b", {})])


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_postgres_appenders_take_turns_on_the_head_row(store: SqlCustodyStore) -> None:  # noqa: F811
    """The head row is locked FOR UPDATE: a second appender (another replica) waits for the first."""
    appender = AuditAppender(store.engine.dialect)
    with store.engine.connect() as first, store.engine.connect() as second:
        first.begin()
        appender.lock_head(first)
        second.begin()
        second.exec_driver_sql("SET LOCAL lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable, match="lock timeout"):
            appender.lock_head(second)
        second.rollback()
        first.rollback()
        second.begin()
        appender.lock_head(second)  # the first let go: the second takes it
        second.rollback()


def ranges(engine: Engine, workers: int, parallel_from: int) -> list[tuple[int, int]]:
    with audit_snapshot(engine, page_rows=PAGE, workers=workers, parallel_from=parallel_from) as snapshot:
        return [(t.first, t.last) for t in snapshot._range_tasks(set())]


def test_a_log_is_cut_into_ranges_only_with_workers_and_from_its_threshold(store: SqlCustodyStore) -> None:  # noqa: F811
    fill(store, 20)
    assert ranges(store.engine, workers=1, parallel_from=1) == []
    assert ranges(store.engine, workers=2, parallel_from=20) == [(1, 10), (11, 20)]
    assert ranges(store.engine, workers=2, parallel_from=21) == []
    assert ranges(store.engine, workers=20, parallel_from=1)[-2:] == [(19, 19), (20, 20)]
    assert len(ranges(store.engine, workers=20, parallel_from=1)) == 20
    assert ranges(store.engine, workers=21, parallel_from=1) == []  # fewer entries than workers


@pytest.mark.parametrize("database", [None, "", ":memory:"])
def test_a_sqlite_database_in_memory_is_walked_in_one_pass(database: str | None) -> None:
    """A worker process could not open this process's private database: no ranges, one pass."""
    engine = create_engine(URL.create("sqlite", database=database), poolclass=StaticPool)
    try:
        with engine.begin() as c:
            c.exec_driver_sql("CREATE TABLE audit_head (id INTEGER PRIMARY KEY, seq INTEGER, hash TEXT)")
            c.exec_driver_sql("CREATE TABLE audit_log (seq INTEGER PRIMARY KEY, body BLOB, hash TEXT)")
            c.exec_driver_sql(f"INSERT INTO audit_head VALUES (1, 0, '{GENESIS_HASH}')")
            c.exec_driver_sql(
                "INSERT INTO audit_log VALUES (1, x'00', 'h'), (2, x'00', 'h'), (3, x'00', 'h')"
            )
        assert ranges(engine, workers=2, parallel_from=1) == []
    finally:
        engine.dispose()


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_postgres_range_tasks_carry_the_password_and_the_snapshot(store: SqlCustodyStore) -> None:  # noqa: F811
    """Workers connect on their own: the URL they are given keeps its password (trust auth ignores it)."""
    fill(store, 10)
    url = make_url(store.engine.url.render_as_string(hide_password=False)).set(password="s3cret")
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        with audit_snapshot(engine, page_rows=PAGE, workers=2, parallel_from=1) as snapshot:
            tasks = snapshot._range_tasks({3})
        assert [(t.first, t.last, t.watch, t.page_rows) for t in tasks] == [
            (1, 5, frozenset({3}), PAGE),
            (6, 10, frozenset({3}), PAGE),
        ]
        assert all(":s3cret@" in t.url and t.url == url.render_as_string(hide_password=False) for t in tasks)
        assert tasks[0].snapshot is not None and tasks[0].snapshot == tasks[1].snapshot
    finally:
        engine.dispose()


def test_a_range_walked_in_this_process_starts_from_the_entry_before_it(store: SqlCustodyStore) -> None:  # noqa: F811
    fill(store, 40)
    url = store.engine.url.render_as_string(hide_password=False)
    walk = _walk_range(_RangeTask(url, None, 18, 34, frozenset({20, 35}), PAGE))
    h = {n: hash_at(store, n) for n in (17, 20, 34)}
    assert walk == ChainWalk(ChainHead(17, h[17]), 17, ChainHead(34, h[34]), None, {20: h[20]})
    first = _walk_range(_RangeTask(url, None, 1, 3, frozenset(), 1))
    assert (first.start, first.count, first.last, first.problem) == (
        GENESIS,
        3,
        ChainHead(3, hash_at(store, 3)),
        None,
    )
    with store.engine.begin() as c:
        c.execute(text("DELETE FROM audit_log WHERE seq = 17"))
    missing = _walk_range(_RangeTask(url, None, 18, 34, frozenset(), PAGE))
    assert missing == ChainWalk(
        GENESIS,
        0,
        GENESIS,
        AuditProblem(ProblemKind.MALFORMED_ENTRY, "the range from entry 18: entry 17: not found", 17),
        {},
    )


def test_a_range_whose_first_page_is_empty_or_starts_elsewhere_or_malformed_is_a_problem() -> None:
    def problem_of(pages: list[list[tuple[object, bytes, object]]]) -> ChainWalk:
        return _walk_from(iter(pages), 5, set())

    def expected(message: str) -> ChainWalk:
        problem = AuditProblem(ProblemKind.MALFORMED_ENTRY, f"the range from entry 5: {message}", 4)
        return ChainWalk(GENESIS, 0, GENESIS, problem, {})

    assert problem_of([]) == expected("entry 4: not found")
    assert problem_of([[]]) == expected("entry 4: not found")
    assert problem_of([[(3, b"[]", "a" * 64), (4, b"[]", "b" * 64)]]) == expected("entry 4: not found")
    assert problem_of([[(4, b"[]", "not-a-hash")]]) == expected(
        "hash must be 64 lower-case hex digits, not 'not-a-hash'"
    )
    start = _walk_from(iter([[(4, b"[]", "c" * 64)]]), 5, set())  # entry 4 alone: nothing to verify after it
    assert start == ChainWalk(ChainHead(4, "c" * 64), 0, ChainHead(4, "c" * 64), None, {})


def test_the_export_header_says_when_in_utc(store: SqlCustodyStore) -> None:  # noqa: F811
    fill(store, 10)
    out = io.StringIO()
    before = datetime.now(UTC)
    assert export_log(store.engine, out) == (10, ChainHead(10, hash_at(store, 10)))
    header = json.loads(out.getvalue().splitlines()[0])
    at = datetime.fromisoformat(header["exported_at"])
    assert at.utcoffset() == timedelta(0) and before <= at <= datetime.now(UTC)


@pytest.fixture
def one_cpu() -> Iterator[int]:
    """This process pinned to one of its CPUs for the test, then given its CPUs back."""
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("needs a process allowed on two CPUs or more")
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield len(allowed)
    finally:
        os.sched_setaffinity(0, allowed)


def test_verification_uses_one_worker_a_cpu_this_process_may_run_on(one_cpu: int) -> None:
    assert default_workers() == 1 < one_cpu  # not the machine's CPU count
    assert (worker_count(0), worker_count(1), worker_count(3)) == (1, 1, 3)  # --workers 0 / N
