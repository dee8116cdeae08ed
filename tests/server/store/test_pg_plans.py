"""PostgreSQL plans that do not depend on autovacuum: psycopg prepares
a statement after its 5th execution, and a generic plan made while `issuances` and `devices` were
analysed empty is a sequential scan, kept as long as nothing analyses them again. Here the tables are
analysed empty, autovacuum is off for them, thousands of issuances go through the store, and the plans
of the prepared statements on the store's own writer connections must still be index scans."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Connection, text
from test_sql_store import GEN, draft, store, store_url  # noqa: F401 (fixtures)

from vdno.server.domain.values import AuditEvent, CellState, CustodyState, IssuanceStatus, RecordedOutcome
from vdno.server.store.sql import SqlCustodyStore

ISSUANCES = 1_200
SINGLE = 20  # the first issuances and outcomes, one a transaction, while the tables are nearly empty
CELLS = CellState(b"LAB\x00\x00\x03\x00\x0c", b"\x41" * 8)


def literal(pg_type: str, issuance_id: int, device_id: bytes) -> str:
    """A literal of a prepared statement's parameter type, naming a row that exists."""
    if pg_type in ("bigint", "integer", "smallint"):
        return str(issuance_id)
    if pg_type == "bytea":
        return f"'\\x{device_id.hex()}'::bytea"
    if pg_type.startswith("timestamp"):
        return "now()"
    return "'recorded'"


def reltuples(c: Connection, table: str) -> float:
    return float(
        c.exec_driver_sql(f"SELECT reltuples FROM pg_class WHERE oid = '{table}'::regclass").scalar_one()
    )


def explain_prepared(c: Connection, statement_start: str, issuance_id: int, device_id: bytes) -> str:
    """The plan this session would run for its prepared statement whose text starts `statement_start`."""
    rows = c.execute(
        text("SELECT name, parameter_types::text[] FROM pg_prepared_statements WHERE statement LIKE :s"),
        {"s": statement_start + "%"},
    ).all()
    assert len(rows) == 1, f"expected one prepared statement starting {statement_start!r}, found {rows}"
    name, types = rows[0]
    args = ", ".join(literal(t, issuance_id, device_id) for t in types)
    plan = c.exec_driver_sql(f"EXPLAIN EXECUTE {name}({args})").all()
    return "\n".join(r[0] for r in plan)


def on_writer(target: SqlCustodyStore, threaded: bool, fn: Callable[[Connection], str]) -> str:
    """Run `fn` on the connection of the store's writer (threaded) or issuance step writer."""

    def op(c: Connection, _events: list[AuditEvent]) -> Any:
        return fn(c)

    if threaded:
        return str(target._writer.submit(op))
    (result,) = target._step_writer.run_group([op])
    assert isinstance(result, str), result
    return result


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
def test_hand_out_and_outcome_plans_use_indexes_after_an_empty_analyse(store: SqlCustodyStore) -> None:  # noqa: F811
    with store.engine.begin() as c:
        for table in ("issuances", "devices"):
            c.exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
            c.exec_driver_sql(f"ANALYZE {table}")
        assert reltuples(c, "issuances") == 0
    store.add_generation(GEN, "t")
    store.enroll_bench("bench-01", "t")

    drafts = [draft(f"r{i}") for i in range(ISSUANCES)]
    records = []
    # The first steps one issuance each, while the tables are nearly empty: psycopg prepares the statements
    # at their 6th execution, PostgreSQL settles on a plan after 5 more; the rest in steps of 100.
    chunks = [drafts[i : i + 1] for i in range(SINGLE)]
    chunks += [drafts[i : i + 100] for i in range(SINGLE, ISSUANCES, 100)]
    for chunk in chunks:
        step = store.write_issuance_step((), (), [(d, 1) for d in chunk])
        begun = [b[0] for b in step.begun if not isinstance(b, Exception)]
        assert len(begun) == len(chunk)
        signed = [(record, b"\xdf" + record.request_id.encode()) for record in begun]
        stored = store.write_issuance_step(signed, (), ()).stored
        assert all(not isinstance(s, Exception) for s in stored), stored
        records.extend(stored)

    last = records[-1]
    hand_out = on_writer(
        store,
        False,
        lambda c: explain_prepared(c, "UPDATE issuances SET status", last.issuance_id, last.device_id),
    )
    assert "Index Scan using issuances_pkey" in hand_out, hand_out
    assert "Seq Scan" not in hand_out, hand_out

    def report(record: Any) -> bool:
        outcome = RecordedOutcome(
            record.issuance_id,
            IssuanceStatus.APPLIED,
            (),
            CELLS,
            CELLS,
            custody=CustodyState.AREA,
            area_id=12,
        )
        return store.record_outcome(record.issuance_id, outcome, b"resp", "bench:bench-01")

    for record in records[:SINGLE]:  # the outcome's statements prepared while devices is nearly empty
        assert report(record)
    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(report, records[SINGLE:]))

    with store.engine.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM devices").scalar() == ISSUANCES
        for table in ("issuances", "devices"):  # still analysed empty
            assert reltuples(c, table) == 0

    lookup = (
        "SELECT devices.custody_state, devices.generation \nFROM devices"  # record_outcome's, as compiled
    )
    devices_lookup = on_writer(
        store, True, lambda c: explain_prepared(c, lookup, last.issuance_id, last.device_id)
    )
    assert "Index Scan" in devices_lookup and "devices" in devices_lookup, devices_lookup
    assert "Seq Scan" not in devices_lookup, devices_lookup
