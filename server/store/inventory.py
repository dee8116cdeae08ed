"""What a database holds of the reference data every call needs, read once at start-up: a database that
`vdno-server init` never ran against answers every call with a refusal, which start-up says instead."""

from __future__ import annotations

from sqlalchemy import Engine, Table, exists, select

from vdno.server.store.schema import areas, benches, generations, officers

# what each table holds, as the start-up warning names it
REFERENCE_TABLES: tuple[tuple[str, Table], ...] = (
    ("area", areas),
    ("vanilla generation", generations),
    ("bench", benches),
    ("officer", officers),
)


def missing_reference_data(engine: Engine) -> list[str]:
    """The kinds of reference data of which the (migrated) database holds no row at all, e.g.
    ["vanilla generation", "bench"]; [] when it holds some of each."""
    with engine.connect() as conn:
        return [
            name for name, table in REFERENCE_TABLES if not conn.scalar(select(exists().select_from(table)))
        ]
