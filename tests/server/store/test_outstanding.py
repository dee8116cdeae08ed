"""One outstanding command per meter, abandoned attempts and cancellations in the store, on SQLite and
PostgreSQL: what the issuance write refuses, in its own transaction, and what it keeps."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import event, insert, select, text
from test_sql_store import GEN, audited, begin, complete, draft, store, store_url  # noqa: F401 (fixtures)

from vdno.server.domain.errors import (
    BenchNotEnrolled,
    CommandCancelled,
    CustodyConflict,
    DeviceNotVanilla,
    OutstandingCommand,
    StoreUnavailable,
    UnknownIssuance,
)
from vdno.server.domain.values import (
    Cancellation,
    CellState,
    CustodyState,
    IssuanceDraft,
    IssuanceStatus,
    RecordedOutcome,
)
from vdno.server.store.audit import verify_chain
from vdno.server.store.engine import MIGRATIONS, make_engine
from vdno.server.store.fleet import set_custody
from vdno.server.store.schema import OUTSTANDING_ISSUANCE, issuances
from vdno.server.store.sql import SqlCustodyStore, open_store

AREA_CELLS = CellState(b"LAB\x00\x00\x03\x00\x0c", b"\x41" * 8)


@pytest.fixture
def ready(store: SqlCustodyStore) -> SqlCustodyStore:  # noqa: F811
    store.add_generation(GEN, "t")
    for bench in ("bench-01", "bench-02"):
        store.enroll_bench(bench, "t")
    return store


def same_meter(request_id: str, bench: str, like: IssuanceDraft) -> IssuanceDraft:
    return IssuanceDraft(bench, request_id, "fp", like.device_id, 12, 1, b"cert")


def applied(issuance_id: int, custody: CustodyState | None = CustodyState.AREA) -> RecordedOutcome:
    return RecordedOutcome(
        issuance_id, IssuanceStatus.APPLIED, (), AREA_CELLS, AREA_CELLS, custody=custody, area_id=12
    )


def events(of: SqlCustodyStore, name: str) -> list[tuple[str, str]]:
    query = text("SELECT actor, subject FROM audit_log WHERE event = :e ORDER BY seq")
    with of.engine.connect() as c:
        return [(r.actor, r.subject) for r in c.execute(query, {"e": name})]


@contextmanager
def freed_by_a_replica(of: SqlCustodyStore, url: str) -> Iterator[list[int]]:
    """Inside: the first time `of` reads a meter's outstanding issuance, a replica first fails every recorded
    issuance as abandoned (the ids it failed are yielded)."""
    replica = open_store(url, run_migrations=False)
    freed: list[int] = []

    def free_the_meter(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if not freed and OUTSTANDING_ISSUANCE in statement:
            freed.extend(replica.fail_abandoned_issuances(datetime.now(UTC) + timedelta(seconds=1)))

    event.listen(of.engine, "before_cursor_execute", free_the_meter)
    try:
        yield freed
    finally:
        event.remove(of.engine, "before_cursor_execute", free_the_meter)
        replica.close()


def place(
    of: SqlCustodyStore, device_id: bytes, state: CustodyState, area_id: int | None, generation: int
) -> None:
    """The custodian's records put the meter there (as an outcome or a hand-in step would)."""
    with of.engine.begin() as c:
        set_custody(
            c,
            device_id,
            state,
            area_id=area_id,
            generation=generation,
            event="t",
            reference="t",
            actor="t",
            at=datetime.now(UTC),
        )


def test_a_bench_not_enrolled_is_refused_by_name_and_burns_no_counter(ready: SqlCustodyStore) -> None:
    ready.revoke_bench("bench-02", "t")
    for bench in ("bench-02", "bench-09"):  # revoked; never enrolled
        with pytest.raises(BenchNotEnrolled) as refused:
            begin(ready, draft("r1", bench=bench), counter_floor=1)
        assert str(refused.value) == f"bench {bench!r} is not enrolled or has been revoked"
    assert ready.list_issuances() == []
    record, _ = begin(ready, draft("r1"), counter_floor=1)
    assert record.counter == 1


def test_a_meter_the_records_hold_elsewhere_is_refused_with_where_they_hold_it(
    ready: SqlCustodyStore,
) -> None:
    """The reading says vanilla generation 1; the records say otherwise: another vanilla generation is a
    meter to read again, a hand-in under way is the meter's outstanding command (even onto generation 1)."""
    meter = draft("r1")
    said = f"the custodian's records show device {meter.device_id.hex()}"
    place(ready, meter.device_id, CustodyState.VANILLA, None, 2)
    with pytest.raises(DeviceNotVanilla) as refused:
        begin(ready, meter, counter_floor=1)
    assert str(refused.value) == (
        f"{said} in stock on vanilla generation 2, not on vanilla generation 1 as its reading says: "
        "read the meter again"
    )
    for state, where in (
        (CustodyState.HAND_IN_ORDERED, "with a hand-in ordered from area 12 (London)"),
        (CustodyState.HAND_IN_AUTHORISED, "with a hand-in authorised from area 12 (London)"),
    ):
        place(ready, meter.device_id, state, 12, 1)
        with pytest.raises(OutstandingCommand) as refused:
            begin(ready, meter, counter_floor=1)
        assert str(refused.value) == (
            f"{said} {where}, not on vanilla generation 1 as its reading says: read the meter again"
        )
    assert ready.list_issuances() == []
    place(ready, meter.device_id, CustodyState.VANILLA, None, 1)
    record, created = begin(ready, meter, counter_floor=1)
    assert created and record.counter == 1  # the refusals burnt no counter


def test_a_failed_attempt_is_recorded_with_its_reason(ready: SqlCustodyStore) -> None:
    record, _ = begin(ready, draft("r1"), counter_floor=1)
    step = ready.write_issuance_step((), ((record.issuance_id, "HsmUnavailable"),), ())
    assert step.stored == () and step.begun == ()
    assert ready.find_issuance("bench-01", "r1").status is IssuanceStatus.FAILED
    with ready.engine.connect() as c:
        failure = c.execute(
            select(issuances.c.failure).where(issuances.c.issuance_id == record.issuance_id)
        ).scalar_one()
    assert failure == "HsmUnavailable"
    assert audited(ready, "command.failed") == [
        ("service", f"issuance:{record.issuance_id}", {"reason": "HsmUnavailable"})
    ]


def test_a_meter_with_a_signed_unreported_command_takes_no_other(ready: SqlCustodyStore) -> None:
    first = draft("r1")
    record, _ = begin(ready, first, counter_floor=100)
    complete(ready, record, b"\xdf one")
    with pytest.raises(OutstandingCommand) as refused:
        begin(ready, same_meter("r2", "bench-02", first), counter_floor=1)
    assert "request 'r1' of bench bench-01 (hand-out, issuance 1, signed)" in str(refused.value)
    again, created = begin(ready, first, counter_floor=1)  # its own retry is still answered
    assert not created and again.issuance_id == record.issuance_id
    other, _ = begin(ready, draft("r3"), counter_floor=1)  # the refusal burnt no counter
    assert other.counter == record.counter + 1
    # Reported: the meter is in area 12 now, and the records refuse a hand-out on an old reading.
    assert ready.record_outcome(record.issuance_id, applied(record.issuance_id), b"resp", "bench:x")
    assert not ready.record_outcome(record.issuance_id, applied(record.issuance_id), b"resp", "bench:x")
    with pytest.raises(DeviceNotVanilla, match=r"records show device .* handed out to area 12 \(London\)"):
        begin(ready, same_meter("r4", "bench-02", first), counter_floor=1)
    again, created = begin(ready, first, counter_floor=1)  # its own retry: still its record
    assert not created and again.issuance_id == record.issuance_id
    assert verify_chain(ready.engine).ok


def test_an_abandoned_attempt_is_failed_and_frees_its_meter(ready: SqlCustodyStore) -> None:
    first = draft("r1")
    record, _ = begin(ready, first, counter_floor=1)
    with pytest.raises(OutstandingCommand, match="recorded"):
        begin(ready, same_meter("r2", "bench-02", first), counter_floor=1)
    assert ready.fail_abandoned_issuances(datetime.now(UTC) - timedelta(seconds=60)) == []
    assert ready.fail_abandoned_issuances(datetime.now(UTC) + timedelta(seconds=1)) == [record.issuance_id]
    assert ready.find_issuance("bench-01", "r1").status is IssuanceStatus.FAILED
    assert events(ready, "command.failed") == [("service", f"issuance:{record.issuance_id}")]
    other, created = begin(ready, same_meter("r2", "bench-02", first), counter_floor=1)
    assert created
    # Finishing the failed attempt now would be a second command for the meter: refused, nothing stored.
    (stored,) = ready.write_issuance_step(((record, b"\xdf late"),), (), ()).stored
    assert isinstance(stored, OutstandingCommand) and "request 'r2'" in str(stored)
    assert ready.find_issuance("bench-01", "r1").signed_command is None
    # The attempt that did sign first keeps its bytes; a second attempt is answered with them.
    first_bytes = complete(ready, other, b"\xdf first")
    second = complete(ready, other, b"\xdf second")
    assert first_bytes.signed_command == second.signed_command == b"\xdf first"


def test_a_cancelled_command_frees_its_meter_and_still_takes_its_outcome(ready: SqlCustodyStore) -> None:
    first = draft("r1")
    record, _ = begin(ready, first, counter_floor=1)
    complete(ready, record, b"\xdf one")
    with pytest.raises(UnknownIssuance):  # another bench's request is not its to cancel
        ready.cancel_issuance(record.issuance_id, Cancellation("bench:bench-02", "x"), bench_id="bench-02")
    cancelled = ready.cancel_issuance(record.issuance_id, Cancellation("officer:o1", "bench lost"))
    assert cancelled.status is IssuanceStatus.CANCELLED and cancelled.cancelled_by == "officer:o1"
    assert ready.cancel_issuance(record.issuance_id, Cancellation("officer:o2", "again")).cancelled_by == (
        "officer:o1"
    )
    assert events(ready, "command.cancelled") == [("officer:o1", f"issuance:{record.issuance_id}")]
    second, created = begin(ready, same_meter("r2", "bench-02", first), counter_floor=1)
    assert created
    # The meter applied the cancelled command after all: its outcome is taken, and moves the records.
    assert ready.record_outcome(record.issuance_id, applied(record.issuance_id), b"resp", "bench:bench-01")
    assert ready.find_issuance("bench-01", "r1").status is IssuanceStatus.APPLIED
    assert ready.device_custody(first.device_id).state is CustodyState.AREA
    with pytest.raises(CustodyConflict, match="outcome recorded"):
        ready.cancel_issuance(record.issuance_id, Cancellation("officer:o1", "too late"))
    # The other command's late outcome is recorded on it, and leaves the records where they are.
    complete(ready, second, b"\xdf two")
    late = RecordedOutcome(
        second.issuance_id, IssuanceStatus.REJECTED, (), AREA_CELLS, AREA_CELLS, CustodyState.VANILLA, None, 1
    )
    assert ready.record_outcome(second.issuance_id, late, b"resp2", "bench:bench-02")
    assert ready.device_custody(first.device_id).state is CustodyState.AREA
    # A cancelled attempt that was still being signed is not stored.
    third, _ = begin(ready, draft("r5"), counter_floor=1)
    ready.cancel_issuance(
        third.issuance_id, Cancellation("bench:bench-01", "wrong meter"), bench_id="bench-01"
    )
    (stored,) = ready.write_issuance_step(((third, b"\xdf three"),), (), ()).stored
    assert isinstance(stored, CommandCancelled)
    assert verify_chain(ready.engine).ok


def test_migration_0004_closes_older_outstanding_commands_of_a_meter(store_url: str) -> None:  # noqa: F811
    engine = make_engine(store_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for issuance_id, status in ((1, "signed"), (2, "recorded"), (3, "signed"), (4, "applied")):
            conn.execute(
                insert(issuances).values(
                    issuance_id=issuance_id,
                    bench_id="b",
                    request_id=f"r{issuance_id}",
                    request_fingerprint="fp",
                    device_id=b"\x00" * 8,
                    area_id=12,
                    generation=1,
                    counter=issuance_id,
                    device_certificate=b"c",
                    status=status,
                    created_at=now,
                )
            )
    engine.dispose()
    migrated = open_store(store_url)
    try:
        by_id = {r.issuance_id: r for r in migrated.list_issuances()}
        assert [by_id[i].status for i in (1, 2, 3, 4)] == [
            IssuanceStatus.CANCELLED,
            IssuanceStatus.FAILED,
            IssuanceStatus.SIGNED,
            IssuanceStatus.APPLIED,
        ]
        assert by_id[1].cancelled_by == "migration:0004"
        assert migrated.outstanding_issuance(b"\x00" * 8).issuance_id == 3
    finally:
        migrated.close()


def test_a_late_signature_whose_conflict_a_replica_frees_before_it_is_named_answers_unavailable(
    ready: SqlCustodyStore,
    store_url: str,  # noqa: F811
) -> None:
    """A failed attempt's signature arrives while another command holds the meter: the write is refused;
    before the store reads that command to name it, a replica fails it (abandoned). Nothing is named and
    nothing stored: the refusal as the database gave it, and the signature stored when tried again."""
    first = draft("r1")
    attempt, _ = begin(ready, first, counter_floor=1)
    ready.write_issuance_step((), ((attempt.issuance_id, "HsmUnavailable"),), ())
    holder, _ = begin(ready, same_meter("r2", "bench-02", first), counter_floor=1)
    with freed_by_a_replica(ready, store_url) as freed:
        (stored,) = ready.write_issuance_step(((attempt, b"\xdf late"),), (), ()).stored
    assert isinstance(stored, StoreUnavailable)
    assert str(stored) == "the database refused the write; nothing was recorded"
    assert freed == [holder.issuance_id]
    assert ready.find_issuance("bench-01", "r1").signed_command is None
    assert complete(ready, attempt, b"\xdf late").signed_command == b"\xdf late"


def test_a_meter_freed_by_a_replica_before_its_refusal_is_named_answers_unavailable(
    ready: SqlCustodyStore,
    store_url: str,  # noqa: F811
) -> None:
    """The insert is refused for the meter's outstanding command; before the store reads that command to
    name it, a replica fails it (abandoned). Nothing is named and nothing recorded: StoreUnavailable, and the
    retry is recorded."""
    first = draft("r1")
    record, _ = begin(ready, first, counter_floor=1)
    with (
        freed_by_a_replica(ready, store_url) as freed,
        pytest.raises(StoreUnavailable, match="nothing was recorded"),
    ):
        begin(ready, same_meter("r2", "bench-02", first), counter_floor=1)
    assert freed == [record.issuance_id]
    assert ready.find_issuance("bench-02", "r2") is None
    retried, created = begin(ready, same_meter("r2", "bench-02", first), counter_floor=1)
    assert created and retried.counter == record.counter + 1
