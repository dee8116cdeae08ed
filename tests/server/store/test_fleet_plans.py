"""The fleet queries read by index on a store of some size, on SQLite and PostgreSQL (the plans the
database chooses for them as the store runs them, after the meters are bulk-loaded and analysed)."""

from __future__ import annotations

import pytest
from test_sql_store import GEN, store, store_url  # noqa: F401 (fixtures)

from scripts.bench_scale import LOADED_PREFIX, bulk_load, explain, fleet_statements
from server.domain.values import CustodyState
from server.store.sql import SqlCustodyStore

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
            "meters_per_state": "SCAN devices USING COVERING INDEX ix_devices_custody",
            "signed_unreported": "USING INDEX ix_issuance_signed",
            "meter_custody": "SEARCH devices USING INDEX sqlite_autoindex_devices_1 (device_id=?)",
            "meter_history": "SEARCH device_history USING INDEX ix_device_history_device (device_id=?)",
        }
    else:
        expected = {
            "meters_per_state": "Index Only Scan using ix_devices_custody on devices",
            "signed_unreported": "Index Only Scan using ix_issuance_signed on issuances",
            "meter_custody": "Index Scan using devices_pkey on devices",
            "meter_history": "Index Scan using ix_device_history_device on device_history",
        }
    for name, fragment in expected.items():
        assert fragment in plans[name], f"{name}: {plans[name]}"
        assert "Seq Scan" not in plans[name] and "SCAN issuances\n" not in plans[name], plans[name]
    # and the store's answers over them
    summary = loaded.fleet_summary()
    assert summary.devices == METERS and summary.hand_outs_outstanding == SIGNED
    assert {c.state for c in summary.counts} >= {CustodyState.AREA, CustodyState.VANILLA}
    custody = loaded.device_custody(probe)
    assert custody is not None and len(loaded.device_history(probe)) == 1
