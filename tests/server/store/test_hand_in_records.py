"""Hand-in orders and officers in the store (server/store/fleet.py) on SQLite and PostgreSQL: one
outstanding order per meter, an order authorised once (also when a replica authorised it first), an
outcome recorded once, and the meter's custody following each step."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from test_sql_store import GEN, store, store_url  # noqa: F401 (fixtures)

from vdno.server.domain.errors import HandInCommandRefused, OutstandingCommand, UnknownOrder
from vdno.server.domain.outcomes import MeterOutcome
from vdno.server.domain.values import (
    Area,
    AuditEvent,
    AuthorisedHandIn,
    CellState,
    CustodyState,
    DeviceCustody,
    HandInDraft,
    HandInStatus,
    IssuanceStatus,
    OfficerStatus,
)
from vdno.server.store.fleet import set_custody
from vdno.server.store.sql import SqlCustodyStore, open_store

AREA = Area(12, "London", b"LAB\x00\x00\x03\x00\x0c", b"d", b"k")
AREA_CELLS = CellState(AREA.entity_id, b"\x41" * 8)
VANILLA_CELLS = CellState(GEN.entity_id, b"\x42" * 8)
METER = b"\x00\xdb\x12\x34\x56\x78\x9a\xbc"


@pytest.fixture
def ready(store: SqlCustodyStore) -> SqlCustodyStore:  # noqa: F811
    store.add_generation(GEN, "t")
    store.upsert_area(AREA, "t")
    store.enroll_bench("bench-01", "t")
    return store


@pytest.fixture
def replica(store_url: str, ready: SqlCustodyStore) -> Iterator[SqlCustodyStore]:  # noqa: F811
    """A second store on the same database: another server process writing beside the one under test."""
    other = open_store(store_url, run_migrations=False)
    yield other
    other.close()


def order_draft(request_id: str, device: bytes = METER) -> HandInDraft:
    return HandInDraft("bench-01", request_id, "fp", device, AREA.area_id, AREA.entity_id, 41, 1, b"cert")


def events(of: SqlCustodyStore, name: str) -> list[tuple[str, str]]:
    query = text("SELECT actor, subject FROM audit_log WHERE event = :e ORDER BY seq")
    with of.engine.connect() as c:
        return [(r.actor, r.subject) for r in c.execute(query, {"e": name})]


def test_an_officer_is_enrolled_and_revoked_once(store: SqlCustodyStore) -> None:  # noqa: F811
    assert store.get_officer("alice") is None
    assert store.set_officer("alice", OfficerStatus.ENROLLED, "bootstrap") is True
    assert store.set_officer("alice", OfficerStatus.ENROLLED, "bootstrap") is False
    assert store.set_officer("alice", OfficerStatus.REVOKED, "officer:bob") is True
    officer = store.get_officer("alice")
    assert officer is not None and officer.status is OfficerStatus.REVOKED
    assert events(store, "officer.enrolled") == [("bootstrap", "officer:alice")]
    assert events(store, "officer.revoked") == [("officer:bob", "officer:alice")]


def test_a_meter_has_one_outstanding_hand_in_order(ready: SqlCustodyStore) -> None:
    order, new = ready.record_hand_in_order(order_draft("r1"))
    assert new and order.status is HandInStatus.AWAITING
    again, new = ready.record_hand_in_order(order_draft("r1"))
    assert not new and again.order_id == order.order_id  # the same request answered again
    with pytest.raises(
        OutstandingCommand, match=f"already has hand-in order {order.order_id} \\(awaiting-authorisation"
    ):
        ready.record_hand_in_order(order_draft("r2"))
    assert ready.hand_in_orders_of(METER) == [order]
    assert ready.device_custody(METER) == DeviceCustody(METER, CustodyState.HAND_IN_ORDERED, 12, 1)
    other, _ = ready.record_hand_in_order(order_draft("r3", device=b"\x00\xdb" + bytes(6)))

    assert ready.list_hand_in_orders(None, None) == [order, other]
    assert ready.list_hand_in_orders(12, None) == [order, other]
    assert ready.list_hand_in_orders(13, None) == []
    assert ready.list_hand_in_orders(None, HandInStatus.AWAITING) == [order, other]
    assert ready.list_hand_in_orders(12, HandInStatus.AUTHORISED) == []
    assert ready.authorised_hand_ins([]) == []
    assert ready.authorised_hand_ins([METER]) == []


def test_an_order_authorised_by_a_replica_meanwhile_is_not_authorised_again(
    ready: SqlCustodyStore, replica: SqlCustodyStore
) -> None:
    order, _ = ready.record_hand_in_order(order_draft("r1"))
    first = replica.authorise_hand_in(AuthorisedHandIn(order.order_id, b"replica command", 7, True), "dno:a")
    assert first.order_id == order.order_id
    with pytest.raises(HandInCommandRefused, match=f"hand-in order {order.order_id} is no longer awaiting"):
        ready.authorise_hand_in(AuthorisedHandIn(order.order_id, b"other command", 8, False), "dno:b")
    (authorised,) = ready.authorised_hand_ins([METER])
    assert (authorised.status, authorised.command, authorised.counter, authorised.mac_present) == (
        HandInStatus.AUTHORISED,
        b"replica command",
        7,
        True,
    )
    assert ready.list_hand_in_orders(12, HandInStatus.AUTHORISED) == [authorised]
    assert ready.device_custody(METER) == DeviceCustody(METER, CustodyState.HAND_IN_AUTHORISED, 12, 1)
    assert events(ready, "hand-in.authorised") == [("dno:a", f"order:{order.order_id}")]


def test_an_outcome_is_recorded_once_and_moves_the_meter(ready: SqlCustodyStore) -> None:
    refused = MeterOutcome(IssuanceStatus.REJECTED, ((3, 0, 9),), AREA_CELLS, AREA_CELLS)
    with pytest.raises(UnknownOrder, match="no hand-in order 999"):
        ready.record_hand_in_outcome(999, refused, b"resp", "bench:bench-01")
    order, _ = ready.record_hand_in_order(order_draft("r1"))
    ready.authorise_hand_in(AuthorisedHandIn(order.order_id, b"command", 7, True), "dno:a")
    ready.record_hand_in_outcome(order.order_id, refused, b"refusal", "bench:bench-01")
    applied = MeterOutcome(IssuanceStatus.APPLIED, ((3, 0, 0),), VANILLA_CELLS, VANILLA_CELLS)
    ready.record_hand_in_outcome(order.order_id, applied, b"late answer", "bench:bench-01")  # kept: first
    recorded = ready.get_hand_in_order(order.order_id)
    assert recorded is not None
    assert (recorded.status, recorded.outcome_response) == (HandInStatus.REJECTED, b"refusal")
    assert ready.device_custody(METER) == DeviceCustody(METER, CustodyState.AREA, 12, None)
    assert ready.device_cells(METER) == (AREA_CELLS, AREA_CELLS)
    assert events(ready, "hand-in.outcome") == [("bench:bench-01", f"order:{order.order_id}")]

    # Ordered again from the area it is recorded in: the counts see one meter moving once.
    second, _ = ready.record_hand_in_order(order_draft("r2"))
    ready.authorise_hand_in(AuthorisedHandIn(second.order_id, b"command", 8, True), "dno:a")
    ready.record_hand_in_outcome(second.order_id, applied, b"applied", "bench:bench-01")
    assert ready.device_custody(METER) == DeviceCustody(METER, CustodyState.VANILLA, None, 1)
    assert ready.device_cells(METER) == (VANILLA_CELLS, VANILLA_CELLS)
    counts = {(c.state, c.generation, c.area_id): c.count for c in ready.fleet_summary().counts}
    assert {k: v for k, v in counts.items() if v} == {(CustodyState.VANILLA, 1, None): 1}
    assert [e.event for e in ready.device_history(METER)] == [
        "observed-in-area",
        "hand-in-ordered",
        "hand-in-authorised",
        "hand-in-rejected",
        "observed-in-area",
        "hand-in-ordered",
        "hand-in-authorised",
        "hand-in-applied",
    ]


def test_a_custody_change_outside_the_writer_is_counted_at_once(ready: SqlCustodyStore) -> None:
    """set_custody's contract for a caller with a transaction of its own (no writer collecting the moves)."""
    at = datetime.now(UTC)
    with ready.engine.begin() as c:
        set_custody(
            c,
            METER,
            CustodyState.AREA,
            area_id=12,
            generation=None,
            event="t",
            reference="t",
            actor="t",
            at=at,
        )
    counts = {(c.state, c.generation, c.area_id): c.count for c in ready.fleet_summary().counts}
    assert counts.get((CustodyState.AREA, None, 12)) == 1
    ready.record_event(AuditEvent("t", "t", "t"))  # the writer still finds the chain it expects
    assert ready.device_custody(METER) == DeviceCustody(METER, CustodyState.AREA, 12, None)
