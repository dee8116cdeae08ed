"""Custody records in the store (server/store/custody.py) on SQLite and PostgreSQL: generations through
their life, two-person control, area credential sets and benches. The domain checks each change before it
asks the store; these tests show the store checking again in the change's own transaction, which is what
holds when another writer (a second store on the same database, as another replica) got there first, and
that a refused change leaves everything, its approval included, as it was."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from test_sql_store import store, store_url  # noqa: F401 (fixtures)

from vdno.server.domain.custody import GENERATION_CHANGES
from vdno.server.domain.errors import (
    ApprovalRefused,
    CustodyConflict,
    StoreUnavailable,
    UnknownApprovalRequest,
    UnknownArea,
    UnknownGeneration,
)
from vdno.server.domain.values import (
    ApprovalOperation,
    ApprovalRequest,
    ApprovalStatus,
    ApprovalUse,
    Area,
    Bench,
    BenchOperation,
    BenchStatus,
    GenerationRecord,
    GenerationStatus,
)
from vdno.server.store.audit import verify_chain
from vdno.server.store.sql import SqlCustodyStore, open_store

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
WINDOW = timedelta(hours=1)
ACTIVATE = ApprovalOperation.ACTIVATE_GENERATION
REENABLE = ApprovalOperation.REENABLE_GENERATION


@pytest.fixture
def replica(store_url: str) -> Iterator[SqlCustodyStore]:  # noqa: F811
    """A second store on the same database: another server process writing beside the one under test."""
    other = open_store(store_url, run_migrations=False, write_lock_wait=0.5)
    yield other
    other.close()


def new_generation(target: SqlCustodyStore, tag: int) -> int:
    record = GenerationRecord(
        0,
        b"VDNO\x00\x00\x00" + bytes([tag]),
        "pkcs11:object=ds-{generation}",
        "pkcs11:object=ka-{generation}",
        GenerationStatus.PENDING,
        False,
        NOW,
    )
    return target.create_generation(record, {"ds": {"sensitive": True}}, "officer:alice")


def certified(target: SqlCustodyStore, tag: int) -> int:
    number = new_generation(target, tag)
    target.certify_generation(number, b"ds-cert", b"ka-cert", {"not_after": "2030"}, "officer:alice")
    return number


def request(
    target: SqlCustodyStore, operation: ApprovalOperation, subject: str, expires_at: datetime = NOW + WINDOW
) -> int:
    asked = ApprovalRequest(
        0,
        operation,
        subject,
        {"subject": subject},
        "why",
        "alice",
        NOW,
        expires_at,
        ApprovalStatus.PENDING,
        (),
    )
    return target.create_approval_request(asked).request_id


def approved(target: SqlCustodyStore, operation: ApprovalOperation, subject: str) -> int:
    """A request for `operation` of `subject` approved by two officers, executable until NOW + WINDOW."""
    request_id = request(target, operation, subject)
    for officer in ("bob", "carol"):
        target.grant_approval(request_id, officer, NOW, 2, NOW + WINDOW)
    return request_id


def change(
    target: SqlCustodyStore,
    generation: int,
    operation: ApprovalOperation,
    request_id: int | None,
    officer: str = "dave",
) -> GenerationRecord:
    """Carry out a generation change as the domain's execute() does (GENERATION_CHANGES)."""
    allowed, to, name = GENERATION_CHANGES[operation]
    use = None if request_id is None else ApprovalUse(request_id, officer, NOW)
    return target.change_generation(generation, allowed, to, name, f"officer:{officer}", {}, use, operation)


def events(of: SqlCustodyStore, name: str) -> list[tuple[str, str]]:
    query = text("SELECT actor, subject FROM audit_log WHERE event = :e ORDER BY seq")
    with of.engine.connect() as c:
        return [(r.actor, r.subject) for r in c.execute(query, {"e": name})]


def status_of(of: SqlCustodyStore, request_id: int) -> ApprovalStatus:
    found = of.get_approval_request(request_id)
    assert found is not None
    return found.status


def test_generations_are_numbered_once_and_certified_once(
    store: SqlCustodyStore,  # noqa: F811
    replica: SqlCustodyStore,
) -> None:
    assert store.reserve_generation_number() == 1
    assert new_generation(store, 1) == 1
    first = store.get_generation_record(1)
    assert first is not None
    assert (first.status, first.ds_key_uri, first.ka_key_uri) == (
        GenerationStatus.PENDING,
        "pkcs11:object=ds-1",
        "pkcs11:object=ka-1",
    )
    assert first.created_at == NOW  # stored in UTC, read back aware from either database
    assert store.get_generation_record(2) is None
    with pytest.raises(CustodyConflict, match="entity id 56444e4f00000001 already names"):
        new_generation(store, 1)
    assert store.reserve_generation_number() == 2  # the refused one used no number

    replica.certify_generation(1, b"replica-ds", b"replica-ka", {}, "officer:bob")
    with pytest.raises(CustodyConflict, match="generation 1 is not pending certification"):
        store.certify_generation(1, b"ds", b"ka", {}, "officer:alice")
    (only,) = store.list_generation_records()
    assert (only.status, only.ds_certificate, only.ka_certificate) == (
        GenerationStatus.CERTIFIED,
        b"replica-ds",
        b"replica-ka",
    )
    assert events(store, "certificate.imported") == [("officer:bob", "generation:1")]
    assert verify_chain(store.engine).ok


def test_activation_moves_the_active_generation_to_signing_only_and_closes_its_approval(
    store: SqlCustodyStore,  # noqa: F811
) -> None:
    one, two = certified(store, 1), certified(store, 2)
    first = approved(store, ACTIVATE, f"generation:{one}")
    assert change(store, one, ACTIVATE, first).status is GenerationStatus.ACTIVE
    executed = store.get_approval_request(first)
    assert executed is not None
    assert (executed.status, executed.closed_by, executed.closed_at) == (ApprovalStatus.EXECUTED, "dave", NOW)

    second = approved(store, ACTIVATE, f"generation:{two}")
    assert change(store, two, ACTIVATE, second).status is GenerationStatus.ACTIVE
    assert [(r.generation, r.status) for r in store.list_generation_records()] == [
        (one, GenerationStatus.SIGNING_ONLY),
        (two, GenerationStatus.ACTIVE),
    ]
    assert events(store, "generation.signing-only") == [("officer:dave", f"generation:{one}")]
    assert events(store, "approval.executed") == [
        ("officer:dave", f"approval:{first}"),
        ("officer:dave", f"approval:{second}"),
    ]
    with pytest.raises(ApprovalRefused, match=f"approval request {first} is executed, not approved"):
        change(store, one, ACTIVATE, first)
    assert verify_chain(store.engine).ok


def test_a_change_refused_in_its_transaction_leaves_its_approval_unused(
    store: SqlCustodyStore,  # noqa: F811
    replica: SqlCustodyStore,
) -> None:
    """Approved while the generation could take the change; a replica moved it meanwhile."""
    one = certified(store, 1)
    activate = approved(store, ACTIVATE, f"generation:{one}")
    reenable = approved(store, REENABLE, f"generation:{one}")
    replica.mark_compromised(one, "key ceremony laptop lost", "officer:erin")

    with pytest.raises(CustodyConflict, match="generation 1 is disabled, not certified, signing-only"):
        change(store, one, ACTIVATE, activate)
    with pytest.raises(CustodyConflict, match="generation 1 is marked compromised: it may never sign again"):
        change(store, one, REENABLE, reenable)
    assert status_of(store, activate) is ApprovalStatus.APPROVED
    assert status_of(store, reenable) is ApprovalStatus.APPROVED
    record = store.get_generation_record(one)
    assert record is not None and (record.status, record.compromised) == (GenerationStatus.DISABLED, True)
    assert events(store, "approval.executed") == []
    with pytest.raises(UnknownGeneration, match="no vanilla generation 9"):
        change(store, 9, ApprovalOperation.DISABLE_GENERATION, None)


def test_an_approval_is_used_only_for_its_operation_and_subject_within_its_window(
    store: SqlCustodyStore,  # noqa: F811
) -> None:
    one, two = certified(store, 1), certified(store, 2)
    for_two = approved(store, ACTIVATE, f"generation:{two}")
    with pytest.raises(
        ApprovalRefused,
        match=f"approval request {for_two} is for activate-generation of generation:2, "
        "not activate-generation of generation:1",
    ):
        change(store, one, ACTIVATE, for_two)
    with pytest.raises(UnknownApprovalRequest, match="no approval request 999"):
        change(store, one, ACTIVATE, 999)
    late = ApprovalUse(for_two, "dave", NOW + WINDOW + timedelta(seconds=1))
    allowed, to, name = GENERATION_CHANGES[ACTIVATE]
    with pytest.raises(ApprovalRefused, match=f"approval request {for_two} is expired, not approved"):
        store.change_generation(two, allowed, to, name, "officer:dave", {}, late, ACTIVATE)
    assert [r.status for r in store.list_generation_records()] == [GenerationStatus.CERTIFIED] * 2
    assert status_of(store, for_two) is ApprovalStatus.APPROVED  # on time, it still may be executed
    assert change(store, two, ACTIVATE, for_two).status is GenerationStatus.ACTIVE


def test_an_approval_executed_by_a_replica_meanwhile_is_not_executed_again(
    store: SqlCustodyStore,  # noqa: F811
    replica: SqlCustodyStore,
) -> None:
    """The replica executes the same request between this store reading it approved and closing it. On
    PostgreSQL it gets in (the read takes no lock) and this store's close finds the request executed; on
    SQLite this store holds the database's write lock for its whole transaction, so the replica waits and is
    refused. Either way the request is executed, and the generation activated, once."""
    one = certified(store, 1)
    request_id = approved(store, ACTIVATE, f"generation:{one}")
    replica_saw: list[object] = []

    def interleave(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if replica_saw or not statement.lstrip().upper().startswith("UPDATE APPROVAL_REQUESTS"):
            return
        replica_saw.append("armed")  # once: the replica's own statements pass through here too
        try:
            replica_saw.append(change(replica, one, ACTIVATE, request_id, officer="frank").status)
        except StoreUnavailable as exc:
            replica_saw.append(exc)

    event.listen(Engine, "before_cursor_execute", interleave)
    try:
        if store.engine.dialect.name == "postgresql":
            with pytest.raises(
                ApprovalRefused, match=f"approval request {request_id} was executed or closed meanwhile"
            ):
                change(store, one, ACTIVATE, request_id)
            assert replica_saw == ["armed", GenerationStatus.ACTIVE]
            executor = "officer:frank"  # the replica's execution stands
        else:
            assert change(store, one, ACTIVATE, request_id).status is GenerationStatus.ACTIVE
            assert len(replica_saw) == 2 and isinstance(replica_saw[1], StoreUnavailable)
            assert "write lock was not free" in str(replica_saw[1])
            executor = "officer:dave"
    finally:
        event.remove(Engine, "before_cursor_execute", interleave)

    assert status_of(store, request_id) is ApprovalStatus.EXECUTED
    assert events(store, "approval.executed") == [(executor, f"approval:{request_id}")]
    assert events(store, "generation.activated") == [(executor, f"generation:{one}")]
    assert verify_chain(store.engine).ok


def test_a_compromise_disables_at_once_and_a_destroyed_generation_stays_destroyed(
    store: SqlCustodyStore,  # noqa: F811
) -> None:
    active, doomed = certified(store, 1), certified(store, 2)
    change(store, active, ACTIVATE, None)
    record = store.mark_compromised(active, "seen in a dump", "officer:erin")
    assert (record.status, record.compromised) == (GenerationStatus.DISABLED, True)

    change(store, doomed, ApprovalOperation.DISABLE_GENERATION, None)
    allowed, to, name = GENERATION_CHANGES[ApprovalOperation.SCHEDULE_DESTRUCTION]
    due = NOW + timedelta(days=7)
    store.change_generation(doomed, allowed, to, name, "officer:dave", {}, values={"destroy_after": due})
    record = store.mark_compromised(doomed, "same ceremony", "officer:erin")
    assert (record.status, record.compromised, record.destroy_after) == (
        GenerationStatus.DESTROY_SCHEDULED,  # a compromise does not cancel the destruction
        True,
        due,
    )
    with pytest.raises(CustodyConflict, match=f"generation {active} is not scheduled for destruction"):
        store.record_destroyed(active, due, {}, "housekeeping")
    store.record_destroyed(doomed, due, {"keys_deleted": {"ds": True, "ka": True}}, "housekeeping")
    with pytest.raises(CustodyConflict, match=f"generation {doomed} is not scheduled for destruction"):
        store.record_destroyed(doomed, due, {}, "housekeeping")
    with pytest.raises(CustodyConflict, match=f"generation {doomed} is destroyed"):
        store.mark_compromised(doomed, "again", "officer:erin")
    assert [(r.status, r.compromised) for r in store.list_generation_records()] == [
        (GenerationStatus.DISABLED, True),
        (GenerationStatus.DESTROYED, True),
    ]
    assert events(store, "generation.destroyed") == [("housekeeping", f"generation:{doomed}")]
    assert len(events(store, "generation.compromised")) == 2


def test_approvals_come_from_distinct_officers_other_than_the_requester(
    store: SqlCustodyStore,  # noqa: F811
) -> None:
    csr = "M" * 300  # a large parameter is logged by size only
    asked = ApprovalRequest(
        0,
        ApprovalOperation.ENROL_BENCH,
        "bench:bench-07",
        {"bench_id": "bench-07", "csr": csr},
        "new bench",
        "alice",
        NOW,
        NOW + WINDOW,
        ApprovalStatus.PENDING,
        (),
    )
    request_id = store.create_approval_request(asked).request_id
    with pytest.raises(ApprovalRefused, match=f"officer 'alice' requested {request_id} and may not approve"):
        store.grant_approval(request_id, "alice", NOW, 2, NOW + WINDOW)
    once = store.grant_approval(request_id, "bob", NOW, 2, NOW + WINDOW)
    assert (once.status, once.approvals) == (ApprovalStatus.PENDING, ("bob",))
    with pytest.raises(ApprovalRefused, match=f"officer 'bob' has already approved request {request_id}"):
        store.grant_approval(request_id, "bob", NOW, 2, NOW + WINDOW)
    twice = store.grant_approval(request_id, "carol", NOW, 2, NOW + WINDOW)
    assert (twice.status, twice.approvals, twice.approved_at, twice.execute_by) == (
        ApprovalStatus.APPROVED,
        ("bob", "carol"),
        NOW,
        NOW + WINDOW,
    )
    assert twice.parameters == {"bench_id": "bench-07", "csr": csr}
    with pytest.raises(ApprovalRefused, match=f"approval request {request_id} is approved: it takes no"):
        store.grant_approval(request_id, "dave", NOW, 2, NOW + WINDOW)
    with pytest.raises(UnknownApprovalRequest, match="no approval request 999"):
        store.grant_approval(999, "dave", NOW, 2, NOW + WINDOW)

    stale = request(store, ApprovalOperation.ENROL_BENCH, "bench:bench-08", expires_at=NOW - WINDOW)
    with pytest.raises(ApprovalRefused, match=f"approval request {stale} is expired: it takes no"):
        store.grant_approval(stale, "bob", NOW, 2, NOW + WINDOW)

    assert [r.request_id for r in store.list_approval_requests(())] == [request_id, stale]
    assert [r.request_id for r in store.list_approval_requests((ApprovalStatus.APPROVED,))] == [request_id]
    assert [r.request_id for r in store.list_approval_requests((ApprovalStatus.PENDING,))] == [stale]
    with store.engine.connect() as c:
        logged = c.execute(
            text("SELECT details FROM audit_log WHERE event = 'approval.requested' ORDER BY seq")
        ).scalar()
    assert '"csr":"<300 characters>"' in str(logged) and csr not in str(logged)
    assert len(events(store, "approval.granted")) == 2 and len(events(store, "approval.approved")) == 1


def test_a_rejected_request_is_closed_with_its_reason(store: SqlCustodyStore) -> None:  # noqa: F811
    pending = request(store, ApprovalOperation.REPLACE_AREA, "area:12")
    rejected = store.reject_approval(pending, "bob", NOW, "wrong certificates")
    assert (rejected.status, rejected.closed_by, rejected.closed_at, rejected.outcome) == (
        ApprovalStatus.REJECTED,
        "bob",
        NOW,
        {"rejected": "wrong certificates"},
    )
    with pytest.raises(ApprovalRefused, match=f"approval request {pending} is rejected: nothing to reject"):
        store.reject_approval(pending, "carol", NOW, "again")
    with pytest.raises(UnknownApprovalRequest, match="no approval request 999"):
        store.reject_approval(999, "carol", NOW, "none")
    with pytest.raises(ApprovalRefused, match=f"approval request {pending} is rejected, not approved"):
        store.replace_area(
            Area(12, "x", b"e" * 8, b"d", b"k"), "officer:dave", ApprovalUse(pending, "dave", NOW)
        )
    assert store.get_area(12) is None
    assert events(store, "approval.rejected") == [("officer:bob", f"approval:{pending}")]


def test_an_area_set_replaced_goes_to_its_history(store: SqlCustodyStore) -> None:  # noqa: F811
    old = Area(12, "London", b"LAB\x00\x00\x03\x00\x0c", b"ds-1", b"ka-1")
    new = Area(12, "London", b"LAB\x00\x00\x03\x00\x0d", b"ds-2", b"ka-2")
    first = approved(store, ApprovalOperation.REPLACE_AREA, "area:12")
    assert store.replace_area(old, "officer:dave", ApprovalUse(first, "dave", NOW)) is None
    assert store.area_history_of(12) == []  # registered, never replaced
    later = NOW + timedelta(minutes=5)
    second = approved(store, ApprovalOperation.REPLACE_AREA, "area:12")
    assert store.replace_area(new, "officer:dave", ApprovalUse(second, "dave", later)) == old
    assert store.get_area(12) == new
    assert store.area_history_of(12) == [(old, later, "officer:dave")]
    with pytest.raises(UnknownArea, match="area 13 is not registered"):
        store.area_history_of(13)
    assert events(store, "area.registered") == [("officer:dave", "area:12")]
    assert events(store, "area.replaced") == [("officer:dave", "area:12")]
    store.record_execution_outcome(second, {"area_id": 12, "previous_entity_id": old.entity_id.hex()})
    executed = store.get_approval_request(second)
    assert executed is not None
    assert executed.outcome == {"area_id": 12, "previous_entity_id": "4c4142000003000c"}


def test_a_bench_is_enrolled_once_revoked_once_and_may_be_enrolled_again(
    store: SqlCustodyStore,  # noqa: F811
) -> None:
    bench = Bench(
        "bench-07", BenchStatus.ENROLLED, frozenset({BenchOperation.HAND_OUT}), "Leeds lab", "ab" * 32
    )
    store.enrol_bench(bench, "bootstrap", None, {})
    assert store.read_bench("bench-07") == bench
    with pytest.raises(CustodyConflict, match="bench 'bench-07' is enrolled already"):
        store.enrol_bench(bench, "bootstrap", None, {})
    assert store.revoke_bench_now("bench-07", "lab closed", "officer:erin") is True
    assert store.revoke_bench_now("bench-07", "again", "officer:erin") is False
    with pytest.raises(CustodyConflict, match="bench 'bench-09' is not enrolled"):
        store.revoke_bench_now("bench-09", "never was", "officer:erin")
    revoked = store.read_bench("bench-07")
    assert revoked is not None and revoked.status is BenchStatus.REVOKED

    again = Bench(
        "bench-07",
        BenchStatus.ENROLLED,
        frozenset({BenchOperation.HAND_IN, BenchOperation.ROTATION}),
        "York lab",
        "cd" * 32,
    )
    request_id = approved(store, ApprovalOperation.ENROL_BENCH, "bench:bench-07")
    store.enrol_bench(again, "officer:dave", ApprovalUse(request_id, "dave", NOW), {"request": request_id})
    assert store.list_benches() == [again]
    assert store.read_bench("bench-09") is None
    assert status_of(store, request_id) is ApprovalStatus.EXECUTED
    assert events(store, "bench.enrolled") == [
        ("bootstrap", "bench:bench-07"),
        ("officer:dave", "bench:bench-07"),
    ]
    assert events(store, "bench.revoked") == [("officer:erin", "bench:bench-07")]
