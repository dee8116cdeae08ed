"""One outstanding command per meter, and cancelled commands.

A meter has at most one issuance that is recorded or signed and not yet reported (a partial unique index,
enforced by the INSERT that records an issuance); a cancelled issuance keeps who cancelled it, when and why.
Before the index exists, a meter's older outstanding issuances are closed: a recorded one (nothing released)
fails, a signed one is cancelled (it still accepts the meter's report).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
OUTSTANDING_ISSUANCE = "status IN ('recorded', 'signed')"
CANCELLED_ISSUANCE = "status = 'cancelled'"


def upgrade() -> None:
    with op.batch_alter_table("issuances") as batch:
        batch.add_column(sa.Column("cancelled_at", TS))
        batch.add_column(sa.Column("cancelled_by", sa.String(128)))
        batch.add_column(sa.Column("cancel_reason", sa.Text))
    # a meter's older outstanding issuances: those with a newer one for the same meter
    op.execute(
        "UPDATE issuances SET status = 'failed', failure = 'superseded by a newer command for the meter "
        "(migration 0004)' WHERE status = 'recorded' AND EXISTS (SELECT 1 FROM issuances newer "
        "WHERE newer.device_id = issuances.device_id AND newer.issuance_id > issuances.issuance_id "
        "AND newer.status IN ('recorded', 'signed'))"
    )
    op.execute(
        "UPDATE issuances SET status = 'cancelled', cancelled_by = 'migration:0004', cancel_reason = "
        "'superseded by a newer command for the meter' WHERE status = 'signed' AND EXISTS (SELECT 1 FROM "
        "issuances newer WHERE newer.device_id = issuances.device_id AND newer.issuance_id > "
        "issuances.issuance_id AND newer.status IN ('recorded', 'signed'))"
    )
    op.create_index(
        "uq_issuance_outstanding_device",
        "issuances",
        ["device_id"],
        unique=True,
        sqlite_where=sa.text(OUTSTANDING_ISSUANCE),
        postgresql_where=sa.text(OUTSTANDING_ISSUANCE),
    )
    op.create_index(
        "ix_issuance_cancelled_device",
        "issuances",
        ["device_id"],
        sqlite_where=sa.text(CANCELLED_ISSUANCE),
        postgresql_where=sa.text(CANCELLED_ISSUANCE),
    )


def downgrade() -> None:
    op.drop_index("ix_issuance_cancelled_device", "issuances")
    op.drop_index("uq_issuance_outstanding_device", "issuances")
    with op.batch_alter_table("issuances") as batch:
        batch.drop_column("cancel_reason")
        batch.drop_column("cancelled_by")
        batch.drop_column("cancelled_at")
