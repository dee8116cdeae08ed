"""The store against a real SQLite file and the machine's PostgreSQL, same tests for both."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from sqlalchemy import text

from vdno.server.domain.errors import UnknownIssuance
from vdno.server.domain.values import (
    Area,
    AuditEvent,
    CellState,
    CustodyState,
    GenerationStatus,
    IssuanceDraft,
    IssuanceRecord,
    IssuanceStatus,
    IssuanceStep,
    RecordedOutcome,
    VanillaGeneration,
)
from vdno.server.store.audit import verify_chain
from vdno.server.store.engine import make_engine
from vdno.server.store.sql import SqlCustodyStore, open_store


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'vdno.db'}"
        return
    base = request.getfixturevalue("postgres_url")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(base.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield base.replace("postgresql://", "postgresql+psycopg://") + f"?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(store_url: str) -> Iterator[SqlCustodyStore]:
    s = open_store(store_url)
    yield s
    s.close()


GEN = VanillaGeneration(
    1, b"VDNO\x00\x00\x00\x01", "pkcs11:object=a", "pkcs11:object=b", b"ds", b"ka", GenerationStatus.ACTIVE
)


def draft(request_id: str, bench: str = "bench-01") -> IssuanceDraft:
    """A hand-out draft for a meter of its own (one outstanding command per meter)."""
    device = b"\x00\xdb" + hashlib.sha256(request_id.encode()).digest()[:6]
    return IssuanceDraft(bench, request_id, "fp", device, 12, 1, b"cert")


def begin(store: SqlCustodyStore, d: IssuanceDraft, counter_floor: int) -> tuple[IssuanceRecord, bool]:
    (begun,) = store.write_issuance_step((), (), ((d, counter_floor),)).begun
    if isinstance(begun, Exception):
        raise begun
    return begun


def audited(of: SqlCustodyStore, name: str) -> list[tuple[str, str, object]]:
    """The audit log's entries of one event, in order: actor, subject and the details as decoded."""
    query = text("SELECT actor, subject, details FROM audit_log WHERE event = :e ORDER BY seq")
    with of.engine.connect() as c:
        return [(r.actor, r.subject, json.loads(r.details)) for r in c.execute(query, {"e": name})]


def complete(store: SqlCustodyStore, record: IssuanceRecord, command: bytes) -> IssuanceRecord:
    (stored,) = store.write_issuance_step(((record, command),), (), ()).stored
    if isinstance(stored, Exception):
        raise stored
    return stored


def test_reference_data_is_idempotent_and_audited(store: SqlCustodyStore) -> None:
    area = Area(12, "London", b"LAB\x00\x00\x03\x00\x0c", b"d", b"k")
    assert store.upsert_area(area, "t") is True
    assert store.upsert_area(area, "t") is False
    assert store.get_area(12) == area
    assert store.add_generation(GEN, "t") is True
    assert store.add_generation(GEN, "t") is False
    assert store.list_generations() == [GEN]
    assert store.enroll_bench("bench-01", "t") is True
    assert store.enroll_bench("bench-01", "t") is False
    assert store.revoke_bench("bench-01", "t") is True
    assert store.get_bench("bench-01").status.value == "revoked"
    result = verify_chain(store.engine)
    assert result.ok and result.entries == 4
    assert audited(store, "generation.activated") == [
        ("t", "generation:1", {"entity_id": GEN.entity_id.hex(), "status": "active"})
    ]


def test_counters_are_floored_increase_and_idempotent(store: SqlCustodyStore) -> None:
    store.add_generation(GEN, "t")
    for bench in ("bench-01", "bench-02"):  # an issuance needs an enrolled bench
        store.enroll_bench(bench, "t")
    first, created = begin(store, draft("r1"), counter_floor=1_000)
    assert created and first.counter == 1_000 and first.status is IssuanceStatus.RECORDED
    again, created = begin(store, draft("r1"), counter_floor=5_000)
    assert not created and again.issuance_id == first.issuance_id and again.counter == 1_000
    second, _ = begin(store, draft("r2"), counter_floor=10)  # floor behind: last + 1
    assert second.counter == 1_001
    third, _ = begin(store, draft("r3"), counter_floor=9_000)  # floor ahead (restored backup)
    assert third.counter == 9_000


def test_a_begun_issuance_is_answered_as_recorded_and_audited(store: SqlCustodyStore) -> None:
    """What a step answers for each draft is the record as the database holds it, and each recorded command
    is audited with its counter; a hand-out and a rotation (no area, a target generation) in one step."""
    gen2 = replace(GEN, generation=2, entity_id=b"VDNO\x00\x00\x00\x02", ds_key_uri="pkcs11:object=c")
    store.add_generation(GEN, "t")
    store.add_generation(gen2, "t")
    store.enroll_bench("bench-01", "t")
    hand_out = draft("r1")
    rotation = replace(draft("r2"), area_id=None, target_generation=2)
    (first, created_first), (second, created_second) = store.write_issuance_step(
        (), (), ((hand_out, 40), (rotation, 1))
    ).begun
    assert created_first and created_second
    assert first == store.find_issuance("bench-01", "r1")
    assert second == store.find_issuance("bench-01", "r2")
    assert (first.bench_id, first.request_id, first.request_fingerprint) == ("bench-01", "r1", "fp")
    assert (first.device_id, first.device_certificate) == (hand_out.device_id, b"cert")
    assert (first.area_id, first.generation, first.target_generation) == (12, 1, None)
    assert (second.area_id, second.generation, second.target_generation) == (None, 1, 2)
    assert (first.counter, second.counter) == (40, 41)  # in the step's order, the second one past the floor
    assert first.status is second.status is IssuanceStatus.RECORDED
    assert abs(time.time() - first.created_at.timestamp()) < 60
    assert audited(store, "command.recorded") == [
        (
            "bench:bench-01",
            f"issuance:{first.issuance_id}",
            {
                "device": hand_out.device_id.hex(),
                "area": 12,
                "generation": 1,
                "target_generation": None,
                "counter": 40,
                "request_id": "r1",
            },
        ),
        (
            "bench:bench-01",
            f"issuance:{second.issuance_id}",
            {
                "device": rotation.device_id.hex(),
                "area": None,
                "generation": 1,
                "target_generation": 2,
                "counter": 41,
                "request_id": "r2",
            },
        ),
    ]


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_a_step_waits_for_its_counter_rows_before_it_holds_any_issuance_row(store: SqlCustodyStore) -> None:
    """PostgreSQL: a step that allocates locks its counter rows first (IssuanceRecords._counter_lock). While
    another transaction holds the generation's counter row, the step waits holding no issuance row, so a
    replica's step that needs that row (a twin's unique check) cannot be waiting for it in turn; once the
    counter row is free the step stores its signature and allocates the next counter."""
    store.add_generation(GEN, "t")
    store.enroll_bench("bench-01", "t")
    record, _ = begin(store, draft("r1"), counter_floor=1)
    results: list[IssuanceStep] = []

    def step() -> None:
        results.append(store.write_issuance_step(((record, b"\xdf one"),), (), ((draft("r2"), 1),)))

    with store.engine.connect() as holder, store.engine.connect() as probe:
        holder_pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
        holder.execute(text("SELECT generation FROM counters WHERE generation = 1 FOR UPDATE"))
        writer = threading.Thread(target=step)
        writer.start()
        try:
            waiting = text("SELECT count(*) FROM pg_stat_activity WHERE :holder = ANY(pg_blocking_pids(pid))")
            deadline = time.monotonic() + 30
            while not probe.execute(waiting, {"holder": holder_pid}).scalar_one():
                probe.rollback()  # pg_stat_activity is read once per transaction
                assert time.monotonic() < deadline, "the step never waited for the counter row"
                time.sleep(0.01)
            probe.rollback()
            locked = text("SELECT issuance_id FROM issuances WHERE issuance_id = :i FOR UPDATE NOWAIT")
            assert probe.execute(locked, {"i": record.issuance_id}).scalar_one() == record.issuance_id
            probe.rollback()
        finally:
            holder.rollback()
            writer.join(30)
    assert not writer.is_alive() and len(results) == 1
    (stored,), ((begun, created),) = results[0].stored, results[0].begun
    assert stored.signed_command == b"\xdf one" and stored.status is IssuanceStatus.SIGNED
    assert created and begun.counter == record.counter + 1


def test_signed_bytes_and_outcome_are_recorded(store: SqlCustodyStore) -> None:
    store.add_generation(GEN, "t")
    for bench in ("bench-01", "bench-02"):  # an issuance needs an enrolled bench
        store.enroll_bench(bench, "t")
    rec, _ = begin(store, draft("r1"), counter_floor=1)
    done = complete(store, rec, b"\xdf signed")
    assert done.status is IssuanceStatus.SIGNED and done.signed_command == b"\xdf signed"
    assert store.find_issuance("bench-01", "r1").signed_command == b"\xdf signed"
    cells = CellState(b"LAB\x00\x00\x03\x00\x0c", b"\x41" * 8)
    store.record_outcome(
        rec.issuance_id,
        RecordedOutcome(
            rec.issuance_id,
            IssuanceStatus.APPLIED,
            ((3, 0, 0), (3, 4, 0)),
            cells,
            cells,
            custody=CustodyState.AREA,
            area_id=12,
        ),
        b"resp",
        "bench:x",
    )
    assert store.device_cells(rec.device_id) == (cells, cells)
    assert store.find_issuance("bench-01", "r1").status is IssuanceStatus.APPLIED
    assert verify_chain(store.engine).ok


def test_one_issuance_step_stores_fails_and_records_each_item_on_its_own(store: SqlCustodyStore) -> None:
    store.add_generation(GEN, "t")
    for bench in ("bench-01", "bench-02"):  # an issuance needs an enrolled bench
        store.enroll_bench(bench, "t")
    signed, _ = begin(store, draft("r1"), counter_floor=1)
    failing, _ = begin(store, draft("r2"), counter_floor=1)
    stale = replace(signed, issuance_id=signed.issuance_id + 1000)  # no such record awaits a signature
    step = store.write_issuance_step(
        [(signed, b"\xdf one"), (stale, b"\xdf two")],
        [(failing.issuance_id, "HsmUnavailable")],
        [(draft("r3"), 1), (draft("r1"), 1)],
    )
    stored, not_stored = step.stored
    assert isinstance(stored, IssuanceRecord) and stored.signed_command == b"\xdf one"
    assert isinstance(not_stored, UnknownIssuance)
    (new, created), (existing, again) = step.begun
    assert created and new.counter == failing.counter + 1 and new.status is IssuanceStatus.RECORDED
    assert not again and existing.issuance_id == signed.issuance_id
    by_request = {r.request_id: r for r in store.list_issuances()}
    assert by_request["r1"].signed_command == b"\xdf one"
    assert by_request["r2"].status is IssuanceStatus.FAILED
    assert verify_chain(store.engine).ok


def test_concurrent_allocation_never_reuses_a_counter(store: SqlCustodyStore) -> None:
    store.add_generation(GEN, "t")
    for bench in ("bench-01", "bench-02"):  # an issuance needs an enrolled bench
        store.enroll_bench(bench, "t")
    results: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        rec, _ = begin(store, draft(f"r{i}"), counter_floor=1)
        with lock:
            results.append(rec.counter)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 65))
    rows = store.list_issuances()
    counters_by_id = [r.counter for r in sorted(rows, key=lambda r: r.issuance_id)]
    assert counters_by_id == sorted(counters_by_id)  # strictly increasing in issuance order


def test_counters_survive_reopen(store_url: str) -> None:
    s = open_store(store_url)
    s.add_generation(GEN, "t")
    for bench in ("bench-01", "bench-02"):  # an issuance needs an enrolled bench
        s.enroll_bench(bench, "t")
    begin(s, draft("r1"), counter_floor=777)
    s.close()
    s = open_store(store_url)  # migrations are idempotent
    try:
        rec, _ = begin(s, draft("r2"), counter_floor=1)
        assert rec.counter == 778
    finally:
        s.close()


def test_tampered_audit_log_is_detected(store: SqlCustodyStore) -> None:
    store.enroll_bench("bench-01", "t")
    store.record_event(AuditEvent("auth.refused", "bench:evil", "rpc", {"reason": "x"}))
    assert verify_chain(store.engine).ok
    with store.engine.begin() as c:
        c.execute(
            text("UPDATE audit_log SET body = :b WHERE seq = 1"), {"b": b'["' + b"0" * 64 + b'",1,"x"]'}
        )
    result = verify_chain(store.engine)
    assert not result.ok and "entry 1" in (result.problem or "")


def test_store_down_means_unavailable(tmp_path) -> None:
    from vdno.server.domain.errors import StoreUnavailable

    s = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    s.add_generation(GEN, "t")
    for bench in ("bench-01", "bench-02"):  # an issuance needs an enrolled bench
        s.enroll_bench(bench, "t")
    with s.engine.begin() as c:
        c.execute(text("DROP TABLE counters"))
    with pytest.raises(StoreUnavailable):
        begin(s, draft("r1"), counter_floor=1)
    s.close()


def test_a_transaction_with_more_audit_events_than_one_insert_takes_keeps_the_chain(
    store: SqlCustodyStore,
) -> None:
    from vdno.server.store.audit import MAX_ROWS_PER_INSERT

    many = [
        AuditEvent("bench.enrolled", "t", f"bench:b{i}", {"i": i}) for i in range(2 * MAX_ROWS_PER_INSERT + 3)
    ]
    store._writer.submit(lambda _c, events: events.extend(many))
    result = verify_chain(store.engine)
    assert result.ok and result.entries == len(many)
    with store.engine.connect() as c:
        subjects = [r[0] for r in c.execute(text("SELECT subject FROM audit_log ORDER BY seq"))]
    assert subjects == [f"bench:b{i}" for i in range(len(many))]


def test_the_store_refuses_what_its_records_do_not_hold(store: SqlCustodyStore) -> None:
    from vdno.server.domain.errors import KeyNotInCustody

    store.add_generation(GEN, "t")
    store.enroll_bench("bench-01", "t")
    store.mark_compromised(1, "seen in a dump", "officer:erin")  # the generation may not sign any more
    with pytest.raises(KeyNotInCustody, match="vanilla generation 1 may no longer sign"):
        begin(store, draft("r1"), counter_floor=1)
    assert store.list_issuances() == []
    outcome = RecordedOutcome(999, IssuanceStatus.APPLIED, (), None, None)
    with pytest.raises(UnknownIssuance, match="no issuance 999"):
        store.record_outcome(999, outcome, b"resp", "bench:bench-01")
    assert store.device_cells(b"\x00\xdb" + bytes(6)) == (None, None)  # never seen


def test_an_area_changed_is_recorded_again(store: SqlCustodyStore) -> None:
    area = Area(12, "London", b"LAB\x00\x00\x03\x00\x0c", b"d", b"k")
    renewed = replace(area, ds_certificate=b"d2", ka_certificate=b"k2")
    assert store.upsert_area(area, "t") is True
    assert store.get_area(12) == area
    assert store.upsert_area(renewed, "t") is True
    assert store.get_area(12) == renewed  # the store's own write drops what it had cached
    assert verify_chain(store.engine).entries == 2


def test_a_database_without_its_audit_chain_head_records_nothing(store: SqlCustodyStore) -> None:
    from vdno.server.domain.errors import StoreUnavailable

    with store.engine.begin() as c:
        c.execute(text("DELETE FROM audit_head"))
    with pytest.raises(StoreUnavailable, match="could not commit; nothing was recorded") as refused:
        store.enroll_bench("bench-01", "t")
    assert "audit_head row 1 is missing" in str(refused.value.__cause__)
    assert store.get_bench("bench-01") is None


def test_closing_the_store_finishes_the_writes_queued_before_it(store_url: str) -> None:
    """The writer is busy; a full batch and a small group are queued, then the store is closed: the writer
    runs both before it stops, each op answered and its event in the chain in order."""
    from vdno.server.store.group_commit import MAX_BATCH

    s = open_store(store_url)
    busy, release = threading.Event(), threading.Event()

    def slow(_c: object, events: list[AuditEvent]) -> str:
        busy.set()
        assert release.wait(10)
        events.append(AuditEvent("test.write", "t", "slow"))
        return "slow"

    def write(name: str) -> Callable[[object, list[AuditEvent]], str]:
        def op(_c: object, events: list[AuditEvent]) -> str:
            events.append(AuditEvent("test.write", "t", name))
            return name

        return op

    (first,) = s._writer.submit_group([slow])
    assert busy.wait(10)
    full = s._writer.submit_group([write(f"full-{i}") for i in range(MAX_BATCH)])
    last = s._writer.submit_group([write(f"last-{i}") for i in range(3)])
    closing = threading.Thread(target=s.close)
    closing.start()
    while s._writer._queue.qsize() < 3:  # both groups, and close()'s stop behind them
        assert closing.is_alive()
        time.sleep(0.01)
    release.set()
    closing.join(30)
    assert not closing.is_alive()

    names = ["slow", *(f"full-{i}" for i in range(MAX_BATCH)), *(f"last-{i}" for i in range(3))]
    assert [f.result(timeout=0) for f in (first, *full, *last)] == names
    engine = make_engine(store_url)
    try:
        with engine.connect() as c:
            logged = [r[0] for r in c.execute(text("SELECT subject FROM audit_log ORDER BY seq"))]
        assert logged == names
        assert verify_chain(engine).ok
    finally:
        engine.dispose()
