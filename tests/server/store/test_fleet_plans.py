"""The fleet queries on a store of some size, on SQLite and PostgreSQL (the plans the database chooses for
them as the store runs them, after the meters are bulk-loaded and analysed): one meter by index, the
summary from the kept counts (one row a group, never every meter), the signed count by partial index."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, text
from test_sql_store import GEN, store, store_url  # noqa: F401 (fixtures)

from scripts.bench_scale import LOADED_PREFIX, bulk_load, explain, fleet_statements
from vdno.server.domain.errors import UnknownDevice
from vdno.server.domain.values import AuditEvent, CustodyState
from vdno.server.store.fleet import set_custody
from vdno.server.store.sql import SqlCustodyStore

ISSUANCES, METERS, SIGNED = 40_000, 40_000, 7


@pytest.fixture
def loaded(store: SqlCustodyStore) -> SqlCustodyStore:  # noqa: F811
    store.add_generation(GEN, "t")
    bulk_load(store.engine, ISSUANCES, METERS, audit_entries=0, signed=SIGNED)
    return store


def test_fleet_queries_use_indexes(loaded: SqlCustodyStore) -> None:
    probe = LOADED_PREFIX + (METERS // 2).to_bytes(6, "big")
    plans = {name: explain(loaded.engine, s) for name, s in fleet_statements(probe).items()}
    if loaded.engine.dialect.name == "sqlite":
        expected = {
            "meters_per_state": "device_counts",
            "signed_unreported": "USING INDEX ix_issuance_signed",
            "meter_custody": "SEARCH devices USING INDEX sqlite_autoindex_devices_1 (device_id=?)",
            "meter_history": "SEARCH device_history USING INDEX ix_device_history_device (device_id=?)",
        }
    else:
        expected = {
            "meters_per_state": "on device_counts",
            "signed_unreported": "Index Only Scan using ix_issuance_signed on issuances",
            "meter_custody": "Index Scan using devices_pkey on devices",
            "meter_history": "Index Scan using ix_device_history_device on device_history",
        }
    for name, fragment in expected.items():
        assert fragment in plans[name], f"{name}: {plans[name]}"
        if name != "meters_per_state":  # that one reads the few device_counts rows whole
            assert "Seq Scan" not in plans[name], plans[name]
    # and the store's answers over them
    summary = loaded.fleet_summary()
    assert summary.devices == METERS and summary.hand_outs_outstanding == SIGNED
    assert {c.state for c in summary.counts} >= {CustodyState.AREA, CustodyState.VANILLA}
    custody = loaded.device_custody(probe)
    assert custody is not None and len(loaded.device_history(probe)) == 1


def test_kept_counts_follow_custody_changes_and_forget_rolled_back_ones(store: SqlCustodyStore) -> None:  # noqa: F811
    """The summary's counts equal the meters' rows after moves between groups, first sightings, and an op
    that failed after changing custody in a batch with others (its change undone with it)."""
    store.add_generation(GEN, "t")
    now = datetime.now(UTC)

    def move(
        device: bytes, state: CustodyState, area: int | None, gen: int | None, fail: bool = False
    ) -> Any:
        def op(c: Connection, _events: list[AuditEvent]) -> None:
            set_custody(
                c, device, state, area_id=area, generation=gen, event="t", reference="t", actor="t", at=now
            )
            if fail:
                raise UnknownDevice("refused after the change")

        return op

    meters = [bytes([0xAB, i]) + bytes(6) for i in range(6)]
    store._writer.submit_group([move(m, CustodyState.VANILLA, None, 1) for m in meters])[-1].result()
    batch = [
        move(meters[0], CustodyState.AREA, 12, None),
        move(meters[1], CustodyState.AREA, 12, None, fail=True),
        move(meters[2], CustodyState.AREA, 13, None),
        move(meters[2], CustodyState.HAND_IN_ORDERED, 13, 1),
        move(bytes(8), CustodyState.UNKNOWN, None, None),
    ]
    futures = store._writer.submit_group(batch)
    with pytest.raises(UnknownDevice):
        futures[1].result()
    assert all(f.result() is None for i, f in enumerate(futures) if i != 1)
    with store.engine.connect() as c:
        truth = {
            (r[0], r[1], r[2]): r[3]
            for r in c.execute(
                text("SELECT custody_state, generation, area_id, count(*) FROM devices GROUP BY 1, 2, 3")
            )
        }
    summary = store.fleet_summary()
    assert {(c.state.value, c.generation, c.area_id): c.count for c in summary.counts} == truth
    assert truth == {
        ("vanilla", 1, None): 4,
        ("area", None, 12): 1,
        ("hand-in-ordered", 1, 13): 1,
        ("unknown", None, None): 1,
    }
