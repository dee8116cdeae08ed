"""What start-up finds missing of the reference data every call needs."""

from __future__ import annotations

from pathlib import Path

from vdno.server.store.engine import make_engine, migrate_database
from vdno.server.store.inventory import missing_reference_data


def test_only_the_missing_kinds_are_named(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'partial.db'}"
    migrate_database(url)
    engine = make_engine(url)
    try:
        assert missing_reference_data(engine) == ["area", "vanilla generation", "bench", "officer"]
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO officers (officer_id, status, changed_at) VALUES ('o', 'revoked', '2026-01-01')"
            )
        assert missing_reference_data(engine) == ["area", "vanilla generation", "bench"]
    finally:
        engine.dispose()
