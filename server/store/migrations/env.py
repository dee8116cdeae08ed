"""Alembic environment: the connection is passed in by server.store.migrate (config.attributes)."""

from __future__ import annotations

from alembic import context

from vdno.server.store.schema import metadata

connection = context.config.attributes["connection"]
on_version_apply = context.config.attributes.get("on_version_apply")
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    on_version_apply=[on_version_apply] if on_version_apply else (),
)
with context.begin_transaction():
    context.run_migrations()
